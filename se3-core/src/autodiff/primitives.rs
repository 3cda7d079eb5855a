//! Vector-Jacobian products of luminal's primitive operators.
//!
//! For `y = op(x...)` and the gradient `g` of `y` (logical shape of `y`), each rule gives the
//! gradient of every input *view* (logical shape of that view); the pass then undoes the view
//! ([`unview`](super::view::unview)). Inputs are re-read through their original views, so a
//! broadcast operand is never materialised:
//! - `a + b`: `g`, `g`; `a * b`: `g b`, `g a`;
//! - `exp2 x`: `g y ln 2`; `log2 x`: `g / (x ln 2)`; `sin x`: `g cos x = g sin(x + π/2)`;
//!   `sqrt x`: `g / (2 y)`; `1 / x`: `-g y²`; `contiguous`: `g`;
//! - `sum_i x` over an axis: `g` broadcast back along it; `max_i x`: `g` broadcast back, times
//!   `[x = y]` (every tied maximum receives `g`; PyTorch's `amax` splits it among ties);
//! - `x mod y`, `x < y`: piecewise constant, no gradient.

use luminal::op::{self, Operator};
use luminal::prelude::{symbolic::Expression, *};

use super::emit::{add, binary, dims, expand, filled, mul, plain, scale, unary, Tensor};

/// Which primitive a node is, with its axis for reductions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Primitive {
    Add,
    Mul,
    Exp2,
    Log2,
    Sin,
    Sqrt,
    Recip,
    Contiguous,
    SumReduce(usize),
    MaxReduce(usize),
    /// `Mod`, `LessThan`: no gradient.
    Constantwise,
}

/// The primitive behind `op`, or `None` if `op` is not one of luminal's primitives.
pub(crate) fn classify(o: &dyn Operator) -> Option<Primitive> {
    let a = o.as_any();
    Some(if a.is::<op::Add>() {
        Primitive::Add
    } else if a.is::<op::Mul>() {
        Primitive::Mul
    } else if a.is::<op::Exp2>() {
        Primitive::Exp2
    } else if a.is::<op::Log2>() {
        Primitive::Log2
    } else if a.is::<op::Sin>() {
        Primitive::Sin
    } else if a.is::<op::Sqrt>() {
        Primitive::Sqrt
    } else if a.is::<op::Recip>() {
        Primitive::Recip
    } else if a.is::<op::Contiguous>() {
        Primitive::Contiguous
    } else if let Some(r) = a.downcast_ref::<op::SumReduce>() {
        Primitive::SumReduce(r.0)
    } else if let Some(r) = a.downcast_ref::<op::MaxReduce>() {
        Primitive::MaxReduce(r.0)
    } else if a.is::<op::Mod>() || a.is::<op::LessThan>() {
        Primitive::Constantwise
    } else {
        return None;
    })
}

/// Logical shape of the output of `p` applied to views `inputs`.
fn output_dims(p: Primitive, inputs: &[Tensor]) -> Vec<Expression> {
    let mut d = dims(&inputs[0]);
    if let Primitive::SumReduce(axis) | Primitive::MaxReduce(axis) = p {
        d.remove(axis);
    }
    d
}

/// Gradients of the input views of `y = p(inputs)` from `g_id`, the row-major gradient buffer
/// of `y`; `None` where no gradient flows or `wanted` is false.
pub(crate) fn vjp(
    p: Primitive,
    y: NodeIndex,
    inputs: &[Tensor],
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let gref = inputs[0].graph_ref;
    let out = output_dims(p, inputs);
    let g = plain(g_id, &out, gref);
    let yv = plain(y, &out, gref);
    let x = inputs[0];
    let one = |t: Tensor| vec![Some(t)];
    match p {
        Primitive::Add => wanted.iter().map(|&w| w.then_some(g)).collect(),
        Primitive::Mul => vec![
            wanted[0].then(|| mul(g, inputs[1])),
            wanted[1].then(|| mul(g, inputs[0])),
        ],
        Primitive::Exp2 => one(scale(mul(g, yv), std::f32::consts::LN_2)),
        Primitive::Log2 => one(scale(
            mul(g, unary(op::Recip, x)),
            std::f32::consts::LOG2_E,
        )),
        Primitive::Sin => {
            let shifted = add(x, filled(gref, std::f32::consts::FRAC_PI_2, &dims(&x)));
            one(mul(g, unary(op::Sin, shifted)))
        }
        Primitive::Sqrt => one(scale(mul(g, unary(op::Recip, yv)), 0.5)),
        Primitive::Recip => one(scale(mul(g, mul(yv, yv)), -1.0)),
        Primitive::Contiguous => one(g),
        Primitive::SumReduce(axis) => one(expand(g, axis, dims(&x)[axis])),
        Primitive::MaxReduce(axis) => {
            let size = dims(&x)[axis];
            let below = binary(op::LessThan, x, expand(yv, axis, size));
            let at_max = add(scale(below, -1.0), filled(gref, 1.0, &dims(&x)));
            one(mul(expand(g, axis, size), at_max))
        }
        Primitive::Constantwise => vec![None; inputs.len()],
    }
}
