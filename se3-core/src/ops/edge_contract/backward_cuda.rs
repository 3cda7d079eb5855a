//! CUDA kernels of the backward of [`edge_contract`](super): the last layer's gradients,
//! [`CudaEdgeContractGrad`] (the gradient kernels of `edge_contract.cu`).

use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use crate::exec::cuda::{call_err, cuda_operator, dense, u32_of, BackendRef, CudaBuffer, LowerCtx};
use crate::exec::view::View;
use crate::Error;

/// [`EdgeContractGrad`](super::EdgeContractGrad) on a CUDA device (the gradient kernels of
/// `edge_contract.cu`): one launch per head, a block per node.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaEdgeContractGrad {
    pub backend: BackendRef,
    pub op: super::EdgeContractGrad,
}

/// Shared-memory capacities of the gradient kernels of `edge_contract.cu` (floats): `mo k`,
/// `mo hidden`, `k hidden`, `mo`.
const GRAD_KX: usize = 2048;
const GRAD_ACC: usize = 4096;
const GRAD_G: usize = 4096;
const GRAD_FB: usize = 512;

impl CudaEdgeContractGrad {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        use super::LastLayerGrad;
        let b = &self.backend.0;
        let empty = Default::default();
        let shape = |i: usize| View::new(&inp[i].1, &empty).shape();
        let (xs, bs, ws) = (shape(0), shape(2), shape(4));
        let (n, c_in, mi) = (xs[0], xs[1], xs[2]);
        let (e, mo, nf) = (bs[0], bs[1], bs[3]);
        let k = e.checked_div(n).unwrap_or(0);
        let heads = inp.len().saturating_sub(6) / 2;
        let cols = ws.get(1).copied().unwrap_or(0);
        let cnt = cols.checked_div(heads).unwrap_or(0);
        let (hd, cf) = (self.op.hidden, nf * c_in);
        // the per-edge job's flags and row width (None: the weights' job)
        let edges = match self.op.wrt {
            LastLayerGrad::Edges { hidden, message } => Some((
                u32::from(hidden),
                u32::from(message),
                if hidden { hd } else { 0 } + if message { mo * cf } else { 0 },
            )),
            LastLayerGrad::Weights => None,
        };
        if mo * k > GRAD_KX
            || mo * hd > GRAD_ACC
            || mo > GRAD_FB
            || (edges.is_some() && k * hd > GRAD_G)
        {
            return Err(Error::InvalidOp {
                op: "edge_contract gradient (cuda)",
                problem: "the per-node sizes exceed the kernel's shared memory: (2 d_out + 1) k \
                          <= 2048, (2 d_out + 1) hidden <= 4096, k hidden <= 4096 and 2 d_out + \
                          1 <= 512",
            });
        }
        let args = inp
            .iter()
            .map(|(t, st)| dense(b, t, st))
            .collect::<Result<Vec<_>, Error>>()?;
        let len = match edges {
            Some((_, _, width)) => e * width,
            None => (cf * hd + cf) * cols,
        };
        let mut out = b.zeros(len)?;
        if len > 0 && k > 0 && cf > 0 && cnt > 0 {
            let f = b.function(if edges.is_some() {
                "edge_contract_edge_grad_nodes"
            } else {
                "edge_contract_weight_grad_nodes"
            })?;
            let dims = [n, k, c_in, mi, mo, nf, hd, cols]
                .map(u32_of)
                .into_iter()
                .collect::<Result<Vec<u32>, Error>>()?;
            let cnt32 = u32_of(cnt)?;
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (u32_of(n.min(65_535))?, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            for hh in 0..heads {
                let (rows, u) = (&args[6 + hh], &args[6 + heads + hh]);
                let c0 = u32_of(hh * cnt)?;
                let mut lb = b.stream().launch_builder(&f);
                lb.arg(args[0].slice())
                    .arg(args[1].slice())
                    .arg(args[2].slice());
                lb.arg(args[3].slice()).arg(rows.slice()).arg(u.slice());
                if edges.is_some() {
                    lb.arg(args[4].slice()).arg(args[5].slice());
                }
                lb.arg(&mut out);
                for d in &dims {
                    lb.arg(d);
                }
                lb.arg(&c0).arg(&cnt32);
                if let Some((want_h, want_kx, _)) = &edges {
                    lb.arg(want_h).arg(want_kx);
                }
                // SAFETY: x (n, c_in, mi), nbr (n k,), basis (n k, mo, mi, nf), hid (n k, hd),
                // rows (n, cnt, mo), u (n, k), w (nf c_in hd, cols), b (nf c_in, cols), out
                // (n k, width) or (cf hd + cf, cols); the shared-memory bounds were checked above.
                call_err("cuLaunchKernel", unsafe { lb.launch(cfg) })?;
            }
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaEdgeContractGrad);

/// Lowers [`EdgeContractGrad`](super::EdgeContractGrad).
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    let g = op.as_any().downcast_ref::<super::EdgeContractGrad>()?;
    Some(Box::new(CudaEdgeContractGrad {
        backend: cx.backend.clone(),
        op: g.clone(),
    }))
}
