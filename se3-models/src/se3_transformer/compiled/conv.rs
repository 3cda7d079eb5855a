//! ConvSE3 on the graph with the reassociated contraction: per degree pair, the radial hidden
//! activations `h` (`[n, k, 128]`) and `Kx` (`[n, k, F]`, `F = (p, c, f)`: output order `p`, input
//! channel `c`, basis index `f`, `Kx[f, c, p] = sum_q K_f[p, q] x_j[c, q]`); neighbour sums of
//! `a_ij h_ij (x) Kx_ij` per node before the radial network's last layer ([`weighted_sum`]), and
//! attention logits with the query folded into that layer ([`query_logits`]).

use luminal::prelude::*;

use super::ctx::{transpose, Ctx, GFeats};
use super::node::{linear, residual};
use super::tensor::{
    bmm, bmm_shared, expand_at, mm, permute, reshape, retype, sum_axis, T1, T2, T3, T4, T5, X,
};
use crate::se3_transformer::conv::{ConvSe3, Pair};
use crate::se3_transformer::radial::RADIAL_HIDDEN;
use crate::Error;

/// Per-edge degree-0 messages of a pair with output degree 0, formed directly (radial weights per
/// edge), for output channels `c0..c0 + cnt`: `[e, cnt]`. Used where a per-edge rotation sits
/// between the message and the neighbour sum (rotary embeddings).
pub(crate) fn direct_message(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    c0: usize,
    cnt: usize,
) -> Result<T2, Error> {
    let p = pe.pair;
    let e = ctx.e;
    let cf = pe.width; // d_out = 0: one basis function, one output component
    let last = &p.radial.l6;
    let hd = last.n_in;
    let mut w = vec![0.0; hd * cnt * cf];
    let mut b = vec![0.0; cnt * cf];
    for o in 0..cnt {
        for j in 0..cf {
            let row = (c0 + o) * cf + j;
            for h in 0..hd {
                w[h * cnt * cf + o * cf + j] = last.w[row * hd + h];
            }
            b[o * cf + j] = last.b[row];
        }
    }
    let wt: T2 = ctx.constant(&w, &[hd, cnt * cf])?;
    let bt: T1 = ctx.constant(&b, &[cnt * cf])?;
    let h2: T2 = reshape(pe.h, &[e, hd.into()]);
    let r = mm(h2, wt) + expand_at::<_, (X, X)>(bt, 0, e);
    let r3: T3 = reshape(r, &[e, cnt.into(), cf.into()]);
    let kx2: T2 = reshape(pe.kx, &[e, cf.into()]);
    Ok(sum_axis(r3 * expand_at::<_, (X, X, X)>(kx2, 1, cnt), 2))
}

/// One degree pair of a ConvSE3 evaluated up to the radial network's last layer: the hidden
/// activations `h` (`[n, k, 128]`) and `Kx` (`[n, k, F]`).
pub(crate) struct PairEdges<'p> {
    pair: &'p Pair,
    h: T3,
    kx: T3,
    width: usize,
}

/// `h` and `Kx` of every pair of `conv` (optionally only those with output degree `only`).
pub(crate) fn pair_edges<'p>(
    ctx: &mut Ctx<'_>,
    conv: &'p ConvSe3,
    x: &GFeats,
    only: Option<usize>,
) -> Result<Vec<PairEdges<'p>>, Error> {
    let (n, k) = (ctx.n, ctx.k);
    let mut out = Vec::new();
    for p in conv
        .pairs
        .iter()
        .filter(|p| only.is_none_or(|d| d == p.d_out))
    {
        let xl = *x.get(&p.d_in).ok_or(Error::MissingInput {
            name: "features of a degree of fiber_in",
        })?;
        let (mi, mo) = (2 * p.d_in + 1, 2 * p.d_out + 1);
        let nf = 2 * p.d_in.min(p.d_out) + 1;
        let h3 = ctx.radial_hidden(p)?;
        // Kx[e, p, c, f] = sum_q K[e, p, q, f] x_j[e, c, q]
        let kb = *ctx
            .basis
            .get(&(p.d_in, p.d_out))
            .ok_or(Error::MissingInput {
                name: "kernel basis",
            })?;
        let xc: T3 = reshape(xl, &[n, p.c_in.into(), mi.into()]);
        let xj: T3 = retype(se3_core::ops::gather3::<X, X, X, Dyn<'e'>>(xc, ctx.nbr));
        let k5: T5 = expand_at(kb, 2, p.c_in);
        let x4: T4 = expand_at(xj, 1, mo);
        let x5: T5 = expand_at(x4, 4, nf);
        let kx: T4 = sum_axis(k5 * x5, 3);
        let width = mo * p.c_in * nf;
        let kx3: T3 = reshape(kx, &[n, k, width.into()]);
        out.push(PairEdges {
            pair: p,
            h: h3,
            kx: kx3,
            width,
        });
    }
    Ok(out)
}

/// The last radial layer of `p` for output channels `c0..c0 + cnt`, as `[(c, f, h), o]` and its
/// bias as `[(c, f), o]`.
pub(crate) fn last_layer(p: &Pair, c0: usize, cnt: usize) -> (Vec<f64>, Vec<f64>) {
    let nf = 2 * p.d_in.min(p.d_out) + 1;
    let last = &p.radial.l6;
    let hd = last.n_in;
    let cf = p.c_in * nf;
    let mut w = vec![0.0; cf * hd * cnt];
    let mut b = vec![0.0; cf * cnt];
    for o in 0..cnt {
        for j in 0..cf {
            let row = (c0 + o) * cf + j;
            for h in 0..hd {
                w[(j * hd + h) * cnt + o] = last.w[row * hd + h];
            }
            b[j * cnt + o] = last.b[row];
        }
    }
    (w, b)
}

/// `sum_j a_ij m_ij` for output channels `c0..c0 + cnt` of the degree of `pe`, reassociated:
/// `A_i = sum_j a_ij h_ij (x) Kx_ij` per node, then the last radial layer; `[n, cnt, 2l + 1]`.
pub(crate) fn weighted_sum(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    a: T2,
    c0: usize,
    cnt: usize,
) -> Result<T3, Error> {
    let p = pe.pair;
    let n = ctx.n;
    let mo = 2 * p.d_out + 1;
    let nf = 2 * p.d_in.min(p.d_out) + 1;
    let cf = p.c_in * nf;
    let (w, b) = last_layer(p, c0, cnt);
    let wt: T2 = ctx.constant(&w, &[cf * RADIAL_HIDDEN, cnt])?;
    let bt: T2 = ctx.constant(&b, &[cf, cnt])?;
    // the weights go on the 128 hidden values (fewer than the F entries of Kx for most pairs)
    let ah = pe.h * expand_at::<_, (X, X, X)>(a, 2, RADIAL_HIDDEN);
    let kxt = permute(pe.kx, &[0, 2, 1]); // [n, F, k]
                                          // [n, F, 128] = Kx^T (a h) per node, F = (p, c, f): viewed as [n, p, (c, f, h)] without a copy
    let acc = bmm(kxt, ah);
    let acc3: T3 = reshape(acc, &[n, mo.into(), (cf * RADIAL_HIDDEN).into()]);
    let a3: T3 = reshape(a, &[n, ctx.k, 1.into()]);
    let bsum = bmm(kxt, a3); // [n, F, 1]
    let b3: T3 = reshape(bsum, &[n, mo.into(), cf.into()]);
    let y = bmm_shared(acc3, wt) + bmm_shared(b3, bt); // [n, mo, cnt]
    Ok(permute(y, &[0, 2, 1]))
}

/// `sum_{o,p} q_i[o, p] m_ij[c0 + o, p]` per edge, the query folded into the last radial layer:
/// `[n, k]`.
pub(crate) fn query_logits(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    q: T3,
    c0: usize,
    cnt: usize,
) -> Result<T2, Error> {
    let p = pe.pair;
    let n = ctx.n;
    let nf = 2 * p.d_in.min(p.d_out) + 1;
    let cf = p.c_in * nf;
    let (w, b) = last_layer(p, c0, cnt);
    // [o, (c, f, h)] and [o, (c, f)]
    let wt: T2 = ctx.constant(
        &transpose(&w, cf * RADIAL_HIDDEN, cnt),
        &[cnt, cf * RADIAL_HIDDEN],
    )?;
    let bt: T2 = ctx.constant(&transpose(&b, cf, cnt), &[cnt, cf])?;
    let qp = permute(q, &[0, 2, 1]); // [n, p, o]
    let folded: T3 = reshape(
        bmm_shared(qp, wt),
        &[n, pe.width.into(), RADIAL_HIDDEN.into()],
    ); // [n, F, 128]
    let t = bmm(pe.kx, folded); // [n, k, 128]
    let main: T2 = sum_axis(t * pe.h, 2);
    let fb: T3 = reshape(bmm_shared(qp, bt), &[n, pe.width.into(), 1.into()]); // [n, F, 1]
    let bias: T2 = reshape(bmm(pe.kx, fb), &[n, ctx.k]);
    Ok(main + bias)
}

/// ConvSE3 with mean pooling over valid neighbours and self-interaction.
pub(crate) fn conv_pooled(ctx: &mut Ctx<'_>, conv: &ConvSe3, x: &GFeats) -> Result<GFeats, Error> {
    let pes = pair_edges(ctx, conv, x, None)?;
    let mut out = GFeats::new();
    for &(l, c) in &conv.fout {
        let mut acc: Option<T3> = None;
        for pe in pes.iter().filter(|pe| pe.pair.d_out == l) {
            let y = weighted_sum(ctx, pe, ctx.pool_w, 0, c)?;
            acc = Some(match acc {
                Some(a) => a + y,
                None => y,
            });
        }
        if let Some(a) = acc {
            out.insert(l, a);
        }
    }
    match &conv.self_interact {
        Some(si) => {
            let s = linear(ctx, si, x, None)?;
            Ok(residual(&out, &s))
        }
        None => Ok(out),
    }
}
