//! AttentionSE3 / OneHeadedKVAttentionSE3 on the graph: per degree and head, logits of the
//! neighbours (conv keys with the query folded in, or gathered linear keys), of the self key, the
//! null key and the global keys; one softmax over all slots (se3-core's [`slot_softmax`]);
//! values reassociated. Rotary
//! embeddings (degree 0) rotate keys and values per edge, so that degree forms its messages per
//! edge.

use luminal::prelude::{symbolic::Expression, *};

use super::conv::{direct_message, pair_edges, query_logits_heads, weighted_sum_heads};
use super::ctx::{Ctx, GFeats};
use super::node::{columns, linear, linear_rows};
use crate::se3_transformer::attention::{AttentionSe3, KeyProj};
use crate::se3_transformer::conv::ConvSe3;
use crate::Error;
use se3_core::layers::graph::{
    bmm, channel_slice, expand_at, mm, permute, reshape, retype, sum_axis, T1, T2, T3, X,
};
use se3_core::layers::{slot_softmax, RotaryAngles, SlotLogits};

/// `t cos + rotate_half(t) sin` on rows of one head `[rows, dh]` (se3-core's
/// [`RotaryAngles::rotate`] with one head).
fn rotate(r: &RotaryAngles, t: T2, cos: T2, sin: T2) -> T2 {
    let d = se3_core::layers::graph::dims(t);
    let t3: T3 = reshape(t, &[d[0], d[1], 1.into()]);
    reshape(r.rotate(t3, cos, sin, 1), &[d[0], d[1]])
}

/// `sum_{o,p} a[n, o, p] b[n, o, p]`: `[n]`.
pub(crate) fn inner(a: T3, b: T3) -> T1 {
    let s: T2 = sum_axis(a * b, 2);
    sum_axis(s, 1)
}

/// AttentionSE3 / OneHeadedKVAttentionSE3 (no rotary embeddings): per degree and head, logits of
/// the neighbours (conv keys with the query folded in, or gathered linear keys), of the self key,
/// the null key and the global keys; one softmax; values reassociated.
pub(crate) fn attention(
    ctx: &mut Ctx<'_>,
    att: &AttentionSe3,
    x: &GFeats,
) -> Result<GFeats, Error> {
    let o = att.o;
    let (h, dh) = (o.heads, o.dim_head);
    let scale = (dh as f32).powf(-0.5);
    let (n, k) = (ctx.n, ctx.k);
    let key_conv: Option<&ConvSe3> = match &att.to_k {
        KeyProj::Conv(c) => Some(c),
        KeyProj::Tied => Some(&att.to_v),
        KeyProj::Linear(_) => None,
    };
    let mut out = GFeats::new();
    for (&l, _) in x.iter() {
        let m = 2 * l + 1;
        let vpes = pair_edges(ctx, &att.to_v, x, Some(l))?;
        let kpes = match (key_conv, &att.to_k) {
            (Some(c), KeyProj::Conv(_)) => pair_edges(ctx, c, x, Some(l))?,
            _ => Vec::new(),
        };
        let rot = if l == 0 { ctx.rotary } else { None };
        let kcs: Vec<usize> = (0..h)
            .map(|hh| if o.one_headed_kv { 0 } else { hh * dh })
            .collect();
        // queries of every head
        let mut qs: Vec<T3> = Vec::with_capacity(h);
        for hh in 0..h {
            let q = *linear(ctx, &att.to_q, x, Some((hh * dh, dh)))?
                .get(&l)
                .ok_or(Error::MissingInput { name: "query" })?;
            qs.push(match rot {
                Some(r) => {
                    let qf: T2 = reshape(q, &[n, dh.into()]);
                    reshape(
                        rotate(&r, qf, r.node_cos, r.node_sin),
                        &[n, dh.into(), 1.into()],
                    )
                }
                None => q,
            });
        }
        // neighbour logits of every head from conv keys: one fused kernel per degree pair
        let conv_keys = match &att.to_k {
            KeyProj::Tied => Some(&vpes),
            KeyProj::Conv(_) => Some(&kpes),
            KeyProj::Linear(_) => None,
        };
        let mut nl_all: Option<T3> = None;
        if let (None, Some(pes)) = (rot, conv_keys) {
            for pe in pes {
                let lg = query_logits_heads(ctx, pe, &qs, &kcs, dh)?;
                nl_all = Some(match nl_all {
                    Some(a) => a + lg,
                    None => lg,
                });
            }
        }
        let mut heads: Vec<HeadWeights> = Vec::with_capacity(h);
        for (hh, &q) in qs.iter().enumerate() {
            let kc = kcs[hh];
            // neighbour logits
            let nl: Option<T2>;
            match &att.to_k {
                _ if rot.is_some() => {
                    let r = rot.ok_or(Error::MissingInput { name: "rotary" })?;
                    let keys: T2 = match &att.to_k {
                        KeyProj::Linear(lin) => {
                            let kl = *linear(ctx, lin, x, Some((kc, dh)))?
                                .get(&l)
                                .ok_or(Error::MissingInput { name: "keys" })?;
                            let kflat: T2 = reshape(kl, &[n, dh.into()]);
                            retype(se3_core::ops::gather::<X, X, Dyn<'e'>>(kflat, ctx.nbr))
                        }
                        _ => {
                            let pes = if matches!(att.to_k, KeyProj::Tied) {
                                &vpes
                            } else {
                                &kpes
                            };
                            let mut acc: Option<T2> = None;
                            for pe in pes {
                                let mk = direct_message(ctx, pe, kc, dh)?;
                                acc = Some(match acc {
                                    Some(a) => a + mk,
                                    None => mk,
                                });
                            }
                            acc.ok_or(Error::MissingInput { name: "keys" })?
                        }
                    };
                    let kr = rotate(&r, keys, r.edge_cos, r.edge_sin);
                    let k3: T3 = reshape(kr, &[n, k, dh.into()]);
                    let qf: T2 = reshape(q, &[n, dh.into()]);
                    nl = Some(sum_axis(k3 * expand_at::<_, (X, X, X)>(qf, 1, k), 2));
                }
                KeyProj::Linear(lin) => {
                    let kl = *linear(ctx, lin, x, Some((kc, dh)))?
                        .get(&l)
                        .ok_or(Error::MissingInput { name: "keys" })?;
                    let kflat: T2 = reshape(kl, &[n, (dh * m).into()]);
                    let kj: T2 = retype(se3_core::ops::gather::<X, X, Dyn<'e'>>(kflat, ctx.nbr));
                    let kj3: T3 = reshape(kj, &[n, k, (dh * m).into()]);
                    let qf: T2 = reshape(q, &[n, (dh * m).into()]);
                    nl = Some(sum_axis(kj3 * expand_at::<_, (X, X, X)>(qf, 1, k), 2));
                }
                _ => {
                    nl = nl_all.map(|t| slice_rows(t, hh, n, k));
                }
            }
            let nl = nl.ok_or(Error::MissingInput { name: "keys" })? * scale;
            // single slots (null / self: logits [n], values [n, dh, m]) and global slots
            // (logits [n, g], values [g, dh])
            let (mut single_logits, mut single_values): (Vec<T1>, Vec<T3>) = (vec![], vec![]);
            let mut global: Option<(T2, T2)> = None;
            if let (Some((gk, gv)), 0, Some(gf)) = (&att.global_kv, l, ctx.global) {
                let wk = gk.weights.get(&0).ok_or(Error::MissingInput {
                    name: "global keys",
                })?;
                let wv = gv.weights.get(&0).ok_or(Error::MissingInput {
                    name: "global values",
                })?;
                let wkt: T2 = ctx.constant(&columns(wk, kc, dh), &[wk.rows, dh])?;
                let wvt: T2 = ctx.constant(&columns(wv, kc, dh), &[wv.rows, dh])?;
                let keys = mm(gf, wkt); // [g, dh]
                let vals = mm(gf, wvt);
                let qf: T2 = reshape(q, &[n, dh.into()]);
                let gl = mm(qf, permute(keys, &[1, 0])) * scale; // [n, g]
                global = Some((gl, vals));
            }
            if o.use_null_kv {
                let nk = att
                    .null_k
                    .get(&l)
                    .ok_or(Error::MissingInput { name: "null keys" })?;
                let nv = att.null_v.get(&l).ok_or(Error::MissingInput {
                    name: "null values",
                })?;
                let nkt: T2 = ctx.constant(&nk[kc * m..(kc + dh) * m], &[dh, m])?;
                let nvt: T2 = ctx.constant(&nv[kc * m..(kc + dh) * m], &[dh, m])?;
                let nk3: T3 = expand_at(nkt, 0, n);
                let nv3: T3 = expand_at(nvt, 0, n);
                single_logits.push(inner(q, nk3) * scale);
                single_values.push(nv3);
            }
            if let Some((sk, sv)) = &att.self_kv {
                let skl = *linear(ctx, sk, x, Some((kc, dh)))?
                    .get(&l)
                    .ok_or(Error::MissingInput { name: "self keys" })?;
                let svl =
                    *linear(ctx, sv, x, Some((kc, dh)))?
                        .get(&l)
                        .ok_or(Error::MissingInput {
                            name: "self values",
                        })?;
                let (skl, svl) = match rot {
                    Some(r) => {
                        let f = |t: T3| -> T3 {
                            let t2: T2 = reshape(t, &[n, dh.into()]);
                            reshape(
                                rotate(&r, t2, r.node_cos, r.node_sin),
                                &[n, dh.into(), 1.into()],
                            )
                        };
                        (f(skl), f(svl))
                    }
                    None => (skl, svl),
                };
                single_logits.push(inner(q, skl) * scale);
                single_values.push(svl);
            }
            let w = slot_softmax(SlotLogits {
                neighbours: nl,
                valid: Some(ctx.valid),
                singles: &single_logits,
                shared: global.map(|g| g.0),
            });
            heads.push(HeadWeights {
                a: w.neighbours,
                singles: w.singles.into_iter().zip(single_values).collect(),
                global: w.shared.zip(global.map(|g| g.1)),
            });
        }
        // values of every head: one fused kernel per degree pair (rotary: per edge, per head)
        let mut values_all: Option<T3> = None;
        if rot.is_none() {
            let weights: Vec<T2> = heads.iter().map(|hw| hw.a).collect();
            for pe in &vpes {
                let y = weighted_sum_heads(ctx, pe, &weights, &kcs, dh)?;
                values_all = Some(match values_all {
                    Some(t) => t + y,
                    None => y,
                });
            }
        }
        let mut result: Option<T3> = None;
        for (hh, hw) in heads.into_iter().enumerate() {
            let kc = kcs[hh];
            let a = hw.a;
            let mut oh: Option<T3> = None;
            if let Some(r) = rot {
                let mut acc: Option<T2> = None;
                for pe in &vpes {
                    let mv = direct_message(ctx, pe, kc, dh)?;
                    acc = Some(match acc {
                        Some(t) => t + mv,
                        None => mv,
                    });
                }
                let vals = acc.ok_or(Error::MissingInput { name: "values" })?;
                let vr = rotate(&r, vals, r.edge_cos, r.edge_sin);
                let v3: T3 = reshape(vr, &[n, k, dh.into()]);
                let a3: T3 = reshape(a, &[n, 1.into(), k]);
                oh = Some(reshape(bmm(a3, v3), &[n, dh.into(), 1.into()]));
            } else if let Some(v) = values_all {
                oh = Some(channel_slice(v, hh * dh, (hh + 1) * dh));
            }
            let mut oh = oh.ok_or(Error::MissingInput { name: "values" })?;
            for (w, v) in hw.singles {
                let w3: T3 = expand_at(expand_at::<_, (X, X)>(w, 1, dh), 2, m);
                oh += w3 * v;
            }
            if let Some((w, vals)) = hw.global {
                let gsum = mm(w, vals); // [n, dh]
                oh += reshape::<_, (X, X, X)>(gsum, &[n, dh.into(), 1.into()]);
            }
            let proj = match &att.to_out {
                Some(lin) => {
                    let w = lin
                        .weights
                        .get(&l)
                        .ok_or(Error::MissingInput { name: "to_out" })?;
                    linear_rows(ctx, w, oh, hh * dh, dh)?
                }
                None => oh,
            };
            result = Some(match result {
                Some(r) => r + proj,
                None => proj,
            });
        }
        out.insert(l, result.ok_or(Error::MissingInput { name: "heads" })?);
        // degree l of the keys and values is built: its radial networks are held by the session
        drop((vpes, kpes));
        ctx.release_out_degree(&att.to_v.pairs, l);
        if let Some(c) = key_conv {
            ctx.release_out_degree(&c.pairs, l);
        }
    }
    Ok(out)
}

/// What the value sum of one head needs: the attention weights of the neighbours (`[n, k]`),
/// and of the single (null / self) and global slots with their values ([`slot_softmax`]).
struct HeadWeights {
    a: T2,
    singles: Vec<(T1, T3)>,
    global: Option<(T2, T2)>,
}

/// Row block `t` of `[H, n, k]` as a contiguous `[n, k]`.
fn slice_rows(all: T3, t: usize, n: Expression, k: Expression) -> T2 {
    let mut st = all.shape;
    st.slice(&[(t.into(), (t + 1).into()), (0.into(), n), (0.into(), k)]);
    reshape(
        GraphTensor::<(X, X, X)>::from_id(all.id, st, all.graph_ref),
        &[n, k],
    )
}
