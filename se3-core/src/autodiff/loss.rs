//! Scalar objectives built in the graph, with the cotangent each one sends to its output, so
//! one run computes the outputs, the loss and (through [`gradients`](super::gradients)) every
//! gradient: no second run to turn outputs into cotangents on the host.

use super::emit::{add, dims, expand, mul, scale, sum_axis, Tensor};

/// `s` (a rank-0 tensor) broadcast to the logical shape of `like` (a view, no buffer).
fn broadcast_scalar(s: Tensor, like: &Tensor) -> Tensor {
    dims(like)
        .into_iter()
        .enumerate()
        .fold(s, |t, (axis, size)| expand(t, axis, size))
}

/// The sum of every element of `t`, as a rank-0 tensor.
pub(crate) fn sum_all(t: Tensor) -> Tensor {
    (0..t.shape.len()).fold(t, |acc, _| sum_axis(acc, 0))
}

/// Scaled squared error `L = w Σ_i (o_i − t_i)²` and its cotangent `∂L/∂o = 2 w (o − t)`,
/// for an output `o` and a target `t` of the same logical shape and a rank-0 weight `w`
/// (`w = 1 / len(o)` gives the mean squared error, PyTorch's `F.mse_loss`). Returns
/// `(L, ∂L/∂o)`; hand `(o, ∂L/∂o)` to [`gradients`](super::gradients).
pub fn squared_error(output: Tensor, target: Tensor, weight: Tensor) -> (Tensor, Tensor) {
    let diff = add(output, scale(target, -1.0));
    let w = broadcast_scalar(weight, &diff);
    let weighted = mul(diff, w);
    let loss = sum_all(mul(weighted, diff));
    (loss, scale(weighted, 2.0))
}

/// The pairing `L = Σ_i o_i c_i` of an output with a given cotangent `c` (same logical
/// shape), as a rank-0 tensor: the loss whose gradient [`gradients`](super::gradients) takes
/// when handed `(o, c)`.
pub fn pairing(output: Tensor, cotangent: Tensor) -> Tensor {
    sum_all(mul(output, cotangent))
}

/// `a + b` for two rank-0 losses.
pub fn add_losses(a: Tensor, b: Tensor) -> Tensor {
    add(a, b)
}
