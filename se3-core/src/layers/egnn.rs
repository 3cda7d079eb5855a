//! `EgnnLayer`: the E(n)-equivariant graph layer of Satorras et al. (2021) as egnn-pytorch
//! 0.2.8's `EGNN` computes it.
//!
//! For node `i` with neighbours `j` (its `k` selected edges, see [`EgnnNeighborhood`]):
//!
//! ```text
//! r_ij  = x_i - x_j,   d_ij = |r_ij|^2                      (squared distance)
//! m_ij  = SiLU(W2 SiLU(W1 [h_i, h_j, phi(d_ij), e_ij] + b1) + b2)
//! m_ij *= sigmoid(w_g . m_ij + b_g)                         (soft_edges)
//! w_ij  = clamp(v_ij * (W4 SiLU(W3 m_ij + b3) + b4), -c, c) (v_ij: edge validity, c: clamp)
//! x_i'  = x_i + sum_j w_ij * s r_ij / max(|r_ij|, 1e-8)      (norm_coors, scale s; else r_ij)
//! m_i   = sum_j v_ij m_ij  (sum)  or  that / max(sum_j v_ij, 1e-8)  (mean)
//! h_i'  = h_i + W6 SiLU(W5 [LayerNorm(h_i), m_i] + b5) + b6  (LayerNorm only with norm_feats)
//! ```
//!
//! `phi(d) = d`, or with `F` Fourier features `[sin(d / 2^f) (f < F), cos(d / 2^f) (f < F), d]`.
//! Checkpoint keys are egnn-pytorch's: `edge_mlp.{0,3}`, `edge_gate.0`, `node_norm`,
//! `coors_norm.scale`, `node_mlp.{0,3}`, `coors_mlp.{0,3}` (`weight` `(out, in)`, `bias`).
//! Dropout is the identity (inference).
//!
//! E(n) equivariance: the messages see only invariants (features, squared distances, edge
//! features), so `x' -> R x' + t` when `x -> R x + t` for any orthogonal `R` (reflections
//! included) and `h'` is invariant; permuting nodes (and their neighbour indices) permutes
//! the outputs.
//!
//! The concatenations are never formed: `W1 [a, b, ..]` is computed as `W1_a a + W1_b b + ..`
//! with the column blocks of `W1`, and the node terms `W1_a h_i`, `W1_b h_j` once per node.

use luminal::prelude::{symbolic::Expression, *};

use super::activation::{saturating_sigmoid, saturating_swish};
use super::dense::DenseLinear;
use super::graph::{dims, expand_at, layer_norm, reshape, Param, ParamSource, X};
use crate::exec::Session;
use crate::ops::{egnn_edge, gather, EgnnCoorsWeights, EgnnEdgeInputs, EgnnEdgeKernel};
use crate::Error;

/// How `EgnnLayer` pools the messages of a node (`m_pool_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessagePool {
    /// Sum over valid edges.
    Sum,
    /// Mean over valid edges (0 for a node without any).
    Mean,
}

/// How [`EgnnLayer`] computes its edge stage; both give the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgnnPath {
    /// One fused operator ([`egnn_edge`](crate::ops::egnn_edge())): per node, in cache, no
    /// per-edge tensors of the whole graph.
    #[default]
    Fused,
    /// Plain graph operations on `[rows * k, width]` edge tensors (the reference).
    Unfused,
}

/// The constructor options of egnn-pytorch's `EGNN` that shape the layer.
#[derive(Debug, Clone, PartialEq)]
pub struct EgnnOptions {
    /// Node feature width `dim`.
    pub dim: usize,
    /// Width of the edge features (`edge_dim`, embedded or dense, adjacency embedding included).
    pub edge_dim: usize,
    /// Message width `m_dim`.
    pub m_dim: usize,
    /// Fourier features of the squared distance (`fourier_features`).
    pub fourier_features: usize,
    /// LayerNorm of the features before the node MLP (`norm_feats`).
    pub norm_feats: bool,
    /// Unit relative vectors times a learned scale (`norm_coors`).
    pub norm_coors: bool,
    /// Update features (`update_feats`).
    pub update_feats: bool,
    /// Update coordinates (`update_coors`).
    pub update_coors: bool,
    /// Gate messages by a sigmoid of themselves (`soft_edges`).
    pub soft_edges: bool,
    /// Pooling of messages (`m_pool_method`).
    pub m_pool: MessagePool,
    /// Clamp of the coordinate weights (`coor_weights_clamp_value`).
    pub coor_weights_clamp: Option<f32>,
}

impl EgnnOptions {
    /// Width of `phi(d)`: `2 F + 1`.
    pub fn distance_width(&self) -> usize {
        2 * self.fourier_features + 1
    }

    /// Width of the edge MLP input `[h_i, h_j, phi(d), e]`.
    pub fn edge_input_width(&self) -> usize {
        2 * self.dim + self.distance_width() + self.edge_dim
    }
}

/// One extra edge input of [`EgnnNeighborhood`], in the order of the edge features.
// Graph tensors carry their shape trackers (kilobytes); a layer has a handful of these.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub enum EdgeFeature {
    /// Per-edge values `[rows * k, width]`.
    Dense(GraphTensor<(X, X)>),
    /// Rows of an embedding table `[vocab, width]` picked per edge by `ids` `[rows * k]`.
    Embedded {
        table: GraphTensor<(X, X)>,
        ids: GraphTensor<(X,)>,
    },
}

/// The neighbourhoods of all nodes: node `r` owns edges `r k .. (r + 1) k`.
#[derive(Debug, Clone)]
pub struct EgnnNeighborhood {
    /// Edges per node.
    pub k: usize,
    /// Row of the neighbour `j` of every edge, `[rows * k]` (f32 integers).
    pub src: GraphTensor<(X,)>,
    /// 1 for an edge that counts in the masks of the layer, 0 otherwise, `[rows, k]`.
    pub valid: GraphTensor<(X, X)>,
    /// Edge features, concatenated in this order (total width `edge_dim`).
    pub edge_features: Vec<EdgeFeature>,
}

/// egnn-pytorch's `EGNN` layer in run-time form (see the module doc for the formula).
#[derive(Debug, Clone)]
pub struct EgnnLayer {
    options: EgnnOptions,
    edge_in: DenseLinear,
    edge_out: DenseLinear,
    edge_gate: Option<DenseLinear>,
    node_norm: Option<(Param, Param)>,
    coors_scale: Option<Param>,
    node_in: Option<DenseLinear>,
    node_out: Option<DenseLinear>,
    coors_in: Option<DenseLinear>,
    coors_out: Option<DenseLinear>,
    path: EgnnPath,
}

/// The features and coordinates an [`EgnnLayer`] returns, `[rows, dim]` and `[rows, 3]`.
#[derive(Debug, Clone, Copy)]
pub struct EgnnOutput {
    pub feats: GraphTensor<(X, X)>,
    pub coors: GraphTensor<(X, X)>,
}

impl EgnnLayer {
    /// Reads the layer's parameters under `prefix` (egnn-pytorch's keys).
    ///
    /// # Errors
    /// `Empty` if the layer updates neither features nor coordinates (the library asserts);
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight` from `src`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        options: &EgnnOptions,
    ) -> Result<Self, Error> {
        if !options.update_feats && !options.update_coors {
            return Err(Error::Empty {
                what: "EGNN layer that updates neither features nor coordinates",
            });
        }
        let (dim, m) = (options.dim, options.m_dim);
        let e_in = options.edge_input_width();
        let p = |name: &str| format!("{prefix}{name}");
        let edge_in = DenseLinear::load(src, &p("edge_mlp.0."), e_in, 2 * e_in, true)?;
        let edge_out = DenseLinear::load(src, &p("edge_mlp.3."), 2 * e_in, m, true)?;
        let edge_gate = options
            .soft_edges
            .then(|| DenseLinear::load(src, &p("edge_gate.0."), m, 1, true))
            .transpose()?;
        let node_norm = if options.norm_feats && options.update_feats {
            Some((
                Param::load(src, p("node_norm.weight"), vec![dim])?,
                Param::load(src, p("node_norm.bias"), vec![dim])?,
            ))
        } else {
            None
        };
        // The library creates `node_norm` whenever `norm_feats`, used or not.
        if options.norm_feats && !options.update_feats {
            Param::load(src, p("node_norm.weight"), vec![dim])?;
            Param::load(src, p("node_norm.bias"), vec![dim])?;
        }
        let coors_scale = options
            .norm_coors
            .then(|| Param::load(src, p("coors_norm.scale"), vec![1]))
            .transpose()?;
        let (node_in, node_out) = if options.update_feats {
            (
                Some(DenseLinear::load(
                    src,
                    &p("node_mlp.0."),
                    dim + m,
                    2 * dim,
                    true,
                )?),
                Some(DenseLinear::load(
                    src,
                    &p("node_mlp.3."),
                    2 * dim,
                    dim,
                    true,
                )?),
            )
        } else {
            (None, None)
        };
        let (coors_in, coors_out) = if options.update_coors {
            (
                Some(DenseLinear::load(src, &p("coors_mlp.0."), m, 4 * m, true)?),
                Some(DenseLinear::load(src, &p("coors_mlp.3."), 4 * m, 1, true)?),
            )
        } else {
            (None, None)
        };
        Ok(EgnnLayer {
            options: options.clone(),
            edge_in,
            edge_out,
            edge_gate,
            node_norm,
            coors_scale,
            node_in,
            node_out,
            coors_in,
            coors_out,
            path: EgnnPath::default(),
        })
    }

    /// The layer computing its edge stage by `path`.
    pub fn with_path(mut self, path: EgnnPath) -> Self {
        self.path = path;
        self
    }

    /// How the layer computes its edge stage.
    pub fn path(&self) -> EgnnPath {
        self.path
    }

    /// The options the layer was loaded with.
    pub fn options(&self) -> &EgnnOptions {
        &self.options
    }

    /// The columns of `phi(d)` for squared distances `d` `[edges]`: `2 F + 1` tensors
    /// `[edges]`, `sin(d / 2^f)`, then `cos(d / 2^f)` (as `sin(d / 2^f + pi / 2)`), then `d`.
    fn distance_features(&self, d: GraphTensor<(X,)>) -> Vec<GraphTensor<(X,)>> {
        let f = self.options.fourier_features;
        let mut cols = Vec::with_capacity(2 * f + 1);
        for phase in [0.0, std::f32::consts::FRAC_PI_2] {
            for q in 0..f {
                let scale = 0.5f32.powi(q as i32);
                cols.push((d * scale + phase).sin());
            }
        }
        cols.push(d);
        cols
    }

    /// `sum_c x_c W[:, c]` for narrow inputs given as columns `x_c` `[edges]` and the matching
    /// input columns `start..` of `layer` (`[edges, out]`), as broadcast products (a matrix
    /// product with an inner size of a few columns is all overhead).
    fn narrow_product(
        &self,
        s: &mut Session,
        prefix: &str,
        layer: &DenseLinear,
        start: usize,
        cols: &[GraphTensor<(X,)>],
    ) -> Result<GraphTensor<(X, X)>, Error> {
        let out = layer.output();
        let mut acc: Option<GraphTensor<(X, X)>> = None;
        for (c, x) in cols.iter().enumerate() {
            let block = layer.columns(start + c, start + c + 1)?;
            let w = Param::new(block.weight.key.clone(), vec![out], block.weight.data)?;
            let w: GraphTensor<(X,)> = w.declare(s, prefix)?;
            let edges = dims(*x)[0];
            let term = expand_at::<_, (X, X)>(*x, 1, out) * expand_at::<_, (X, X)>(w, 0, edges);
            acc = Some(match acc {
                Some(a) => a + term,
                None => term,
            });
        }
        acc.ok_or(Error::Empty {
            what: "distance features",
        })
    }

    /// The per-edge term of the edge features in the first edge layer, `sum_f W1_f e_f`
    /// `[rows * k, H]`, or `None` without edge features.
    ///
    /// # Errors
    /// `ShapeMismatch` if the edge features are not `edge_dim` wide.
    fn edge_feature_term(
        &self,
        s: &mut Session,
        prefix: &str,
        nb: &EgnnNeighborhood,
    ) -> Result<Option<GraphTensor<(X, X)>>, Error> {
        let o = &self.options;
        let first = 2 * o.dim + o.distance_width();
        let mut at = first;
        let mut acc: Option<GraphTensor<(X, X)>> = None;
        for feature in &nb.edge_features {
            let term = match *feature {
                EdgeFeature::Dense(t) => {
                    let w = dims(t)[1].to_usize().unwrap_or(0);
                    let block = self.edge_in.columns(at, at + w)?;
                    at += w;
                    block.build(s, prefix, t)?
                }
                EdgeFeature::Embedded { table, ids } => {
                    let w = dims(table)[1].to_usize().unwrap_or(0);
                    let block = self.edge_in.columns(at, at + w)?;
                    at += w;
                    let projected = block.build(s, prefix, table)?;
                    gather::<X, X, X>(projected, ids)
                }
            };
            acc = Some(match acc {
                Some(a) => a + term,
                None => term,
            });
        }
        if at != first + o.edge_dim {
            return Err(Error::ShapeMismatch {
                what: format!("edge features of `{prefix}`"),
                expected: vec![o.edge_dim],
                found: vec![at - first],
            });
        }
        Ok(acc)
    }

    /// The weights of the fused edge stage ([`EgnnEdgeKernel`]), transposed to `(in, out)`.
    ///
    /// # Errors
    /// `ShapeMismatch` if a weight block is outside its layer (not for a loaded layer).
    fn edge_kernel(&self, edge_term: bool) -> Result<EgnnEdgeKernel, Error> {
        let o = &self.options;
        let transposed = |layer: &DenseLinear| -> Vec<f32> {
            let (out, input) = (layer.output(), layer.input());
            (0..input)
                .flat_map(|i| (0..out).map(move |r| (r, i)))
                .map(|(r, i)| layer.weight.data[r * input + i])
                .collect()
        };
        let bias = |layer: &DenseLinear| -> Vec<f32> {
            layer
                .bias
                .as_ref()
                .map_or_else(|| vec![0.0; layer.output()], |b| b.data.clone())
        };
        let phi = self
            .edge_in
            .columns(2 * o.dim, 2 * o.dim + o.distance_width())?;
        let coors = match (&self.coors_in, &self.coors_out) {
            (Some(c_in), Some(c_out)) => Some(EgnnCoorsWeights {
                hidden_t: transposed(c_in),
                hidden_bias: bias(c_in),
                out: c_out.weight.data.clone(),
                out_bias: bias(c_out).first().copied().unwrap_or(0.0),
            }),
            _ => None,
        };
        Ok(EgnnEdgeKernel {
            hidden: self.edge_in.output(),
            m_dim: o.m_dim,
            fourier_features: o.fourier_features,
            phi_t: transposed(&phi),
            edge_out_t: transposed(&self.edge_out),
            edge_out_bias: bias(&self.edge_out),
            gate: self.edge_gate.as_ref().map(|g| {
                (
                    g.weight.data.clone(),
                    bias(g).first().copied().unwrap_or(0.0),
                )
            }),
            coors,
            coors_scale: self
                .coors_scale
                .as_ref()
                .and_then(|p| p.data.first().copied()),
            clamp: o.coor_weights_clamp,
            pool_messages: self.node_in.is_some(),
            edge_term,
        })
    }

    /// Builds the layer on `feats` `[rows, dim]` and `coors` `[rows, 3]` with the
    /// neighbourhoods `nb`; weights become session weights `<prefix><key>`.
    ///
    /// # Errors
    /// `ShapeMismatch` if the feature or edge widths differ from the options; session errors.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        feats: GraphTensor<(X, X)>,
        coors: GraphTensor<(X, X)>,
        nb: &EgnnNeighborhood,
    ) -> Result<EgnnOutput, Error> {
        let o = &self.options;
        let (dim, k) = (o.dim, nb.k);
        let rows = dims(feats)[0];
        let edges = rows * k;
        // Edge tensors are built as [rows, k, width] (a node term is a broadcast view, a
        // per-edge term a free reshape) and flattened to [rows * k, width] once summed.
        let node_term = |t: GraphTensor<(X, X)>| -> GraphTensor<(X, X, X)> { expand_at(t, 1, k) };
        let edge_term_of = |t: GraphTensor<(X, X)>| -> GraphTensor<(X, X, X)> {
            let w = dims(t)[1];
            reshape(t, &[rows, k.into(), w])
        };
        let flat = |t: GraphTensor<(X, X, X)>| -> GraphTensor<(X, X)> {
            let w = dims(t)[2];
            reshape(t, &[edges, w])
        };
        let per_node = |t: GraphTensor<(X, X)>| -> GraphTensor<(X, X)> {
            let w = dims(t)[1];
            let t3: GraphTensor<(X, X, X)> = reshape(t, &[rows, k.into(), w]);
            t3.sum_reduce::<(X, X), Axis<1>>()
        };

        let valid: GraphTensor<(X,)> = reshape(nb.valid, &[edges]);
        // W1 [h_i, h_j, ..] + b1: the node terms once per node.
        let h_i = DenseLinear {
            weight: self.edge_in.columns(0, dim)?.weight,
            bias: self.edge_in.bias.clone(),
        }
        .build(s, prefix, feats)?;
        let h_j = self
            .edge_in
            .columns(dim, 2 * dim)?
            .build(s, prefix, feats)?;
        let edge_term = self.edge_feature_term(s, prefix, nb)?;

        // Pooled messages (before the mean) and coordinate shifts.
        let (pooled, shift) = match self.path {
            EgnnPath::Fused => {
                let out = egnn_edge(
                    EgnnEdgeInputs {
                        dst_term: h_i,
                        src_term: h_j,
                        coors,
                        src: nb.src,
                        valid: nb.valid,
                    },
                    edge_term,
                    self.edge_kernel(edge_term.is_some())?,
                );
                let m = Expression::from(o.m_dim);
                (
                    out.slice((.., ..m)).contiguous(),
                    out.slice((.., m..m + 3)).contiguous(),
                )
            }
            EgnnPath::Unfused => {
                // Geometry of every edge.
                let x_j: GraphTensor<(X, X)> = gather(coors, nb.src);
                let rel = flat(node_term(coors) - edge_term_of(x_j));
                let d: GraphTensor<(X,)> = (rel * rel).sum_reduce::<(X,), Axis<1>>();
                let phi = self.distance_features(d);
                let mut pre = node_term(h_i)
                    + edge_term_of(gather::<X, X, X>(h_j, nb.src))
                    + edge_term_of(self.narrow_product(s, prefix, &self.edge_in, 2 * dim, &phi)?);
                if let Some(t) = edge_term {
                    pre += edge_term_of(t);
                }
                let hidden = saturating_swish(flat(pre));
                let mut m = saturating_swish(self.edge_out.build(s, prefix, hidden)?);
                if let Some(gate) = &self.edge_gate {
                    let g = saturating_sigmoid(gate.build(s, prefix, m)?);
                    m *= expand_at::<_, (X, X)>(reshape::<_, (X,)>(g, &[edges]), 1, o.m_dim);
                }
                let shift = match (&self.coors_in, &self.coors_out) {
                    (Some(c_in), Some(c_out)) => {
                        let hidden = saturating_swish(c_in.build(s, prefix, m)?);
                        let w = c_out.build(s, prefix, hidden)?;
                        let mut w: GraphTensor<(X,)> = reshape::<_, (X,)>(w, &[edges]) * valid;
                        if let Some(c) = o.coor_weights_clamp {
                            w = w.max_f32(-c).min_f32(c);
                        }
                        let dir = match &self.coors_scale {
                            Some(scale) => {
                                let sc: GraphTensor<(X,)> = scale.declare(s, prefix)?;
                                let sc: GraphTensor<(X,)> =
                                    reshape(expand_at::<_, (X, X)>(sc, 0, edges), &[edges]);
                                // [d > 0]: a self edge (r = 0) has no direction; its unit
                                // vector's derivative (1e8 at the clamp) would cancel between
                                // x_i and x_j only in exact arithmetic, so it is zeroed (the
                                // forward value, 0, is unchanged).
                                let apart = (d * -1.0).less_than(d);
                                let inv = d.sqrt().max_f32(1e-8).recip() * apart * sc;
                                rel * expand_at::<_, (X, X)>(inv, 1, 3)
                            }
                            None => rel,
                        };
                        per_node(dir * expand_at::<_, (X, X)>(w, 1, 3))
                    }
                    _ => coors * 0.0,
                };
                (
                    per_node(m * expand_at::<_, (X, X)>(valid, 1, o.m_dim)),
                    shift,
                )
            }
        };

        let coors_new = if self.coors_in.is_some() {
            coors + shift
        } else {
            coors
        };

        let feats_new = match (&self.node_in, &self.node_out) {
            (Some(n_in), Some(n_out)) => {
                let mut pooled = pooled;
                if o.m_pool == MessagePool::Mean {
                    let count: GraphTensor<(X,)> = nb.valid.sum_reduce::<(X,), Axis<1>>();
                    let inv = count.max_f32(1e-8).recip();
                    pooled *= expand_at::<_, (X, X)>(inv, 1, o.m_dim);
                }
                let normed = match &self.node_norm {
                    Some((gamma, beta)) => {
                        let g: GraphTensor<(X,)> = gamma.declare(s, prefix)?;
                        let b: GraphTensor<(X,)> = beta.declare(s, prefix)?;
                        layer_norm(feats, g, b, 1e-5)
                    }
                    None => feats,
                };
                let a = DenseLinear {
                    weight: n_in.columns(0, dim)?.weight,
                    bias: n_in.bias.clone(),
                }
                .build(s, prefix, normed)?;
                let b = n_in.columns(dim, dim + o.m_dim)?.build(s, prefix, pooled)?;
                n_out.build(s, prefix, saturating_swish(a + b))? + feats
            }
            _ => feats,
        };
        Ok(EgnnOutput {
            feats: feats_new,
            coors: coors_new,
        })
    }
}
