//! AttentionSE3 / OneHeadedKVAttentionSE3 and the pre-norm residual blocks of the SE(3)-Transformer.

use std::collections::BTreeMap;

use crate::checkpoint::WeightSource;
use crate::se3_transformer::config::FiberDims;
use crate::se3_transformer::graph::Graph;
use crate::se3_transformer::oracle::conv::{ConvOpts, ConvSe3};
use crate::se3_transformer::oracle::features::{residual, Block, Feats, LinearSe3};
use crate::se3_transformer::oracle::norm::NormSe3;
use crate::se3_transformer::oracle::reassociated::{
    query_message_logits, weighted_message_sum, Contraction,
};
use crate::Error;
use se3_core::layers::RotaryEmbedding;

#[derive(Debug, Clone)]
pub(crate) enum KeyProj {
    Conv(ConvSe3),
    Linear(LinearSe3),
    Tied,
}

/// Options of the attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnOpts {
    pub heads: usize,
    pub dim_head: usize,
    pub attend_self: bool,
    pub use_null_kv: bool,
    pub global_feats_dim: Option<usize>,
    pub linear_proj_keys: bool,
    pub tie_key_values: bool,
    pub one_headed_kv: bool,
    pub conv: ConvOpts,
}

/// Equivariant multi-head attention: queries LinearSE3, keys and values unpooled ConvSE3 (or keys
/// LinearSE3 of the neighbour, or keys = values), logits `sum_{c,m} q k / sqrt(dim_head)` per degree,
/// softmax over [global (degree 0)] ++ [null] ++ [self] ++ neighbours, invalid neighbours at
/// `-f64::MAX`. With `one_headed_kv` keys and values have `dim_head` channels shared by all heads.
#[derive(Debug, Clone)]
pub(crate) struct AttentionSe3 {
    pub(crate) o: AttnOpts,
    pub(crate) to_q: LinearSe3,
    pub(crate) to_v: ConvSe3,
    pub(crate) to_k: KeyProj,
    pub(crate) to_out: Option<LinearSe3>,
    pub(crate) null_k: BTreeMap<usize, Vec<f64>>,
    pub(crate) null_v: BTreeMap<usize, Vec<f64>>,
    pub(crate) self_kv: Option<(LinearSe3, LinearSe3)>,
    pub(crate) global_kv: Option<(LinearSe3, LinearSe3)>,
}

impl AttentionSe3 {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        fiber: &FiberDims,
        o: AttnOpts,
    ) -> Result<Self, Error> {
        let hidden = o.dim_head * o.heads;
        let kv_c = if o.one_headed_kv { o.dim_head } else { hidden };
        let hidden_fiber: FiberDims = fiber.iter().map(|&(l, _)| (l, hidden)).collect();
        let kv_fiber: FiberDims = fiber.iter().map(|&(l, _)| (l, kv_c)).collect();
        let mut dims: Vec<usize> = fiber.iter().map(|&(_, c)| c).collect();
        dims.dedup();
        let mut uniq = Vec::new();
        for d in dims {
            if !uniq.contains(&d) {
                uniq.push(d);
            }
        }
        let project_out = !(o.heads == 1 && uniq.len() == 1 && o.dim_head == uniq[0]);
        let unpooled = ConvOpts {
            self_interaction: false,
            pool: false,
            ..o.conv
        };
        let to_q = LinearSe3::load(src, &format!("{prefix}.to_q"), fiber, &hidden_fiber)?;
        let to_v = ConvSe3::load(src, &format!("{prefix}.to_v"), fiber, &kv_fiber, unpooled)?;
        let to_k = if o.linear_proj_keys {
            KeyProj::Linear(LinearSe3::load(
                src,
                &format!("{prefix}.to_k"),
                fiber,
                &kv_fiber,
            )?)
        } else if o.tie_key_values {
            KeyProj::Tied
        } else {
            KeyProj::Conv(ConvSe3::load(
                src,
                &format!("{prefix}.to_k"),
                fiber,
                &kv_fiber,
                unpooled,
            )?)
        };
        let to_out = if project_out {
            Some(LinearSe3::load(
                src,
                &format!("{prefix}.to_out"),
                &hidden_fiber,
                fiber,
            )?)
        } else {
            None
        };
        let (mut null_k, mut null_v) = (BTreeMap::new(), BTreeMap::new());
        if o.use_null_kv {
            for &(l, _) in fiber {
                let shape: Vec<usize> = if o.one_headed_kv {
                    vec![o.dim_head, 2 * l + 1]
                } else {
                    vec![o.heads, o.dim_head, 2 * l + 1]
                };
                null_k.insert(
                    l,
                    src.take(&format!("{prefix}.null_keys.{l}"), &shape)?.data,
                );
                null_v.insert(
                    l,
                    src.take(&format!("{prefix}.null_values.{l}"), &shape)?.data,
                );
            }
        }
        let self_kv = if o.attend_self {
            Some((
                LinearSe3::load(src, &format!("{prefix}.to_self_k"), fiber, &kv_fiber)?,
                LinearSe3::load(src, &format!("{prefix}.to_self_v"), fiber, &kv_fiber)?,
            ))
        } else {
            None
        };
        let global_kv = match o.global_feats_dim {
            Some(g) => {
                let gin = vec![(0, g)];
                let gout = vec![(0, kv_c)];
                Some((
                    LinearSe3::load(src, &format!("{prefix}.to_global_k"), &gin, &gout)?,
                    LinearSe3::load(src, &format!("{prefix}.to_global_v"), &gin, &gout)?,
                ))
            }
            None => None,
        };
        Ok(Self {
            o,
            to_q,
            to_v,
            to_k,
            to_out,
            null_k,
            null_v,
            self_kv,
            global_kv,
        })
    }

    pub(crate) fn apply(
        &self,
        x: &Feats,
        g: &Graph,
        global: Option<&Block>,
        rotary: Option<&RotaryEmbedding>,
    ) -> Result<Feats, Error> {
        if g.contraction == Contraction::Reassociated && rotary.is_none() {
            return self.apply_reassociated(x, g, global);
        }
        let (n, k) = (g.n, g.k);
        let (h, dh) = (self.o.heads, self.o.dim_head);
        let kv_c = if self.o.one_headed_kv { dh } else { h * dh };
        let scale = (dh as f64).powf(-0.5);
        let q = self.to_q.apply(x);
        let v = self.to_v.apply(x, g)?;
        let keys_owned;
        let keys: &Feats = match &self.to_k {
            KeyProj::Conv(c) => {
                keys_owned = c.apply(x, g)?;
                &keys_owned
            }
            KeyProj::Linear(lin) => {
                let per_node = lin.apply(x);
                keys_owned = per_node
                    .into_iter()
                    .map(|(l, b)| {
                        let w = b.channels * b.m;
                        let mut e = Block::zeros(n * k, b.channels, b.m);
                        for (idx, &j) in g.nbr.iter().enumerate() {
                            e.data[idx * w..(idx + 1) * w].copy_from_slice(b.row(j));
                        }
                        (l, e)
                    })
                    .collect();
                &keys_owned
            }
            KeyProj::Tied => &v,
        };
        let (self_kv, global_kv) = self.extra_kv(x, global)?;
        let mut out = Feats::new();
        for &l in x.keys() {
            let m = 2 * l + 1;
            let missing = Error::MissingInput {
                name: "attention features",
            };
            let (qb, kb, vb) = match (q.get(&l), keys.get(&l), v.get(&l)) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => return Err(missing),
            };
            let mut ob = Block::zeros(n, h * dh, m);
            let kvw = kv_c * m;
            for i in 0..n {
                // slots: (key row, value row, valid), each of kv_c * m values
                let mut slots: Vec<(Vec<f64>, Vec<f64>, bool)> = Vec::new();
                if let Some((sk, sv)) = &self_kv {
                    let (skb, svb) = match (sk.get(&l), sv.get(&l)) {
                        (Some(a), Some(b)) => (a, b),
                        _ => return Err(Error::MissingInput { name: "self keys" }),
                    };
                    slots.push((skb.row(i).to_vec(), svb.row(i).to_vec(), true));
                }
                for kk in 0..k {
                    let e = i * k + kk;
                    slots.push((
                        kb.data[e * kvw..(e + 1) * kvw].to_vec(),
                        vb.data[e * kvw..(e + 1) * kvw].to_vec(),
                        g.valid[e],
                    ));
                }
                let mut qi = qb.row(i).to_vec();
                if let (Some(rot), 0) = (rotary, l) {
                    // m = 1: channel c of head hh sits at hh * dh + c
                    let fq = rot.angles(i, 0.0);
                    for hh in 0..h {
                        RotaryEmbedding::apply(&fq, &mut qi[hh * dh..(hh + 1) * dh]);
                    }
                    for (si, slot) in slots.iter_mut().enumerate() {
                        let (pos, dist) = if self.self_kv.is_some() {
                            if si == 0 {
                                (i, 0.0)
                            } else {
                                (g.nbr[i * k + si - 1], g.dist[i * k + si - 1])
                            }
                        } else {
                            (g.nbr[i * k + si], g.dist[i * k + si])
                        };
                        let fk = rot.angles(pos, dist);
                        let heads_kv = if self.o.one_headed_kv { 1 } else { h };
                        for hh in 0..heads_kv {
                            RotaryEmbedding::apply(&fk, &mut slot.0[hh * dh..(hh + 1) * dh]);
                            RotaryEmbedding::apply(&fk, &mut slot.1[hh * dh..(hh + 1) * dh]);
                        }
                    }
                }
                let mut pre: Vec<(Vec<f64>, Vec<f64>, bool)> = Vec::new();
                if let (Some((gk, gv)), 0) = (&global_kv, l) {
                    let (gkb, gvb) = match (gk.get(&0), gv.get(&0)) {
                        (Some(a), Some(b)) => (a, b),
                        _ => {
                            return Err(Error::MissingInput {
                                name: "global keys",
                            })
                        }
                    };
                    for r in 0..gkb.rows() {
                        pre.push((gkb.row(r).to_vec(), gvb.row(r).to_vec(), true));
                    }
                }
                if self.o.use_null_kv {
                    let (nk, nv) = match (self.null_k.get(&l), self.null_v.get(&l)) {
                        (Some(a), Some(b)) => (a, b),
                        _ => return Err(Error::MissingInput { name: "null keys" }),
                    };
                    pre.push((nk.clone(), nv.clone(), true));
                }
                pre.extend(slots);
                let slots = pre;
                let orow = &mut ob.data[i * h * dh * m..(i + 1) * h * dh * m];
                for hh in 0..h {
                    let qh = &qi[hh * dh * m..(hh + 1) * dh * m];
                    let koff = if self.o.one_headed_kv { 0 } else { hh * dh * m };
                    let logits: Vec<f64> = slots
                        .iter()
                        .map(|(ks, _, valid)| {
                            if *valid {
                                qh.iter()
                                    .zip(&ks[koff..koff + dh * m])
                                    .map(|(a, b)| a * b)
                                    .sum::<f64>()
                                    * scale
                            } else {
                                -f64::MAX
                            }
                        })
                        .collect();
                    let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = logits.iter().map(|z| (z - mx).exp()).collect();
                    let tot: f64 = ex.iter().sum();
                    let oh = &mut orow[hh * dh * m..(hh + 1) * dh * m];
                    for ((_, vs, _), w) in slots.iter().zip(&ex) {
                        let a = w / tot;
                        for (o, vv) in oh.iter_mut().zip(&vs[koff..koff + dh * m]) {
                            *o += a * vv;
                        }
                    }
                }
            }
            out.insert(l, ob);
        }
        Ok(match &self.to_out {
            Some(lin) => lin.apply(&out),
            None => out,
        })
    }
}

type KvPair = (Feats, Feats);

impl AttentionSe3 {
    fn extra_kv(
        &self,
        x: &Feats,
        global: Option<&Block>,
    ) -> Result<(Option<KvPair>, Option<KvPair>), Error> {
        let self_kv = self.self_kv.as_ref().map(|(a, b)| (a.apply(x), b.apply(x)));
        let global_kv = match (&self.global_kv, global) {
            (Some((a, b)), Some(gb)) => {
                let gf: Feats = std::iter::once((0, gb.clone())).collect();
                Some((a.apply(&gf), b.apply(&gf)))
            }
            (Some(_), None) => {
                return Err(Error::MissingInput {
                    name: "global_feats",
                })
            }
            (None, Some(_)) => {
                return Err(Error::UnexpectedInput {
                    name: "global_feats",
                })
            }
            (None, None) => None,
        };
        Ok((self_kv, global_kv))
    }

    /// The same attention with neighbour keys and values never formed per edge: logits through
    /// [`query_message_logits`], attention-weighted values through [`weighted_message_sum`].
    fn apply_reassociated(
        &self,
        x: &Feats,
        g: &Graph,
        global: Option<&Block>,
    ) -> Result<Feats, Error> {
        let (n, k) = (g.n, g.k);
        let (h, dh) = (self.o.heads, self.o.dim_head);
        let one = self.o.one_headed_kv;
        let kv_c = if one { dh } else { h * dh };
        let scale = (dh as f64).powf(-0.5);
        let q = self.to_q.apply(x);
        let lin_keys = match &self.to_k {
            KeyProj::Linear(lin) => Some(lin.apply(x)),
            _ => None,
        };
        let key_conv: Option<&ConvSe3> = match &self.to_k {
            KeyProj::Conv(c) => Some(c),
            KeyProj::Tied => Some(&self.to_v),
            KeyProj::Linear(_) => None,
        };
        let (self_kv, global_kv) = self.extra_kv(x, global)?;
        let missing = || Error::MissingInput {
            name: "attention features",
        };
        let mut out = Feats::new();
        for &l in x.keys() {
            let m = 2 * l + 1;
            let qb = q.get(&l).ok_or_else(missing)?;
            let mut ob = Block::zeros(n, h * dh, m);
            for hh in 0..h {
                let kc = if one { 0 } else { hh * dh };
                // the head's query, placed on the key channels it meets
                let mut qh = Block::zeros(n, kv_c, m);
                for i in 0..n {
                    let src = &qb.row(i)[hh * dh * m..(hh + 1) * dh * m];
                    qh.data[(i * kv_c + kc) * m..(i * kv_c + kc + dh) * m].copy_from_slice(src);
                }
                let nbr_logits = match (key_conv, &lin_keys) {
                    (Some(c), _) => query_message_logits(c, x, g, &qh, l, 1)?,
                    (None, Some(lk)) => {
                        let kb = lk.get(&l).ok_or_else(missing)?;
                        (0..n * k)
                            .map(|e| {
                                let i = e / k;
                                qh.row(i)
                                    .iter()
                                    .zip(kb.row(g.nbr[e]))
                                    .map(|(a, b)| a * b)
                                    .sum()
                            })
                            .collect()
                    }
                    (None, None) => return Err(missing()),
                };
                let mut weights = vec![0.0; n * k];
                for i in 0..n {
                    let qrow = &qh.row(i)[kc * m..(kc + dh) * m];
                    // pre slots: global (degree 0), null, self
                    let mut pre: Vec<(f64, Vec<f64>)> = Vec::new();
                    if let (Some((gk, gv)), 0) = (&global_kv, l) {
                        let (gkb, gvb) = match (gk.get(&0), gv.get(&0)) {
                            (Some(a), Some(b)) => (a, b),
                            _ => return Err(missing()),
                        };
                        for r in 0..gkb.rows() {
                            let kr = &gkb.row(r)[kc * m..(kc + dh) * m];
                            let lg = qrow.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>() * scale;
                            pre.push((lg, gvb.row(r)[kc * m..(kc + dh) * m].to_vec()));
                        }
                    }
                    if self.o.use_null_kv {
                        let (nk, nv) = match (self.null_k.get(&l), self.null_v.get(&l)) {
                            (Some(a), Some(b)) => (a, b),
                            _ => return Err(missing()),
                        };
                        let kr = &nk[kc * m..(kc + dh) * m];
                        let lg = qrow.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>() * scale;
                        pre.push((lg, nv[kc * m..(kc + dh) * m].to_vec()));
                    }
                    if let Some((sk, sv)) = &self_kv {
                        let (skb, svb) = match (sk.get(&l), sv.get(&l)) {
                            (Some(a), Some(b)) => (a, b),
                            _ => return Err(missing()),
                        };
                        let kr = &skb.row(i)[kc * m..(kc + dh) * m];
                        let lg = qrow.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>() * scale;
                        pre.push((lg, svb.row(i)[kc * m..(kc + dh) * m].to_vec()));
                    }
                    let nl: Vec<f64> = (0..k)
                        .map(|kk| {
                            let e = i * k + kk;
                            if g.valid[e] {
                                nbr_logits[e] * scale
                            } else {
                                -f64::MAX
                            }
                        })
                        .collect();
                    let mx = pre
                        .iter()
                        .map(|p| p.0)
                        .chain(nl.iter().copied())
                        .fold(f64::NEG_INFINITY, f64::max);
                    let tot: f64 = pre.iter().map(|p| (p.0 - mx).exp()).sum::<f64>()
                        + nl.iter().map(|z| (z - mx).exp()).sum::<f64>();
                    let orow = &mut ob.data[(i * h + hh) * dh * m..(i * h + hh + 1) * dh * m];
                    for (lg, v) in &pre {
                        let a = (lg - mx).exp() / tot;
                        orow.iter_mut().zip(v).for_each(|(o, vv)| *o += a * vv);
                    }
                    for (kk, z) in nl.iter().enumerate() {
                        weights[i * k + kk] = (z - mx).exp() / tot;
                    }
                }
                let ws = weighted_message_sum(&self.to_v, x, g, &weights, Some(l))?;
                let wb = ws.get(&l).ok_or_else(missing)?;
                for i in 0..n {
                    let src = &wb.row(i)[kc * m..(kc + dh) * m];
                    let dst = &mut ob.data[(i * h + hh) * dh * m..(i * h + hh + 1) * dh * m];
                    dst.iter_mut().zip(src).for_each(|(o, v)| *o += v);
                }
            }
            out.insert(l, ob);
        }
        Ok(match &self.to_out {
            Some(lin) => lin.apply(&out),
            None => out,
        })
    }
}

/// AttentionBlockSE3: `x + Attn(NormSE3(x))`.
#[derive(Debug, Clone)]
pub(crate) struct AttentionBlock {
    pub(crate) prenorm: NormSe3,
    pub(crate) attn: AttentionSe3,
}

impl AttentionBlock {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        fiber: &FiberDims,
        o: AttnOpts,
        gated: bool,
    ) -> Result<Self, Error> {
        Ok(Self {
            attn: AttentionSe3::load(src, &format!("{prefix}.attn"), fiber, o)?,
            prenorm: NormSe3::load(src, &format!("{prefix}.prenorm"), fiber, gated, false)?,
        })
    }

    pub(crate) fn apply(
        &self,
        x: &Feats,
        g: &Graph,
        global: Option<&Block>,
        rotary: Option<&RotaryEmbedding>,
    ) -> Result<Feats, Error> {
        let y = self
            .attn
            .apply(&self.prenorm.apply(x)?, g, global, rotary)?;
        Ok(residual(y, x))
    }
}

/// FeedForwardBlockSE3: `x + LinearSE3(NormSE3(LinearSE3_(x4)(NormSE3(x))))`.
#[derive(Debug, Clone)]
pub(crate) struct FeedForwardBlock {
    pub(crate) prenorm: NormSe3,
    pub(crate) project_in: LinearSe3,
    pub(crate) nonlin: NormSe3,
    pub(crate) project_out: LinearSe3,
}

impl FeedForwardBlock {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        fiber: &FiberDims,
        gated: bool,
    ) -> Result<Self, Error> {
        let hidden: FiberDims = fiber.iter().map(|&(l, c)| (l, 4 * c)).collect();
        Ok(Self {
            prenorm: NormSe3::load(src, &format!("{prefix}.prenorm"), fiber, gated, false)?,
            project_in: LinearSe3::load(
                src,
                &format!("{prefix}.feedforward.project_in"),
                fiber,
                &hidden,
            )?,
            nonlin: NormSe3::load(
                src,
                &format!("{prefix}.feedforward.nonlin"),
                &hidden,
                false,
                false,
            )?,
            project_out: LinearSe3::load(
                src,
                &format!("{prefix}.feedforward.project_out"),
                &hidden,
                fiber,
            )?,
        })
    }

    pub(crate) fn apply(&self, x: &Feats) -> Result<Feats, Error> {
        let y = self.prenorm.apply(x)?;
        let y = self.project_in.apply(&y);
        let y = self.nonlin.apply(&y)?;
        let y = self.project_out.apply(&y);
        Ok(residual(y, x))
    }
}
