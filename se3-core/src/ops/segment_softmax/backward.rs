//! Vector-Jacobian product of [`segment_softmax`](super::segment_softmax()): with `y` the
//! softmax and `g` its gradient, `d x = y (g - gather(scatter_add(g y, seg), seg))`, the
//! softmax Jacobian `diag(y) - y yᵀ` applied per segment and column; masked edges (`y = 0`)
//! get zero. Segments and the size carrier have no gradient.

use luminal::prelude::*;

use crate::autodiff::emit::{add, dims, mul, plain, scale, Tensor};
use crate::ops::gather::GatherRows;
use crate::ops::scatter_add::ScatterAdd;
use crate::ops::size_view;

/// Gradients of the views `[logits, seg, size]` of a [`SegmentSoftmax`](super::SegmentSoftmax) node `y` from its
/// gradient buffer `g_id`.
pub(crate) fn vjp(
    inputs: &[Tensor],
    y: NodeIndex,
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let (logits, seg, size) = (inputs[0], inputs[1], inputs[2]);
    let out = dims(&logits);
    let gref = logits.graph_ref;
    let (g, yv) = (plain(g_id, &out, gref), plain(y, &out, gref));
    let d_logits = wanted[0].then(|| {
        let gy = mul(g, yv);
        let mut per_segment = out.clone();
        per_segment[0] = dims(&size)[0];
        let sums = logits
            .graph()
            .add_op(ScatterAdd)
            .input(gy.id, 0, gy.shape)
            .input(seg.id, 0, seg.shape)
            .input(seg.id, 0, size_view(&per_segment[..1]))
            .finish();
        let back = logits
            .graph()
            .add_op(GatherRows)
            .input(sums, 0, ShapeTracker::new(&per_segment))
            .input(seg.id, 0, seg.shape)
            .finish();
        let back = plain(back, &out, gref);
        mul(yv, add(g, scale(back, -1.0)))
    });
    vec![d_logits, None, None]
}
