//! CUDA kernel of [`neighbors`](super::neighbors) (`knn.cu`): brute force, a thread per query
//! row, the CPU kernel's order and tie rule.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::Knn;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`Knn`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaKnn {
    pub backend: BackendRef,
    pub k: usize,
    pub radius: Option<f32>,
    pub exclude_self: bool,
    pub masked: bool,
    pub batched: bool,
}

impl CudaKnn {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let n = View::new(&inp[0].1, &Default::default()).axes[0].len;
        let coords = dense(b, &inp[0].0, &inp[0].1)?;
        let optional = |on: bool, at: usize| match (on, inp.get(at)) {
            (true, Some((t, st))) => dense(b, t, st).map(Some),
            _ => Ok(None),
        };
        let mask = optional(self.masked, 1)?;
        let batch = optional(self.batched, 1 + usize::from(self.masked))?;
        let mut dists = b.zeros(n * self.k)?;
        let mut out = b.zeros(n * self.k)?;
        if n * self.k > 0 {
            let f = b.function("knn_rows")?;
            let (n32, k32) = (u32_of(n)?, u32_of(self.k)?);
            let r2 = self.radius.map_or(f32::INFINITY, |r| r * r);
            let exclude_self = i32::from(self.exclude_self);
            // no mask or batch: the kernel takes a null pointer
            let null = call_err("cuMemAlloc", b.stream().null::<f32>())?;
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(coords.slice())
                .arg(mask.as_ref().map_or(&null, |m| m.slice()))
                .arg(batch.as_ref().map_or(&null, |m| m.slice()))
                .arg(&mut dists)
                .arg(&mut out)
                .arg(&n32)
                .arg(&k32)
                .arg(&r2)
                .arg(&exclude_self);
            // SAFETY: coords (n, 3), mask and batch (n,); dists and out (n, k).
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaKnn);

/// Lowers [`Knn`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<Knn>().map(|t| {
        Box::new(CudaKnn {
            backend: cx.backend.clone(),
            k: t.k,
            radius: t.radius,
            exclude_self: t.exclude_self,
            masked: t.masked,
            batched: t.batched,
        }) as Box<dyn Operator>
    })
}

/// [`IndexValid`](super::IndexValid) (`index_valid`) or [`EdgeCenters`](super::EdgeCenters)
/// (`edge_centers`, `k` slots a node) on a CUDA device (`index_rows.cu`).
#[derive(Debug, Clone, PartialEq)]
pub struct CudaIndexRows {
    pub backend: BackendRef,
    /// `None`: `index_valid`; `Some(k)`: `edge_centers`.
    pub centers_of: Option<usize>,
}

impl CudaIndexRows {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let total = View::new(&inp[0].1, &Default::default()).n;
        let idx = dense(b, &inp[0].0, &inp[0].1)?;
        let mut out = b.zeros(total)?;
        if total > 0 {
            let total64 = total as u64;
            let name = match self.centers_of {
                None => "index_valid",
                Some(_) => "edge_centers",
            };
            let f = b.function(name)?;
            let k32 = u32_of(self.centers_of.unwrap_or(1))?;
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(idx.slice()).arg(&mut out).arg(&total64);
            if self.centers_of.is_some() {
                lb.arg(&k32);
            }
            // SAFETY: idx and out hold `total` elements.
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(total)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaIndexRows);

/// Lowers [`IndexValid`](super::IndexValid) and [`EdgeCenters`](super::EdgeCenters).
pub(crate) fn lower_index_rows(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    let any = op.as_any();
    let centers_of = if any.is::<super::IndexValid>() {
        None
    } else {
        Some(any.downcast_ref::<super::EdgeCenters>()?.k)
    };
    Some(Box::new(CudaIndexRows {
        backend: cx.backend.clone(),
        centers_of,
    }))
}
