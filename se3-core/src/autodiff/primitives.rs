//! Vector-Jacobian products of luminal's primitive operators.
//!
//! For `y = op(x...)` and the gradient `g` of `y`, each rule gives the gradient of every input
//! *view* (logical shape of that view), which the pass then takes through the view's adjoint
//! ([`unview`](super::view::unview)); inputs are re-read through their original views, so a
//! broadcast operand is never materialised. Luminal's unary primitives are the exception: they
//! map their input's buffer element by element whatever its view (the output keeps the view),
//! so their rules give the gradient of the input buffer directly:
//! - `a + b`: `g`, `g`; `a * b`: `g b`, `g a`;
//! - `exp2 x`: `g y ln 2`; `log2 x`: `g / (x ln 2)`; `sin x`: `g cos x = g sin(x + π/2)`;
//!   `sqrt x`: `g / (2 y)` (0 where `y = 0`); `1 / x`: `-g y²`; `contiguous`: `g`;
//! - `sum_i x` over an axis: `g` broadcast back along it; `max_i x`: `g` broadcast back, times
//!   `[x = y]` (every tied maximum receives `g`; PyTorch's `amax` splits it among ties);
//! - `x mod y`, `x < y`: piecewise constant, no gradient;
//! - a product summed over an axis (luminal's matrix product, `Σ_k a ⊙ b`) whose product has
//!   no other reader is differentiated as one: each factor's gradient is again a product summed
//!   over the axis the factor broadcasts, in the matmul pattern, so it runs as a GEMM
//!   ([`product_factor_vjp`]) instead of forming the broadcast product.

use luminal::op::{self, Operator};
use luminal::prelude::*;

use crate::Error;

use super::emit::{
    add, binary, dims, expand, filled, mul, plain, scale, shift, sum_axis, unary, Tensor,
};

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

/// The gradient an operator sends to one input.
#[derive(Debug, Clone, Copy)]
pub(crate) enum InputGrad {
    /// With respect to the input's view (its logical shape); the pass undoes the view.
    View(Tensor),
    /// With respect to the input's buffer (row-major, its element count).
    Buffer(Tensor),
}

/// Whether `p` maps its input's buffer element by element, ignoring the view: luminal's unary
/// primitives do (their output keeps the input's view), everything else reads the view.
fn buffer_wise(p: Primitive) -> bool {
    matches!(
        p,
        Primitive::Exp2 | Primitive::Log2 | Primitive::Sin | Primitive::Sqrt | Primitive::Recip
    )
}

/// Gradients of the inputs of `y = p(inputs)` from `g`, the row-major gradient buffer of `y`;
/// `None` where no gradient flows or `wanted` is false.
///
/// Unary primitives work on buffers: `y_buf[i] = f(x_buf[i])`, so `dx_buf = g ⊙ f'(x_buf)`
/// with `g`, `x` and `y` all read as plain buffers of `g`'s shape.
pub(crate) fn vjp(
    p: Primitive,
    y: NodeIndex,
    inputs: &[Tensor],
    g: Tensor,
    wanted: &[bool],
) -> Result<Vec<Option<InputGrad>>, Error> {
    let gref = inputs[0].graph_ref;
    if buffer_wise(p) {
        let shape = dims(&g);
        let (x, yv) = (plain(inputs[0].id, &shape, gref), plain(y, &shape, gref));
        let d = match p {
            Primitive::Exp2 => scale(mul(g, yv), std::f32::consts::LN_2),
            Primitive::Log2 => scale(mul(g, unary(op::Recip, x)), std::f32::consts::LOG2_E),
            Primitive::Sin => {
                let shifted = add(x, filled(gref, std::f32::consts::FRAC_PI_2, &shape));
                mul(g, unary(op::Sin, shifted))
            }
            Primitive::Sqrt => {
                // 1 / (2 y) where y > 0, and 0 at y = 0 (a zero norm or length has no
                // direction; `torch` clamps such norms, which zeroes the same gradient)
                let positive = binary(op::LessThan, filled(gref, 0.0, &shape), yv);
                let safe = add(yv, shift(scale(positive, -1.0), 1.0));
                mul(scale(mul(g, unary(op::Recip, safe)), 0.5), positive)
            }
            _ => scale(mul(g, mul(yv, yv)), -1.0),
        };
        return Ok(vec![Some(InputGrad::Buffer(d))]);
    }
    let mut out = dims(&inputs[0]);
    // a reduction's buffer is laid out as its input's view minus the axis reads it
    // (`exec::primitives::Reduce`), so its gradient and value are read through that view
    let mut result_view = ShapeTracker::new(&out);
    if let Primitive::SumReduce(axis) | Primitive::MaxReduce(axis) = p {
        out.remove(axis);
        result_view = inputs[0].shape;
        result_view.remove_dim(axis);
        if result_view.fake.iter().any(|&f| f) {
            return Err(Error::NoGradient {
                op: format!("{p:?} of a broadcast view"),
            });
        }
    }
    let g = GraphTensor::from_id(g.id, result_view, gref);
    let x = inputs[0];
    let one = |t: Tensor| vec![Some(InputGrad::View(t))];
    Ok(match p {
        Primitive::Add => wanted
            .iter()
            .map(|&w| w.then_some(InputGrad::View(g)))
            .collect(),
        Primitive::Mul => vec![
            wanted[0].then(|| InputGrad::View(mul(g, inputs[1]))),
            wanted[1].then(|| InputGrad::View(mul(g, inputs[0]))),
        ],
        Primitive::Contiguous => one(g),
        Primitive::SumReduce(axis) => one(expand(g, axis, dims(&x)[axis])),
        Primitive::MaxReduce(axis) => {
            let size = dims(&x)[axis];
            let yv = GraphTensor::from_id(y, result_view, gref);
            let below = binary(op::LessThan, x, expand(yv, axis, size));
            let at_max = add(scale(below, -1.0), filled(gref, 1.0, &dims(&x)));
            one(mul(expand(g, axis, size), at_max))
        }
        _ => vec![None; inputs.len()],
    })
}

/// The gradient of factor `i` of `y = Σ_k (a ⊙ b)` (a `Mul` of two views of logical shape `D`
/// summed over axis `k`: luminal's form of a matrix product) from `g`, the plain gradient of
/// `y` (shape `D` without `k`), with the view to undo for the factor's buffer.
///
/// The factor's gradient is `Σ_F (g ⊗ 1_k) ⊙ other` over the axes `F` the factor's view
/// broadcasts. Summed over one such axis `j` (the longest) that is a matrix product itself:
/// the operands are permuted to `[.., m, k, j]` (`m` an axis the other factor broadcasts) and
/// summed over the last axis, luminal's matmul pattern again, so the compiler runs it as a GEMM
/// and the `[.., m, k, j]` product is never formed. Returned with the factor's view minus `j`
/// (its adjoint sums the other broadcast axes of `F`, on the GEMM's smaller result). Without
/// such an axis the product is returned unsummed with the factor's view.
pub(crate) fn product_factor_vjp(
    k: usize,
    g: Tensor,
    factors: &[Tensor],
    i: usize,
) -> (Tensor, ShapeTracker) {
    let (x, other) = (factors[i], factors[1 - i]);
    let d = dims(&x);
    let r = d.len();
    let fake = |t: &Tensor, a: usize| t.shape.fake[t.shape.indexes[a]];
    let spread = expand(g, k, d[k]);
    // the broadcast axis summed in the GEMM: the longest (a run-time size counts as longest);
    // any other broadcast axis stays in the product and the view's adjoint sums it
    let extent = |a: usize| d[a].to_usize().unwrap_or(usize::MAX);
    let Some(j) = (0..r)
        .filter(|&a| a != k && fake(&x, a) && !fake(&other, a))
        .max_by_key(|&a| extent(a))
    else {
        return (mul(spread, other), x.shape);
    };
    if fake(&x, k) {
        return (mul(spread, other), x.shape);
    }
    let m = (0..r).find(|&a| a != j && a != k && fake(&other, a));
    let mut order: Vec<usize> = (0..r)
        .filter(|&a| a != j && a != k && Some(a) != m)
        .collect();
    order.extend(m);
    order.extend([k, j]);
    let (mut p1, mut p2) = (spread, other);
    p1.shape.permute(&order);
    p2.shape.permute(&order);
    let mut sum = sum_axis(mul(p1, p2), r - 1);
    // back to the factor's logical order (all axes but j, ascending)
    let kept = &order[..r - 1];
    let mut back: Vec<usize> = (0..r - 1).collect();
    back.sort_by_key(|&p| kept[p]);
    sum.shape.permute(&back);
    let mut view = x.shape;
    view.remove_dim(j);
    (sum, view)
}
