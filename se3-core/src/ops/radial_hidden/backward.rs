//! Vector-Jacobian product of [`radial_hidden`](super::radial_hidden()): per network `p`, the
//! hidden layers are recomputed from the op's inputs (nothing is stored by the forward) as
//! `h_p = LNG(LNG(x W0_p; b0_p, g1_p, be1_p) W3_p; b3_p, g4_p, be4_p)` with the fused row
//! kernel [`layer_norm_gelu`](crate::ops::layer_norm_gelu()) and two GEMMs, and that
//! recomputation is differentiated with the cotangent `g[p]`: the LayerNorm + GELU backward of
//! `layer_norm_gelu` (fused, row statistics recomputed), then `dW3_p = h1_p^T dz2`,
//! `dh1 = dz2 W3_p^T`, `dW0_p = x^T dz1`, `dx = sum_p dz1_p W0_p^T`. Every intermediate is
//! `[e, hidden]` per network, as in the forward; the gradients of the stacked weights
//! `[P, ...]` collect each network's slice.

use luminal::prelude::{symbolic::Expression, *};

use crate::autodiff::emit::{copy, dims, plain, Tensor};
use crate::autodiff::gradients;
use crate::layers::graph::{mm, retype, X};
use crate::ops::layer_norm_gelu;
use crate::Error;

/// Network `p` of a stacked `[P, ...]` tensor `t` (plain), as a row-major tensor of `rest`.
fn network(t: Tensor, p: usize, rest: &[Expression]) -> Tensor {
    let mut st = t.shape;
    let mut bounds = vec![(Expression::from(0), Expression::from(i32::MAX)); st.len()];
    bounds[0] = (p.into(), (p + 1).into());
    st.slice(&bounds);
    let c = copy(GraphTensor::from_id(t.id, st, t.graph_ref));
    plain(c.id, rest, t.graph_ref)
}

/// Gradients of the views `[x, w0, b0, g1, be1, w3, b3, g4, be4]` of a `RadialHidden { eps }`
/// node from its gradient buffer `g_id` (`[P, e, hidden]`).
///
/// # Errors
/// `NoGradient` if the number of networks or the hidden width is not a fixed number.
pub(crate) fn vjp(
    inputs: &[Tensor],
    eps: f32,
    g_id: NodeIndex,
    wanted: &[bool],
) -> Result<Vec<Option<Tensor>>, Error> {
    let gref = inputs[0].graph_ref;
    // plain copies of the inputs: the recomputation reads them, and their gradients are those
    // of the op's input views
    let c: Vec<Tensor> = inputs.iter().map(|t| copy(*t)).collect();
    let wd = dims(&c[1]);
    let (Some(np), n_in, hd) = (wd[0].to_usize(), wd[1], wd[2]) else {
        return Err(Error::NoGradient {
            op: "RadialHidden with a run-time number of networks".into(),
        });
    };
    let e = dims(&c[0])[0];
    let g = plain(g_id, &[np.into(), e, hd], gref);
    let x: GraphTensor<(X, X)> = retype(c[0]);
    let mut pairs = Vec::with_capacity(np);
    for p in 0..np {
        let row = |i: usize| -> GraphTensor<(X,)> { retype(network(c[i], p, &[hd])) };
        let w0: GraphTensor<(X, X)> = retype(network(c[1], p, &[n_in, hd]));
        let w3: GraphTensor<(X, X)> = retype(network(c[5], p, &[hd, hd]));
        let h1 = layer_norm_gelu(mm(x, w0), row(2), row(3), row(4), eps);
        let h2 = layer_norm_gelu(mm(h1, w3), row(6), row(7), row(8), eps);
        pairs.push((retype(h2), network(g, p, &[e, hd])));
    }
    let wrt: Vec<Tensor> = c
        .iter()
        .zip(wanted)
        .filter(|(_, &w)| w)
        .map(|(t, _)| *t)
        .collect();
    let mut grads = gradients(&pairs, &wrt)?.into_iter();
    Ok(wanted
        .iter()
        .map(|&w| if w { grads.next() } else { None })
        .collect())
}
