//! CUDA kernel of [`segment_softmax`](super::segment_softmax) (`segment_softmax.cu`) over the
//! destination buckets of `scatter_add.cu`.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::SegmentSoftmax;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::ops::scatter_add::cuda::device_buckets;
use crate::Error;

/// [`SegmentSoftmax`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaSegmentSoftmax {
    pub backend: BackendRef,
}

impl CudaSegmentSoftmax {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let (xv, nv) = (View::new(&inp[0].1, &empty), View::new(&inp[2].1, &empty));
        let (e, h, n) = (xv.axes[0].len, xv.axes[1].len, nv.axes[0].len);
        let x = dense(b, &inp[0].0, &inp[0].1)?;
        let seg = dense(b, &inp[1].0, &inp[1].1)?;
        // zeros stay for edges in no segment
        let mut out = b.zeros(e * h)?;
        if n * h > 0 && e > 0 {
            let (start, order) = device_buckets(b, seg.slice(), n, e)?;
            let f = b.function("segment_softmax_sorted")?;
            let (n32, h32) = (u32_of(n)?, u32_of(h)?);
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(x.slice())
                .arg(&start)
                .arg(&order)
                .arg(&mut out)
                .arg(&n32)
                .arg(&h32);
            // SAFETY: x and out (e, h); buckets hold edge ids below e.
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n * h)) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaSegmentSoftmax);

/// Lowers [`SegmentSoftmax`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<SegmentSoftmax>().then(|| {
        Box::new(CudaSegmentSoftmax {
            backend: cx.backend.clone(),
        }) as Box<dyn Operator>
    })
}
