//! CUDA kernels of [`edge_contract_sum`](super::edge_contract_sum) and
//! [`edge_contract_logits`](super::edge_contract_logits) (`edge_contract.cu`): a block per
//! node, one launch per head, the CPU kernel's reassociation.

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::{ContractKind, EdgeContract};
use crate::exec::cuda::{call_err, cuda_operator, dense, u32_of, BackendRef, CudaBuffer, LowerCtx};
use crate::exec::view::View;
use crate::Error;

/// Shared-memory capacities of `edge_contract_sum_nodes` (floats), as in the `.cu` file.
const KX_CAPACITY: usize = 2048;
const ACC_CAPACITY: usize = 4096;
/// Capacities of `edge_contract_logits_nodes`: `mo hidden`, `k hidden`, `k`.
const FOLD_CAPACITY: usize = 2048;
const G_CAPACITY: usize = 4096;
const K_CAPACITY: usize = 256;
/// Threads per block (one block per node).
const THREADS: u32 = 128;

/// [`EdgeContract`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaEdgeContract {
    pub backend: BackendRef,
    pub kind: ContractKind,
    pub hidden: usize,
}

impl CudaEdgeContract {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let shape = |i: usize| View::new(&inp[i].1, &empty).shape();
        let (xs, bs, ws) = (shape(0), shape(2), shape(4));
        let (n, c_in, mi) = (xs[0], xs[1], xs[2]);
        let (e, mo, nf) = (bs[0], bs[1], bs[3]);
        let k = e.checked_div(n).unwrap_or(0);
        let heads = inp.len().saturating_sub(6).max(1);
        let cols = ws.get(1).copied().unwrap_or(0);
        let cnt = cols / heads;
        let hd = self.hidden;
        let logits = self.kind == ContractKind::Logits;
        let fits = if logits {
            mo * k <= KX_CAPACITY
                && mo * hd <= FOLD_CAPACITY
                && k * hd <= G_CAPACITY
                && k <= K_CAPACITY
        } else {
            mo * k <= KX_CAPACITY && mo * hd <= ACC_CAPACITY
        };
        if !fits {
            return Err(Error::InvalidOp {
                op: "edge_contract (cuda)",
                problem: "the per-node sizes exceed the kernel's shared memory: (2 d_out + 1) k \
                          <= 2048, (2 d_out + 1) hidden <= 4096 (sum) or 2048 (logits), k hidden \
                          <= 4096 and k <= 256 (logits)",
            });
        }
        let args = inp
            .iter()
            .map(|(t, st)| dense(b, t, st))
            .collect::<Result<Vec<_>, Error>>()?;
        let len = if logits { heads * n * k } else { n * cols * mo };
        let mut out = b.zeros(len)?;
        if len > 0 && k > 0 && nf * c_in > 0 && cnt > 0 {
            let f = b.function(if logits {
                "edge_contract_logits_nodes"
            } else {
                "edge_contract_sum_nodes"
            })?;
            let dims = [n, k, c_in, mi, mo, nf, hd, cols]
                .map(u32_of)
                .into_iter()
                .collect::<Result<Vec<u32>, Error>>()?;
            let cnt32 = u32_of(cnt)?;
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (u32_of(n.min(65_535))?, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            for (hh, a) in args[6..].iter().enumerate() {
                let c0 = u32_of(hh * cnt)?;
                let mut lb = b.stream().launch_builder(&f);
                for t in &args[..4] {
                    lb.arg(t.slice());
                }
                lb.arg(a.slice())
                    .arg(args[4].slice())
                    .arg(args[5].slice())
                    .arg(&mut out);
                for d in &dims {
                    lb.arg(d);
                }
                lb.arg(&c0).arg(&cnt32);
                let head = u32_of(hh)?;
                if logits {
                    lb.arg(&head);
                }
                // SAFETY: x (n, c_in, mi), nbr (n k,), basis (n k, mo, mi, nf), hid (n k, hd),
                // a (n, k) or q (n, cnt, mo), w (nf c_in hd, cols), b (nf c_in, cols), out
                // (n, cols, mo) or (heads, n, k); the shared-memory bounds were checked above.
                call_err("cuLaunchKernel", unsafe { lb.launch(cfg) })?;
            }
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaEdgeContract);

/// Lowers [`EdgeContract`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<EdgeContract>().map(|c| {
        Box::new(CudaEdgeContract {
            backend: cx.backend.clone(),
            kind: c.kind,
            hidden: c.hidden,
        }) as Box<dyn Operator>
    })
}
