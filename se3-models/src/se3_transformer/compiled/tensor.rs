//! Untyped-size tensor helpers for the compiled SE(3)-Transformer: every axis whose size comes from
//! the config (channels, 2l + 1, hidden widths) is [`X`] (`Dyn<'-'>`, the size carried by the
//! tensor's shape tracker); node, neighbour and edge axes carry the expressions `n`, `k`, `e`.
//!
//! Luminal 0.2 gives binary-op outputs the rank of their type and resolves `'-'` axes from the
//! operands, so these helpers only change views (reshape, permute, broadcast) or add reductions by
//! axis index; matrix products are broadcast multiplies summed over the last axis, which
//! `CpuCompiler` lowers to its GEMM.

use luminal::op;
use luminal::prelude::{symbolic::Expression, *};

/// An axis whose size the tensor's shape carries.
pub(crate) type X = Dyn<'-'>;
/// `[a]`.
pub(crate) type T1 = GraphTensor<(X,)>;
/// `[a, b]`.
pub(crate) type T2 = GraphTensor<(X, X)>;
/// `[a, b, c]`.
pub(crate) type T3 = GraphTensor<(X, X, X)>;
/// `[a, b, c, d]`.
pub(crate) type T4 = GraphTensor<(X, X, X, X)>;

/// Logical sizes of `t`.
pub(crate) fn dims<S: Shape>(t: GraphTensor<S>) -> Vec<Expression> {
    se3_core_logical_dims(&t.shape)
}

fn se3_core_logical_dims(st: &ShapeTracker) -> Vec<Expression> {
    st.indexes
        .iter()
        .map(|&i| {
            (st.dims[i] + st.padding[i].0 + st.padding[i].1).min(st.slices[i].1) - st.slices[i].0
        })
        .collect()
}

/// `t` with a new view and type.
fn with_view<S: Shape, D: Shape>(t: GraphTensor<S>, st: ShapeTracker) -> GraphTensor<D> {
    GraphTensor::from_id(t.id, st, t.graph_ref)
}

/// `t` with another type, same view.
pub(crate) fn retype<S: Shape, D: Shape>(t: GraphTensor<S>) -> GraphTensor<D> {
    GraphTensor::from_id(t.id, t.shape, t.graph_ref)
}

/// `t` reshaped (row-major) to `shape`, copied first unless its view is plain.
pub(crate) fn reshape<S: Shape, D: Shape>(
    t: GraphTensor<S>,
    shape: &[Expression],
) -> GraphTensor<D> {
    let t = if t.shape.is_contiguous() && !t.shape.is_sliced() && !t.shape.is_padded() {
        t
    } else {
        t.contiguous()
    };
    with_view(t, ShapeTracker::new(shape))
}

/// `t` broadcast along a new axis `axis` of `size`.
pub(crate) fn expand_at<S: Shape, D: Shape>(
    t: GraphTensor<S>,
    axis: usize,
    size: impl Into<Expression>,
) -> GraphTensor<D> {
    let mut st = t.shape;
    st.expand(axis, size.into());
    with_view(t, st)
}

/// A view with the axes permuted (`perm[i]` is the source axis of axis `i`).
pub(crate) fn permute<S: Shape>(t: GraphTensor<S>, perm: &[usize]) -> GraphTensor<S> {
    let mut st = t.shape;
    st.permute(perm);
    with_view(t, st)
}

/// Sum over `axis`.
pub(crate) fn sum_axis<S: Shape, D: Shape>(t: GraphTensor<S>, axis: usize) -> GraphTensor<D> {
    let mut st = t.shape;
    let id = t
        .graph()
        .add_op(op::SumReduce(axis))
        .input(t.id, 0, st)
        .finish();
    st.remove_dim(axis);
    GraphTensor::from_id(id, st, t.graph_ref)
}

/// Maximum over `axis`.
pub(crate) fn max_axis<S: Shape, D: Shape>(t: GraphTensor<S>, axis: usize) -> GraphTensor<D> {
    let mut st = t.shape;
    let id = t
        .graph()
        .add_op(op::MaxReduce(axis))
        .input(t.id, 0, st)
        .finish();
    st.remove_dim(axis);
    GraphTensor::from_id(id, st, t.graph_ref)
}

/// Batched matrix product `[b, m, k] x [b, k, n] -> [b, m, n]` (either batch axis may be a
/// broadcast).
pub(crate) fn bmm(a: T3, b: T3) -> T3 {
    let (da, db) = (dims(a), dims(b));
    let a4: T4 = expand_at(a, 2, db[2]);
    let bt = permute(b, &[0, 2, 1]);
    let b4: T4 = expand_at(bt, 1, da[1]);
    sum_axis(a4 * b4, 3)
}

/// Matrix product `[m, k] x [k, n] -> [m, n]`.
pub(crate) fn mm(a: T2, b: T2) -> T2 {
    let (da, db) = (dims(a), dims(b));
    let a3: T3 = expand_at(a, 1, db[1]);
    let bt = permute(b, &[1, 0]);
    let b3: T3 = expand_at(bt, 0, da[0]);
    sum_axis(a3 * b3, 2)
}

/// `torch.nn.LayerNorm(width)` over the last axis of `[rows, width]` (biased variance, eps 1e-5)
/// with affine `gamma`, `beta`.
pub(crate) fn layer_norm(x: T2, gamma: T1, beta: T1, width: usize) -> T2 {
    let d = dims(x);
    let inv_w = 1.0 / width as f32;
    let mean: T1 = sum_axis::<_, (X,)>(x, 1) * inv_w;
    let centered = x - expand_at::<_, (X, X)>(mean, 1, d[1]);
    let var: T1 = sum_axis::<_, (X,)>(centered * centered, 1) * inv_w;
    let inv = (var + 1e-5).sqrt().recip();
    let y = centered * expand_at::<_, (X, X)>(inv, 1, d[1]);
    y * expand_at::<_, (X, X)>(gamma, 0, d[0]) + expand_at::<_, (X, X)>(beta, 0, d[0])
}
