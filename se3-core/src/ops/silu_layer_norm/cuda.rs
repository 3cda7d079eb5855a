//! CUDA kernel of [`silu_layer_norm`](super::silu_layer_norm) and
//! [`linear_silu_layer_norm`](super::linear_silu_layer_norm) (`silu_layer_norm.cu`): a warp
//! per row, the first layer's product `f w` formed by each lane for its units.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::SiluLayerNorm;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`SiluLayerNorm`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaSiluLayerNorm {
    pub backend: BackendRef,
    pub eps: f32,
    /// Whether the inputs start with `f (R, F)` and `w (F, W)` (else with `x (R, W)`).
    pub linear: bool,
}

impl CudaSiluLayerNorm {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        // bias, gamma, beta follow `x`, or `f` and `w`
        let first = usize::from(self.linear);
        let w = View::new(&inp[first + 1].1, &empty).n.max(1);
        let xv = View::new(&inp[0].1, &empty);
        // the kernel reads `f` rows of `n_in` inputs, or `x` rows of `w` (n_in = 0)
        let (n_in, row_len) = if self.linear {
            let f = xv.shape().last().copied().unwrap_or(1).max(1);
            (f, f)
        } else {
            (0, w)
        };
        let rows = xv.n / row_len;
        let args = inp
            .iter()
            .map(|(t, st)| dense(b, t, st))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut out = b.zeros(rows * w)?;
        if rows > 0 {
            let f = b.function("silu_layer_norm_rows")?;
            let (r32, w32, n32) = (u32_of(rows)?, u32_of(w)?, u32_of(n_in)?);
            // without `linear` the weights are unused: `x` stands in for them
            let weights = if self.linear { &args[1] } else { &args[0] };
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(args[0].slice())
                .arg(weights.slice())
                .arg(args[first + 1].slice())
                .arg(args[first + 2].slice())
                .arg(args[first + 3].slice())
                .arg(&mut out)
                .arg(&r32)
                .arg(&w32)
                .arg(&n32)
                .arg(&self.eps);
            // SAFETY: x (rows, w) or f (rows, n_in) with w (n_in, w); the vectors (w,); out
            // (rows, w); a warp per row, 32 threads each.
            call_err("cuLaunchKernel", unsafe {
                lb.launch(launch_for(rows * 32))
            })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaSiluLayerNorm);

/// Lowers [`SiluLayerNorm`] (both forms).
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<SiluLayerNorm>().map(|l| {
        Box::new(CudaSiluLayerNorm {
            backend: cx.backend.clone(),
            eps: l.eps,
            linear: l.linear,
        }) as Box<dyn Operator>
    })
}
