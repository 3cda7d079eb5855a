//! CUDA kernel of [`radial_hidden`](super::radial_hidden) (`radial_hidden.cu`): a warp per
//! network and edge.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::RadialHidden;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`RadialHidden`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaRadialHidden {
    pub backend: BackendRef,
    pub eps: f32,
}

impl CudaRadialHidden {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let (xs, w0s) = (
            View::new(&inp[0].1, &empty).shape(),
            View::new(&inp[1].1, &empty).shape(),
        );
        let (e, n_in, np, h) = (xs[0], xs[1], w0s[0], w0s[2]);
        let args = inp
            .iter()
            .map(|(t, st)| dense(b, t, st))
            .collect::<Result<Vec<_>, Error>>()?;
        let mut hidden1 = b.zeros(np * e * h)?;
        let mut out = b.zeros(np * e * h)?;
        if np * e * h > 0 {
            let f = b.function("radial_hidden_rows")?;
            let (np32, e32, n_in32, h32) = (u32_of(np)?, u32_of(e)?, u32_of(n_in)?, u32_of(h)?);
            let mut lb = b.stream().launch_builder(&f);
            for a in &args {
                lb.arg(a.slice());
            }
            lb.arg(&mut hidden1)
                .arg(&mut out)
                .arg(&np32)
                .arg(&e32)
                .arg(&n_in32)
                .arg(&h32)
                .arg(&self.eps);
            // SAFETY: x (e, n_in), w0 (np, n_in, h), w3 (np, h, h), the vectors (np, h);
            // hidden1 and out (np, e, h); a warp per row.
            call_err("cuLaunchKernel", unsafe {
                lb.launch(launch_for(np * e * 32))
            })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaRadialHidden);

/// Lowers [`RadialHidden`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<RadialHidden>().map(|t| {
        Box::new(CudaRadialHidden {
            backend: cx.backend.clone(),
            eps: t.eps,
        }) as Box<dyn Operator>
    })
}
