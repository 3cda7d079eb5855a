//! An EGNN layer over a fiber: se3-transformer-pytorch's `EGNN` (the trunk of
//! `SE3Transformer(use_egnn = True)`), which carries degree-0 features as EGNN node features and
//! moves every higher degree along the differences of its neighbours' features.
//!
//! With `x_i` the degree-0 channels of node `i`, `h_{l,i}` its degree-`l` block (`c_l` channels
//! of `2l + 1` components), `r_ij` the distance and `e_ij` the edge features of edge `j -> i`:
//!
//! ```text
//! m_ij  = SiLU(W2 SiLU(W1 [x_i, x_j, |h_{l,i,c} - h_{l,j,c}| (l >= 1, every channel c), r_ij, e_ij]))
//! m_i   = m_ii + sum_{j valid} m_ij            (the node itself: h_i - h_i = 0, r = 0, e = 0)
//! x_i'  = x_i + N2 SiLU(N1 [LayerNorm(x_i), m_i])
//! w_ij  = clamp(H2 SiLU(H1 m_ij), -v, v)       (one weight per higher-degree channel)
//! h_{l,i}' = (h_{l,i} + sum_j w_ij,c  d / max(|d|, 1e-8) (|d| s_{l,c} + b_{l,c}))
//!            * sigmoid(G_l x_i')               (d = h_{l,i,c} - h_{l,j,c})
//! ```
//!
//! As in the library, the higher-degree sum runs over every selected neighbour, valid or not
//! (the neighbour mask does not reach it): the edges must carry the invalid neighbours too,
//! with `valid = 0` (missing edges, `src = -1`, are skipped). Degree 0 must be in the fiber.
//! Keys (PyTorch's): `node_norm.{weight,bias}`, `edge_mlp.{0,2}.*`, `htypes_mlp.{0,2}.*`,
//! `node_mlp.{0,2}.*`, `htype_norms.<l>.{scale,bias}` (`[1, 1, 1, c, 1]`),
//! `htype_gating.<l>.*`.
//!
//! Every step is a graph op with a vector-Jacobian product, so the layer trains and
//! differentiates with respect to its inputs.

use luminal::prelude::*;
use rand::Rng;

use super::activation::{saturating_sigmoid, saturating_swish};
use super::dense::DenseLinear;
use super::depthwise_tp::concat_axis1;
use super::edges::{full_like, EdgeGraph};
use super::graph::{
    channel_slice, dims, expand_at, layer_norm, mm, reshape, sum_axis, transpose, FeatureTensors,
    Param, ParamSource, E, N, X,
};
use crate::exec::Session;
use crate::fiber::FiberSpec;
use crate::ops::{gather, gather3, scatter_add, scatter_add3};
use crate::Error;

/// The sizes of a [`FiberEgnnLayer`] besides its fiber (se3-transformer-pytorch's
/// `edge_dim`, `egnn_hidden_dim`, `egnn_weights_clamp_value`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FiberEgnnOptions {
    /// Width of the edge features (`EdgeGraph::edge_features`, 0 for none).
    pub edge_dim: usize,
    /// Width of the messages `m_ij`.
    pub hidden: usize,
    /// Clamp of the higher-degree weights `w_ij` to `[-v, v]`.
    pub weights_clamp_value: Option<f64>,
}

/// One EGNN layer over a fiber (module doc).
#[derive(Debug, Clone)]
pub struct FiberEgnnLayer {
    fiber: FiberSpec,
    options: FiberEgnnOptions,
    node_norm: (Param, Param),
    edge_mlp: (DenseLinear, DenseLinear),
    htypes_mlp: (DenseLinear, DenseLinear),
    node_mlp: (DenseLinear, DenseLinear),
    /// Per higher degree: `(scale, bias)` of the norm of the differences, `[c]` each (keys
    /// `htype_norms.<l>.scale` / `.bias`, stored `[1, 1, 1, c, 1]`).
    htype_norms: Vec<(Param, Param)>,
    /// Per higher degree: the gate `G_l` of the new degree-0 features.
    htype_gating: Vec<DenseLinear>,
}

/// The sizes the layer's weights follow: degree-0 channels, the higher degrees' channels and
/// the edge MLP's input width.
fn sizes(fiber: &FiberSpec, options: &FiberEgnnOptions) -> Result<(usize, usize, usize), Error> {
    let degrees = fiber.degrees();
    let d0 = match degrees.first() {
        Some(d) if d.l == 0 => d.channels,
        _ => {
            return Err(Error::InvalidParameter {
                what: "EGNN fiber (degree 0 carries the node features)",
                expected: "a degree-0 entry",
                found: 0.0,
            })
        }
    };
    let hdims: usize = degrees.iter().skip(1).map(|d| d.channels).sum();
    Ok((d0, hdims, 2 * d0 + hdims + 1 + options.edge_dim))
}

/// A fresh `torch.nn.Linear(input, output)` under `key` (PyTorch's uniform bound
/// `1 / sqrt(input)`).
fn fresh_dense(key: &str, input: usize, output: usize, rng: &mut impl Rng) -> DenseLinear {
    let bound = 1.0 / (input.max(1) as f32).sqrt();
    DenseLinear {
        weight: Param::uniform(format!("{key}weight"), vec![output, input], bound, rng),
        bias: Some(Param::uniform(
            format!("{key}bias"),
            vec![output],
            bound,
            rng,
        )),
    }
}

impl FiberEgnnLayer {
    /// A layer with fresh weights (PyTorch's default initialisation; norms at scale 1,
    /// bias 0).
    ///
    /// # Errors
    /// `InvalidParameter` for a fiber without degree 0.
    pub fn new(
        fiber: &FiberSpec,
        options: FiberEgnnOptions,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        let (d0, hdims, e_in) = sizes(fiber, &options)?;
        let hidden = options.hidden;
        let higher: Vec<_> = fiber.degrees().iter().skip(1).copied().collect();
        Ok(FiberEgnnLayer {
            fiber: fiber.clone(),
            options,
            node_norm: (
                Param::new("node_norm.weight".into(), vec![d0], vec![1.0; d0])?,
                Param::new("node_norm.bias".into(), vec![d0], vec![0.0; d0])?,
            ),
            edge_mlp: (
                fresh_dense("edge_mlp.0.", e_in, 2 * e_in, rng),
                fresh_dense("edge_mlp.2.", 2 * e_in, hidden, rng),
            ),
            htypes_mlp: (
                fresh_dense("htypes_mlp.0.", hidden, 4 * hidden, rng),
                fresh_dense("htypes_mlp.2.", 4 * hidden, hdims, rng),
            ),
            node_mlp: (
                fresh_dense("node_mlp.0.", d0 + hidden, 2 * d0, rng),
                fresh_dense("node_mlp.2.", 2 * d0, d0, rng),
            ),
            htype_norms: higher
                .iter()
                .map(|d| {
                    let c = d.channels;
                    Ok((
                        Param::new(
                            format!("htype_norms.{}.scale", d.l),
                            vec![1, 1, 1, c, 1],
                            vec![1.0; c],
                        )?,
                        Param::new(
                            format!("htype_norms.{}.bias", d.l),
                            vec![1, 1, 1, c, 1],
                            vec![0.0; c],
                        )?,
                    ))
                })
                .collect::<Result<_, Error>>()?,
            htype_gating: higher
                .iter()
                .map(|d| fresh_dense(&format!("htype_gating.{}.", d.l), d0, d.channels, rng))
                .collect(),
        })
    }

    /// Loads the layer's checkpoint keys under `prefix` (e.g. `"net.layers.0.0."`).
    ///
    /// # Errors
    /// `InvalidParameter` for a fiber without degree 0; `MissingKey`, `WrongShape`,
    /// `NonFiniteWeight` from `src`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber: &FiberSpec,
        options: FiberEgnnOptions,
    ) -> Result<Self, Error> {
        let (d0, hdims, e_in) = sizes(fiber, &options)?;
        let hidden = options.hidden;
        let dense = |src: &mut dyn ParamSource, key: &str, input: usize, output: usize| {
            let full = DenseLinear::load(src, &format!("{prefix}{key}"), input, output, true)?;
            // keys relative to the layer, as a fresh layer's
            Ok::<_, Error>(DenseLinear {
                weight: Param {
                    key: format!("{key}weight"),
                    ..full.weight
                },
                bias: full.bias.map(|b| Param {
                    key: format!("{key}bias"),
                    ..b
                }),
            })
        };
        let param = |src: &mut dyn ParamSource, key: String, shape: Vec<usize>| {
            let p = Param::load(src, format!("{prefix}{key}"), shape)?;
            Ok::<_, Error>(Param { key, ..p })
        };
        let node_norm = (
            param(src, "node_norm.weight".into(), vec![d0])?,
            param(src, "node_norm.bias".into(), vec![d0])?,
        );
        let edge_mlp = (
            dense(src, "edge_mlp.0.", e_in, 2 * e_in)?,
            dense(src, "edge_mlp.2.", 2 * e_in, hidden)?,
        );
        let htypes_mlp = (
            dense(src, "htypes_mlp.0.", hidden, 4 * hidden)?,
            dense(src, "htypes_mlp.2.", 4 * hidden, hdims)?,
        );
        let node_mlp = (
            dense(src, "node_mlp.0.", d0 + hidden, 2 * d0)?,
            dense(src, "node_mlp.2.", 2 * d0, d0)?,
        );
        let mut htype_norms = Vec::new();
        let mut htype_gating = Vec::new();
        for d in fiber.degrees().iter().skip(1) {
            let c = d.channels;
            htype_norms.push((
                param(
                    src,
                    format!("htype_norms.{}.scale", d.l),
                    vec![1, 1, 1, c, 1],
                )?,
                param(
                    src,
                    format!("htype_norms.{}.bias", d.l),
                    vec![1, 1, 1, c, 1],
                )?,
            ));
            htype_gating.push(dense(src, &format!("htype_gating.{}.", d.l), d0, c)?);
        }
        Ok(FiberEgnnLayer {
            fiber: fiber.clone(),
            options,
            node_norm,
            edge_mlp,
            htypes_mlp,
            node_mlp,
            htype_norms,
            htype_gating,
        })
    }

    /// The fiber (input and output).
    pub fn fiber(&self) -> &FiberSpec {
        &self.fiber
    }

    /// Every parameter as `(<prefix><key>, param)`, in checkpoint order.
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        let mut visit = |p: &Param| f(&format!("{prefix}{}", p.key), p);
        for dense in self.dense_layers() {
            visit(&dense.weight);
            if let Some(b) = &dense.bias {
                visit(b);
            }
        }
        visit(&self.node_norm.0);
        visit(&self.node_norm.1);
        for (scale, bias) in &self.htype_norms {
            visit(scale);
            visit(bias);
        }
    }

    /// Every parameter mutably, as [`FiberEgnnLayer::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut params: Vec<&mut Param> = Vec::new();
        for dense in [
            &mut self.edge_mlp.0,
            &mut self.edge_mlp.1,
            &mut self.htypes_mlp.0,
            &mut self.htypes_mlp.1,
            &mut self.node_mlp.0,
            &mut self.node_mlp.1,
        ]
        .into_iter()
        .chain(self.htype_gating.iter_mut())
        {
            params.push(&mut dense.weight);
            if let Some(b) = &mut dense.bias {
                params.push(b);
            }
        }
        params.push(&mut self.node_norm.0);
        params.push(&mut self.node_norm.1);
        for (scale, bias) in &mut self.htype_norms {
            params.push(scale);
            params.push(bias);
        }
        for p in params {
            let key = format!("{prefix}{}", p.key);
            f(&key, p)?;
        }
        Ok(())
    }

    fn dense_layers(&self) -> impl Iterator<Item = &DenseLinear> {
        [
            &self.edge_mlp.0,
            &self.edge_mlp.1,
            &self.htypes_mlp.0,
            &self.htypes_mlp.1,
            &self.node_mlp.0,
            &self.node_mlp.1,
        ]
        .into_iter()
        .chain(self.htype_gating.iter())
    }

    /// The layer on features `x` over `edges` (module doc); weights are session weights
    /// `<prefix><key>`.
    ///
    /// # Errors
    /// `FiberMismatch` for features of another fiber, `ShapeMismatch` for edge features of
    /// another width; those of `Session::set_weight`.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors,
        edges: &EdgeGraph,
    ) -> Result<FeatureTensors, Error> {
        x.expect_fiber(&self.fiber, "EGNN input")?;
        let degrees = self.fiber.degrees();
        let d0 = degrees[0].channels;
        let tensors = x.tensors();
        let n = dims(tensors[0])[0];
        let e = dims(edges.src)[0];
        let nodes: GraphTensor<(N, X)> = reshape(tensors[0], &[n, d0.into()]);
        let xi: GraphTensor<(E, X)> = gather(nodes, edges.dst);
        let xj: GraphTensor<(E, X)> = gather(nodes, edges.src);
        // the differences of every higher degree along each edge, and their norms
        let mut rels = Vec::new();
        let mut edge_in: Vec<GraphTensor<(E, X)>> = vec![xi, xj];
        for (d, h) in degrees.iter().zip(tensors).skip(1) {
            let hi: GraphTensor<(E, X, X)> = gather3(*h, edges.dst);
            let hj: GraphTensor<(E, X, X)> = gather3(*h, edges.src);
            let rel = hi - hj;
            let norm: GraphTensor<(E, X)> = sum_axis(rel * rel, 2);
            let norm = norm.sqrt();
            edge_in.push(norm);
            rels.push((*d, rel, norm));
        }
        edge_in.push(reshape(edges.dist, &[e, 1.into()]));
        let width = self.options.edge_dim;
        if width > 0 {
            let ef = edges.edge_features.ok_or(Error::InvalidParameter {
                what: "EGNN edge features (EdgeGraph::edge_features)",
                expected: "present for edge_dim > 0",
                found: 0.0,
            })?;
            if dims(ef)[1].to_usize() != Some(width) {
                return Err(Error::ShapeMismatch {
                    what: "EGNN edge features".into(),
                    expected: vec![width],
                    found: vec![dims(ef)[1].to_usize().unwrap_or(0)],
                });
            }
            edge_in.push(ef);
        }
        // the node itself: [x_i, x_i, 0 ...] (no difference, distance or edge features)
        let rest = e_in_rest(&degrees[1..], width);
        let zeros: GraphTensor<(N, X)> =
            full_like(expand_at(nodes.sum_reduce::<(N,), Axis<1>>(), 1, rest), 0.0);
        let self_in = concat_axis1(&[nodes, nodes, zeros]);
        // the edge MLP's weights, declared once for the edges and the nodes themselves
        let first = Declared::of(&self.edge_mlp.0, s, prefix)?;
        let second = Declared::of(&self.edge_mlp.1, s, prefix)?;
        let message = |input: GraphTensor<(X, X)>| {
            saturating_swish(second.apply(saturating_swish(first.apply(input))))
        };
        let m_edge: GraphTensor<(E, X)> =
            super::graph::retype(message(super::graph::retype(concat_axis1(&edge_in))));
        let m_self: GraphTensor<(N, X)> =
            super::graph::retype(message(super::graph::retype(self_in)));
        let hidden = self.options.hidden;
        let valid: GraphTensor<(E, X)> = expand_at(edges.valid, 1, hidden);
        let m_i: GraphTensor<(N, X)> = scatter_add::<N, X, E>(m_edge * valid, edges.dst) + m_self;
        // degree 0: x + N2 SiLU(N1 [LayerNorm(x), m_i])
        let gamma: GraphTensor<(X,)> = self.node_norm.0.declare(s, prefix)?;
        let beta: GraphTensor<(X,)> = self.node_norm.1.declare(s, prefix)?;
        let normed = layer_norm(super::graph::retype(nodes), gamma, beta, 1e-5);
        let node_in = concat_axis1(&[normed, super::graph::retype(m_i)]);
        let h = saturating_swish(self.node_mlp.0.build(s, prefix, node_in)?);
        let new_nodes: GraphTensor<(N, X)> =
            super::graph::retype::<_, (N, X)>(self.node_mlp.1.build(s, prefix, h)?) + nodes;
        let mut out = vec![reshape(new_nodes, &[n, d0.into(), 1.into()])];
        if rels.is_empty() {
            return FeatureTensors::new(self.fiber.clone(), out);
        }
        // higher degrees: weights per edge and channel, moved along the differences
        let w1 = saturating_swish(self.htypes_mlp.0.build(
            s,
            prefix,
            super::graph::retype(m_edge),
        )?);
        let mut w: GraphTensor<(E, X)> =
            super::graph::retype(self.htypes_mlp.1.build(s, prefix, w1)?);
        if let Some(v) = self.options.weights_clamp_value {
            w = w.max_f32(-v as f32).min_f32(v as f32);
        }
        // edges with a source (missing edges read zeros, so their difference is h_i)
        let present: GraphTensor<(E,)> = edges.src.greater_than(full_like(edges.src, -0.5));
        let hdims: usize = degrees.iter().skip(1).map(|d| d.channels).sum();
        let mut offset = 0;
        for ((d, rel, norm), ((scale, bias), gating)) in rels
            .into_iter()
            .zip(self.htype_norms.iter().zip(&self.htype_gating))
        {
            let c = d.channels;
            let scale: GraphTensor<(X,)> =
                reshape(scale.declare::<(X, X, X, X, X)>(s, prefix)?, &[c.into()]);
            let bias: GraphTensor<(X,)> =
                reshape(bias.declare::<(X, X, X, X, X)>(s, prefix)?, &[c.into()]);
            let columns =
                channel_slice(reshape(w, &[e, hdims.into(), 1.into()]), offset, offset + c);
            let wl: GraphTensor<(E, X)> = reshape(columns, &[e, c.into()]);
            offset += c;
            let f = norm * expand_at::<_, (E, X)>(scale, 0, e) + expand_at::<_, (E, X)>(bias, 0, e);
            let coef = f * wl * expand_at::<_, (E, X)>(present, 1, c) / norm.max_f32(1e-8);
            let moved = rel * expand_at::<_, (E, X, X)>(coef, 2, d.width());
            let update: GraphTensor<(N, X, X)> = scatter_add3::<N, X, X, E>(moved, edges.dst);
            let gate = saturating_sigmoid(super::graph::retype::<_, (N, X)>(gating.build(
                s,
                prefix,
                super::graph::retype(new_nodes),
            )?));
            let h = tensors[out.len()];
            out.push((h + update) * expand_at::<_, (N, X, X)>(gate, 2, d.width()));
        }
        FeatureTensors::new(self.fiber.clone(), out)
    }
}

/// A [`DenseLinear`]'s weights declared on a session, to apply to several inputs.
struct Declared {
    /// `W^T`, `(in, out)`.
    weight_t: GraphTensor<(X, X)>,
    bias: Option<GraphTensor<(X,)>>,
}

impl Declared {
    fn of(layer: &DenseLinear, s: &mut Session, prefix: &str) -> Result<Self, Error> {
        let w: GraphTensor<(X, X)> = layer.weight.declare(s, prefix)?;
        Ok(Declared {
            weight_t: transpose(w),
            bias: match &layer.bias {
                Some(b) => Some(b.declare(s, prefix)?),
                None => None,
            },
        })
    }

    /// `x W^T + b` for `x` `[rows, in]`.
    fn apply(&self, x: GraphTensor<(X, X)>) -> GraphTensor<(X, X)> {
        let y = mm(x, self.weight_t);
        match self.bias {
            Some(b) => y + expand_at::<_, (X, X)>(b, 0, dims(x)[0]),
            None => y,
        }
    }
}

/// The edge MLP's input width after `[x_i, x_j]`: the higher degrees' channels, the distance
/// and the edge features.
fn e_in_rest(higher: &[crate::fiber::DegreeSpec], edge_dim: usize) -> usize {
    higher.iter().map(|d| d.channels).sum::<usize>() + 1 + edge_dim
}
