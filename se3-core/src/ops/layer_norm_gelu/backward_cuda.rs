//! CUDA kernel of [`LayerNormGeluGrad`] (`layer_norm_gelu_grad.cu`): a warp per row, the
//! column sums added atomically.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::LayerNormGeluGrad;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`LayerNormGeluGrad`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaLayerNormGeluGrad {
    pub backend: BackendRef,
    pub eps: f32,
}

impl CudaLayerNormGeluGrad {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let xv = View::new(&inp[0].1, &Default::default());
        let w = View::new(&inp[1].1, &Default::default()).n;
        let rows = xv.n / w.max(1);
        let read = |i: usize| dense(b, &inp[i].0, &inp[i].1);
        let (x, bias, gamma, beta, g) = (read(0)?, read(1)?, read(2)?, read(3)?, read(4)?);
        // zeros: the column sums are accumulated into the last three rows
        let mut out = b.zeros(xv.n + 3 * w)?;
        if rows > 0 && w > 0 {
            let f = b.function("layer_norm_gelu_grad_rows")?;
            let (r32, w32) = (u32_of(rows)?, u32_of(w)?);
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(x.slice())
                .arg(bias.slice())
                .arg(gamma.slice())
                .arg(beta.slice())
                .arg(g.slice())
                .arg(&mut out)
                .arg(&r32)
                .arg(&w32)
                .arg(&self.eps);
            // SAFETY: x and g (rows, w), the vectors (w,), out (rows + 3, w); a warp per row.
            call_err("cuLaunchKernel", unsafe {
                lb.launch(launch_for(rows * 32))
            })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaLayerNormGeluGrad);

/// Lowers [`LayerNormGeluGrad`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<LayerNormGeluGrad>().map(|l| {
        Box::new(CudaLayerNormGeluGrad {
            backend: cx.backend.clone(),
            eps: l.eps,
        }) as Box<dyn Operator>
    })
}
