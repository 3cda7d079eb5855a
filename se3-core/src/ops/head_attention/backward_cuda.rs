//! CUDA kernels of [`HeadAttentionGrad`] (`head_attention_grad.cu`): per (batch, head, query)
//! row the softmax statistics (max, sum, `r_i = Σ_j A_ij dA_ij`), then one block per row of
//! the gradient folding the other side's nodes in chunks; any head vector size.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::backward_cpu::{AttentionInput, HeadAttentionGrad};
use super::HeadLogits;
use crate::exec::cuda::{call_err, cuda_operator, dense, u32_of, BackendRef, CudaBuffer, LowerCtx};
use crate::exec::view::View;
use crate::Error;

/// Threads per block (at most `HAG_MAX_THREADS`).
const THREADS: u32 = 128;

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
        let shape = View::new(&inp[0].1, &Default::default()).shape();
        let [bs, n, c, w] = shape[..] else {
            return Err(Error::InvalidOp {
                op: "head_attention backward",
                problem: "q must have four axes (b, n, c, heads dh)",
            });
        };
        let f = &self.op.forward;
        let heads = f.heads.max(1);
        let dh = w / heads;
        let total = bs * n * c * w;
        let mut out = b.zeros(total)?;
        let rows = bs * heads * n;
        if total > 0 {
            let read = |i: usize| dense(b, &inp[i].0, &inp[i].1);
            let (q, k, v, mask, g) = (read(0)?, read(1)?, read(2)?, read(3)?, read(4)?);
            let (alpha, mode) = match f.logits {
                HeadLogits::Dot => (f.scale, 0i32),
                HeadLogits::L2Distance => (2.0 * f.scale, 1i32),
            };
            let wrt = wrt_code(self.op.wrt);
            let with_r = i32::from(wrt != 2);
            let zero = i32::from(f.zero_if_all_masked);
            let sizes = [
                u32_of(bs)?,
                u32_of(n)?,
                u32_of(c)?,
                u32_of(heads)?,
                u32_of(dh)?,
            ];
            let cfg = LaunchConfig {
                grid_dim: (u32_of(rows.clamp(1, 65_535))?, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut stats = b.zeros(rows * 3)?;
            let fs = b.function("head_attention_grad_stats")?;
            let mut lb = b.stream().launch_builder(&fs);
            lb.arg(q.slice())
                .arg(k.slice())
                .arg(v.slice())
                .arg(mask.slice())
                .arg(g.slice())
                .arg(&mut stats);
            for s in &sizes {
                lb.arg(s);
            }
            lb.arg(&alpha).arg(&mode).arg(&with_r);
            // SAFETY: q, k, v, g (b, n, c, heads dh), mask (b, n), stats (b heads n, 3), dense.
            call_err("cuLaunchKernel", unsafe { lb.launch(cfg) })?;
            let fr = b.function("head_attention_grad_rows")?;
            let mut lb = b.stream().launch_builder(&fr);
            lb.arg(q.slice())
                .arg(k.slice())
                .arg(v.slice())
                .arg(mask.slice())
                .arg(g.slice())
                .arg(&stats)
                .arg(&mut out);
            for s in &sizes {
                lb.arg(s);
            }
            lb.arg(&alpha).arg(&mode).arg(&zero).arg(&wrt);
            // SAFETY: as above, out (b, n, c, heads dh).
            call_err("cuLaunchKernel", unsafe { lb.launch(cfg) })?;
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
