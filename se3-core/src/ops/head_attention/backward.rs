//! Vector-Jacobian product of [`head_attention`](super::head_attention()), fused as the
//! forward: one [`HeadAttentionGrad`] node per wanted input (`q`, `k`, `v`), each recomputing
//! the attention weights per block of query rows from the inputs (nothing is stored by the
//! forward; formulas in [`backward_cpu`](super::backward_cpu)). The mask has no gradient.
//! The backward nodes themselves have no vector-Jacobian product (no second derivatives
//! through attention yet).

use luminal::prelude::*;

use super::backward_cpu::{AttentionInput, HeadAttentionGrad};
use super::HeadAttention;
use crate::autodiff::emit::{dims, plain, Tensor};

/// Gradients of the views `[q, k, v, mask]` of the `HeadAttention` node `forward` from its
/// gradient buffer `g_id`.
pub(crate) fn vjp(
    inputs: &[Tensor],
    forward: HeadAttention,
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let (q, k, v, mask) = (inputs[0], inputs[1], inputs[2], inputs[3]);
    let out = dims(&q);
    let gref = q.graph_ref;
    let g = plain(g_id, &out, gref);
    let grad = |wrt: AttentionInput| {
        let id = q
            .graph()
            .add_op(HeadAttentionGrad { forward, wrt })
            .input(q.id, 0, q.shape)
            .input(k.id, 0, k.shape)
            .input(v.id, 0, v.shape)
            .input(mask.id, 0, mask.shape)
            .input(g.id, 0, g.shape)
            .finish();
        plain(id, &out, gref)
    };
    vec![
        wanted[0].then(|| grad(AttentionInput::Query)),
        wanted[1].then(|| grad(AttentionInput::Key)),
        wanted[2].then(|| grad(AttentionInput::Value)),
        None,
    ]
}
