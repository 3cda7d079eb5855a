//! The EGNN trunk of `SE3Transformer(use_egnn = True)` on the graph.

use luminal::prelude::*;

use super::ctx::{Ctx, GFeats};
use super::node::{dense, silu};
use crate::Error;
use se3_core::layers::graph::{
    dims, expand_at, layer_norm, mm, reshape, retype, sum_axis, T1, T2, T3, T4, X,
};

/// One EGNN layer of `SE3Transformer(use_egnn = True)` (as the oracle's `EgnnLayer`): edge MLP on
/// `[x_i, x_j, |h_i - h_j| per channel, |r_ij|, edge features]` over the self slot and the `k`
/// neighbours, messages summed over valid slots into the node MLP (residual), higher degrees
/// moved along `h_i - h_j` (every neighbour slot, as the library) and gated by the new nodes.
pub(crate) fn egnn_layer(
    ctx: &mut Ctx<'_>,
    layer: &crate::se3_transformer::egnn::EgnnLayer,
    x: &GFeats,
    dist: T2,
    edge_feat: Option<T2>,
) -> Result<GFeats, Error> {
    let (n, k, e) = (ctx.n, ctx.k, ctx.e);
    let x0 = *x.get(&0).ok_or(Error::MissingInput {
        name: "degree-0 features",
    })?;
    let d0 = dims(x0)[1].to_usize().unwrap_or(0);
    let nodes: T2 = reshape(x0, &[n, d0.into()]);
    let xi: T2 = reshape(expand_at::<_, (X, X, X)>(nodes, 1, k), &[e, d0.into()]);
    let xj: T2 = retype(se3_core::ops::gather::<X, X, Dyn<'e'>>(nodes, ctx.nbr));
    // edge MLP first layer as a sum over the blocks of its concatenated input
    let mut off = 0;
    let mut h_edge = dense(ctx, &layer.edge0, xi, Some((0, d0)), true)?;
    let h_self_a = dense(ctx, &layer.edge0, nodes, Some((0, d0)), true)?;
    h_edge += dense(ctx, &layer.edge0, xj, Some((d0, d0)), false)?;
    let h_self = h_self_a + dense(ctx, &layer.edge0, nodes, Some((d0, d0)), false)?;
    off += 2 * d0;
    let mut rels: Vec<(usize, usize, T3, T2)> = Vec::new();
    for &(l, c) in &layer.htypes {
        let hl = *x.get(&l).ok_or(Error::MissingInput {
            name: "higher-degree features",
        })?;
        let m = 2 * l + 1;
        let hc: T3 = reshape(hl, &[n, c.into(), m.into()]);
        let hi: T3 = reshape(
            expand_at::<_, (X, X, X, X)>(hc, 1, k),
            &[e, c.into(), m.into()],
        );
        let hj: T3 = retype(se3_core::ops::gather3::<X, X, X, Dyn<'e'>>(hc, ctx.nbr));
        let rel = hi - hj;
        let norm: T2 = sum_axis::<_, (X, X)>(rel * rel, 2).sqrt();
        h_edge += dense(ctx, &layer.edge0, norm, Some((off, c)), false)?;
        off += c;
        rels.push((l, c, rel, norm));
    }
    h_edge += dense(ctx, &layer.edge0, dist, Some((off, 1)), false)?;
    off += 1;
    if let Some(ef) = edge_feat {
        let w = dims(ef)[1].to_usize().unwrap_or(0);
        h_edge += dense(ctx, &layer.edge0, ef, Some((off, w)), false)?;
    }
    let m_edge = silu(dense(ctx, &layer.edge2, silu(h_edge), None, true)?); // [e, hidden]
    let m_self = silu(dense(ctx, &layer.edge2, silu(h_self), None, true)?); // [n, hidden]
    let hidden = layer.edge2.n_out;
    let m3: T3 = reshape(m_edge, &[n, k, hidden.into()]);
    let valid3: T3 = expand_at(ctx.valid, 2, hidden);
    let m_i: T2 = sum_axis::<_, (X, X)>(m3 * valid3, 1) + m_self;
    // higher-degree updates from the neighbour slots (the self slot has h_i - h_i = 0); without
    // higher degrees the htypes MLP has no outputs (a zero-width weight) and is not built
    let w = if layer.htypes.is_empty() {
        None
    } else {
        let w1 = silu(dense(ctx, &layer.hmlp0, m_edge, None, true)?);
        let mut w = dense(ctx, &layer.hmlp2, w1, None, true)?; // [e, hdims]
        if let Some(cv) = layer.clamp {
            // (luminal 0.2's `clip(min, max)` applies the bounds the wrong way round)
            w = w.max_f32(-cv as f32).min_f32(cv as f32);
        }
        Some(w)
    };
    // node update
    let gamma: T1 = ctx.constant(&layer.node_norm.w, &[d0])?;
    let beta: T1 = ctx.constant(&layer.node_norm.b, &[d0])?;
    let normed = layer_norm(nodes, gamma, beta, 1e-5);
    let h = dense(ctx, &layer.node0, normed, Some((0, d0)), true)?
        + dense(ctx, &layer.node0, m_i, Some((d0, hidden)), false)?;
    let new_nodes = dense(ctx, &layer.node2, silu(h), None, true)? + nodes;
    let mut out = GFeats::new();
    let mut woff = 0;
    for (l, c, rel, norm) in rels {
        let Some(w) = w else { break };
        let m = 2 * l + 1;
        let (scale, bias) = layer.htype_norms.get(&l).ok_or(Error::MissingInput {
            name: "htype norms",
        })?;
        let st: T1 = ctx.constant(scale, &[c])?;
        let bt: T1 = ctx.constant(bias, &[c])?;
        let f = norm * expand_at::<_, (X, X)>(st, 0, e) + expand_at::<_, (X, X)>(bt, 0, e);
        // w columns woff..woff + c, as a product with a selection matrix (no slicing)
        let hdims = layer.hmlp2.n_out;
        let mut sel = vec![0.0; hdims * c];
        for ch in 0..c {
            sel[(woff + ch) * c + ch] = 1.0;
        }
        let selt: T2 = ctx.constant(&sel, &[hdims, c])?;
        let wl = mm(w, selt); // [e, c]
        let coef = f * wl / norm.max_f32(1e-8); // [e, c]
        let upd = rel * expand_at::<_, (X, X, X)>(coef, 2, m); // [e, c, m]
        let upd4: T4 = reshape(upd, &[n, k, c.into(), m.into()]);
        let upd_i: T3 = sum_axis(upd4, 1); // [n, c, m]
        let gate = dense(ctx, &layer.htype_gating[&l], new_nodes, None, true)?.sigmoid(); // [n, c]
        let hl = *x.get(&l).ok_or(Error::MissingInput {
            name: "higher-degree features",
        })?;
        out.insert(l, (hl + upd_i) * expand_at::<_, (X, X, X)>(gate, 2, m));
        woff += c;
    }
    out.insert(0, reshape(new_nodes, &[n, d0.into(), 1.into()]));
    Ok(out)
}
