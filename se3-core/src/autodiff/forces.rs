//! Forces from an energy: `F = -∂E/∂x`, emitted by the backward pass on the same graph, so one
//! run gives the energy and the forces.

use super::{emit, grad, Tensor};
use crate::Error;

/// The forces `F = -∂(Σ energy)/∂coords` (shape of `coords`, e.g. `(N, 3)`), for an energy
/// computed in the graph from `coords` (e.g. a model's invariant output summed per molecule).
/// If the energy is invariant under rigid motions, the forces are equivariant:
/// `F(x Rᵀ + t) = F(x) Rᵀ`.
///
/// # Errors
/// As [`grad`](super::grad).
pub fn forces(energy: Tensor, coords: Tensor) -> Result<Tensor, Error> {
    let g = grad(energy, &[coords])?;
    Ok(emit::scale(g[0], -1.0))
}
