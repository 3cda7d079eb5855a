//! CUDA kernel of [`EdgeOwner`] (the backward of [`edge_contract`](super)): `edge_owner.cu`,
//! one thread per edge.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::backward::EdgeOwner;
use crate::exec::cuda::{
    call_err, cuda_operator, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`EdgeOwner`] on a CUDA device (its input is a size carrier: no data is read).
#[derive(Debug, Clone, PartialEq)]
pub struct CudaEdgeOwner {
    pub backend: BackendRef,
}

impl CudaEdgeOwner {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let v = View::new(&inp[0].1, &Default::default());
        let (n, k) = match v.axes[..] {
            [ref a, ref c, ..] => (a.len, c.len),
            _ => {
                return Err(Error::InvalidOp {
                    op: "edge_owner",
                    problem: "the size carrier must have two axes (n, k)",
                })
            }
        };
        let mut out = b.zeros(n * k)?;
        if n * k > 0 {
            let f = b.function("edge_owner")?;
            let (total, k32) = ((n * k) as u64, u32_of(k)?);
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(&mut out).arg(&total).arg(&k32);
            // SAFETY: out holds n k values.
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n * k)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaEdgeOwner);

/// Lowers [`EdgeOwner`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<EdgeOwner>().then(|| {
        Box::new(CudaEdgeOwner {
            backend: cx.backend.clone(),
        }) as Box<dyn Operator>
    })
}
