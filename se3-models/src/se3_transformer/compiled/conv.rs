//! ConvSE3 on the graph with the reassociated contraction of se3-core's
//! [`conv_grouped`]: per degree pair, [`PairEdges`] (radial hidden activations and `Kx` on the
//! grouped edges), neighbour sums before the radial network's last layer ([`weighted_sum`]) and
//! attention logits with the query folded into that layer ([`query_logits`]).

use se3_core::layers::conv_grouped::{self, PairEdges as CorePairEdges};
use se3_core::layers::RadialMlp;

use super::ctx::{Ctx, GFeats};
use super::node::{linear, residual};
use super::{unfused, GraphForm};
use crate::se3_transformer::conv::{ConvSe3, Pair};
use crate::Error;
use se3_core::layers::graph::{reshape, T2, T3};

/// One degree pair of a ConvSE3 up to the radial network's last layer: the se3-core
/// [`PairEdges`] (`h`, `Kx`) and the pair's radial network as an se3-core [`RadialMlp`].
pub(crate) struct PairEdges<'p> {
    pub(crate) pair: &'p Pair,
    edges: CorePairEdges,
    radial: std::rc::Rc<RadialMlp>,
}

impl PairEdges<'_> {
    /// The se3-core pair edges (`h`, `Kx`).
    pub(crate) fn edges(&self) -> &CorePairEdges {
        &self.edges
    }

    /// The pair's radial network (float32).
    pub(crate) fn radial(&self) -> &RadialMlp {
        &self.radial
    }
}

/// Per-edge degree-0 messages of a pair with output degree 0 for output channels
/// `c0..c0 + cnt`: `[e, cnt]` ([`conv_grouped::direct_message`]).
pub(crate) fn direct_message(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    c0: usize,
    cnt: usize,
) -> Result<T2, Error> {
    let prefix = ctx.prefix();
    Ok(conv_grouped::direct_message(
        ctx.s, &prefix, &pe.radial, &pe.edges, c0, cnt,
    )?)
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
        let h3 = ctx.radial_hidden(p)?;
        let kb = *ctx
            .basis
            .get(&(p.d_in, p.d_out))
            .ok_or(Error::MissingInput {
                name: "kernel basis",
            })?;
        let xc: T3 = reshape(xl, &[n, p.c_in.into(), (2 * p.d_in + 1).into()]);
        let edges = CorePairEdges::with_hidden_view(p.d_in, p.d_out, xc, ctx.nbr, kb, h3, n, k);
        out.push(PairEdges {
            pair: p,
            edges,
            radial: ctx.radial_net(p)?,
        });
    }
    Ok(out)
}

/// `sum_j a_ij m_ij` for output channels `c0..c0 + cnt` of the degree of `pe`, reassociated
/// ([`conv_grouped::weighted_sum`]): `[n, cnt, 2l + 1]`.
pub(crate) fn weighted_sum(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    a: T2,
    c0: usize,
    cnt: usize,
) -> Result<T3, Error> {
    if ctx.form == GraphForm::Unfused {
        return unfused::weighted_sum(ctx, pe, a, c0, cnt);
    }
    let prefix = ctx.prefix();
    Ok(conv_grouped::weighted_sum(
        ctx.s, &prefix, &pe.radial, &pe.edges, a, c0, cnt,
    )?)
}

/// [`weighted_sum`] for several heads on one fused kernel
/// ([`conv_grouped::weighted_sum_heads`]): `[n, H cnt, 2l + 1]`, head `t` (weights `a[t]`,
/// channels `c0s[t]..`) at channels `t cnt..`.
pub(crate) fn weighted_sum_heads(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    a: &[T2],
    c0s: &[usize],
    cnt: usize,
) -> Result<T3, Error> {
    if ctx.form == GraphForm::Unfused {
        return unfused::weighted_sum_heads(ctx, pe, a, c0s, cnt);
    }
    let prefix = ctx.prefix();
    Ok(conv_grouped::weighted_sum_heads(
        ctx.s, &prefix, &pe.radial, &pe.edges, a, c0s, cnt,
    )?)
}

/// Attention logits of several heads with each query folded into the last radial layer, on one
/// fused kernel
/// ([`conv_grouped::query_logits_heads`]): `[H, n, k]`.
pub(crate) fn query_logits_heads(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    q: &[T3],
    c0s: &[usize],
    cnt: usize,
) -> Result<T3, Error> {
    if ctx.form == GraphForm::Unfused {
        return unfused::query_logits_heads(ctx, pe, q, c0s, cnt);
    }
    let prefix = ctx.prefix();
    Ok(conv_grouped::query_logits_heads(
        ctx.s, &prefix, &pe.radial, &pe.edges, q, c0s, cnt,
    )?)
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
