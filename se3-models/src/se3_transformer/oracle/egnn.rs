//! The EGNN trunk of `SE3Transformer(use_egnn = True)` (se3-transformer-pytorch's EGNN / EGnnNetwork).

use std::collections::BTreeMap;

use crate::checkpoint::WeightSource;
use crate::se3_transformer::config::FiberDims;
use crate::se3_transformer::graph::Graph;
use crate::se3_transformer::oracle::attention::FeedForwardBlock;
use crate::se3_transformer::oracle::features::{Block, Feats};
use crate::se3_transformer::oracle::radial::{Dense, LayerNorm};
use crate::Error;

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// One EGNN layer over the neighbourhood plus the node itself (slot 0: distance 0, zero edge features,
/// always valid).
///
/// `m_ij = SiLU(L(SiLU(L([h0_i, h0_j, |h_l,i - h_l,j| per higher degree and channel, |r_ij|, e_ij]))))`;
/// degree 0: `h0 + MLP([LayerNorm(h0), sum_valid m_ij])`; degree l >= 1:
/// `(h_l + sum_j w_ij * n(h_l,i - h_l,j)) * sigmoid(Linear(h0_new))` with `w = MLP(m_ij)` (clamped) and
/// `n(v) = v / max(|v|, 1e-8) * (|v| scale + bias)`. As in the library, the neighbour mask does not
/// reach the higher-degree updates.
#[derive(Debug, Clone)]
pub(crate) struct EgnnLayer {
    pub(crate) htypes: FiberDims,
    pub(crate) node_norm: LayerNorm,
    pub(crate) edge0: Dense,
    pub(crate) edge2: Dense,
    pub(crate) htype_norms: BTreeMap<usize, (Vec<f64>, Vec<f64>)>,
    pub(crate) htype_gating: BTreeMap<usize, Dense>,
    pub(crate) hmlp0: Dense,
    pub(crate) hmlp2: Dense,
    pub(crate) node0: Dense,
    pub(crate) node2: Dense,
    pub(crate) clamp: Option<f64>,
}

impl EgnnLayer {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        fiber: &FiberDims,
        edge_dim: usize,
        hidden: usize,
        clamp: Option<f64>,
    ) -> Result<Self, Error> {
        let d0 =
            fiber
                .iter()
                .find(|(l, _)| *l == 0)
                .map(|&(_, c)| c)
                .ok_or(Error::InvalidConfig {
                    field: "hidden_fiber_dict",
                    expected: "a degree-0 entry with use_egnn",
                    found: "none".into(),
                })?;
        let htypes: FiberDims = fiber.iter().filter(|(l, _)| *l != 0).cloned().collect();
        let hdims: usize = htypes.iter().map(|&(_, c)| c).sum();
        let e_in = 2 * d0 + hdims + edge_dim + 1;
        let mut htype_norms = BTreeMap::new();
        let mut htype_gating = BTreeMap::new();
        for &(l, c) in &htypes {
            htype_norms.insert(
                l,
                (
                    src.take(&format!("{prefix}.htype_norms.{l}.scale"), &[1, 1, 1, c, 1])?
                        .data,
                    src.take(&format!("{prefix}.htype_norms.{l}.bias"), &[1, 1, 1, c, 1])?
                        .data,
                ),
            );
            htype_gating.insert(
                l,
                Dense::load(src, &format!("{prefix}.htype_gating.{l}"), d0, c)?,
            );
        }
        Ok(Self {
            node_norm: LayerNorm::load(src, &format!("{prefix}.node_norm"), d0)?,
            edge0: Dense::load(src, &format!("{prefix}.edge_mlp.0"), e_in, 2 * e_in)?,
            edge2: Dense::load(src, &format!("{prefix}.edge_mlp.2"), 2 * e_in, hidden)?,
            hmlp0: Dense::load(src, &format!("{prefix}.htypes_mlp.0"), hidden, 4 * hidden)?,
            hmlp2: Dense::load(src, &format!("{prefix}.htypes_mlp.2"), 4 * hidden, hdims)?,
            node0: Dense::load(src, &format!("{prefix}.node_mlp.0"), d0 + hidden, 2 * d0)?,
            node2: Dense::load(src, &format!("{prefix}.node_mlp.2"), 2 * d0, d0)?,
            htypes,
            htype_norms,
            htype_gating,
            clamp,
        })
    }

    pub(crate) fn apply(&self, x: &Feats, g: &Graph) -> Result<Feats, Error> {
        let (n, k) = (g.n, g.k);
        let nodes = x.get(&0).ok_or(Error::MissingInput {
            name: "degree-0 features",
        })?;
        let d0 = nodes.channels;
        let hidden = self.edge2.n_out;
        let mut new_nodes = Block::zeros(n, d0, 1);
        let mut updates: BTreeMap<usize, Block> = BTreeMap::new();
        for &(l, c) in &self.htypes {
            updates.insert(l, Block::zeros(n, c, 2 * l + 1));
        }
        for i in 0..n {
            let mut m_i = vec![0.0; hidden];
            for s in 0..=k {
                let (j, valid, rd) = if s == 0 {
                    (i, true, 0.0)
                } else {
                    let e = i * k + s - 1;
                    (g.nbr[e], g.valid[e], g.dist[e])
                };
                let mut inp = Vec::new();
                inp.extend_from_slice(nodes.row(i));
                inp.extend_from_slice(nodes.row(j));
                for &(l, c) in &self.htypes {
                    let hb = x.get(&l).ok_or(Error::MissingInput {
                        name: "higher-degree features",
                    })?;
                    let m = 2 * l + 1;
                    let (hi, hj) = (hb.row(i), hb.row(j));
                    for ch in 0..c {
                        let s2: f64 = (0..m)
                            .map(|q| (hi[ch * m + q] - hj[ch * m + q]).powi(2))
                            .sum();
                        inp.push(s2.sqrt());
                    }
                }
                inp.push(rd);
                if s == 0 {
                    inp.extend(std::iter::repeat_n(0.0, g.edge_dim));
                } else {
                    let e = i * k + s - 1;
                    inp.extend_from_slice(&g.edge_feat[e * g.edge_dim..(e + 1) * g.edge_dim]);
                }
                let h1: Vec<f64> = self.edge0.apply(&inp).into_iter().map(silu).collect();
                let m_ij: Vec<f64> = self.edge2.apply(&h1).into_iter().map(silu).collect();
                let w1: Vec<f64> = self.hmlp0.apply(&m_ij).into_iter().map(silu).collect();
                let mut w = self.hmlp2.apply(&w1);
                if let Some(cv) = self.clamp {
                    w.iter_mut().for_each(|v| *v = v.clamp(-cv, cv));
                }
                let mut off = 0;
                for &(l, c) in &self.htypes {
                    let hb = x.get(&l).ok_or(Error::MissingInput {
                        name: "higher-degree features",
                    })?;
                    let (scale, bias) = &self.htype_norms[&l];
                    let m = 2 * l + 1;
                    let (hi, hj) = (hb.row(i), hb.row(j));
                    let ub = updates
                        .get_mut(&l)
                        .ok_or(Error::MissingInput { name: "update" })?;
                    let urow = &mut ub.data[i * c * m..(i + 1) * c * m];
                    for ch in 0..c {
                        let rel: Vec<f64> =
                            (0..m).map(|q| hi[ch * m + q] - hj[ch * m + q]).collect();
                        let norm = rel.iter().map(|v| v * v).sum::<f64>().sqrt();
                        let f = norm * scale[ch] + bias[ch];
                        for q in 0..m {
                            urow[ch * m + q] += rel[q] / norm.max(1e-8) * f * w[off + ch];
                        }
                    }
                    off += c;
                }
                if valid {
                    m_i.iter_mut().zip(&m_ij).for_each(|(a, b)| *a += b);
                }
            }
            let mut normed = nodes.row(i).to_vec();
            self.node_norm.apply(&mut normed);
            normed.extend_from_slice(&m_i);
            let h: Vec<f64> = self.node0.apply(&normed).into_iter().map(silu).collect();
            let o = self.node2.apply(&h);
            for ((dst, a), h0) in new_nodes.data[i * d0..(i + 1) * d0]
                .iter_mut()
                .zip(&o)
                .zip(nodes.row(i))
            {
                *dst = a + h0;
            }
        }
        let mut out = Feats::new();
        for &(l, c) in &self.htypes {
            let hb = x.get(&l).ok_or(Error::MissingInput {
                name: "higher-degree features",
            })?;
            let ub = &updates[&l];
            let gate = &self.htype_gating[&l];
            let m = 2 * l + 1;
            let mut b = Block::zeros(n, c, m);
            for i in 0..n {
                let gv: Vec<f64> = gate
                    .apply(new_nodes.row(i))
                    .into_iter()
                    .map(sigmoid)
                    .collect();
                for (ch, gate_ch) in gv.iter().enumerate() {
                    for q in 0..m {
                        let idx = (i * c + ch) * m + q;
                        b.data[idx] = (hb.data[idx] + ub.data[idx]) * gate_ch;
                    }
                }
            }
            out.insert(l, b);
        }
        out.insert(0, new_nodes);
        Ok(out)
    }
}

/// EGnnNetwork: `depth` EGNN layers, each optionally followed by a FeedForwardBlockSE3.
#[derive(Debug, Clone)]
pub(crate) struct EgnnNetwork {
    pub(crate) layers: Vec<(EgnnLayer, Option<FeedForwardBlock>)>,
}

impl EgnnNetwork {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        fiber: &FiberDims,
        depth: usize,
        edge_dim: usize,
        hidden: usize,
        clamp: Option<f64>,
        feedforward: bool,
    ) -> Result<Self, Error> {
        let mut layers = Vec::new();
        for i in 0..depth {
            let e = EgnnLayer::load(
                src,
                &format!("{prefix}.layers.{i}.0"),
                fiber,
                edge_dim,
                hidden,
                clamp,
            )?;
            let ff = if feedforward {
                Some(FeedForwardBlock::load(
                    src,
                    &format!("{prefix}.layers.{i}.1"),
                    fiber,
                    false,
                )?)
            } else {
                None
            };
            layers.push((e, ff));
        }
        Ok(Self { layers })
    }

    pub(crate) fn apply(&self, x: Feats, g: &Graph) -> Result<Feats, Error> {
        let mut x = x;
        for (e, ff) in &self.layers {
            x = e.apply(&x, g)?;
            if let Some(f) = ff {
                x = f.apply(&x)?;
            }
        }
        Ok(x)
    }
}
