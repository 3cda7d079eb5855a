//! Vector-Jacobian product of [`grad_scale`](super::grad_scale): `dx = frac · g` (with respect
//! to the input's view; the pass undoes the view).

use luminal::prelude::*;

use crate::autodiff::emit::{dims, plain, scale, Tensor};

/// Gradient of the view `[x]` of a [`GradScale`](super::GradScale) node from its gradient
/// buffer `g_id`.
pub(crate) fn vjp(
    inputs: &[Tensor],
    frac: f32,
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let x = inputs[0];
    let g = plain(g_id, &dims(&x), x.graph_ref);
    vec![wanted[0].then(|| scale(g, frac))]
}
