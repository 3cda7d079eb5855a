//! CUDA kernel of [`stack`](super::stack()): `stack.cu`, each input made dense row-major on the
//! device, then copied into its slot by one launch of `stack_slot`.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::Stack;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`Stack`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaStack {
    pub backend: BackendRef,
}

impl CudaStack {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let len = inp.first().map_or(0, |(_, st)| View::new(st, &empty).n);
        if inp.iter().any(|(_, st)| View::new(st, &empty).n != len) {
            return Err(Error::InvalidOp {
                op: "stack",
                problem: "stacked tensors have different sizes",
            });
        }
        let mut out = b.zeros(len * inp.len())?;
        if len > 0 {
            let f = b.function("stack_slot")?;
            for (p, (t, st)) in inp.iter().enumerate() {
                let src = dense(b, t, st)?;
                let (n, offset) = (len as u64, (p * len) as u64);
                let mut lb = b.stream().launch_builder(&f);
                lb.arg(src.slice()).arg(&mut out).arg(&n).arg(&offset);
                // SAFETY: src holds len values, out (inputs, len).
                call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(len)) })?;
            }
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaStack);

/// Lowers [`Stack`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<Stack>().then(|| {
        Box::new(CudaStack {
            backend: cx.backend.clone(),
        }) as Box<dyn Operator>
    })
}
