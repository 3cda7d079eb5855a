//! CUDA kernel of [`gather`](super::gather): `gather.cu`, one thread per output element.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::GatherRows;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`GatherRows`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaGatherRows {
    pub backend: BackendRef,
}

impl CudaGatherRows {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let (tv, iv) = (View::new(&inp[0].1, &empty), View::new(&inp[1].1, &empty));
        let (n, c) = (tv.axes[0].len, tv.axes[1..].iter().map(|a| a.len).product());
        let e = iv.n;
        let table = dense(b, &inp[0].0, &inp[0].1)?;
        let idx = dense(b, &inp[1].0, &inp[1].1)?;
        let mut out = b.zeros(e * c)?;
        if e * c > 0 {
            let f = b.function("gather_rows")?;
            let (n32, c32, e32) = (u32_of(n)?, u32_of(c)?, u32_of(e)?);
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(table.slice())
                .arg(idx.slice())
                .arg(&mut out)
                .arg(&n32)
                .arg(&c32)
                .arg(&e32);
            // SAFETY: table (n, c), idx (e,), out (e, c), dense.
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(e * c)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaGatherRows);

/// Lowers [`GatherRows`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<GatherRows>().then(|| {
        Box::new(CudaGatherRows {
            backend: cx.backend.clone(),
        }) as Box<dyn Operator>
    })
}
