//! CUDA kernel of [`top_k`](super::top_k) (`top_k.cu`): a thread per row.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::TopK;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`TopK`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaTopK {
    pub backend: BackendRef,
    pub k: usize,
    pub largest: bool,
    pub masked: bool,
}

impl CudaTopK {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let sv = View::new(&inp[0].1, &Default::default());
        let (n, m) = (sv.axes[0].len, sv.axes[1].len);
        let scores = dense(b, &inp[0].0, &inp[0].1)?;
        let mask = match (self.masked, inp.get(1)) {
            (true, Some((t, st))) => Some(dense(b, t, st)?),
            _ => None,
        };
        let mut keys = b.zeros(n * self.k)?;
        let mut out = b.zeros(n * self.k)?;
        if n * self.k > 0 {
            let f = b.function("top_k_rows")?;
            let (n32, m32, k32) = (u32_of(n)?, u32_of(m)?, u32_of(self.k)?);
            let largest = i32::from(self.largest);
            // no mask: the kernel takes a null pointer
            let null = call_err("cuMemAlloc", b.stream().null::<f32>())?;
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(scores.slice())
                .arg(mask.as_ref().map_or(&null, |m| m.slice()))
                .arg(&mut keys)
                .arg(&mut out)
                .arg(&n32)
                .arg(&m32)
                .arg(&k32)
                .arg(&largest);
            // SAFETY: scores and mask (n, m); keys and out (n, k).
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaTopK);

/// Lowers [`TopK`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<TopK>().map(|t| {
        Box::new(CudaTopK {
            backend: cx.backend.clone(),
            k: t.k,
            largest: t.largest,
            masked: t.masked,
        }) as Box<dyn Operator>
    })
}

/// [`TakeAlongRows`](super::TakeAlongRows) on a CUDA device (`take_along_rows.cu`).
#[derive(Debug, Clone, PartialEq)]
pub struct CudaTakeAlongRows {
    pub backend: BackendRef,
}

impl CudaTakeAlongRows {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let (vv, iv) = (View::new(&inp[0].1, &empty), View::new(&inp[1].1, &empty));
        let (n, m, k) = (iv.axes[0].len, vv.axes[1].len, iv.axes[1].len);
        let values = dense(b, &inp[0].0, &inp[0].1)?;
        let idx = dense(b, &inp[1].0, &inp[1].1)?;
        let mut out = b.zeros(n * k)?;
        if n * k > 0 {
            let f = b.function("take_along_rows")?;
            let (n32, m32, k32) = (u32_of(n)?, u32_of(m)?, u32_of(k)?);
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(values.slice())
                .arg(idx.slice())
                .arg(&mut out)
                .arg(&n32)
                .arg(&m32)
                .arg(&k32);
            // SAFETY: values (n, m), idx and out (n, k).
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n * k)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaTakeAlongRows);

/// Lowers [`TakeAlongRows`](super::TakeAlongRows).
pub(crate) fn lower_take_along_rows(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<super::TakeAlongRows>().then(|| {
        Box::new(CudaTakeAlongRows {
            backend: cx.backend.clone(),
        }) as Box<dyn Operator>
    })
}
