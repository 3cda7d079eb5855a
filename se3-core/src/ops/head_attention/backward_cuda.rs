//! CUDA kernels of [`HeadAttentionGrad`] (`head_attention_grad.cu`): per (batch, head, query)
//! row the softmax statistics (max, sum, `r_i = Σ_j A_ij dA_ij`), then one block per row of
//! the gradient folding the other side's nodes in chunks; any head vector size.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::backward_cpu::{AttentionInput, HeadAttentionGrad};
use super::cuda::RowLaunch;
use crate::exec::cuda::{call_err, cuda_operator, dense, BackendRef, CudaBuffer, LowerCtx};
use crate::Error;

/// [`HeadAttentionGrad`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaHeadAttentionGrad {
    pub backend: BackendRef,
    pub op: HeadAttentionGrad,
}

/// The kernels' code of the input differentiated.
fn wrt_code(wrt: AttentionInput) -> i32 {
    match wrt {
        AttentionInput::Query => 0,
        AttentionInput::Key => 1,
        AttentionInput::Value => 2,
    }
}

impl CudaHeadAttentionGrad {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let f = &self.op.forward;
        let at = RowLaunch::new(f, &inp[0].1, "head_attention backward")?;
        let mut out = b.zeros(at.total)?;
        if at.total > 0 {
            let read = |i: usize| dense(b, &inp[i].0, &inp[i].1);
            let (q, k, v, mask, g) = (read(0)?, read(1)?, read(2)?, read(3)?, read(4)?);
            let wrt = wrt_code(self.op.wrt);
            let with_r = i32::from(wrt != 2);
            let zero = i32::from(f.zero_if_all_masked);
            let mut stats = b.zeros(at.rows * 3)?;
            let fs = b.function("head_attention_grad_stats")?;
            let mut lb = b.stream().launch_builder(&fs);
            lb.arg(q.slice())
                .arg(k.slice())
                .arg(v.slice())
                .arg(mask.slice())
                .arg(g.slice())
                .arg(&mut stats);
            for s in &at.sizes {
                lb.arg(s);
            }
            lb.arg(&at.alpha).arg(&at.mode).arg(&with_r);
            // SAFETY: q, k, v, g (b, n, c, heads dh), mask (b, n), stats (b heads n, 3), dense.
            call_err("cuLaunchKernel", unsafe { lb.launch(at.cfg) })?;
            let fr = b.function("head_attention_grad_rows")?;
            let mut lb = b.stream().launch_builder(&fr);
            lb.arg(q.slice())
                .arg(k.slice())
                .arg(v.slice())
                .arg(mask.slice())
                .arg(g.slice())
                .arg(&stats)
                .arg(&mut out);
            for s in &at.sizes {
                lb.arg(s);
            }
            lb.arg(&at.alpha).arg(&at.mode).arg(&zero).arg(&wrt);
            // SAFETY: as above, out (b, n, c, heads dh).
            call_err("cuLaunchKernel", unsafe { lb.launch(at.cfg) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaHeadAttentionGrad);

/// Lowers [`HeadAttentionGrad`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    let a = op.as_any().downcast_ref::<HeadAttentionGrad>()?;
    Some(Box::new(CudaHeadAttentionGrad {
        backend: cx.backend.clone(),
        op: *a,
    }))
}
