//! Vector-neuron (VN) layers (Deng et al. 2021, as used by the VN-Transformer of Assaad et
//! al. 2023) as graph builders.
//!
//! A VN feature is a list of `c` channels, each a `k`-component vector. On the graph it is one
//! tensor `[b, n, k, c]` ([`VnTensor`]): batch, nodes, components, channels (channels last, so
//! a channel mix is one matrix product over the last axis). PyTorch's VN-transformer stores the
//! same values as `(b, n, c, k)`.
//!
//! Every layer mixes channels only, with weights `(out, in)` in the checkpoint layout of
//! VN-transformer 0.1.0, and acts on each component vector through norms and inner products,
//! so rotating the first three components by `R` (a block rotation `diag(R, I)` of the `k`
//! components) commutes with every layer: `f(x Q^T) = f(x) Q^T` for any orthogonal `Q` on the
//! component axis. The exception is the quasi-equivariant bias of [`VnLinear`] when
//! `bias_epsilon > 0`.
//!
//! | layer               | formula (per node, channels `c`, components `k`)                          |
//! |---------------------|---------------------------------------------------------------------------|
//! | [`VnLinear`]        | `y_o = sum_i W[o, i] x_i (+ eps * b_o / |b|)`                             |
//! | [`VnRelu`]          | `q = W x`, `u = U x`; `y = q` where `<q, u> >= 0`, else `q - <q, u/|u|> u` |
//! | [`VnLayerNorm`]     | `y_c = x_c / max(|x_c|, 1e-6) * LayerNorm_c(|x|)_c`                       |
//! | [`VnAttention`]     | softmax attention of flattened `(d, k)` head vectors, key mask            |
//! | [`VnFeedForward`]   | `VnLinear -> VnRelu -> VnLinear`                                          |
//! | [`VnInvariant`]     | invariant readout `sum_{c, i} x[c, i] m(x)[i, o]`                         |

mod attention;
mod feed_forward;
mod invariant;
mod layer_norm;
mod linear;
mod relu;

pub use attention::{VnAttention, VnAttentionKind};
pub use feed_forward::VnFeedForward;
pub use invariant::VnInvariant;
pub use layer_norm::VnLayerNorm;
pub use linear::VnLinear;
pub use relu::VnRelu;

use luminal::prelude::{symbolic::Expression, *};

use super::graph::{add_views, dims, expand_at, mm, reshape, transpose, Param, X};
use crate::exec::Session;
use crate::Error;

/// VN features on a graph: `[batch, nodes, components, channels]`.
pub type VnTensor = GraphTensor<(X, X, X, X)>;

/// Coordinates `[b, n, 3]` and optional invariant features `[b, n, F]` as one VN channel of
/// `3 + F` components, `[b, n, 3 + F, 1]` (the library's `cat((coors, feats), -1)` followed by
/// `'... c -> ... 1 c'`). Rotating the coordinates rotates the first three components.
pub fn lift_points(
    coors: GraphTensor<(X, X, X)>,
    feats: Option<GraphTensor<(X, X, X)>>,
) -> VnTensor {
    let d = dims(coors);
    let x = match feats {
        None => coors.contiguous(),
        Some(f) => {
            let w = dims(f)[2];
            let zero: Expression = 0.into();
            let a: GraphTensor<(X, X, X)> = coors
                .contiguous()
                .pad::<(X, X, X), Expression, Expression>(&[(zero, zero), (zero, zero), (zero, w)]);
            let b: GraphTensor<(X, X, X)> =
                f.contiguous().pad::<(X, X, X), Expression, Expression>(&[
                    (zero, zero),
                    (zero, zero),
                    (d[2], zero),
                ]);
            add_views(a, b)
        }
    };
    let k = dims(x)[2];
    reshape(x, &[d[0], d[1], k, 1.into()])
}

/// `y[.., o] = sum_i w[o, i] x[.., i]` over the channel (last) axis of `x`, `w` declared as the
/// session weight `<prefix><key of w>`.
fn mix_channels(s: &mut Session, prefix: &str, w: &Param, x: VnTensor) -> Result<VnTensor, Error> {
    let wt: GraphTensor<(X, X)> = w.declare(s, prefix)?;
    Ok(mix_by(wt, x))
}

/// `y[.., o] = sum_i w[o, i] x[.., i]` for a graph matrix `w` `(out, in)`; with one input
/// channel, the broadcast product `x[..] w[o, 0]` (as a matrix product its unit inner axis
/// would be walked element by element).
fn mix_by(w: GraphTensor<(X, X)>, x: VnTensor) -> VnTensor {
    let d = dims(x);
    let out = dims(w)[0];
    let rows = d[0] * d[1] * d[2];
    if d[3].to_usize() == Some(1) {
        let xs: GraphTensor<(X,)> = reshape(x, &[rows]);
        let ws: GraphTensor<(X,)> = reshape(w, &[out]);
        let y: GraphTensor<(X, X)> =
            expand_at::<_, (X, X)>(xs, 1, out) * expand_at::<_, (X, X)>(ws, 0, rows);
        return reshape(y, &[d[0], d[1], d[2], out]);
    }
    let flat: GraphTensor<(X, X)> = reshape(x, &[rows, d[3]]);
    let y = mm(flat, transpose(w));
    reshape(y, &[d[0], d[1], d[2], out])
}

/// `|x|` over the component axis: `[b, n, k, c] -> [b, n, c]`.
fn component_norms(x: VnTensor) -> GraphTensor<(X, X, X)> {
    (x * x).sum_reduce::<(X, X, X), Axis<2>>().sqrt()
}

/// `[b, n, c]` broadcast along the component axis to `[b, n, k, c]`.
fn per_channel(t: GraphTensor<(X, X, X)>, k: Expression) -> VnTensor {
    expand_at(t, 2, k)
}

/// Loads `<prefix><key>` of `shape` and keeps the key relative to `prefix`.
fn load_param(
    src: &mut dyn super::graph::ParamSource,
    prefix: &str,
    key: &str,
    shape: Vec<usize>,
) -> Result<Param, Error> {
    let mut p = Param::load(src, format!("{prefix}{key}"), shape)?;
    p.key = key.to_string();
    Ok(p)
}

#[cfg(test)]
mod tests;
