//! The float64 reference forward pass ("oracle") of se3-transformer-pytorch 0.9's `SE3Transformer`:
//! test support, not the model (that is [`Se3TransformerNet`](super::Se3TransformerNet), one
//! graph of se3-core's layers).
//!
//! Plain Rust, one graph at a time, written for clarity and exactness rather than speed; the graph
//! is tested against it. Semantics follow tests/reference/CONVENTIONS.md section 2.

use crate::checkpoint::{KeyRecorder, StateDict, StateDictSource, WeightSource};
use crate::inputs::ModelInputs;
use crate::se3_transformer::basis::{QjSigns, Se3tBasis};
use crate::se3_transformer::config::{
    Se3TransformerConfig, Se3TransformerForward, Se3TransformerShape,
};
use crate::se3_transformer::graph::{
    adjacency_degrees, edge_graph, select_neighbors, sparse_selection, PairInputs, SelectionParams,
};
use crate::se3_transformer::oracle::attention::{AttentionBlock, AttnOpts, FeedForwardBlock};
use crate::se3_transformer::oracle::conv::{ConvOpts, ConvSe3};
use crate::se3_transformer::oracle::egnn::EgnnNetwork;
use crate::se3_transformer::oracle::features::{Block, Feats, LinearSe3, Mat};
use crate::se3_transformer::oracle::norm::NormSe3;
use crate::se3_transformer::oracle::reassociated::Contraction;
use crate::Error;
use se3_core::layers::RotaryEmbedding;

pub(crate) mod attention;
pub(crate) mod conv;
pub(crate) mod egnn;
pub mod features;
mod io;
pub(crate) mod norm;
pub(crate) mod radial;
pub mod reassociated;

#[derive(Debug, Clone)]
pub(crate) enum Trunk {
    Sequential(Vec<(AttentionBlock, FeedForwardBlock)>),
    Reversible(Vec<(AttentionBlock, FeedForwardBlock)>),
    Egnn(EgnnNetwork),
}

/// An `SE3Transformer` with loaded float64 weights: the oracle (module doc).
#[derive(Debug, Clone)]
pub struct Se3TransformerOracle {
    pub(crate) cfg: Se3TransformerConfig,
    pub(crate) shape: Se3TransformerShape,
    pub(crate) token_emb: Option<Mat>,
    pub(crate) pos_emb: Option<Mat>,
    pub(crate) edge_emb: Option<Mat>,
    pub(crate) adj_emb: Option<Mat>,
    pub(crate) rotary: Option<RotaryEmbedding>,
    pub(crate) conv_in: ConvSe3,
    pub(crate) convs: Vec<(ConvSe3, NormSe3)>,
    pub(crate) trunk: Trunk,
    pub(crate) conv_out: Option<ConvSe3>,
    pub(crate) norm: Option<NormSe3>,
    pub(crate) linear_out: Option<LinearSe3>,
    pub(crate) table: Se3tBasis,
    pub(crate) sparse_seed: u64,
    pub(crate) contraction: Contraction,
}

/// One batch element ready for the layers (see [`Se3TransformerOracle::prepare`]).
/// One batch element before its per-edge data: node features, global features, the neighbour
/// selection, the points and the adjacency labels.
pub(crate) struct Selected {
    pub x0: Feats,
    pub global: Option<Block>,
    pub sel: crate::se3_transformer::graph::Selection,
    pub pts: Vec<[f64; 3]>,
    pub labels: Option<Vec<i64>>,
}

/// [`Selected`] of every batch element and the pair edge features of all of them.
pub(crate) struct SelectedInputs {
    pub items: Vec<Selected>,
    pub edges: Option<(Vec<f64>, usize)>,
}

fn shape_err(name: &'static str, expected: String, found: &[usize]) -> Error {
    Error::InputShape {
        name,
        expected,
        found: found.to_vec(),
    }
}

fn embed(name: &'static str, table: &Mat, ids: &[i64]) -> Result<Vec<f64>, Error> {
    let mut out = Vec::with_capacity(ids.len() * table.cols);
    for (i, &t) in ids.iter().enumerate() {
        if t < 0 || t as usize >= table.rows {
            return Err(Error::IndexOutOfRange {
                name,
                index: i,
                found: t,
                bound: table.rows,
            });
        }
        let r = t as usize;
        out.extend_from_slice(&table.data[r * table.cols..(r + 1) * table.cols]);
    }
    Ok(out)
}

impl Se3TransformerOracle {
    fn build(cfg: &Se3TransformerConfig, src: &mut dyn WeightSource) -> Result<Self, Error> {
        let shape = cfg.shape()?;
        let table = Se3tBasis::new(shape.max_degree)?;
        let hidden = &shape.fiber_hidden;
        let token_emb = match cfg.num_tokens {
            Some(t) => Some(Mat::load(src, "token_emb.weight", t, cfg.dim)?),
            None => None,
        };
        let pos_emb = match cfg.num_positions {
            Some(p) => Some(Mat::load(src, "pos_emb.weight", p, cfg.dim)?),
            None => None,
        };
        let rotary = if cfg.rotary_position || cfg.rotary_rel_dist {
            let f = RotaryEmbedding::frequencies(
                cfg.dim_head,
                cfg.rotary_position,
                cfg.rotary_rel_dist,
            );
            Some(RotaryEmbedding {
                inv_freq: src.take("rotary_pos_emb.inv_freq", &[f])?.data,
                position: cfg.rotary_position,
                rel_dist: cfg.rotary_rel_dist,
            })
        } else {
            None
        };
        let edge_emb = match (cfg.num_edge_tokens, cfg.edge_dim) {
            (Some(t), Some(e)) => Some(Mat::load(src, "edge_emb.weight", t, e)?),
            _ => None,
        };
        let adj_emb = match cfg.num_adj_degrees {
            Some(k) if cfg.adj_dim > 0 => {
                Some(Mat::load(src, "adj_emb.weight", k + 1, cfg.adj_dim)?)
            }
            _ => None,
        };
        let conv = ConvOpts {
            edge_dim: shape.edge_dim,
            fourier: cfg
                .fourier_encode_dist
                .then_some(cfg.rel_dist_num_fourier_features),
            self_interaction: true,
            pool: true,
        };
        let conv_in = ConvSe3::load(src, "conv_in", &shape.fiber_in, hidden, conv)?;
        let mut convs = Vec::new();
        for i in 0..cfg.num_conv_layers {
            convs.push((
                ConvSe3::load(src, &format!("convs.{i}.0"), hidden, hidden, conv)?,
                NormSe3::load(
                    src,
                    &format!("convs.{i}.1"),
                    hidden,
                    cfg.norm_gated_scale,
                    false,
                )?,
            ));
        }
        let trunk = if cfg.use_egnn {
            Trunk::Egnn(EgnnNetwork::load(
                src,
                "net",
                hidden,
                cfg.depth,
                shape.edge_dim,
                cfg.egnn_hidden_dim,
                cfg.egnn_weights_clamp_value,
                cfg.egnn_feedforward,
            )?)
        } else {
            let o = AttnOpts {
                heads: cfg.heads,
                dim_head: cfg.dim_head,
                attend_self: cfg.attend_self,
                use_null_kv: cfg.use_null_kv,
                global_feats_dim: cfg.global_feats_dim,
                linear_proj_keys: cfg.linear_proj_keys,
                tie_key_values: cfg.tie_key_values,
                one_headed_kv: cfg.one_headed_key_values,
                conv,
            };
            let mut blocks = Vec::new();
            for i in 0..cfg.depth {
                let (pa, pf) = if cfg.reversible {
                    (
                        format!("net.blocks.{i}.f.net"),
                        format!("net.blocks.{i}.g.net"),
                    )
                } else {
                    (format!("net.blocks.{i}.0"), format!("net.blocks.{i}.1"))
                };
                blocks.push((
                    AttentionBlock::load(src, &pa, hidden, o, cfg.norm_gated_scale)?,
                    FeedForwardBlock::load(src, &pf, hidden, cfg.norm_gated_scale)?,
                ));
            }
            if cfg.reversible {
                Trunk::Reversible(blocks)
            } else {
                Trunk::Sequential(blocks)
            }
        };
        let conv_out = match &shape.fiber_out {
            Some(fo) => Some(ConvSe3::load(src, "conv_out", hidden, fo, conv)?),
            None => None,
        };
        let norm = match &shape.fiber_out {
            Some(fo) if cfg.norm_out || cfg.reversible => {
                Some(NormSe3::load(src, "norm", fo, cfg.norm_gated_scale, true)?)
            }
            _ => None,
        };
        let final_fiber = shape.fiber_out.clone().unwrap_or_else(|| hidden.clone());
        let linear_out = if cfg.reduce_dim_out {
            let ones: Vec<(usize, usize)> = final_fiber.iter().map(|&(l, _)| (l, 1)).collect();
            Some(LinearSe3::load(src, "linear_out", &final_fiber, &ones)?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            shape,
            token_emb,
            pos_emb,
            edge_emb,
            adj_emb,
            rotary,
            conv_in,
            convs,
            trunk,
            conv_out,
            norm,
            linear_out,
            table,
            sparse_seed: 0,
            contraction: Contraction::Direct,
        })
    }

    /// Every state-dict key (PyTorch name) the config needs, with its shape, in module order.
    ///
    /// # Errors
    /// Config errors (`InvalidConfig`, `Core(DegreeTooHigh)`).
    pub fn expected_keys(cfg: &Se3TransformerConfig) -> Result<Vec<(String, Vec<usize>)>, Error> {
        let mut rec = KeyRecorder::default();
        Self::build(cfg, &mut rec)?;
        Ok(rec.keys)
    }

    /// Builds the model from a state dict with PyTorch key names.
    ///
    /// # Errors
    /// `MissingKey` / `WrongShape` (naming key and expected shape), `UnexpectedKey`, config errors.
    pub fn from_state_dict(cfg: &Se3TransformerConfig, sd: &StateDict) -> Result<Self, Error> {
        let mut loader = StateDictSource::new(sd);
        let m = Self::build(cfg, &mut loader)?;
        loader.finish()?;
        Ok(m)
    }

    /// As [`Se3TransformerOracle::from_state_dict`], moving the tensors out of `sd` instead of copying
    /// them, so the weights are held once while the model is built (for large models).
    ///
    /// # Errors
    /// As [`Se3TransformerOracle::from_state_dict`].
    pub fn from_state_dict_owned(cfg: &Se3TransformerConfig, sd: StateDict) -> Result<Self, Error> {
        let mut loader = StateDictSource::owned(sd);
        let m = Self::build(cfg, &mut loader)?;
        loader.finish()?;
        Ok(m)
    }

    /// The model from any weight source (keys and shapes as [`Se3TransformerOracle::
    /// expected_keys`]); whether every key of the source was used is the source's to check.
    ///
    /// # Errors
    /// The source's errors (`MissingKey`, `WrongShape`, read errors), config errors.
    pub fn from_source(
        cfg: &Se3TransformerConfig,
        src: &mut dyn WeightSource,
    ) -> Result<Self, Error> {
        Self::build(cfg, src)
    }

    /// Replaces the Q_J sign table (default [`QjSigns::reference`]) by the one of the LAPACK build the
    /// weights were trained with.
    ///
    /// # Errors
    /// `Core(DegreeTooHigh)` if the degrees exceed the harmonics of se3-core.
    pub fn set_qj_signs(&mut self, signs: &QjSigns) -> Result<(), Error> {
        self.table = Se3tBasis::with_signs(self.table.max_degree(), signs)?;
        Ok(())
    }

    /// Chooses how ConvSE3 messages are contracted (default [`Contraction::Direct`], the library's
    /// order; [`Contraction::Reassociated`] moves the radial network's last layer from edges to nodes).
    pub fn set_contraction(&mut self, contraction: Contraction) {
        self.contraction = contraction;
    }

    /// Seeds the random bond subsampling used when a node has more bonds than `max_sparse_neighbors`
    /// (default seed 0; without subsampling the seed has no effect).
    pub fn set_sparse_sampling_seed(&mut self, seed: u64) {
        self.sparse_seed = seed;
    }

    /// The config the model was built from.
    pub fn config(&self) -> &Se3TransformerConfig {
        &self.cfg
    }

    /// Runs the model. Outputs are named as the reference outputs without their dtype suffix: `out` when
    /// a single degree is returned (`return_type`, or `output_degrees = 1`), else `type<l>`.
    ///
    /// # Errors
    /// Input validation errors (`InputShape`, `NonFinite`, `EmptyGraph`, `MissingInput`,
    /// `UnexpectedInput`, `IndexOutOfRange`), `InvalidConfig` for an unsupported `return_type`.
    pub fn forward(
        &self,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
    ) -> Result<StateDict, Error> {
        let (b, n) = (inp.batch(), inp.nodes());
        let mut per_batch: Vec<Feats> = Vec::with_capacity(b);
        let selected = self.select(inp)?;
        for (bi, item) in selected.items.iter().enumerate() {
            let rows: Vec<usize> = (0..item.sel.n).collect();
            let graph = self.edge_graph_of(&selected, bi, &rows)?;
            per_batch.push(self.forward_graph(item.x0.clone(), &graph, item.global.as_ref())?);
        }
        self.assemble(per_batch, inp, fwd, b, n)
    }

    /// Validated inputs, node features and the neighbour selection of every batch element
    /// (no per-edge data yet: [`Se3TransformerOracle::edge_graph_of`] makes it for any rows).
    ///
    /// # Errors
    /// As [`Se3TransformerOracle::forward`].
    pub(crate) fn select(&self, inp: &ModelInputs) -> Result<SelectedInputs, Error> {
        inp.validate()?;
        let cfg = &self.cfg;
        let (b, n) = (inp.batch(), inp.nodes());
        let feats = self.node_feats(inp)?;
        let edges = self.pair_edges(inp)?;
        // adjacency per batch element
        let need_adj = cfg.num_adj_degrees.is_some() || cfg.attend_sparse_neighbors;
        let adjs: Option<Vec<Vec<bool>>> = match (&inp.adj_mat, need_adj) {
            (None, true) => return Err(Error::MissingInput { name: "adj_mat" }),
            (Some(a), true) => Some(
                (0..b)
                    .map(|bi| {
                        if a.shape.len() == 2 {
                            a.data.clone()
                        } else {
                            a.data[bi * n * n..(bi + 1) * n * n].to_vec()
                        }
                    })
                    .collect(),
            ),
            _ => None,
        };
        let mut labels: Vec<Option<Vec<i64>>> = vec![None; b];
        let mut sparse_adjs: Vec<Vec<bool>> = Vec::new();
        if let Some(adjs) = &adjs {
            for (bi, a) in adjs.iter().enumerate() {
                let (lab, cur) = match cfg.num_adj_degrees {
                    Some(k) => adjacency_degrees(a, n, k),
                    None => (Vec::new(), a.clone()),
                };
                if cfg.num_adj_degrees.is_some() {
                    labels[bi] = Some(lab);
                }
                sparse_adjs.push(cur);
            }
        }
        let (num_sparse, sparse_adjs) = if cfg.attend_sparse_neighbors {
            sparse_selection(&sparse_adjs, n, cfg.max_sparse_neighbors, self.sparse_seed)
        } else {
            (0, sparse_adjs)
        };
        let global_dim = match (&inp.global_feats, cfg.global_feats_dim) {
            (Some(g), Some(d)) if g.shape[2] == d => Some(g.shape[1]),
            (Some(g), Some(d)) => {
                return Err(shape_err(
                    "global_feats",
                    format!("({b}, m, {d})"),
                    &g.shape,
                ))
            }
            (Some(_), None) => {
                return Err(Error::UnexpectedInput {
                    name: "global_feats",
                })
            }
            (None, Some(_)) => {
                return Err(Error::MissingInput {
                    name: "global_feats",
                })
            }
            (None, None) => None,
        };
        let sel = SelectionParams {
            num_neighbors: cfg.num_neighbors,
            valid_radius: cfg.valid_radius,
            causal: cfg.causal,
            attend_sparse: cfg.attend_sparse_neighbors,
            max_sparse_neighbors: cfg.max_sparse_neighbors,
            num_adj_degrees: cfg.num_adj_degrees,
        };
        if n < 2 {
            return Err(Error::EmptyGraph { batch: b, nodes: n });
        }
        if cfg.num_neighbors == Some(0) && num_sparse == 0 {
            return Err(Error::NoNeighbors);
        }
        let mut items: Vec<Selected> = Vec::with_capacity(b);
        for (bi, x0) in feats.into_iter().enumerate() {
            let pts = inp.points(bi);
            let nm = inp
                .neighbor_mask
                .as_ref()
                .map(|m| &m.data[bi * n * n..(bi + 1) * n * n]);
            let ef = edges
                .as_ref()
                .map(|(d, e)| &d[bi * n * n * e..(bi + 1) * n * n * e]);
            let pin = PairInputs {
                coors: &pts,
                mask: inp.node_mask(bi),
                adj: None,
                neighbor_mask: nm,
                edge_feat: ef,
            };
            let sparse = if cfg.attend_sparse_neighbors {
                Some(sparse_adjs[bi].as_slice())
            } else {
                None
            };
            let sel = select_neighbors(&sel, &pin, sparse, num_sparse);
            let global = match (global_dim, &inp.global_feats) {
                (Some(m), Some(t)) => {
                    let d = t.shape[2];
                    Some(Block {
                        channels: d,
                        m: 1,
                        data: t.data[bi * m * d..(bi + 1) * m * d].to_vec(),
                    })
                }
                _ => None,
            };
            items.push(Selected {
                x0,
                global,
                sel,
                pts,
                labels: labels[bi].take(),
            });
        }
        Ok(SelectedInputs { items, edges })
    }

    /// The per-edge data of batch element `bi` for the nodes `rows` (global ids, in the order of
    /// the graph's nodes; all nodes: the whole graph), [`edge_graph`].
    ///
    /// # Errors
    /// Those of [`edge_graph`].
    pub(crate) fn edge_graph_of(
        &self,
        s: &SelectedInputs,
        bi: usize,
        rows: &[usize],
    ) -> Result<crate::se3_transformer::graph::Graph, Error> {
        let item = &s.items[bi];
        let n = item.sel.n;
        let ef = s
            .edges
            .as_ref()
            .map(|(d, e)| &d[bi * n * n * e..(bi + 1) * n * n * e]);
        let pin = PairInputs {
            coors: &item.pts,
            mask: None,
            adj: None,
            neighbor_mask: None,
            edge_feat: ef,
        };
        let adj_lab = match (&item.labels, &self.adj_emb) {
            (Some(l), Some(e)) => Some((l.as_slice(), e.data.as_slice(), e.cols)),
            _ => None,
        };
        let edge_dim_in = s.edges.as_ref().map_or(0, |e| e.1);
        let mut g = edge_graph(&item.sel, &pin, rows, adj_lab, edge_dim_in, &self.table)?;
        g.contraction = self.contraction;
        Ok(g)
    }

    fn forward_graph(
        &self,
        x0: Feats,
        g: &crate::se3_transformer::graph::Graph,
        global: Option<&Block>,
    ) -> Result<Feats, Error> {
        let mut x = self.conv_in.apply(&x0, g)?;
        for (conv, norm) in &self.convs {
            x = conv.apply(&norm.apply(&x)?, g)?;
        }
        let rot = self.rotary.as_ref();
        x = match &self.trunk {
            Trunk::Sequential(blocks) => {
                for (a, f) in blocks {
                    x = a.apply(&x, g, global, rot)?;
                    x = f.apply(&x)?;
                }
                x
            }
            Trunk::Reversible(blocks) => {
                let (mut x1, mut x2) = (x.clone(), x);
                for (a, f) in blocks {
                    let mut y1 = a.apply(&x2, g, global, rot)?;
                    add_into(&mut y1, &x1);
                    let mut y2 = f.apply(&y1)?;
                    add_into(&mut y2, &x2);
                    x1 = y1;
                    x2 = y2;
                }
                add_into(&mut x1, &x2);
                for blk in x1.values_mut() {
                    blk.data.iter_mut().for_each(|v| *v /= 2.0);
                }
                x1
            }
            Trunk::Egnn(net) => net.apply(x, g)?,
        };
        if let Some(c) = &self.conv_out {
            x = c.apply(&x, g)?;
        }
        if let Some(nrm) = &self.norm {
            x = nrm.apply(&x)?;
        }
        if let Some(lin) = &self.linear_out {
            x = lin.apply(&x);
        }
        Ok(x)
    }
}

fn add_into(a: &mut Feats, b: &Feats) {
    for (l, blk) in a.iter_mut() {
        if let Some(o) = b.get(l) {
            blk.data.iter_mut().zip(&o.data).for_each(|(x, y)| *x += y);
        }
    }
}
