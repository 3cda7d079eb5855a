//! CUDA kernel of [`radial_edge_conv`](super::radial_edge_conv) (`radial_edge_conv.cu`): a
//! block per destination node over the destination buckets of `scatter_add.cu`, always
//! reassociated (the CPU's [`Mode::Reassociated`](super::RadialMode::Reassociated)).

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::{PairShape, RadialEdgeConv};
use crate::exec::cuda::{call_err, cuda_operator, dense, u32_of, BackendRef, CudaBuffer, LowerCtx};
use crate::exec::view::View;
use crate::ops::scatter_add::cuda::device_buckets;
use crate::Error;

/// Shared-memory capacity of the `A` accumulator of `radial_edge_conv_sorted` (floats).
const ACC_CAPACITY: usize = 4096;
/// Threads per block (one block per node).
const THREADS: u32 = 128;

/// [`RadialEdgeConv`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaRadialEdgeConv {
    pub backend: BackendRef,
    pub shape: PairShape,
}

impl CudaRadialEdgeConv {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
        let s = self.shape;
        let (m, e, n) = (views[0].axes[0].len, views[5].n, views[8].axes[0].len);
        let hd = views[2].axes.get(1).map_or(0, |a| a.len);
        if s.mo() * hd > ACC_CAPACITY {
            return Err(Error::InvalidOp {
                op: "radial_edge_conv (cuda)",
                problem: "(2 d_out + 1) * hidden exceeds 4096",
            });
        }
        let args = inp[..8]
            .iter()
            .map(|(t, st)| dense(b, t, st))
            .collect::<Result<Vec<_>, Error>>()?;
        let row = s.c_out * s.mo();
        let mut out = b.zeros(n * row)?;
        if n * row > 0 && e > 0 {
            let (start, order) = device_buckets(b, args[7].slice(), n, e)?;
            let f = b.function("radial_edge_conv_sorted")?;
            let dims = [m, n, s.c_in, s.di(), s.nf, s.mo(), s.c_out, hd]
                .map(u32_of)
                .into_iter()
                .collect::<Result<Vec<u32>, Error>>()?;
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (u32_of(n.min(65_535))?, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut lb = b.stream().launch_builder(&f);
            for t in &args[..7] {
                lb.arg(t.slice());
            }
            lb.arg(&start).arg(&order).arg(&mut out);
            for d in &dims {
                lb.arg(d);
            }
            // SAFETY: x (m, c_in di), basis (e, di, nf mo), h (e, hd), weight (c_out c_in nf,
            // hd), bias (c_out c_in nf,), w and src (e,), out (n, c_out mo); buckets hold edge
            // ids below e; the shared-memory bound was checked above.
            call_err("cuLaunchKernel", unsafe { lb.launch(cfg) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaRadialEdgeConv);

/// Lowers [`RadialEdgeConv`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<RadialEdgeConv>().map(|c| {
        Box::new(CudaRadialEdgeConv {
            backend: cx.backend.clone(),
            shape: c.shape,
        }) as Box<dyn Operator>
    })
}
