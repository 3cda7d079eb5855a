//! CUDA kernel of [`grad_scale`](super::grad_scale)'s forward: `grad_scale.cu`, the identity
//! on the input made dense row-major (the backward is an element-wise scaling, lowered as
//! every element-wise program).

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::GradScale;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`GradScale`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaGradScale {
    pub backend: BackendRef,
}

impl CudaGradScale {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let total = View::new(&inp[0].1, &Default::default()).n;
        let mut out = b.zeros(total)?;
        if total > 0 {
            let x = dense(b, &inp[0].0, &inp[0].1)?;
            let f = b.function("grad_scale_forward")?;
            let n = total as u64;
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(x.slice()).arg(&mut out).arg(&n);
            // SAFETY: x and out hold total values.
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(total)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaGradScale);

/// Lowers [`GradScale`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<GradScale>().then(|| {
        Box::new(CudaGradScale {
            backend: cx.backend.clone(),
        }) as Box<dyn Operator>
    })
}
