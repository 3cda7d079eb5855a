//! Vector-Jacobian product of [`scatter_add`](super::scatter_add()): `d src = gather(g, idx)`
//! (each edge reads the gradient of its destination; `-1` edges were skipped and get zero);
//! indices and the size carrier have no gradient.

use luminal::prelude::*;

use crate::autodiff::emit::{dims, plain, Tensor};
use crate::ops::gather::GatherRows;

/// Gradients of the views `[src, idx, size]` of a [`ScatterAdd`](super::ScatterAdd) node from its gradient
/// buffer `g_id`.
pub(crate) fn vjp(inputs: &[Tensor], g_id: NodeIndex, wanted: &[bool]) -> Vec<Option<Tensor>> {
    let (src, idx, size) = (inputs[0], inputs[1], inputs[2]);
    let src_dims = dims(&src);
    let mut out = src_dims.clone();
    out[0] = dims(&size)[0];
    let g = plain(g_id, &out, src.graph_ref);
    let d_src = wanted[0].then(|| {
        let id = src
            .graph()
            .add_op(GatherRows)
            .input(g.id, 0, g.shape)
            .input(idx.id, 0, idx.shape)
            .finish();
        plain(id, &src_dims, src.graph_ref)
    });
    vec![d_src, None, None]
}
