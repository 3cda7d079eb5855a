//! The edge contractions of `conv.rs` in primitive form, for the training build
//! ([`GraphForm::Unfused`](super::GraphForm)): per-edge radial weights and messages from luminal
//! primitives, gather and reshapes, every one of which has a vector-Jacobian product in se3-core's
//! reverse pass (the fused `edge_contract` kernels get theirs separately).
//!
//! Per degree pair and output channels `c0 .. c0 + cnt`: the last radial layer per edge
//! `R[e, o, j] = sum_h h[e, h] W[(c0 + o) cf + j, h] + b[(c0 + o) cf + j]` (`j = c nf + f`, the
//! network's `(o, c, f)` output order), the message `m[e, o, p] = sum_j R[e, o, j] Kx[e, p, j]`
//! (`Kx` of se3-core's `PairEdges`, `(p, c, f)` order), and from it the neighbour sums
//! `sum_kk a[i, kk] m[i k + kk]` and the attention logits `sum_{o,p} q[i, o, p] m[i k + kk, o, p]`:
//! the same values as the reassociated kernels, without their reassociation.

use luminal::prelude::{symbolic::Expression, *};

use super::conv::PairEdges;
use super::ctx::Ctx;
use crate::se3_transformer::radial::RADIAL_HIDDEN;
use crate::Error;
use se3_core::layers::graph::{
    bmm, dims, expand_at, mm, permute, reshape, sum_axis, T1, T2, T3, X,
};

/// Per-edge messages of the pair for output channels `c0 .. c0 + cnt`: `[e, cnt, 2 d_out + 1]`.
///
/// # Errors
/// Weight errors of the session.
pub(crate) fn messages(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    c0: usize,
    cnt: usize,
) -> Result<T3, Error> {
    let p = pe.pair;
    let e = ctx.e;
    let nf = 2 * p.d_in.min(p.d_out) + 1;
    let cf = p.c_in * nf;
    let mo = 2 * p.d_out + 1;
    let hd = RADIAL_HIDDEN;
    let (lw, lb) = pe.radial().last_layer();
    let mut w = vec![0.0f64; hd * cnt * cf];
    let mut b = vec![0.0f64; cnt * cf];
    for o in 0..cnt {
        for j in 0..cf {
            let row = (c0 + o) * cf + j;
            for h in 0..hd {
                w[h * cnt * cf + o * cf + j] = f64::from(lw[row * hd + h]);
            }
            b[o * cf + j] = f64::from(lb[row]);
        }
    }
    let wt: T2 = ctx.constant(&w, &[hd, cnt * cf])?;
    let bt: T1 = ctx.constant(&b, &[cnt * cf])?;
    let h2: T2 = reshape(pe.edges().h, &[e, hd.into()]);
    let r = mm(h2, wt) + expand_at::<_, (X, X)>(bt, 0, e);
    let r3: T3 = reshape(r, &[e, cnt.into(), cf.into()]);
    let kx3: T3 = reshape(pe.edges().kx, &[e, mo.into(), cf.into()]);
    Ok(bmm(r3, permute(kx3, &[0, 2, 1])))
}

/// `sum_kk a[i, kk] m[i k + kk]` for output channels `c0 .. c0 + cnt`: `[n, cnt, 2 d_out + 1]`.
///
/// # Errors
/// Weight errors of the session.
pub(crate) fn weighted_sum(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    a: T2,
    c0: usize,
    cnt: usize,
) -> Result<T3, Error> {
    let (n, k) = (ctx.n, ctx.k);
    let mo = 2 * pe.pair.d_out + 1;
    let m = messages(ctx, pe, c0, cnt)?;
    let m3: T3 = reshape(m, &[n, k, (cnt * mo).into()]);
    let a3: T3 = expand_at(a, 2, cnt * mo);
    let s: T2 = sum_axis(m3 * a3, 1);
    Ok(reshape(s, &[n, cnt.into(), mo.into()]))
}

/// [`weighted_sum`] of several heads side by side: `[n, H cnt, 2 d_out + 1]`, head `t` (weights
/// `a[t]`, channels `c0s[t] ..`) at channels `t cnt ..`.
///
/// # Errors
/// Weight errors of the session.
pub(crate) fn weighted_sum_heads(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    a: &[T2],
    c0s: &[usize],
    cnt: usize,
) -> Result<T3, Error> {
    let mut parts = Vec::with_capacity(a.len());
    for (&at, &c0) in a.iter().zip(c0s) {
        parts.push(weighted_sum(ctx, pe, at, c0, cnt)?);
    }
    concat(&parts, 1)
}

/// Attention logits of several heads, `sum_{o,p} q[t][i, o, p] m[i k + kk, c0s[t] + o, p]`:
/// `[H, n, k]`.
///
/// # Errors
/// Weight errors of the session.
pub(crate) fn query_logits_heads(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    q: &[T3],
    c0s: &[usize],
    cnt: usize,
) -> Result<T3, Error> {
    let (n, k) = (ctx.n, ctx.k);
    let mo = 2 * pe.pair.d_out + 1;
    let mut parts = Vec::with_capacity(q.len());
    for (&qt, &c0) in q.iter().zip(c0s) {
        let m = messages(ctx, pe, c0, cnt)?;
        let m3: T3 = reshape(m, &[n, k, (cnt * mo).into()]);
        let qf: T2 = reshape(qt, &[n, (cnt * mo).into()]);
        let lg: T2 = sum_axis(m3 * expand_at::<_, (X, X, X)>(qf, 1, k), 2);
        parts.push(reshape::<_, (X, X, X)>(lg, &[1.into(), n, k]));
    }
    concat(&parts, 0)
}

/// `parts` (same shape but for `axis`) concatenated along `axis`: each zero-padded to the full
/// size and the views added.
///
/// # Errors
/// `NotCompiled` for no parts (a broken build invariant).
fn concat(parts: &[T3], axis: usize) -> Result<T3, Error> {
    let first = parts.first().ok_or(Error::NotCompiled {
        option: "a concatenation of no tensors",
    })?;
    if parts.len() == 1 {
        return Ok(*first);
    }
    let widths: Vec<Expression> = parts.iter().map(|t| dims(*t)[axis]).collect();
    let total = widths.iter().fold(Expression::from(0), |a, b| a + *b);
    let mut full = dims(*first);
    full[axis] = total;
    let mut before = Expression::from(0);
    let mut acc: Option<T3> = None;
    for (t, w) in parts.iter().zip(&widths) {
        let plain: T3 = reshape(*t, &dims(*t));
        let mut pads = [(Expression::from(0), Expression::from(0)); 3];
        pads[axis] = (before, total - before - *w);
        let mut st = plain.shape;
        st.pad(&pads);
        let padded: T3 = GraphTensor::from_id(plain.id, st, plain.graph_ref);
        before = before + *w;
        acc = Some(match acc {
            None => padded,
            Some(a) => {
                let id = a
                    .graph()
                    .add_op(luminal::op::Add)
                    .input(a.id, 0, a.shape)
                    .input(padded.id, 0, padded.shape)
                    .finish();
                GraphTensor::from_id(id, ShapeTracker::new(&full), a.graph_ref)
            }
        });
    }
    acc.ok_or(Error::NotCompiled {
        option: "a concatenation of no tensors",
    })
}
