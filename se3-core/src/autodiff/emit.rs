//! Emitting graph ops on untyped tensors (`GraphTensor<()>` carrying a run-time shape): the
//! building blocks of the backward graph, each output a fresh row-major buffer whose shape is
//! the logical shape of its inputs.

use luminal::op::{self, Constant, ConstantValue, Operator};
use luminal::prelude::{symbolic::Expression, *};

use crate::ops::logical_dims;

/// A tensor of the backward graph: node, view and graph, shape known at run time.
pub type Tensor = GraphTensor<()>;

/// A row-major tensor of node `id` with logical `dims`.
pub(crate) fn plain(id: NodeIndex, dims: &[Expression], graph_ref: *mut Graph) -> Tensor {
    GraphTensor::from_id(id, ShapeTracker::new(dims), graph_ref)
}

/// Logical sizes of `t`'s view.
pub(crate) fn dims(t: &Tensor) -> Vec<Expression> {
    logical_dims(&t.shape)
}

/// Whether a view reads its node's buffer as it is (no permute, broadcast, pad or slice).
pub(crate) fn is_plain(st: &ShapeTracker) -> bool {
    st.is_contiguous() && !st.is_sliced() && !st.is_padded()
}

/// `op(a)` elementwise on a plain `a` (luminal's unary primitives map buffers, not views).
pub(crate) fn unary<O: Operator + 'static>(o: O, a: Tensor) -> Tensor {
    debug_assert!(is_plain(&a.shape), "unary primitive on a view");
    let d = dims(&a);
    let id = a.graph().add_op(o).input(a.id, 0, a.shape).finish();
    plain(id, &d, a.graph_ref)
}

/// `op(a, b)` elementwise; both views have the same logical shape.
pub(crate) fn binary<O: Operator + 'static>(o: O, a: Tensor, b: Tensor) -> Tensor {
    debug_assert_eq!(a.shape.len(), b.shape.len(), "binary op on different ranks");
    let d = dims(&a);
    let id = a
        .graph()
        .add_op(o)
        .input(a.id, 0, a.shape)
        .input(b.id, 0, b.shape)
        .finish();
    plain(id, &d, a.graph_ref)
}

/// `a + b`.
pub(crate) fn add(a: Tensor, b: Tensor) -> Tensor {
    binary(op::Add, a, b)
}

/// `a * b`.
pub(crate) fn mul(a: Tensor, b: Tensor) -> Tensor {
    binary(op::Mul, a, b)
}

/// The constant `v` broadcast to `dims` (a view, no buffer).
pub(crate) fn filled(graph_ref: *mut Graph, v: f32, dims: &[Expression]) -> Tensor {
    // SAFETY: graph_ref comes from a live GraphTensor of the graph being differentiated.
    let g = unsafe { &mut *graph_ref };
    let dyn_map = &g.dyn_map as *const _;
    let id = g
        .add_op(Constant(ConstantValue::Float(v), dyn_map))
        .finish();
    GraphTensor::from_id(id, ShapeTracker::fake(dims), graph_ref)
}

/// `a * v` for a constant `v`.
pub(crate) fn scale(a: Tensor, v: f32) -> Tensor {
    let c = filled(a.graph_ref, v, &dims(&a));
    mul(a, c)
}

/// A row-major copy of `a` (returns `a` if its view is already plain).
pub(crate) fn contiguous(a: Tensor) -> Tensor {
    if is_plain(&a.shape) {
        return a;
    }
    copy(a)
}

/// Zeros of logical `dims` as a row-major buffer.
pub(crate) fn zeros(graph_ref: *mut Graph, dims: &[Expression]) -> Tensor {
    // a product of broadcast constants (a copy of a broadcast constant is not reliable
    // through every compiler pass)
    mul(filled(graph_ref, 0.0, dims), filled(graph_ref, 0.0, dims))
}

/// A row-major copy of the view `a` (always a new node).
pub(crate) fn copy(a: Tensor) -> Tensor {
    let d = dims(&a);
    let id = a
        .graph()
        .add_op(op::Contiguous)
        .input(a.id, 0, a.shape)
        .finish();
    plain(id, &d, a.graph_ref)
}

/// A row-major copy of the view `a` whose logical sizes are known to be `dims` (always a new
/// node; the sizes are not derived from the view's expressions).
pub(crate) fn copy_as(a: Tensor, dims: &[Expression]) -> Tensor {
    let id = a
        .graph()
        .add_op(op::Contiguous)
        .input(a.id, 0, a.shape)
        .finish();
    plain(id, dims, a.graph_ref)
}

/// Sum over logical axis `axis` (removed), as a row-major buffer.
///
/// se3's compiled reduction writes its result where the input's view minus `axis` reads it
/// (see `exec::primitives`), luminal's interpreter in logical order; the two agree when that
/// view is plain, so any other input is copied first.
pub(crate) fn sum_axis(a: Tensor, axis: usize) -> Tensor {
    let mut rest = a.shape;
    rest.remove_dim(axis);
    let a = if is_plain(&rest) { a } else { copy(a) };
    let mut d = dims(&a);
    d.remove(axis);
    let id = a
        .graph()
        .add_op(op::SumReduce(axis))
        .input(a.id, 0, a.shape)
        .finish();
    plain(id, &d, a.graph_ref)
}

/// `a` broadcast along a new logical axis `axis` of `size` (a view).
pub(crate) fn expand(mut a: Tensor, axis: usize, size: Expression) -> Tensor {
    a.shape.expand(axis, size);
    a
}

/// The run-time value of `e` (e.g. a dynamic width) broadcast to `dims`.
pub(crate) fn filled_expr(graph_ref: *mut Graph, e: Expression, dims: &[Expression]) -> Tensor {
    // SAFETY: as in `filled`.
    let g = unsafe { &mut *graph_ref };
    let dyn_map = &g.dyn_map as *const _;
    let id = g
        .add_op(Constant(ConstantValue::Expression(e.into()), dyn_map))
        .finish();
    GraphTensor::from_id(id, ShapeTracker::fake(dims), graph_ref)
}

/// `a + v` for a constant `v`.
pub(crate) fn shift(a: Tensor, v: f32) -> Tensor {
    let c = filled(a.graph_ref, v, &dims(&a));
    add(a, c)
}

/// `e^a` (as luminal: `2^(a log2 e)`).
pub(crate) fn exp(a: Tensor) -> Tensor {
    unary(op::Exp2, scale(a, std::f32::consts::LOG2_E))
}

/// `1 / a`.
pub(crate) fn recip(a: Tensor) -> Tensor {
    unary(op::Recip, contiguous(a))
}

/// `[a < b]` (1 or 0).
pub(crate) fn less_than(a: Tensor, b: Tensor) -> Tensor {
    binary(op::LessThan, a, b)
}
