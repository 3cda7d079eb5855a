//! egnn-pytorch 0.2.8: the `EGNN` layer and `EGNN_Network`, run as compiled float32 luminal
//! graphs of se3-core's [`EgnnLayer`] and [`GlobalLinearAttention`].
//!
//! The host does only what depends on the data's structure: checking inputs, the
//! bond-distance labels of `num_adj_degrees`, and before every layer the neighbour selection
//! ([`selection`]) from that layer's input coordinates, which decides the edge list the layer's
//! graph reads. Everything numeric (embeddings included) runs in the graphs: one graph for the
//! token/position embeddings, one per layer (global attention block + EGNN layer). Graphs are
//! compiled per input layout (batch, nodes, neighbours, optional inputs) and reused.
//!
//! Inputs (CONVENTIONS 2.5): `feats` (b, n, dim) float, or (b, n) token ids with `num_tokens`;
//! `coors` (b, n, 3); `mask` (b, n); `adj_mat` (n, n) or (b, n, n); `edges` (b, n, n, edge_dim)
//! float, or (b, n, n) edge-token ids with `num_edge_tokens`. Outputs: `feats` (b, n, dim),
//! invariant, and `coors` (b, n, 3), E(3)-equivariant (rotation, reflection, translation).

pub mod config;
pub mod differentiable;
pub mod gradients;
pub mod selection;

use std::collections::HashMap;

use se3_core::exec::{IndexBound, InputKind, Session};
use se3_core::layers::{
    EdgeFeature, EgnnLayer, EgnnNeighborhood, EgnnPath, GlobalLinearAttention, GlobalSizes, Param,
};

pub use config::{EgnnConfig, EgnnNetworkConfig, KeyShape, NetworkKwargs};
pub use differentiable::DifferentiableEgnn;
use selection::{Selection, SelectionRule};

use crate::checkpoint::StateDictSource;
use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::{BoolTensor, EdgeInput, ModelInputs, NodeFeats};
use crate::model_file::ModelFile;
use crate::se3_transformer::graph::adjacency_degrees;
use crate::Error;

use luminal::prelude::*;
use se3_core::layers::graph::X;

/// Which egnn-pytorch class the model is.
#[derive(Debug, Clone, PartialEq)]
pub enum EgnnKind {
    /// One `EGNN` layer.
    Layer(EgnnConfig),
    /// `EGNN_Network`.
    Network(EgnnNetworkConfig),
}

/// An egnn-pytorch model with its parameters (float32), ready to compile.
#[derive(Debug, Clone)]
pub struct Egnn {
    kind: EgnnKind,
    layers: Vec<EgnnLayer>,
    globals: Vec<Option<GlobalLinearAttention>>,
    global_tokens: Option<Param>,
    token_emb: Option<Param>,
    pos_emb: Option<Param>,
    edge_emb: Option<Param>,
    adj_emb: Option<Param>,
    /// Every parameter (state-dict key, shape, float32 values), in checkpoint order.
    params: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// What the graphs of one input layout are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Layout {
    batch: usize,
    nodes: usize,
    k: usize,
    mask: bool,
    /// Width of dense edge features, if given.
    dense_edges: Option<usize>,
    edge_tokens: bool,
    adj_labels: bool,
}

impl EgnnKind {
    /// The class named by `file` with its parsed constructor kwargs.
    ///
    /// # Errors
    /// `InvalidConfig` (`class`) for another class; the config errors.
    pub fn from_file(file: &ModelFile) -> Result<Self, Error> {
        if file.class.ends_with("EGNN_Network") {
            Ok(EgnnKind::Network(EgnnNetworkConfig::from_kwargs(
                &file.constructor_kwargs,
            )?))
        } else if file.class.ends_with("EGNN") {
            Ok(EgnnKind::Layer(EgnnConfig::from_kwargs(
                &file.constructor_kwargs,
            )?))
        } else {
            Err(Error::InvalidConfig {
                field: "class",
                expected: "egnn_pytorch.EGNN or egnn_pytorch.EGNN_Network",
                found: file.class.clone(),
            })
        }
    }
}

impl Egnn {
    /// Whether `file` is an egnn-pytorch model.
    pub fn handles(file: &ModelFile) -> bool {
        file.library.name == "egnn-pytorch"
            || file.class.ends_with("EGNN")
            || file.class.ends_with("EGNN_Network")
    }

    /// Builds the model of `file` (class `egnn_pytorch.EGNN` or `egnn_pytorch.EGNN_Network`)
    /// from `weights`.
    ///
    /// # Errors
    /// `InvalidConfig` (`class`) for another class; config errors; `MissingKey`, `WrongShape`,
    /// `UnexpectedKey` for a checkpoint that is not the model's.
    pub fn from_parts(file: &ModelFile, weights: &StateDict) -> Result<Self, Error> {
        Self::load(EgnnKind::from_file(file)?, weights)
    }

    /// Builds the model of `kind` from `weights` (egnn-pytorch's state-dict keys).
    ///
    /// # Errors
    /// As [`Egnn::from_parts`].
    pub fn load(kind: EgnnKind, weights: &StateDict) -> Result<Self, Error> {
        let mut src = StateDictSource::new(weights);
        let mut model = Egnn {
            kind: kind.clone(),
            layers: Vec::new(),
            globals: Vec::new(),
            global_tokens: None,
            token_emb: None,
            pos_emb: None,
            edge_emb: None,
            adj_emb: None,
            params: weights
                .iter()
                .map(|(k, t)| {
                    let data = t.data.iter().map(|&v| v as f32).collect();
                    (k.to_string(), t.shape.clone(), data)
                })
                .collect(),
        };
        match &kind {
            EgnnKind::Layer(cfg) => {
                let layer = EgnnLayer::load(&mut src, "", &cfg.options(cfg.edge_dim))?;
                model.layers.push(layer);
                model.globals.push(None);
            }
            EgnnKind::Network(cfg) => {
                let (net, dim) = (&cfg.net, cfg.layer.dim);
                let mut table = |key: &str, rows: Option<usize>, width: usize| {
                    rows.map(|r| Param::load(&mut src, key.into(), vec![r, width]))
                        .transpose()
                };
                model.token_emb = table("token_emb.weight", net.num_tokens, dim)?;
                model.pos_emb = table("pos_emb.weight", net.num_positions, dim)?;
                model.edge_emb = table("edge_emb.weight", net.num_edge_tokens, cfg.layer.edge_dim)?;
                let adj_rows = net
                    .num_adj_degrees
                    .filter(|_| net.adj_dim > 0)
                    .map(|d| d + 1);
                model.adj_emb = table("adj_emb.weight", adj_rows, net.adj_dim)?;
                if net.global_linear_attn_every > 0 {
                    model.global_tokens = Some(Param::load(
                        &mut src,
                        "global_tokens".into(),
                        vec![net.num_global_tokens, dim],
                    )?);
                }
                let options = cfg.layer.options(cfg.layer.edge_dim + cfg.adj_width());
                for i in 0..net.depth {
                    let global = if cfg.is_global_layer(i) {
                        Some(GlobalLinearAttention::load(
                            &mut src,
                            &format!("layers.{i}.0."),
                            dim,
                            net.global_linear_attn_heads,
                            net.global_linear_attn_dim_head,
                        )?)
                    } else {
                        None
                    };
                    model.globals.push(global);
                    model.layers.push(EgnnLayer::load(
                        &mut src,
                        &format!("layers.{i}.1."),
                        &options,
                    )?);
                }
            }
        }
        src.finish()?;
        Ok(model)
    }

    /// The state-dict keys and shapes of `kind` (egnn-pytorch's names).
    pub fn expected_keys(kind: &EgnnKind) -> Vec<config::KeyShape> {
        match kind {
            EgnnKind::Layer(c) => c.expected_keys("", c.edge_dim),
            EgnnKind::Network(c) => c.expected_keys(),
        }
    }

    /// A model of `kind` with random weights: matrices `U(-1, 1) / sqrt(fan_in)`, vectors
    /// `1 + U(-0.1, 0.1)` (LayerNorm weights) or `U(-0.1, 0.1)`, embeddings `U(-1, 1)`.
    ///
    /// # Errors
    /// As [`Egnn::load`] (none for a config that parsed).
    pub fn random(kind: EgnnKind, rng: &mut impl rand::Rng) -> Result<Self, Error> {
        let mut sd = StateDict::new();
        for (key, shape) in Self::expected_keys(&kind) {
            let n: usize = shape.iter().product();
            let data = match shape.as_slice() {
                [_, fan] if !key.contains("emb") && key != "global_tokens" => {
                    let s = 1.0 / (*fan.max(&1) as f64).sqrt();
                    (0..n).map(|_| s * rng.gen_range(-1.0..1.0)).collect()
                }
                [_] if key.ends_with("norm_seq.weight")
                    || key.ends_with("norm_queries.weight")
                    || key.ends_with("ff.0.weight")
                    || key.ends_with("node_norm.weight") =>
                {
                    (0..n)
                        .map(|_| 1.0 + 0.1 * rng.gen_range(-1.0..1.0))
                        .collect()
                }
                [_] => (0..n).map(|_| 0.1 * rng.gen_range(-1.0..1.0)).collect(),
                _ => (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            };
            sd.insert(key, Tensor::new(shape, data)?);
        }
        Self::load(kind, &sd)
    }

    /// The class and its config.
    pub fn kind(&self) -> &EgnnKind {
        &self.kind
    }

    fn layer_config(&self) -> &EgnnConfig {
        match &self.kind {
            EgnnKind::Layer(c) => c,
            EgnnKind::Network(c) => &c.layer,
        }
    }

    /// Runs the model once (compiling its graphs for this input layout).
    ///
    /// # Errors
    /// As [`CompiledEgnn::forward`].
    pub fn forward(&self, inputs: &ModelInputs) -> Result<StateDict, Error> {
        CompiledEgnn::new(self.clone()).forward(inputs)
    }
}

/// Inputs checked and laid out for the graphs.
struct Prepared {
    batch: usize,
    nodes: usize,
    coors: Vec<[f64; 3]>,
    mask: Option<Vec<bool>>,
    /// Adjacency the layers see, `b n n`.
    adj: Option<Vec<bool>>,
    /// Bond-distance label of every pair, `b n n`.
    adj_labels: Option<Vec<i64>>,
    /// Dense edge features `b n n w` with `w`.
    dense_edges: Option<(Vec<f32>, usize)>,
    /// Edge-token ids, `b n n`.
    edge_tokens: Option<Vec<i64>>,
    /// Dense node features (`b n dim`) or token ids (`b n`).
    feats: Result<Vec<f32>, Vec<i64>>,
}

fn bool_per_batch(
    name: &'static str,
    t: &BoolTensor,
    b: usize,
    n: usize,
) -> Result<Vec<bool>, Error> {
    match t.shape.as_slice() {
        [x, y] if *x == n && *y == n => Ok((0..b).flat_map(|_| t.data.iter().copied()).collect()),
        [z, x, y] if *z == b && *x == n && *y == n => Ok(t.data.clone()),
        _ => Err(Error::InputShape {
            name,
            expected: format!("({n}, {n}) or ({b}, {n}, {n})"),
            found: t.shape.clone(),
        }),
    }
}

fn check_ids(name: &'static str, ids: &[i64], bound: usize) -> Result<(), Error> {
    match ids.iter().position(|&v| v < 0 || v as usize >= bound) {
        Some(index) => Err(Error::IndexOutOfRange {
            name,
            index,
            found: ids[index],
            bound,
        }),
        None => Ok(()),
    }
}

/// An [`Egnn`] with its compiled graphs, one set per input layout.
pub struct CompiledEgnn {
    model: Egnn,
    /// Wrap every operator in a timer ([`se3_core::exec::profile`]).
    profile: bool,
    embed: HashMap<(usize, usize, bool), Session>,
    layers: HashMap<Layout, Vec<Session>>,
    /// Where the graphs run.
    device: se3_core::Device,
    /// How the layer graphs compute their edge stage (`Unfused` for training: its weights are
    /// session weights that can be set, and it has a backward).
    path: EgnnPath,
    /// The layer graphs with their gradients ([`gradients`]), one set per input layout.
    grad_layers: HashMap<Layout, Vec<Session>>,
    /// Parameters were set since the graphs last saw them.
    stale: bool,
}

impl std::fmt::Debug for CompiledEgnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledEgnn")
            .field("layouts", &self.layers.len())
            .finish()
    }
}

impl CompiledEgnn {
    /// Runs this model's graphs on `device` from now on (graphs compiled already move with
    /// their weights; later ones are built there), see [`Session::set_device`].
    ///
    /// # Errors
    /// `CudaNotCompiled`, `CudaUnavailable`, or `InvalidOp` to move a graph off its device.
    pub fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        device.check()?;
        for s in self
            .embed
            .values_mut()
            .chain(self.layers.values_mut().flatten())
        {
            s.set_device(device)?;
        }
        self.device = device;
        Ok(())
    }

    /// Wraps `model`; graphs are compiled on first use of each input layout.
    pub fn new(model: Egnn) -> Self {
        CompiledEgnn {
            model,
            profile: false,
            embed: HashMap::new(),
            layers: HashMap::new(),
            device: se3_core::Device::Cpu,
            path: EgnnPath::Fused,
            grad_layers: HashMap::new(),
            stale: false,
        }
    }

    /// Times every operator of the layer graphs compiled from now on (records in
    /// [`se3_core::exec::profile`]; for benchmarks).
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on;
    }

    /// The model.
    pub fn model(&self) -> &Egnn {
        &self.model
    }

    fn prepare(&self, inp: &ModelInputs) -> Result<Prepared, Error> {
        inp.validate()?;
        let (b, n) = (inp.batch(), inp.nodes());
        let cfg = self.model.layer_config();
        let net = match &self.model.kind {
            EgnnKind::Network(c) => Some(c),
            EgnnKind::Layer(_) => None,
        };
        let coors = inp
            .coors
            .data
            .chunks_exact(3)
            .map(|c| [c[0], c[1], c[2]])
            .collect();
        let mask = inp.mask.as_ref().map(|m| m.data.clone());
        let feats = match (&inp.feats, &self.model.token_emb) {
            (NodeFeats::Tokens { ids, .. }, Some(_)) => {
                let bound = net.and_then(|c| c.net.num_tokens).unwrap_or(0);
                check_ids("feats", ids, bound)?;
                Err(ids.clone())
            }
            (NodeFeats::Dense(t), None) if t.shape.get(2) == Some(&cfg.dim) => {
                Ok(t.data.iter().map(|&v| v as f32).collect())
            }
            (NodeFeats::Dense(t), None) => {
                return Err(Error::InputShape {
                    name: "feats",
                    expected: format!("({b}, {n}, {})", cfg.dim),
                    found: t.shape.clone(),
                })
            }
            (f, _) => {
                let found = match f {
                    NodeFeats::Dense(t) => t.shape.clone(),
                    NodeFeats::Tokens { shape, .. } => shape.clone(),
                    NodeFeats::Degrees(_) => vec![],
                };
                let expected = if self.model.token_emb.is_some() {
                    format!("({b}, {n}) token ids")
                } else {
                    format!("({b}, {n}, {}) floats", cfg.dim)
                };
                return Err(Error::InputShape {
                    name: "feats",
                    expected,
                    found,
                });
            }
        };
        if let Some(p) = net.and_then(|c| c.net.num_positions) {
            if n > p {
                return Err(Error::InputShape {
                    name: "feats",
                    expected: format!("at most num_positions = {p} nodes"),
                    found: vec![b, n],
                });
            }
        }
        let mut adj = inp
            .adj_mat
            .as_ref()
            .map(|a| bool_per_batch("adj_mat", a, b, n))
            .transpose()?;
        let mut adj_labels = None;
        if let Some(c) = net {
            if let Some(degrees) = c.net.num_adj_degrees {
                let a = adj
                    .as_ref()
                    .ok_or(Error::MissingInput { name: "adj_mat" })?;
                let mut labels = Vec::with_capacity(b * n * n);
                let mut last = Vec::with_capacity(b * n * n);
                for blk in a.chunks_exact(n * n) {
                    let (l, cur) = adjacency_degrees(blk, n, degrees);
                    labels.extend(l);
                    last.extend(cur);
                }
                adj = Some(last);
                if self.model.adj_emb.is_some() {
                    adj_labels = Some(labels);
                }
            }
        }
        let edge_width = cfg.edge_dim;
        let (mut dense_edges, mut edge_tokens) = (None, None);
        match (&inp.edges, net.and_then(|c| c.net.num_edge_tokens)) {
            (None, _) if edge_width > 0 => return Err(Error::MissingInput { name: "edges" }),
            (None, _) => {}
            (Some(EdgeInput::Tokens { shape, ids }), Some(v)) => {
                if shape != &[b, n, n] {
                    return Err(Error::InputShape {
                        name: "edges",
                        expected: format!("({b}, {n}, {n}) edge-token ids"),
                        found: shape.clone(),
                    });
                }
                check_ids("edges", ids, v)?;
                if edge_width > 0 {
                    edge_tokens = Some(ids.clone());
                }
            }
            (Some(EdgeInput::Dense(t)), None) => {
                if t.shape.len() != 4 || t.shape[..3] != [b, n, n] || t.shape[3] != edge_width {
                    return Err(Error::InputShape {
                        name: "edges",
                        expected: format!("({b}, {n}, {n}, {edge_width}) floats"),
                        found: t.shape.clone(),
                    });
                }
                if let Some(index) = t.data.iter().position(|v| !v.is_finite()) {
                    return Err(Error::NonFinite {
                        name: "edges",
                        index,
                    });
                }
                if edge_width > 0 {
                    dense_edges = Some((t.data.iter().map(|&v| v as f32).collect(), edge_width));
                }
            }
            (Some(e), _) => {
                let found = match e {
                    EdgeInput::Tokens { shape, .. } => shape.clone(),
                    EdgeInput::Dense(t) => t.shape.clone(),
                };
                return Err(Error::InputShape {
                    name: "edges",
                    expected: if net.and_then(|c| c.net.num_edge_tokens).is_some() {
                        format!("({b}, {n}, {n}) edge-token ids")
                    } else {
                        format!("({b}, {n}, {n}, {edge_width}) floats")
                    },
                    found,
                });
            }
        }
        if inp.neighbor_mask.is_some() {
            return Err(Error::UnexpectedInput {
                name: "neighbor_mask",
            });
        }
        if inp.global_feats.is_some() {
            return Err(Error::UnexpectedInput {
                name: "global_feats",
            });
        }
        Ok(Prepared {
            batch: b,
            nodes: n,
            coors,
            mask,
            adj: if cfg.uses_nearest() { adj } else { None },
            adj_labels,
            dense_edges,
            edge_tokens,
            feats,
        })
    }

    fn rule(&self) -> SelectionRule {
        let c = self.model.layer_config();
        SelectionRule {
            num_nearest: c.num_nearest_neighbors,
            only_sparse: c.only_sparse_neighbors,
            valid_radius: c.valid_radius,
        }
    }

    /// The node features after the embeddings, `b n dim`.
    fn embed(&mut self, p: &Prepared) -> Result<Vec<f32>, Error> {
        let (b, n) = (p.batch, p.nodes);
        let dim = self.model.layer_config().dim;
        if self.model.token_emb.is_none() && self.model.pos_emb.is_none() {
            return p
                .feats
                .clone()
                .map_err(|_| Error::MissingInput { name: "feats" });
        }
        let tokens = p.feats.is_err();
        let key = (b, n, tokens);
        if !self.embed.contains_key(&key) {
            let mut s = Session::new();
            let rows = b * n;
            let mut x: GraphTensor<(X, X)> = match &self.model.token_emb {
                Some(table) if tokens => {
                    let t: GraphTensor<(X, X)> = table.declare(&mut s, "")?;
                    let ids = s.input_with_shape::<(X,)>(
                        "token_ids",
                        InputKind::Indices {
                            bound: IndexBound::Fixed(table.shape[0]),
                            allow_missing: false,
                        },
                        &[rows.into()],
                    );
                    se3_core::ops::gather(t, ids)
                }
                _ => s.input_with_shape::<(X, X)>(
                    "feats",
                    InputKind::Values,
                    &[rows.into(), dim.into()],
                ),
            };
            if let Some(table) = &self.model.pos_emb {
                let t: GraphTensor<(X, X)> = table.declare(&mut s, "")?;
                let ids = s.input_with_shape::<(X,)>(
                    "pos_ids",
                    InputKind::Indices {
                        bound: IndexBound::Fixed(table.shape[0]),
                        allow_missing: false,
                    },
                    &[rows.into()],
                );
                x += se3_core::ops::gather(t, ids);
            }
            s.output("feats", x);
            s.set_device(self.device)?;
            self.embed.insert(key, s);
        }
        let s = self.embed.get_mut(&key).ok_or(Error::NotCompiled {
            option: "embedding graph",
        })?;
        match &p.feats {
            Err(ids) => s.set(
                "token_ids",
                ids.iter().map(|&v| v as f32).collect(),
                &[b * n],
            )?,
            Ok(f) => s.set("feats", f.clone(), &[b * n, dim])?,
        }
        if self.model.pos_emb.is_some() {
            let pos = (0..b).flat_map(|_| (0..n).map(|i| i as f32)).collect();
            s.set("pos_ids", pos, &[b * n])?;
        }
        s.run()?;
        Ok(s.take("feats")?.data)
    }

    /// The layer graphs of layout `l`; with `grad`, each also takes cotangents `cot.feats`,
    /// `cot.coors` (and `cot.tokens` after global attention) and returns the gradients of
    /// `L = <feats', cot.feats> + <coors', cot.coors> (+ <tokens', cot.tokens>)` with respect
    /// to its inputs (`grad.feats`, `grad.coors`, `grad.tokens`, `grad.edges`) and its session
    /// weights (`grad.<weight>`), on the unfused edge stage.
    fn build_layers(&self, l: &Layout, grad: bool) -> Result<Vec<Session>, Error> {
        let (b, n, k) = (l.batch, l.nodes, l.k);
        let (rows, edges) = (b * n, b * n * k);
        let dim = self.model.layer_config().dim;
        let path = if grad { EgnnPath::Unfused } else { self.path };
        let mut out = Vec::with_capacity(self.model.layers.len());
        for (layer, global) in self.model.layers.iter().zip(&self.model.globals) {
            let layer = layer.clone().with_path(path);
            let mut s = Session::new();
            let mut feats = s.input_with_shape::<(X, X)>(
                "feats",
                InputKind::Values,
                &[rows.into(), dim.into()],
            );
            let mut wrt_inputs: Vec<(&str, GraphTensor<()>)> = vec![("feats", feats.no_shape())];
            let coors = s.input_with_shape::<(X, X)>(
                "coors",
                InputKind::Coordinates,
                &[rows.into(), 3.into()],
            );
            wrt_inputs.push(("coors", coors.no_shape()));
            let src = s.input_with_shape::<(X,)>(
                "src",
                InputKind::Indices {
                    bound: IndexBound::Fixed(rows),
                    allow_missing: false,
                },
                &[edges.into()],
            );
            let valid =
                s.input_with_shape::<(X, X)>("valid", InputKind::Mask, &[rows.into(), k.into()]);
            let mut edge_features = Vec::new();
            let mut outputs: Vec<(&str, GraphTensor<(X, X)>)> = Vec::new();
            if let Some(w) = l.dense_edges {
                let e = s.input_with_shape::<(X, X)>(
                    "edges",
                    InputKind::Values,
                    &[edges.into(), w.into()],
                );
                wrt_inputs.push(("edges", e.no_shape()));
                edge_features.push(EdgeFeature::Dense(e));
            }
            for (on, table, name) in [
                (l.edge_tokens, &self.model.edge_emb, "edge_ids"),
                (l.adj_labels, &self.model.adj_emb, "adj_ids"),
            ] {
                if let (true, Some(table)) = (on, table) {
                    let t: GraphTensor<(X, X)> = table.declare(&mut s, "")?;
                    let ids = s.input_with_shape::<(X,)>(
                        name,
                        InputKind::Indices {
                            bound: IndexBound::Fixed(table.shape[0]),
                            allow_missing: false,
                        },
                        &[edges.into()],
                    );
                    edge_features.push(EdgeFeature::Embedded { table: t, ids });
                }
            }
            if let Some(g) = global {
                let tokens = self.model.global_tokens.as_ref().map_or(0, |t| t.shape[0]);
                let q = s.input_with_shape::<(X, X)>(
                    "tokens",
                    InputKind::Values,
                    &[(b * tokens).into(), dim.into()],
                );
                let mask = l.mask.then(|| {
                    s.input_with_shape::<(X, X)>(
                        "node_mask",
                        InputKind::Mask,
                        &[b.into(), n.into()],
                    )
                });
                let sizes = GlobalSizes {
                    batch: b,
                    nodes: n,
                    tokens,
                };
                wrt_inputs.push(("tokens", q.no_shape()));
                let (x, q) = g.build(&mut s, "", sizes, feats, q, mask)?;
                feats = x;
                s.output("tokens", q);
                outputs.push(("tokens", q));
            }
            let nb = EgnnNeighborhood {
                k,
                src,
                valid,
                edge_features,
            };
            let o = layer.build(&mut s, "", feats, coors, &nb)?;
            s.output("feats", o.feats);
            s.output("coors", o.coors);
            outputs.push(("feats", o.feats));
            outputs.push(("coors", o.coors));
            if grad {
                gradients::add_gradients(&mut s, &outputs, &wrt_inputs)?;
            }
            if self.profile {
                s.compile_with((
                    se3_core::exec::CpuCompiler::default(),
                    se3_core::exec::profile::Instrument,
                ));
            } else {
                s.compile();
            }
            out.push(s);
        }
        Ok(out)
    }

    /// Runs the model: outputs `feats` (b, n, dim) and `coors` (b, n, 3).
    ///
    /// # Errors
    /// Input errors (`InputShape`, `MissingInput`, `UnexpectedInput`, `IndexOutOfRange`,
    /// `NonFinite`, `EmptyGraph`), `InvalidConfig` for more neighbours than nodes,
    /// `NoNeighbors` when no node has a neighbour, messages are mean-pooled and there is no mask
    /// (PyTorch returns NaN features); session errors.
    pub fn forward(&mut self, inputs: &ModelInputs) -> Result<StateDict, Error> {
        self.refresh()?;
        let p = self.prepare(inputs)?;
        self.run(&p, None)
    }

    /// The forward pass on prepared inputs; with `tape`, records every layer's inputs and
    /// neighbourhoods for the backward pass.
    fn run(
        &mut self,
        p: &Prepared,
        mut tape: Option<&mut Vec<LayerTape>>,
    ) -> Result<StateDict, Error> {
        let (b, n) = (p.batch, p.nodes);
        let dim = self.model.layer_config().dim;
        let rule = self.rule();
        let mut feats = self.embed(p)?;
        let mut coors: Vec<[f64; 3]> = p.coors.clone();
        let mut tokens: Option<Vec<f32>> = self
            .model
            .global_tokens
            .as_ref()
            .map(|t| (0..b).flat_map(|_| t.data.iter().copied()).collect());
        let depth = self.model.layers.len();
        for li in 0..depth {
            let sel = rule.select(&coors, (b, n), p.mask.as_deref(), p.adj.as_deref())?;
            let cfg = self.model.layer_config();
            if sel.valid.iter().all(|v| !v)
                && p.mask.is_none()
                && cfg.update_feats
                && cfg.m_pool() == Some(se3_core::layers::MessagePool::Mean)
            {
                // torch takes the mean of an empty set of messages: NaN features.
                return Err(Error::NoNeighbors);
            }
            let layout = Layout {
                batch: b,
                nodes: n,
                k: sel.k,
                mask: p.mask.is_some(),
                dense_edges: p.dense_edges.as_ref().map(|e| e.1),
                edge_tokens: p.edge_tokens.is_some(),
                adj_labels: p.adj_labels.is_some(),
            };
            if !self.layers.contains_key(&layout) {
                let mut built = self.build_layers(&layout, false)?;
                for s in &mut built {
                    s.set_device(self.device)?;
                }
                self.layers.insert(layout, built);
            }
            let sessions = self.layers.get_mut(&layout).ok_or(Error::NotCompiled {
                option: "EGNN layer graph",
            })?;
            let s = &mut sessions[li];
            feed_layer(s, p, &sel, &feats, &coors, dim)?;
            if let (Some(t), true) = (&tokens, self.model.globals[li].is_some()) {
                s.set("tokens", t.clone(), &[t.len() / dim, dim])?;
                if let Some(m) = &p.mask {
                    s.set(
                        "node_mask",
                        m.iter().map(|&v| f32::from(u8::from(v))).collect(),
                        &[b, n],
                    )?;
                }
            }
            s.run()?;
            let tokens_in = if self.model.globals[li].is_some() {
                tokens.replace(s.take("tokens")?.data)
            } else {
                None
            };
            let feats_in = std::mem::replace(&mut feats, s.take("feats")?.data);
            let coors_in = coors.clone();
            coors = s
                .take("coors")?
                .data
                .chunks_exact(3)
                .map(|c| [f64::from(c[0]), f64::from(c[1]), f64::from(c[2])])
                .collect();
            if let Some(t) = tape.as_deref_mut() {
                t.push(LayerTape {
                    layout,
                    selection: sel,
                    feats: feats_in,
                    coors: coors_in,
                    tokens: tokens_in,
                });
            }
        }
        let mut out = StateDict::new();
        out.insert(
            "feats",
            Tensor::new(
                vec![b, n, dim],
                feats.iter().map(|&v| f64::from(v)).collect(),
            )?,
        );
        out.insert(
            "coors",
            Tensor::new(vec![b, n, 3], coors.iter().flatten().copied().collect())?,
        );
        Ok(out)
    }
}

/// What the backward pass needs of one layer's forward run: its layout, neighbourhoods and
/// inputs.
struct LayerTape {
    layout: Layout,
    selection: Selection,
    feats: Vec<f32>,
    coors: Vec<[f64; 3]>,
    tokens: Option<Vec<f32>>,
}

/// Sets one layer graph's inputs from the selection.
fn feed_layer(
    s: &mut Session,
    p: &Prepared,
    sel: &Selection,
    feats: &[f32],
    coors: &[[f64; 3]],
    dim: usize,
) -> Result<(), Error> {
    let (n, rows) = (p.nodes, p.batch * p.nodes);
    let e = sel.pairs.len();
    s.set("feats", feats.to_vec(), &[rows, dim])?;
    s.set(
        "coors",
        coors.iter().flatten().map(|&v| v as f32).collect(),
        &[rows, 3],
    )?;
    s.set(
        "src",
        sel.pairs
            .iter()
            .map(|&(b, _, j)| (b * n + j) as f32)
            .collect(),
        &[e],
    )?;
    s.set(
        "valid",
        sel.valid.iter().map(|&v| f32::from(u8::from(v))).collect(),
        &[rows, sel.k],
    )?;
    let pair = |&(b, i, j): &(usize, usize, usize)| (b * n + i) * n + j;
    if let Some((data, w)) = &p.dense_edges {
        let rows_e: Vec<f32> = sel
            .pairs
            .iter()
            .flat_map(|q| data[pair(q) * w..(pair(q) + 1) * w].iter().copied())
            .collect();
        s.set("edges", rows_e, &[e, *w])?;
    }
    for (ids, name) in [(&p.edge_tokens, "edge_ids"), (&p.adj_labels, "adj_ids")] {
        if let Some(ids) = ids {
            s.set(
                name,
                sel.pairs.iter().map(|q| ids[pair(q)] as f32).collect(),
                &[e],
            )?;
        }
    }
    Ok(())
}
