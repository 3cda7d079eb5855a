//! Undoing a view in the backward pass: the gradient with respect to a node's buffer from the
//! gradient with respect to one view of it.
//!
//! A luminal view (`ShapeTracker`) reads a row-major buffer of physical `dims` through a
//! permutation (`indexes`), broadcasts (`fake` dims, stride 0), padding (zeros) and slices.
//! Its adjoint, applied to a gradient of the view's logical shape: sum over every broadcast
//! axis, permute the rest back to physical order, and for a padded/sliced axis pad the gradient by the
//! slice start and end and drop the padding (a slice of `[p0, p0 + dim)`), so that buffer
//! element `i` receives the gradient of every logical element that read it. Reshapes need
//! nothing: the result is a row-major buffer of the node's element count.

use luminal::prelude::{symbolic::Expression, *};

use super::emit::{contiguous, copy_as, dims, sum_axis, Tensor};

fn is_zero(e: &Expression) -> bool {
    e.to_usize() == Some(0)
}

fn is_unbounded(e: &Expression) -> bool {
    e.to_usize() == Some(i32::MAX as usize)
}

/// The gradient of a node's buffer from `grad`, the gradient of the view `st` of it (logical
/// shape of `st`); returned row-major with the non-broadcast physical dims of `st`.
pub(crate) fn unview(grad: Tensor, st: &ShapeTracker) -> Tensor {
    let n = st.len();
    let mut cur = grad;
    // sum the broadcast axes first (in logical order, so the sums read plain buffers)
    for k in (0..n).rev() {
        if st.fake[st.indexes[k]] {
            cur = sum_axis(cur, k);
        }
    }
    // then permute the remaining logical axes into physical order
    let physical: Vec<usize> = (0..n)
        .map(|k| st.indexes[k])
        .filter(|&d| !st.fake[d])
        .collect();
    let mut order: Vec<usize> = (0..physical.len()).collect();
    order.sort_by_key(|&k| physical[k]);
    cur.shape.permute(&order);
    let kept = (0..n).filter(|&d| !st.fake[d]);
    for (axis, d) in kept.enumerate() {
        let ((p0, p1), (s0, s1)) = (st.padding[d], st.slices[d]);
        if is_zero(&p0) && is_zero(&p1) && is_zero(&s0) && is_unbounded(&s1) {
            continue;
        }
        cur = contiguous(cur);
        // the buffer's size along `d` is `st.dims[d]`: set it rather than derive it from the
        // pad and slice expressions (their nesting can overflow luminal's 20-term expressions)
        let mut out_dims = dims(&cur);
        out_dims[axis] = st.dims[d];
        let rank = cur.shape.len();
        let full = st.dims[d] + p0 + p1;
        let mut pads = vec![(Expression::from(0), Expression::from(0)); rank];
        pads[axis] = (s0, full - full.min(s1));
        cur.shape.pad(&pads);
        let mut slices = vec![(Expression::from(0), Expression::from(i32::MAX)); rank];
        slices[axis] = (p0, p0 + st.dims[d]);
        cur.shape.slice(&slices);
        // materialise before the next axis: luminal cannot pad a sliced view
        cur = copy_as(cur, &out_dims);
    }
    let d = dims(&cur);
    let out = contiguous(cur);
    super::emit::plain(out.id, &d, out.graph_ref)
}
