//! The last radial layer's gradients of [`EdgeContract`](super::EdgeContract) as fused nodes,
//! reassociated per node as the forward is (the per-edge `dR_e [cnt, nf c_in]` and the
//! per-edge radial weights are never formed): [`EdgeContractGrad`], whose CPU kernel is the
//! forward's block kernel in `cpu.rs` (`Job::EdgeGrad`, `Job::WeightGrad`).
//!
//! Per head `h`, the per-edge cotangent of the message is `G_e = u_h,e r_h,i` (`i` the node of
//! `e`): sums `r_h = g_h` (the output's gradient) and `u_h = a_h`; logits `r_h = q_h` and
//! `u_h = dl_h`. Then
//! - `dh_e = sum_h u_h,e sum_{p, (f, c)} Kx_e[p, (f, c)] Gw_h,i[(p, f, c), :]` with
//!   `Gw_h,i = W_h r_h,i` (the logits kernel with the queries `r_h`, its last step
//!   `u_h,e g_e` instead of `g_e . h_e`);
//! - the messages' `dKx_e[p, (f, c)] = sum_h u_h,e (h_e . Gw_h,i[(p, f, c), :] + (b_h
//!   r_h,i)[p, (f, c)])` from the same fold, from which the node features' and the basis'
//!   gradients follow per edge (`K_e^T dKx_e` pooled into the neighbours, `dKx_e (x) x_j`);
//! - `dW_h = sum_i A_h,i^T r_h,i` and `db_h = sum_i S_h,i^T r_h,i` with
//!   `A_h,i = sum_kk u_h,ik Kx_ik (x) h_ik`, `S_h,i = sum_kk u_h,ik Kx_ik` (the sums kernel's
//!   products, then one GEMM with the rows instead of `W`).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::cpu::{contract, Job};

/// Which gradient an [`EdgeContractGrad`] node computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastLayerGrad {
    /// Per-edge gradients, `[e, width]`: the radial hidden values' (`hidden` columns, with
    /// `hidden`) then the messages' `dKx` (`mo nf c_in` columns, with `message`).
    Edges {
        /// Whether the hidden values' gradient is computed.
        hidden: bool,
        /// Whether the messages' gradient is computed.
        message: bool,
    },
    /// The last layer's weight and bias gradients, `[nf c_in hidden + nf c_in, cols]`: the
    /// rows of `dW` then those of `db`.
    Weights,
}

/// The last layer's gradients of an edge contraction (module doc): inputs `x, nbr, basis, h,
/// w, b` as the forward's, then the rows `r_0 .. r_{H-1}` (`[n, cnt, mo]`) and the edge weights
/// `u_0 .. u_{H-1}` (`[n, k]`); head `t` owns the columns `t cnt .. (t + 1) cnt` of `w` and `b`.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeContractGrad {
    /// The gradient computed.
    pub wrt: LastLayerGrad,
    /// Width of the radial hidden layer.
    pub hidden: usize,
}

impl Operator for EdgeContractGrad {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let job = match self.wrt {
            LastLayerGrad::Edges { hidden, message } => Job::EdgeGrad {
                hidden,
                kx: message,
            },
            LastLayerGrad::Weights => Job::WeightGrad,
        };
        contract(job, self.hidden, false, inp)
    }
}
