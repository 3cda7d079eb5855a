//! CUDA kernels of [`adjacency_degrees`](super::adjacency_degrees) (`adjacency.cu`): one
//! launch per degree, a thread per matrix entry.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::AdjacencyDegrees;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBuffer, LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// [`AdjacencyDegrees`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaAdjacencyDegrees {
    pub backend: BackendRef,
    pub degrees: usize,
}

impl CudaAdjacencyDegrees {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let n = View::new(&inp[0].1, &Default::default())
            .axes
            .first()
            .map_or(0, |a| a.len);
        let adj = dense(b, &inp[0].0, &inp[0].1)?;
        let total = n * n;
        let mut out = b.zeros(total)?;
        if total > 0 {
            let mut reach = b.zeros(total)?;
            let mut next = b.zeros(total)?;
            let init = b.function("adjacency_init")?;
            let total64 = total as u64;
            let mut lb = b.stream().launch_builder(&init);
            lb.arg(adj.slice())
                .arg(&mut reach)
                .arg(&mut out)
                .arg(&total64);
            // SAFETY: adj, reach and out hold n * n floats.
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(total)) })?;
            let step = b.function("adjacency_step")?;
            let n32 = u32_of(n)?;
            for d in 2..=self.degrees {
                let d32 = d as f32;
                let mut lb = b.stream().launch_builder(&step);
                lb.arg(&reach)
                    .arg(&mut next)
                    .arg(&mut out)
                    .arg(&n32)
                    .arg(&d32);
                // SAFETY: reach, next and out hold n * n floats.
                call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(total)) })?;
                std::mem::swap(&mut reach, &mut next);
            }
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaAdjacencyDegrees);

/// Lowers [`AdjacencyDegrees`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<AdjacencyDegrees>().map(|a| {
        Box::new(CudaAdjacencyDegrees {
            backend: cx.backend.clone(),
            degrees: a.degrees,
        }) as Box<dyn Operator>
    })
}
