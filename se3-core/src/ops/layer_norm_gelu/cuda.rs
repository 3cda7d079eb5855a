//! CUDA kernel of [`layer_norm_gelu`](super::layer_norm_gelu) (`layer_norm_gelu.cu`): a warp
//! per row.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::LayerNormGelu;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`LayerNormGelu`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaLayerNormGelu {
    pub backend: BackendRef,
    pub eps: f32,
}

impl CudaLayerNormGelu {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let xv = View::new(&inp[0].1, &Default::default());
        let w = xv.shape().last().copied().unwrap_or(1).max(1);
        let rows = xv.n / w;
        let x = dense(b, &inp[0].0, &inp[0].1)?;
        let bias = dense(b, &inp[1].0, &inp[1].1)?;
        let gamma = dense(b, &inp[2].0, &inp[2].1)?;
        let beta = dense(b, &inp[3].0, &inp[3].1)?;
        let mut out = b.zeros(xv.n)?;
        if rows > 0 {
            let f = b.function("layer_norm_gelu_rows")?;
            let (r32, w32) = (u32_of(rows)?, u32_of(w)?);
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(x.slice())
                .arg(bias.slice())
                .arg(gamma.slice())
                .arg(beta.slice())
                .arg(&mut out)
                .arg(&r32)
                .arg(&w32)
                .arg(&self.eps);
            // SAFETY: x and out (rows, w), the vectors (w,); a warp per row, 32 threads each.
            call_err("cuLaunchKernel", unsafe {
                lb.launch(launch_for(rows * 32))
            })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaLayerNormGelu);

/// Lowers [`LayerNormGelu`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<LayerNormGelu>().map(|l| {
        Box::new(CudaLayerNormGelu {
            backend: cx.backend.clone(),
            eps: l.eps,
        }) as Box<dyn Operator>
    })
}
