//! The backward pass of a contraction `y = sum_a (P ⊙ Q)`: a `SumReduce` over axis `a` of a
//! `Mul` of two views (luminal's matrix product, and every broadcast product summed).
//!
//! Taken primitive by primitive, the gradient of the product, `g` broadcast along `a` times
//! the other operand, is materialised at the product's full broadcast shape (`[m, n, k]` for an
//! `[m, k] x [k, n]` product) and then summed over the operand's broadcast axis. Here the two
//! steps are emitted together: for an operand `P` whose view is broadcast along exactly one
//! axis `f ≠ a` (on which `Q` is not broadcast),
//!
//! ```text
//! dP[.., a] = sum_f g[.., f] Q[.., f, .., a]     (the view of P without its axis f)
//! ```
//!
//! is a product of `g` broadcast along `a` with `Q`, laid out with `f` last and summed over
//! it, which the CPU compiler's matmul pass recognises as a GEMM. Any other operand takes the
//! primitive route.

use luminal::op;
use luminal::prelude::{symbolic::Expression, *};

use crate::ops::logical_dims;

use super::emit::{dims, expand, mul, sum_axis, Tensor};
use super::view::unview;

/// The Mul node behind a `SumReduce` input read plainly with the product's own shape
/// (`input_dims`, not a reshape of it), with its two operand views, or `None` if the
/// reduction's input is something else.
pub(crate) fn product_operands(
    graph: &Graph,
    reduce_input: NodeIndex,
    input_dims: &[Expression],
) -> Option<[(NodeIndex, ShapeTracker); 2]> {
    let node = graph.graph.node_weight(reduce_input)?;
    if !node.as_any().is::<op::Mul>() {
        return None;
    }
    let src = graph.get_sources(reduce_input);
    if src.len() != 2
        || src
            .iter()
            .any(|s| s.1 != 0 || logical_dims(&s.2) != input_dims)
    {
        return None;
    }
    Some([(src[0].0, src[0].2), (src[1].0, src[1].2)])
}

fn fake_axes(st: &ShapeTracker) -> Vec<usize> {
    (0..st.len()).filter(|&k| st.fake[st.indexes[k]]).collect()
}

/// The gradient of operand `p`'s buffer (row-major) from `g`, the gradient of
/// `y = sum over axis` of `p ⊙ q` (`g` read with `y`'s logical shape; `p`, `q` are views of
/// the same logical rank).
pub(crate) fn operand_gradient(
    g: Tensor,
    axis: usize,
    p: (NodeIndex, ShapeTracker),
    q: Tensor,
) -> Tensor {
    let gref = g.graph_ref;
    let st = p.1;
    let rank = st.len();
    let fakes = fake_axes(&st);
    let single = match fakes[..] {
        [f] if f != axis && !q.shape.fake[q.shape.indexes[f]] && !st.is_padded() => Some(f),
        _ => None,
    };
    let size = dims(&q)[axis];
    let spread = expand(g, axis, size);
    let Some(f) = single else {
        return unview(mul(spread, q), &st);
    };
    // logical axes with f moved last; the sum over it leaves P's view without f
    let order: Vec<usize> = (0..rank).filter(|&k| k != f).chain([f]).collect();
    let (mut a, mut b) = (spread, q);
    a.shape.permute(&order);
    b.shape.permute(&order);
    let reduced = sum_axis(mul(a, b), rank - 1);
    let mut rest = st;
    rest.remove_dim(f);
    let d = GraphTensor::from_id(reduced.id, reduced.shape, gref);
    unview(d, &rest)
}
