//! CUDA kernel of [`edge_conv`](super::edge_conv) and
//! [`edge_conv_diag`](super::edge_conv_diag) (`edge_conv.cu`) over the destination buckets of
//! `scatter_add.cu`.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::cpu::EdgeConv;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::ops::scatter_add::cuda::device_buckets;
use crate::Error;

/// [`EdgeConv`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaEdgeConv {
    pub backend: BackendRef,
    pub diagonal: bool,
}

impl CudaEdgeConv {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
        let (m, ci) = (views[0].axes[0].len, views[0].axes[1].len);
        let (co, e, n) = (views[1].axes[1].len, views[3].n, views[4].axes[0].len);
        let x = dense(b, &inp[0].0, &inp[0].1)?;
        let w = dense(b, &inp[1].0, &inp[1].1)?;
        let src = dense(b, &inp[2].0, &inp[2].1)?;
        let dst = dense(b, &inp[3].0, &inp[3].1)?;
        let mut out = b.zeros(n * co)?;
        if n * co > 0 && e > 0 {
            let (start, order) = device_buckets(b, dst.slice(), n, e)?;
            let f = b.function("edge_conv_sorted")?;
            let (m32, ci32, co32, n32) = (u32_of(m)?, u32_of(ci)?, u32_of(co)?, u32_of(n)?);
            let diagonal = i32::from(self.diagonal);
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(x.slice())
                .arg(w.slice())
                .arg(src.slice())
                .arg(&start)
                .arg(&order)
                .arg(&mut out)
                .arg(&m32)
                .arg(&ci32)
                .arg(&co32)
                .arg(&n32)
                .arg(&diagonal);
            // SAFETY: x (m, ci), w (e, co, ci) or (e, co), src (e,), out (n, co); buckets
            // hold edge ids below e.
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n * co)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaEdgeConv);

/// Lowers [`EdgeConv`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<EdgeConv>().map(|c| {
        Box::new(CudaEdgeConv {
            backend: cx.backend.clone(),
            diagonal: c.diagonal,
        }) as Box<dyn Operator>
    })
}
