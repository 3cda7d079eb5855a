//! CUDA kernel of [`head_attention`](super::head_attention) (`head_attention.cu`): a block per
//! (batch, head, query) row, keys folded in chunks with an online softmax; head vectors above
//! [`MAX_D`] values go to the kernel's wide variant.

use cudarc::driver::{LaunchConfig, PushKernelArg};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::{HeadAttention, HeadLogits};
use crate::exec::cuda::{call_err, cuda_operator, dense, u32_of, BackendRef, CudaBuffer, LowerCtx};
use crate::exec::view::View;
use crate::Error;

/// Threads per block (forward and backward; at most the backward's `HAG_MAX_THREADS`).
const THREADS: u32 = 128;
/// The largest head vector `c dh` `head_attention_rows` holds in shared memory (`HEAD_MAX_D`).
pub const MAX_D: usize = 2048;

/// The kernel for head vectors of `d = c dh` values: `head_attention_rows` (query and running
/// output in shared memory) up to [`MAX_D`], `head_attention_rows_wide` (both in global
/// memory, any size) above.
pub fn kernel_for(d: usize) -> &'static str {
    if d <= MAX_D {
        "head_attention_rows"
    } else {
        "head_attention_rows_wide"
    }
}

/// The launch geometry and scalar arguments the forward and backward kernels share: sizes
/// `(b, n, c, heads, dh)`, the logits' factor and mode (`alpha = scale` for dot products,
/// `2 scale` for L2 distances), a block per (batch, head, query) row.
pub(super) struct RowLaunch {
    /// Elements of one `(b, n, c, heads dh)` tensor.
    pub total: usize,
    /// `b heads n` rows.
    pub rows: usize,
    pub sizes: [u32; 5],
    pub alpha: f32,
    pub mode: i32,
    pub cfg: LaunchConfig,
}

impl RowLaunch {
    /// The geometry of `op` on the query `q` (input 0); `name` labels a shape error.
    pub fn new(
        op: &HeadAttention,
        q: &ShapeTracker,
        name: &'static str,
    ) -> Result<RowLaunch, Error> {
        let shape = View::new(q, &Default::default()).shape();
        let [bs, n, c, w] = shape[..] else {
            return Err(Error::InvalidOp {
                op: name,
                problem: "q must have four axes (b, n, c, heads dh)",
            });
        };
        let heads = op.heads.max(1);
        let dh = w / heads;
        let rows = bs * heads * n;
        let (alpha, mode) = match op.logits {
            HeadLogits::Dot => (op.scale, 0i32),
            HeadLogits::L2Distance => (2.0 * op.scale, 1i32),
        };
        Ok(RowLaunch {
            total: bs * n * c * w,
            rows,
            sizes: [
                u32_of(bs)?,
                u32_of(n)?,
                u32_of(c)?,
                u32_of(heads)?,
                u32_of(dh)?,
            ],
            alpha,
            mode,
            cfg: LaunchConfig {
                grid_dim: (u32_of(rows.clamp(1, 65_535))?, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            },
        })
    }

    /// `c dh`, the values of one head vector.
    pub fn head_values(&self) -> usize {
        self.sizes[2] as usize * self.sizes[4] as usize
    }
}

/// [`HeadAttention`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaHeadAttention {
    pub backend: BackendRef,
    pub op: HeadAttention,
}

impl CudaHeadAttention {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let at = RowLaunch::new(&self.op, &inp[0].1, "head_attention")?;
        let mut out = b.zeros(at.total)?;
        if at.total > 0 {
            let read = |i: usize| dense(b, &inp[i].0, &inp[i].1);
            let (q, k, v, mask) = (read(0)?, read(1)?, read(2)?, read(3)?);
            let zero = i32::from(self.op.zero_if_all_masked);
            let f = b.function(kernel_for(at.head_values()))?;
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(q.slice())
                .arg(k.slice())
                .arg(v.slice())
                .arg(mask.slice())
                .arg(&mut out);
            for s in &at.sizes {
                lb.arg(s);
            }
            lb.arg(&at.alpha).arg(&at.mode).arg(&zero);
            // SAFETY: q, k, v, out (b, n, c, heads dh) and mask (b, n), dense; the kernel fits c dh.
            call_err("cuLaunchKernel", unsafe { lb.launch(at.cfg) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaHeadAttention);

/// Lowers [`HeadAttention`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    let a = op.as_any().downcast_ref::<HeadAttention>()?;
    Some(Box::new(CudaHeadAttention {
        backend: cx.backend.clone(),
        op: *a,
    }))
}
