//! equiformer-pytorch 0.5.4's `Equiformer`, assembled from se3-core's equiformer layers and
//! run as a compiled luminal graph (float32).
//!
//! Forward (CONVENTIONS.md 3): degree-0 inputs (features, or token embeddings, plus positional
//! embeddings) `-> tp_in` (pooled [`DepthwiseTensorProductLayer`] from `dim_in` to `dim`)
//! `->` `depth` blocks `x += Attn(x); x += FF(x)` (reversible: two streams started at `x`,
//! `y1 = x1 + Attn(x2)`, `y2 = x2 + FF(y1)`, averaged at the end) `-> Norm ->` (with
//! `reduce_dim_out`) a linear layer (or a feed-forward block if `linear_out = false`) to one
//! channel per degree. Outputs `type0` (`(b, n, dim0)` or `(b, n)`), `type1` (`(b, n, dim1, 3)`
//! or `(b, n, 3)`) if there is a degree 1; `return_pooled` averages over the unmasked nodes.
//!
//! Neighbours, edge frames and edge labels are chosen on the host ([`HostEdges`]); the graph
//! is compiled once per node count and slot count and reused.
//!
//! Gradients: [`Equiformer::compile_with_gradients`] adds the backward pass (every operator of
//! the equiformer layers is a luminal primitive, gather or [`se3_core::ops::grad_scale`]: the
//! gradient graph's edges are made `with_per_edge_radial_weights`, so the depthwise tensor
//! products form `R_e` instead of using `ops::table_contract`, which has no backward);
//! [`CompiledEquiformer::forward_and_gradients`] returns `param.<key>` and `input.<name>`
//! gradients, with the coordinates' gradient chained on the host through the edge distances
//! and frames; [`DifferentiableEquiformer`] puts it behind [`crate::differentiable`].
//!
//! `num_adj_degrees_embed` with `adj_dim > 0` crashes in the library (the embedding is
//! counted in the radial input width but never concatenated). se3 builds what it documents
//! (and what se3-transformer-pytorch does): the bond-distance label of each pair (0 unbonded,
//! 1 bonded, 2.. K from the library's adjacency loop) is embedded (`adj_emb.weight`) and
//! concatenated after the edge embedding, before the distance.

pub mod config;
pub mod differentiable;
pub mod neighbors;

use luminal::prelude::*;
use se3_core::exec::{IndexBound, InputKind, Session};
use se3_core::fiber::{DegreeSpec, FiberSpec};
use se3_core::layers::depthwise_tp::concat_axis1;
use se3_core::layers::{
    AlignedEdges, DepthwiseTensorProductLayer, DtpOptions, EquiformerAttentionLayer,
    EquiformerAttentionOptions, EquiformerFeedForwardLayer, FeatureTensors, LinearLayer,
    LinearLayout, NodeBatch, Param, ParamSource, RmsNormLayer, ZBasis,
};
use se3_core::ops::{gather, grad_scale};

pub use config::{EquiformerConfig, EquiformerShape, PerDegree};
pub use differentiable::DifferentiableEquiformer;
pub use neighbors::HostEdges;

use crate::checkpoint::{KeyRecorder, StateDictSource};
use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::{EdgeInput, ModelInputs, NodeFeats};
use crate::Error;
use se3_core::layers::graph::{reshape, retype};

type X = Dyn<'-'>;

/// The forward literals of `Equiformer.forward`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EquiformerForward {
    /// Masked mean over the nodes of every output.
    pub return_pooled: bool,
}

impl EquiformerForward {
    /// Parses `forward_kwargs.literals` (`return_pooled` only).
    ///
    /// # Errors
    /// `UnknownKwarg` for another literal, `InvalidConfig` for a non-boolean `return_pooled`.
    pub fn from_literals(literals: &serde_json::Value) -> Result<Self, Error> {
        let mut f = EquiformerForward::default();
        if let Some(map) = literals.as_object() {
            for (k, v) in map {
                match (k.as_str(), v.as_bool()) {
                    ("return_pooled", Some(b)) => f.return_pooled = b,
                    ("return_pooled", None) => {
                        return Err(Error::InvalidConfig {
                            field: "return_pooled",
                            expected: "a boolean",
                            found: v.to_string(),
                        })
                    }
                    _ => {
                        return Err(Error::UnknownKwarg {
                            model: "Equiformer.forward",
                            name: k.clone(),
                        })
                    }
                }
            }
        }
        Ok(f)
    }
}

fn fiber_of(ch: &[usize]) -> Result<FiberSpec, Error> {
    Ok(FiberSpec::new(
        ch.iter()
            .enumerate()
            .map(|(l, &c)| DegreeSpec::new(l, c, None))
            .collect(),
    )?)
}

#[derive(Debug, Clone)]
enum OutProjection {
    Linear(LinearLayer),
    FeedForward(Box<EquiformerFeedForwardLayer>),
}

/// `Equiformer` with loaded weights: config, layers and embedding tables.
#[derive(Debug, Clone)]
pub struct Equiformer {
    cfg: EquiformerConfig,
    shape: EquiformerShape,
    token_emb: Option<Param>,
    pos_emb: Option<Param>,
    edge_emb: Option<Param>,
    adj_emb: Option<Param>,
    tp_in: DepthwiseTensorProductLayer,
    blocks: Vec<(EquiformerAttentionLayer, EquiformerFeedForwardLayer)>,
    norm: RmsNormLayer,
    out: Option<OutProjection>,
    zbasis: Vec<ZBasis>,
}

impl Equiformer {
    /// Builds the model from a state dict with the library's key names.
    ///
    /// # Errors
    /// Config errors, `Core(MissingKey | WrongShape | NonFiniteWeight)`, `UnexpectedKey`.
    pub fn from_state_dict(cfg: &EquiformerConfig, sd: &StateDict) -> Result<Self, Error> {
        let mut src = StateDictSource::new(sd);
        let m = Self::load(cfg, &mut src)?;
        src.finish()?;
        Ok(m)
    }

    /// Every state-dict key the config needs, with its shape (buffers `basis:(i,o)` included).
    ///
    /// # Errors
    /// Config errors.
    pub fn expected_keys(cfg: &EquiformerConfig) -> Result<Vec<(String, Vec<usize>)>, Error> {
        let mut rec = KeyRecorder::default();
        Self::load(cfg, &mut rec)?;
        Ok(rec.keys)
    }

    fn load(cfg: &EquiformerConfig, src: &mut dyn ParamSource) -> Result<Self, Error> {
        let shape = cfg.shape()?;
        let table = |src: &mut dyn ParamSource, key: &str, rows: Option<usize>, w: usize| {
            rows.map(|r| Param::load(src, key.to_string(), vec![r, w]))
                .transpose()
        };
        let d0 = shape.dim_in[0];
        let token_emb = table(src, "token_emb.weight", cfg.num_tokens, d0)?;
        let pos_emb = table(src, "pos_emb.weight", cfg.num_positions, d0)?;
        let edge_emb = table(
            src,
            "edge_emb.weight",
            cfg.num_edge_tokens,
            cfg.edge_dim.unwrap_or(0),
        )?;
        let adj_emb = table(
            src,
            "adj_emb.weight",
            cfg.has_adj_embedding()
                .then(|| cfg.num_adj_degrees_embed.unwrap_or(0) + 1),
            cfg.adj_dim,
        )?;
        let fiber = fiber_of(&shape.dim)?;
        let tp_in = DepthwiseTensorProductLayer::load(
            src,
            "tp_in.",
            &fiber_of(&shape.dim_in)?,
            &fiber,
            DtpOptions {
                pool: true,
                self_interaction: true,
                edge_dim: shape.edge_dim,
                radial_hidden: cfg.radial_hidden_dim,
            },
        )?;
        let attn_opts = EquiformerAttentionOptions {
            heads: shape.heads.clone(),
            dim_head: shape.dim_head.clone(),
            single_headed_kv: cfg.single_headed_kv,
            l2_distance: cfg.l2_dist_attention,
            gate_heads: cfg.gate_attn_head_outputs,
            edge_dim: shape.edge_dim,
            radial_hidden: cfg.radial_hidden_dim,
            attn_hidden_mult: cfg.attn_hidden_dim_mult,
            leaky_slope: cfg.attn_leakyrelu_slope as f32,
            linear_heads: cfg.num_linear_attn_heads,
            linear_dim_head: cfg.linear_attn_dim_head,
        };
        let mut blocks = Vec::new();
        for i in 0..cfg.depth {
            let a = EquiformerAttentionLayer::load(
                src,
                &block_prefix(cfg.reversible, i, 0),
                &fiber,
                &attn_opts,
            )?;
            let f = EquiformerFeedForwardLayer::load(
                src,
                &block_prefix(cfg.reversible, i, 1),
                &fiber,
                &fiber,
                cfg.ff_include_htype_norms,
            )?;
            blocks.push((a, f));
        }
        let norm = RmsNormLayer::load(src, "norm.", &fiber)?;
        let ones = fiber_of(&vec![1; shape.dim.len()])?;
        let out = match (cfg.reduce_dim_out, cfg.linear_out) {
            (false, _) => None,
            (true, true) => Some(OutProjection::Linear(LinearLayer::load(
                src,
                "ff_out.",
                &fiber,
                &ones,
                LinearLayout::Se3TransformerPytorch,
                false,
            )?)),
            (true, false) => Some(OutProjection::FeedForward(Box::new(
                EquiformerFeedForwardLayer::load(src, "ff_out.", &fiber, &ones, true)?,
            ))),
        };
        let mut zbasis = Vec::new();
        let lmax = shape.dim.len() - 1;
        for d_in in 1..=lmax {
            for d_out in 1..=lmax {
                let m = 2 * d_in.min(d_out) + 1;
                let values = src.get(&format!("basis:({d_in},{d_out})"), &[m, m])?;
                zbasis.push(ZBasis {
                    d_in,
                    d_out,
                    values,
                });
            }
        }
        Ok(Equiformer {
            cfg: cfg.clone(),
            shape,
            token_emb,
            pos_emb,
            edge_emb,
            adj_emb,
            tp_in,
            blocks,
            norm,
            out,
            zbasis,
        })
    }

    /// The config.
    pub fn config(&self) -> &EquiformerConfig {
        &self.cfg
    }

    /// Builds and compiles the graph for `batch` elements of `nodes_per` nodes (`N = b n` rows)
    /// with `k` slots each.
    ///
    /// Inputs: `x.<l>` (`(N, c, 2l+1)`) or `tokens (N,)`, `positions (N,)` (with
    /// `num_positions`), the [`AlignedEdges`] inputs `edges.*`, `edges.tokens (E,)` or
    /// `edges.features (E, edge_dim)`, `edges.adj (E,)`, `node_mask (N,)` (with linear-attention
    /// heads). Outputs `out.<l>`.
    ///
    /// # Errors
    /// Layer build errors (none for a model built by [`Equiformer::from_state_dict`]).
    pub fn compile(&self, batch: usize, nodes_per: usize, k: usize) -> Result<Session, Error> {
        let mut s = Session::new();
        self.build(&mut s, batch, nodes_per, k, None)?;
        s.compile();
        Ok(s)
    }

    /// As [`Equiformer::compile`], with the gradients of `L = Σ_l <out.l, cot.l>`: cotangent
    /// inputs `cot.<l>` (shaped as `out.<l>`), outputs `grad.<key>` for every parameter
    /// (PyTorch key names, [`Equiformer::parameter_keys`]) and `grad.<input>` for every float
    /// input: `x.<l>`, `edges.features`, and `edges.dist`, `edges.frame.<l>` (from which
    /// [`CompiledEquiformer::forward_and_gradients`] takes the coordinates' gradient).
    ///
    /// As the library, the gradient through the embedded type-0 input features (token and
    /// positional embeddings, `x.0`) is scaled by `embedding_grad_frac`
    /// ([`se3_core::ops::grad_scale`]): the stored PyTorch gradients are scaled the same way.
    ///
    /// # Errors
    /// As [`Equiformer::compile`]; `NoGradient` if an operator on the path has no backward.
    pub fn compile_with_gradients(
        &self,
        batch: usize,
        nodes_per: usize,
        k: usize,
    ) -> Result<Session, Error> {
        let mut s = Session::new();
        let frac = self.cfg.embedding_grad_frac as f32;
        let (out, inputs) = self.build(&mut s, batch, nodes_per, k, Some(frac))?;
        let mut pairs = Vec::new();
        for (d, t) in out.spec().degrees().iter().zip(out.tensors()) {
            let c = s.input_with_shape::<()>(
                &format!("cot.{}", d.l),
                InputKind::Values,
                &se3_core::ops::logical_dims_of(&t.shape),
            );
            pairs.push((t.no_shape(), c));
        }
        // parameters the graph does not read (e.g. the radial network of a degree pair whose
        // kernel is skipped because it is zero) have no `grad.<key>` output: their gradient is 0
        let declared: std::collections::BTreeSet<String> =
            s.weights().into_iter().map(|(n, _)| n).collect();
        let keys: Vec<(String, Vec<usize>)> = self
            .parameter_keys()?
            .into_iter()
            .filter(|(k, _)| declared.contains(k))
            .collect();
        let mut wrt: Vec<GraphTensor<()>> = inputs.iter().map(|(_, t)| *t).collect();
        for (key, _) in &keys {
            wrt.push(s.tensor(key)?);
        }
        let grads = se3_core::autodiff::gradients(&pairs, &wrt)?;
        let names = inputs
            .iter()
            .map(|(n, _)| n.clone())
            .chain(keys.into_iter().map(|(k, _)| k));
        for (name, g) in names.zip(grads) {
            s.output(&format!("grad.{name}"), g);
        }
        s.compile();
        Ok(s)
    }

    /// The trainable parameters (`named_parameters()` of the library: every checkpoint key
    /// but the buffers, `basis:(i,o)` and the radial networks' LayerNorm `beta`, which the
    /// library registers as a constant zero buffer) with their shapes.
    ///
    /// # Errors
    /// Config errors.
    pub fn parameter_keys(&self) -> Result<Vec<(String, Vec<usize>)>, Error> {
        Ok(Self::expected_keys(&self.cfg)?
            .into_iter()
            .filter(|(k, _)| !k.starts_with("basis:") && !k.ends_with(".beta"))
            .collect())
    }

    /// Declares the inputs and builds the forward graph into `s` (outputs `out.<l>`); with
    /// `grad_frac`, the embedded type-0 features pass through a gradient-scaling op. Returns
    /// the output features and the float inputs (name, tensor) one can differentiate.
    fn build(
        &self,
        s: &mut Session,
        batch: usize,
        nodes_per: usize,
        k: usize,
        grad_frac: Option<f32>,
    ) -> Result<(FeatureTensors, FloatInputs), Error> {
        let mut float_inputs: FloatInputs = Vec::new();
        let lmax = self.shape.dim.len() - 1;
        let n = batch * nodes_per;
        let e = n * k;
        let index = |s: &mut Session, name: &str, rows: usize, bound: usize| {
            s.input_with_shape::<(X,)>(
                name,
                InputKind::Indices {
                    bound: IndexBound::Fixed(bound),
                    allow_missing: false,
                },
                &[rows.into()],
            )
        };
        let in_fiber = fiber_of(&self.shape.dim_in)?;
        let d0 = self.shape.dim_in[0];
        let mut x0: GraphTensor<(X, X)> = match &self.token_emb {
            Some(t) => {
                let ids = index(s, "tokens", n, t.shape[0]);
                let tab: GraphTensor<(X, X)> = t.declare(s, "")?;
                gather(tab, ids)
            }
            None => {
                let x =
                    s.input_with_shape::<(X, X)>("x.0", InputKind::Values, &[n.into(), d0.into()]);
                float_inputs.push(("x.0".to_string(), x.no_shape()));
                x
            }
        };
        if let Some(p) = &self.pos_emb {
            let ids = index(s, "positions", n, p.shape[0]);
            let tab: GraphTensor<(X, X)> = p.declare(s, "")?;
            x0 += gather(tab, ids);
        }
        if let Some(frac) = grad_frac {
            x0 = grad_scale(x0, frac);
        }
        let x0: GraphTensor<(X, X, X)> = reshape(x0, &[n.into(), d0.into(), 1.into()]);
        let mut degrees = vec![retype(x0)];
        for d in in_fiber.degrees().iter().skip(1) {
            let name = format!("x.{}", d.l);
            let x = s.input_with_shape::<(Dyn<'n'>, X, X)>(
                &name,
                InputKind::Values,
                &[n.into(), d.channels.into(), d.width().into()],
            );
            float_inputs.push((name, x.no_shape()));
            degrees.push(x);
        }
        let x: FeatureTensors = FeatureTensors::new(in_fiber, degrees)?;
        let mut edges = AlignedEdges::input(s, "edges", n, k, lmax, &self.zbasis)?;
        if grad_frac.is_some() {
            // the node-table form of the radial networks (`ops::table_contract`) has no
            // gradient: a differentiated graph forms the per-edge weights
            edges = edges.with_per_edge_radial_weights();
            float_inputs.push(("edges.dist".to_string(), s.tensor("edges.dist")?));
            for l in 1..=lmax {
                let name = format!("edges.frame.{l}");
                float_inputs.push((name.clone(), s.tensor(&name)?));
            }
        }
        let mut feats: Vec<GraphTensor<(X, X)>> = Vec::new();
        if self.cfg.has_edges() {
            match &self.edge_emb {
                Some(t) => {
                    let ids = index(s, "edges.tokens", e, t.shape[0]);
                    let tab: GraphTensor<(X, X)> = t.declare(s, "")?;
                    feats.push(gather(tab, ids));
                }
                None => {
                    let f = s.input_with_shape::<(X, X)>(
                        "edges.features",
                        InputKind::Values,
                        &[e.into(), self.cfg.edge_dim.unwrap_or(0).into()],
                    );
                    float_inputs.push(("edges.features".to_string(), f.no_shape()));
                    feats.push(f);
                }
            }
        }
        if let Some(t) = &self.adj_emb {
            let ids = index(s, "edges.adj", e, t.shape[0]);
            let tab: GraphTensor<(X, X)> = t.declare(s, "")?;
            feats.push(gather(tab, ids));
        }
        if !feats.is_empty() {
            let f = if feats.len() == 1 {
                feats[0]
            } else {
                concat_axis1(&feats)
            };
            edges = edges.with_edge_features(f);
        }
        let node_batch = (self.cfg.num_linear_attn_heads > 0).then(|| NodeBatch {
            batch,
            nodes: nodes_per,
            mask: s.input_with_shape::<(X,)>("node_mask", InputKind::Mask, &[n.into()]),
        });
        let nb = node_batch.as_ref();
        let mut x = self.tp_in.build(s, "tp_in.", &x, &edges)?;
        if self.cfg.reversible {
            let (mut x1, mut x2) = (x.clone(), x);
            for (i, (a, f)) in self.blocks.iter().enumerate() {
                let y1 = a
                    .build(s, &block_prefix(true, i, 0), &x2, &edges, nb)?
                    .residual(&x1);
                let y2 = f.build(s, &block_prefix(true, i, 1), &y1)?.residual(&x2);
                x1 = y1;
                x2 = y2;
            }
            let avg = x1
                .residual(&x2)
                .tensors()
                .iter()
                .map(|t| *t * 0.5)
                .collect();
            x = FeatureTensors::new(x1.spec().clone(), avg)?;
        } else {
            for (i, (a, f)) in self.blocks.iter().enumerate() {
                x = a
                    .build(s, &block_prefix(false, i, 0), &x, &edges, nb)?
                    .residual(&x);
                x = f.build(s, &block_prefix(false, i, 1), &x)?.residual(&x);
            }
        }
        let mut x = self.norm.build(s, "norm.", &x)?;
        match &self.out {
            Some(OutProjection::Linear(l)) => x = l.build(s, "ff_out.", &x)?,
            Some(OutProjection::FeedForward(f)) => x = f.build(s, "ff_out.", &x)?,
            None => {}
        }
        x.output(s, "out");
        Ok((x, float_inputs))
    }
}

/// The float inputs of a graph one can differentiate: graph input name and tensor.
type FloatInputs = Vec<(String, GraphTensor<()>)>;

/// Checkpoint prefix of block `i`'s attention (`part` 0) or feed-forward (`part` 1): the
/// library wraps them as `f.net` / `g.net` in a reversible sequence.
fn block_prefix(reversible: bool, i: usize, part: usize) -> String {
    match (reversible, part) {
        (false, p) => format!("layers.blocks.{i}.{p}."),
        (true, 0) => format!("layers.blocks.{i}.f.net."),
        (true, _) => format!("layers.blocks.{i}.g.net."),
    }
}

/// An [`Equiformer`] with its compiled graph (rebuilt when the node or slot count changes).
pub struct CompiledEquiformer {
    model: Equiformer,
    fwd: EquiformerForward,
    cache: Option<((usize, usize, usize), Session)>,
    /// Parameter values set after loading ([`CompiledEquiformer::set_parameter`]), applied
    /// to every graph compiled later.
    updated: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    gradients: bool,
    instrumented: bool,
    /// Where the graph runs.
    device: se3_core::Device,
    timings: Vec<(&'static str, f64)>,
}

impl std::fmt::Debug for CompiledEquiformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledEquiformer")
            .field("model", &self.model)
            .field("fwd", &self.fwd)
            .finish_non_exhaustive()
    }
}

impl CompiledEquiformer {
    /// Wraps `model` (the graph is compiled on the first forward pass).
    pub fn new(model: Equiformer, fwd: EquiformerForward) -> Self {
        CompiledEquiformer {
            model,
            fwd,
            cache: None,
            updated: std::collections::BTreeMap::new(),
            gradients: false,
            instrumented: false,
            device: se3_core::Device::Cpu,
            timings: Vec::new(),
        }
    }

    /// Runs this model's graphs on `device` from now on (graphs compiled already move with
    /// their weights; later ones are built there), see [`Session::set_device`].
    ///
    /// # Errors
    /// `CudaNotCompiled`, `CudaUnavailable`, or `InvalidOp` to move a graph off its device.
    pub fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        device.check()?;
        if let Some((_, s)) = self.cache.as_mut() {
            s.set_device(device)?;
        }
        self.device = device;
        Ok(())
    }

    /// Wraps every operator of the compiled graph in a timer ([`se3_core::exec::profile`]), now
    /// and whenever the graph is recompiled, so later forwards record per-operator timings
    /// (benchmarks only: it adds a clock read per op).
    pub fn instrument(&mut self) {
        self.instrumented = true;
        if let Some((_, s)) = self.cache.as_mut() {
            s.compile_with(se3_core::exec::profile::Instrument);
        }
    }

    /// Memory figures of the last graph run (resident weights, peak intermediates; se3-core
    /// [`MemoryStats`](se3_core::exec::MemoryStats)); all zero before the first forward.
    pub fn memory_stats(&self) -> se3_core::exec::MemoryStats {
        self.cache
            .as_ref()
            .map(|(_, s)| s.memory_stats())
            .unwrap_or_default()
    }

    /// Wall time of the stages of the last forward, seconds: `host:neighbours` (validation and
    /// neighbour selection with edge frames), `host:inputs` (setting the graph inputs) and
    /// `graph` (the graph run).
    pub fn last_timings(&self) -> &[(&'static str, f64)] {
        &self.timings
    }

    /// The model.
    pub fn model(&self) -> &Equiformer {
        &self.model
    }

    /// Forward pass; outputs `type0` and (with a degree 1) `type1`, shaped as the library's.
    ///
    /// # Errors
    /// Input validation and neighbour-selection errors ([`HostEdges::select`]); `InputShape`
    /// for features of the wrong kind or width; `IndexOutOfRange` for tokens.
    pub fn forward(&mut self, inp: &ModelInputs) -> Result<StateDict, Error> {
        Ok(self.run(inp, None)?.0)
    }

    /// Compiles the graph with gradients ([`Equiformer::compile_with_gradients`]) from now
    /// on, for [`CompiledEquiformer::forward_and_gradients`].
    pub fn with_gradients(mut self) -> Self {
        if !self.gradients {
            self.gradients = true;
            self.cache = None;
        }
        self
    }

    /// The outputs (as [`CompiledEquiformer::forward`]) and the gradients of
    /// `L = Σ_out <out, cotangent.out>` (`cotangents` holds `cotangent.type<l>`, shaped as the
    /// outputs; a missing one counts as zero): `param.<key>` for every parameter (PyTorch key
    /// names), `input.feats` (dense type-0 features; `input.feats.<l>` for a dict of degrees),
    /// `input.edges` (continuous edge features, `(b, n, n, edge_dim)`, zero for pairs that are
    /// no edge) and `input.coors`, float64 tensors.
    ///
    /// As the library, the gradient through the embedded type-0 features (`input.feats`,
    /// `token_emb`, `pos_emb`) is `embedding_grad_frac` times the derivative. `input.coors`
    /// is the true derivative (the library detaches it): through the distances in the graph,
    /// and through the edge frames by [`neighbors::frame_gradients`]; the neighbour choice is
    /// piecewise constant.
    ///
    /// # Errors
    /// As [`CompiledEquiformer::forward`]; `InputShape` for a cotangent of the wrong size;
    /// `NoGradient` if the model was not made [`CompiledEquiformer::with_gradients`].
    pub fn forward_and_gradients(
        &mut self,
        inp: &ModelInputs,
        cotangents: &StateDict,
    ) -> Result<(StateDict, StateDict), Error> {
        if !self.gradients {
            return Err(Error::Core(se3_core::Error::NoGradient {
                op: "CompiledEquiformer without with_gradients()".to_string(),
            }));
        }
        let (out, grads) = self.run(inp, Some(cotangents))?;
        let grads = grads.ok_or(Error::NotCompiled {
            option: "equiformer gradients",
        })?;
        Ok((out, grads))
    }

    /// Replaces the value of parameter `key` (PyTorch key name, its shape) in the compiled
    /// graph and in every graph compiled later (e.g. after an optimizer step).
    ///
    /// # Errors
    /// `UnknownName` for a key that is not a parameter, `InputShape` for a wrong shape.
    pub fn set_parameter(&mut self, key: &str, data: Vec<f32>) -> Result<(), Error> {
        let keys = self.model.parameter_keys()?;
        let Some((_, shape)) = keys.iter().find(|(k, _)| k == key) else {
            return Err(Error::Core(se3_core::Error::UnknownName {
                role: "parameter",
                name: key.to_string(),
            }));
        };
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::InputShape {
                name: "parameter",
                expected: format!("{key}: {shape:?}"),
                found: vec![data.len()],
            });
        }
        if let Some((_, s)) = self.cache.as_mut() {
            set_if_read(s, key, &data, shape)?;
        }
        self.updated.insert(key.to_string(), (shape.clone(), data));
        Ok(())
    }

    fn run(
        &mut self,
        inp: &ModelInputs,
        cotangents: Option<&StateDict>,
    ) -> Result<(StateDict, Option<StateDict>), Error> {
        let t0 = std::time::Instant::now();
        inp.validate()?;
        let m = &self.model;
        let (b, n) = (inp.batch(), inp.nodes());
        let rows = b * n;
        let lmax = m.shape.dim.len() - 1;
        let host = HostEdges::select(&m.cfg, inp, lmax)?;
        let t_select = t0.elapsed().as_secs_f64();
        let key = (b, n, host.k);
        if self.cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let mut s = if self.gradients {
                m.compile_with_gradients(b, n, host.k)?
            } else {
                m.compile(b, n, host.k)?
            };
            s.set_device(self.device)?;
            for (key, (shape, data)) in &self.updated {
                set_if_read(&mut s, key, data, shape)?;
            }
            if self.instrumented {
                s.compile_with(se3_core::exec::profile::Instrument);
            }
            self.cache = Some((key, s));
        }
        let t1 = std::time::Instant::now();
        let Some((_, s)) = self.cache.as_mut() else {
            return Err(Error::NotCompiled {
                option: "equiformer graph",
            });
        };
        s.set_dim('n', rows);
        set_node_inputs(s, m, inp)?;
        if m.cfg.num_linear_attn_heads > 0 {
            let mask = (0..rows)
                .map(|r| {
                    let keep = inp.node_mask(r / n).is_none_or(|mk| mk[r % n]);
                    if keep {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            s.set("node_mask", mask, &[rows])?;
        }
        if let Some(p) = &m.pos_emb {
            if n > p.shape[0] {
                return Err(Error::InputShape {
                    name: "feats",
                    expected: format!("at most num_positions = {} nodes", p.shape[0]),
                    found: vec![b, n],
                });
            }
            s.set(
                "positions",
                (0..rows).map(|r| (r % n) as f32).collect(),
                &[rows],
            )?;
        }
        let e = rows * host.k;
        let geometry = cotangents.map(|_| (host.src.clone(), host.dst.clone(), host.rels.clone()));
        s.set("edges.src", host.src, &[e])?;
        s.set("edges.dst", host.dst, &[e])?;
        s.set("edges.mask", host.mask, &[e])?;
        s.set("edges.mean", host.mean, &[e])?;
        s.set("edges.dist", host.dist, &[e, 1])?;
        for (l, f) in (1..=lmax).zip(host.frames) {
            s.set(&format!("edges.frame.{l}"), f, &[e, 2 * l + 1, 2 * l + 1])?;
        }
        if let Some(t) = host.edge_tokens {
            s.set("edges.tokens", t, &[e])?;
        }
        if let Some(f) = host.edge_features {
            let w = f.len() / e.max(1);
            s.set("edges.features", f, &[e, w])?;
        }
        if let Some(a) = host.adj_labels {
            s.set("edges.adj", a, &[e])?;
        }
        match cotangents {
            Some(cot) => set_cotangents(s, m, &self.fwd, inp, cot)?,
            // a forward pass of the gradient graph: zero cotangents
            None if self.gradients => set_cotangents(s, m, &self.fwd, inp, &StateDict::new())?,
            None => {}
        }
        let t_inputs = t1.elapsed().as_secs_f64();
        let t2 = std::time::Instant::now();
        s.run()?;
        self.timings = vec![
            ("host:neighbours", t_select),
            ("host:inputs", t_inputs),
            ("graph", t2.elapsed().as_secs_f64()),
        ];
        let mut sd = StateDict::new();
        for l in 0..=lmax.min(1) {
            let o = s.get(&format!("out.{l}"))?;
            let c = o.shape.get(1).copied().unwrap_or(1);
            let w = 2 * l + 1;
            let data: Vec<f64> = o.data.iter().map(|&v| f64::from(v)).collect();
            let (data, mut shape) = if self.fwd.return_pooled {
                (pool_nodes(&data, inp, c * w), vec![b, c, w])
            } else {
                (data, vec![b, n, c, w])
            };
            let at = shape.len() - 2;
            if m.cfg.reduce_dim_out {
                shape.remove(at);
            }
            if l == 0 {
                shape.pop();
            }
            sd.insert(format!("type{l}"), Tensor::new(shape, data)?);
        }
        let grads = match geometry {
            Some((src, dst, rels)) => Some(read_gradients(s, m, inp, &src, &dst, &rels)?),
            None => None,
        };
        Ok((sd, grads))
    }
}

/// Sets weight `key` if the graph reads it (a parameter of a skipped kernel is not declared).
fn set_if_read(s: &mut Session, key: &str, data: &[f32], shape: &[usize]) -> Result<(), Error> {
    if s.weights().iter().any(|(n, _)| n == key) {
        s.set_weight(key, data.to_vec(), shape)?;
    }
    Ok(())
}

/// Sets `cot.<l>` for every output degree: the cotangent of `type<l>` (zero if absent or for
/// degrees above 1, which the model does not return), spread over the nodes with the masked
/// mean's weights when the outputs are pooled.
fn set_cotangents(
    s: &mut Session,
    m: &Equiformer,
    fwd: &EquiformerForward,
    inp: &ModelInputs,
    cot: &StateDict,
) -> Result<(), Error> {
    let (b, n) = (inp.batch(), inp.nodes());
    let rows = b * n;
    let out_ch = if m.cfg.reduce_dim_out {
        vec![1; m.shape.dim.len()]
    } else {
        m.shape.dim.clone()
    };
    for (l, &c) in out_ch.iter().enumerate() {
        let w = 2 * l + 1;
        let per_node = c * w;
        let mut data = vec![0.0f32; rows * per_node];
        if let Some(t) = cot.get(&format!("cotangent.type{l}")).filter(|_| l <= 1) {
            let want = if fwd.return_pooled { b } else { rows } * per_node;
            if t.data.len() != want {
                return Err(Error::InputShape {
                    name: "cotangent",
                    expected: format!("cotangent.type{l} with {want} elements"),
                    found: t.shape.clone(),
                });
            }
            if fwd.return_pooled {
                for bi in 0..b {
                    let mask = inp.node_mask(bi);
                    let count = (0..n).filter(|&i| mask.is_none_or(|mk| mk[i])).count();
                    for i in (0..n).filter(|&i| mask.is_none_or(|mk| mk[i])) {
                        for q in 0..per_node {
                            data[(bi * n + i) * per_node + q] =
                                (t.data[bi * per_node + q] / count as f64) as f32;
                        }
                    }
                }
            } else {
                data = t.data.iter().map(|&v| v as f32).collect();
            }
        }
        s.set(&format!("cot.{l}"), data, &[rows, c, w])?;
    }
    Ok(())
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// The gradients of a run of the gradient graph, in the library's names and shapes.
fn read_gradients(
    s: &Session,
    m: &Equiformer,
    inp: &ModelInputs,
    src: &[f32],
    dst: &[f32],
    rels: &[[f64; 3]],
) -> Result<StateDict, Error> {
    let (b, n) = (inp.batch(), inp.nodes());
    let mut sd = StateDict::new();
    let declared: std::collections::BTreeSet<String> =
        s.weights().into_iter().map(|(n, _)| n).collect();
    for (key, shape) in m.parameter_keys()? {
        let data = if declared.contains(&key) {
            to_f64(&s.get(&format!("grad.{key}"))?.data)
        } else {
            vec![0.0; shape.iter().product()]
        };
        sd.insert(format!("param.{key}"), Tensor::new(shape, data)?);
    }
    match &inp.feats {
        NodeFeats::Dense(t) => {
            let g = s.get("grad.x.0")?;
            sd.insert(
                "input.feats".to_string(),
                Tensor::new(t.shape.clone(), to_f64(&g.data))?,
            );
        }
        NodeFeats::Degrees(map) => {
            for (l, t) in map {
                let g = s.get(&format!("grad.x.{l}"))?;
                sd.insert(
                    format!("input.feats.{l}"),
                    Tensor::new(t.shape.clone(), to_f64(&g.data))?,
                );
            }
        }
        NodeFeats::Tokens { .. } => {}
    }
    let edge_of = |e: usize| {
        let (row, j) = (dst[e] as usize, src[e] as usize % n.max(1));
        (row / n.max(1), row % n.max(1), j)
    };
    if let (Some(EdgeInput::Dense(t)), None) = (&inp.edges, &m.edge_emb) {
        if m.cfg.has_edges() {
            let g = s.get("grad.edges.features")?;
            let w = t.shape.get(3).copied().unwrap_or(0);
            let mut d = vec![0.0f64; b * n * n * w];
            for e in 0..src.len() {
                let (bi, i, j) = edge_of(e);
                for c in 0..w {
                    d[((bi * n + i) * n + j) * w + c] += f64::from(g.data[e * w + c]);
                }
            }
            sd.insert("input.edges".to_string(), Tensor::new(t.shape.clone(), d)?);
        }
    }
    let lmax = m.shape.dim.len() - 1;
    let g_dist = s.get("grad.edges.dist")?.data;
    let mut g_frames = Vec::new();
    for l in 1..=lmax {
        g_frames.push(s.get(&format!("grad.edges.frame.{l}"))?.data);
    }
    let mut d_rel = neighbors::frame_gradients(rels, lmax, &g_frames)?;
    for (e, (r, d)) in rels.iter().zip(d_rel.iter_mut()).enumerate() {
        let nr = (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt();
        if nr > 0.0 {
            for c in 0..3 {
                d[c] += f64::from(g_dist[e]) * r[c] / nr;
            }
        }
    }
    let mut coors = vec![0.0f64; b * n * 3];
    for (e, d) in d_rel.iter().enumerate() {
        let (bi, i, j) = edge_of(e);
        for c in 0..3 {
            coors[(bi * n + i) * 3 + c] += d[c];
            coors[(bi * n + j) * 3 + c] -= d[c];
        }
    }
    sd.insert(
        "input.coors".to_string(),
        Tensor::new(vec![b, n, 3], coors)?,
    );
    Ok(sd)
}

/// Masked mean over the nodes (`masked_mean(t, mask, dim = 1)`: 0 if no node is unmasked).
fn pool_nodes(data: &[f64], inp: &ModelInputs, width: usize) -> Vec<f64> {
    let (b, n) = (inp.batch(), inp.nodes());
    let mut out = vec![0.0; b * width];
    for bi in 0..b {
        let mask = inp.node_mask(bi);
        let count = (0..n).filter(|&i| mask.is_none_or(|m| m[i])).count();
        for i in (0..n).filter(|&i| mask.is_none_or(|m| m[i])) {
            for c in 0..width {
                out[bi * width + c] += data[(bi * n + i) * width + c];
            }
        }
        if count > 0 {
            for v in &mut out[bi * width..(bi + 1) * width] {
                *v /= count as f64;
            }
        }
    }
    out
}

/// Sets `tokens` or `x.<l>` from the node features.
fn set_node_inputs(s: &mut Session, m: &Equiformer, inp: &ModelInputs) -> Result<(), Error> {
    let (b, n) = (inp.batch(), inp.nodes());
    let rows = b * n;
    let dim_in = &m.shape.dim_in;
    match (&inp.feats, &m.token_emb) {
        (NodeFeats::Tokens { shape, ids }, Some(t)) if shape.as_slice() == [b, n] => {
            let bound = t.shape[0];
            let mut v = Vec::with_capacity(rows);
            for (index, &id) in ids.iter().enumerate() {
                if id < 0 || id as usize >= bound {
                    return Err(Error::IndexOutOfRange {
                        name: "feats",
                        index,
                        found: id,
                        bound,
                    });
                }
                v.push(id as f32);
            }
            s.set("tokens", v, &[rows])?;
            Ok(())
        }
        (NodeFeats::Dense(t), None) if dim_in.len() == 1 && t.shape == [b, n, dim_in[0]] => {
            let v = t.data.iter().map(|&x| x as f32).collect();
            s.set("x.0", v, &[rows, dim_in[0]])?;
            Ok(())
        }
        (NodeFeats::Degrees(map), None) if map.len() == dim_in.len() => {
            for (l, &c) in dim_in.iter().enumerate() {
                let w = 2 * l + 1;
                let t = map.get(&l).ok_or(Error::MissingInput { name: "feats" })?;
                let ok = t.shape == [b, n, c, w] || (l == 0 && t.shape == [b, n, c]);
                if !ok {
                    return Err(Error::InputShape {
                        name: "feats",
                        expected: format!("degree {l}: ({b}, {n}, {c}, {w})"),
                        found: t.shape.clone(),
                    });
                }
                let v = t.data.iter().map(|&x| x as f32).collect();
                if l == 0 {
                    s.set("x.0", v, &[rows, c])?;
                } else {
                    s.set(&format!("x.{l}"), v, &[rows, c, w])?;
                }
            }
            Ok(())
        }
        (f, _) => Err(Error::InputShape {
            name: "feats",
            expected: match &m.token_emb {
                Some(_) => format!("({b}, {n}) token indices"),
                None if dim_in.len() == 1 => format!("({b}, {n}, {}) floats", dim_in[0]),
                None => format!("a dict of degrees 0..{}", dim_in.len()),
            },
            found: match f {
                NodeFeats::Dense(t) => t.shape.clone(),
                NodeFeats::Tokens { shape, .. } => shape.clone(),
                NodeFeats::Degrees(_) => vec![],
            },
        }),
    }
}
