//! VN-Transformer: VN-transformer 0.1.0's `VNTransformer` (tests/reference/CONVENTIONS.md 4),
//! assembled from se3-core's vector-neuron layers ([`se3_core::layers::vector_neuron`]) and
//! run as a compiled luminal graph (float32).
//!
//! Forward, as the library: coordinates `(b, n, 3)` (centred by their mean over batch *and*
//! nodes, mask ignored, with `translation_equivariance` or `translation_invariant`), concatenated
//! with invariant features `(b, n, F)` (or the token embedding of integer features) into one VN
//! channel of `3 + F` components, `vn_proj_in` = `VNLinear(1 -> dim)`, then per encoder layer
//! `x = VNLayerNorm(VNAttention(x, mask)) + x`, `x = VNLayerNorm(VNFeedForward(x)) + x`, and
//! with `reduce_dim_out` `vn_proj_out` = `VNLayerNorm`, `VNLinear(dim -> 1)`. The first three
//! components are the output coordinates (the mean added back with `translation_equivariance`),
//! the rest the output features. Outputs `coors` `(b, n, 3)` and `feats` `(b, n, F)` when
//! features were given, else `out` `(b, n, 3)`; without `reduce_dim_out` they keep the channel
//! axis, `(b, n, dim, 3)` and `(b, n, dim, F)`.
//!
//! Checkpoint keys are the library's: `token_emb.weight`, `vn_proj_in.1.*`,
//! `encoder.layers.<i>.{0 attention, 1 norm, 2 feed-forward, 3 norm}.*`, `vn_proj_out.{0,1}.*`.

pub mod config;
mod gradients;

pub use gradients::VnDifferentiable;

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::{IndexBound, InputKind, Session};
use se3_core::layers::vector_neuron::lift_points;
use se3_core::layers::{
    Param, ParamSource, VnAttention, VnAttentionKind, VnFeedForward, VnLayerNorm, VnLinear,
    VnTensor,
};

pub use config::VnTransformerConfig;

use crate::checkpoint::{KeyRecorder, StateDictSource};
use crate::checkpoint::{StateDict, Tensor};
use crate::differentiable::{Objective, ObjectiveGraph};
use crate::inputs::{ModelInputs, NodeFeats};
use crate::Error;
use se3_core::layers::graph::expand_at;

type X = Dyn<'-'>;

/// One encoder layer: attention, its post-norm, feed-forward, its post-norm.
#[derive(Debug, Clone)]
struct EncoderLayer {
    attn: VnAttention,
    attn_norm: VnLayerNorm,
    ff: VnFeedForward,
    ff_norm: VnLayerNorm,
}

/// The kind of node features a forward call gives (each compiles its own graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeatKind {
    /// Coordinates only.
    Absent,
    /// Float features of this width.
    Dense(usize),
    /// Token indices, embedded to `dim`.
    Tokens,
}

/// A loaded `VNTransformer`: its config and layers.
#[derive(Debug, Clone)]
pub struct VnTransformer {
    cfg: VnTransformerConfig,
    token_emb: Option<Param>,
    proj_in: VnLinear,
    layers: Vec<EncoderLayer>,
    proj_out: Option<(VnLayerNorm, VnLinear)>,
}

impl VnTransformer {
    /// Builds the model from a state dict with the library's keys.
    ///
    /// # Errors
    /// `Core(MissingKey | WrongShape | NonFiniteWeight)`, `UnexpectedKey` for a key the config
    /// does not use.
    pub fn from_state_dict(cfg: &VnTransformerConfig, sd: &StateDict) -> Result<Self, Error> {
        let mut src = StateDictSource::new(sd);
        let model = Self::load(cfg, &mut src)?;
        src.finish()?;
        Ok(model)
    }

    /// The checkpoint keys of `cfg` with their shapes, in loading order.
    ///
    /// # Errors
    /// `Core(InvalidParameter)` for zero heads or head width.
    pub fn expected_keys(cfg: &VnTransformerConfig) -> Result<Vec<(String, Vec<usize>)>, Error> {
        let mut rec = KeyRecorder::default();
        Self::load(cfg, &mut rec)?;
        Ok(rec.keys)
    }

    /// The layers of `cfg` with their parameters read from `src`.
    fn load(cfg: &VnTransformerConfig, src: &mut dyn ParamSource) -> Result<Self, Error> {
        let eps = cfg.effective_bias_epsilon();
        let dim = cfg.dim;
        let token_emb = match cfg.num_tokens {
            Some(t) => Some(Param::load(src, "token_emb.weight".into(), vec![t, dim])?),
            None => None,
        };
        let proj_in = VnLinear::load(src, "vn_proj_in.1.", 1, dim, eps)?;
        let kind = if cfg.l2_dist_attn {
            VnAttentionKind::L2Distance
        } else if cfg.flash_attn {
            VnAttentionKind::FusedDotProduct
        } else {
            VnAttentionKind::DotProduct
        };
        let mut layers = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let p = format!("encoder.layers.{i}.");
            layers.push(EncoderLayer {
                attn: VnAttention::load(
                    src,
                    &format!("{p}0."),
                    dim,
                    cfg.heads,
                    cfg.dim_head,
                    eps,
                    kind,
                )?,
                attn_norm: VnLayerNorm::load(src, &format!("{p}1."), dim)?,
                ff: VnFeedForward::load(src, &format!("{p}2."), dim, cfg.ff_inner(), eps)?,
                ff_norm: VnLayerNorm::load(src, &format!("{p}3."), dim)?,
            });
        }
        let proj_out = if cfg.reduce_dim_out {
            Some((
                VnLayerNorm::load(src, "vn_proj_out.0.", dim)?,
                VnLinear::load(src, "vn_proj_out.1.", dim, 1, eps)?,
            ))
        } else {
            None
        };
        Ok(VnTransformer {
            cfg: cfg.clone(),
            token_emb,
            proj_in,
            layers,
            proj_out,
        })
    }

    /// The config.
    pub fn config(&self) -> &VnTransformerConfig {
        &self.cfg
    }

    /// The graph for features of `kind`: inputs `coors` `(b, n, 3)`, `mask` `(b, n)`, and
    /// `feats` `(b, n, F)` or `tokens` `(b n)`; output `x` `(b, n, 3 + F, c)` (`c` = 1 with
    /// `reduce_dim_out`, else `dim`). With an `objective`, also its inputs, the output `loss`
    /// and the outputs `grad.<weight>`, `grad.input.coors` and (float features)
    /// `grad.input.feats` (`gradients::add_gradients`).
    fn graph(
        &self,
        kind: FeatKind,
        instrumented: bool,
        objective: Option<Objective>,
    ) -> Result<(Session, Option<ObjectiveGraph>), Error> {
        let mut s = Session::new();
        let (b, n): (Expression, Expression) = ('b'.into(), 'n'.into());
        let coors: GraphTensor<(X, X, X)> =
            s.input_with_shape("coors", InputKind::Coordinates, &[b, n, 3.into()]);
        let mask: GraphTensor<(X, X)> = s.input_with_shape("mask", InputKind::Mask, &[b, n]);
        let coors_in = coors.no_shape();
        let translate = self.cfg.translation_equivariance || self.cfg.translation_invariant;
        let (coors, mean) = if translate {
            let mean: GraphTensor<(X,)> = coors.mean_reduce::<(X,), Axes2<0, 1>>();
            let m2: GraphTensor<(X, X)> = expand_at(mean, 0, n);
            let m3: GraphTensor<(X, X, X)> = expand_at(m2, 0, b);
            (coors - m3, Some(mean))
        } else {
            (coors, None)
        };
        let feats: Option<GraphTensor<(X, X, X)>> = match kind {
            FeatKind::Absent => None,
            FeatKind::Dense(f) => {
                Some(s.input_with_shape("feats", InputKind::Values, &[b, n, f.into()]))
            }
            FeatKind::Tokens => {
                let emb = self
                    .token_emb
                    .as_ref()
                    .ok_or(Error::UnexpectedInput { name: "feats" })?;
                let idx: GraphTensor<(X,)> = s.input_with_shape(
                    "tokens",
                    InputKind::Indices {
                        bound: IndexBound::Fixed(emb.shape[0]),
                        allow_missing: false,
                    },
                    &[b * n],
                );
                let table: GraphTensor<(X, X)> = emb.declare(&mut s, "")?;
                let rows = se3_core::ops::gather(table, idx);
                Some(GraphTensor::from_id(
                    rows.id,
                    ShapeTracker::new(&[b, n, self.cfg.dim.into()]),
                    rows.graph_ref,
                ))
            }
        };
        let feats_in = match kind {
            FeatKind::Dense(_) => feats.map(|f| f.no_shape()),
            _ => None,
        };
        let feat_width = match kind {
            FeatKind::Absent => 0,
            FeatKind::Dense(f) => f,
            FeatKind::Tokens => self.cfg.dim,
        };
        let mut x: VnTensor = lift_points(coors, feats);
        x = self.proj_in.build(&mut s, "vn_proj_in.1.", x)?;
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("encoder.layers.{i}.");
            let a = l.attn.build(&mut s, &format!("{p}0."), x, mask)?;
            x = l.attn_norm.build(&mut s, &format!("{p}1."), a)? + x;
            let h = l.ff.build(&mut s, &format!("{p}2."), x)?;
            x = l.ff_norm.build(&mut s, &format!("{p}3."), h)? + x;
        }
        if let Some((norm, lin)) = &self.proj_out {
            let normed = norm.build(&mut s, "vn_proj_out.0.", x)?;
            x = lin.build(&mut s, "vn_proj_out.1.", normed)?;
        }
        // x: [b, n, k, c] (c = 1 with reduce_dim_out)
        if let (Some(mean), true) = (mean, self.cfg.translation_equivariance) {
            let c = if self.cfg.reduce_dim_out {
                1
            } else {
                self.cfg.dim
            };
            let padded: GraphTensor<(X,)> = mean
                .contiguous()
                .pad::<(X,), Expression, Expression>(&[(0.into(), feat_width.into())]);
            let p2: GraphTensor<(X, X)> = expand_at(padded.contiguous(), 1, c);
            let p3: GraphTensor<(X, X, X)> = expand_at(p2, 0, n);
            let p4: VnTensor = expand_at(p3, 0, b);
            x += p4;
        }
        s.output("x", x);
        let objective = match objective {
            Some(o) => Some(gradients::add_gradients(
                &mut s, x, feat_width, coors_in, feats_in, o,
            )?),
            None => None,
        };
        if instrumented {
            s.compile_with((
                se3_core::exec::CpuCompiler::default(),
                se3_core::exec::profile::Instrument,
            ));
        } else {
            s.compile();
        }
        Ok((s, objective))
    }

    /// Compiles the model for repeated runs (graphs are built per kind of features on first use).
    pub fn compile(self) -> VnSession {
        VnSession {
            model: self,
            graphs: Vec::new(),
            instrumented: false,
            with_gradients: false,
            objective: Objective::Cotangents,
            overrides: Vec::new(),
            device: se3_core::Device::Cpu,
        }
    }

    /// Runs the model once (builds and compiles its graph).
    ///
    /// # Errors
    /// As [`VnSession::forward`].
    pub fn forward(&self, inp: &ModelInputs) -> Result<StateDict, Error> {
        self.clone().compile().forward(inp)
    }
}

/// The graph a forward call runs and the sizes of its inputs.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// Index into `VnSession::graphs`.
    graph: usize,
    kind: FeatKind,
    batch: usize,
    nodes: usize,
    /// `F`, the width of the features (0 without).
    feat_width: usize,
}

/// A [`VnTransformer`] with its compiled graphs, run on [`ModelInputs`].
#[derive(Debug)]
pub struct VnSession {
    model: VnTransformer,
    /// Compiled graphs per kind of features, with their objective when they have gradients.
    graphs: Vec<(FeatKind, Session, Option<ObjectiveGraph>)>,
    instrumented: bool,
    /// Graphs also compute gradients ([`VnTransformer::compile_with_gradients`]).
    with_gradients: bool,
    /// The objective of graphs with gradients.
    objective: Objective,
    /// Parameters set since loading (name, shape, value), applied to graphs compiled later.
    overrides: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Where the graphs run.
    device: se3_core::Device,
}

impl VnSession {
    /// The model.
    pub fn model(&self) -> &VnTransformer {
        &self.model
    }

    /// Runs this model's graphs on `device` from now on (graphs compiled already move with
    /// their weights; later ones are built there), see [`Session::set_device`].
    ///
    /// # Errors
    /// `CudaNotCompiled`, `CudaUnavailable`, or `InvalidOp` to move a graph off its device.
    pub fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        device.check()?;
        for (_, s, _) in &mut self.graphs {
            s.set_device(device)?;
        }
        self.device = device;
        Ok(())
    }

    /// Times every operator of the graphs compiled from now on (`se3_core::exec::profile`);
    /// drops the graphs compiled so far.
    pub fn instrument(&mut self) {
        self.instrumented = true;
        self.graphs.clear();
    }

    /// Forward pass; outputs named as the reference (`coors` and `feats`, or `out`).
    ///
    /// # Errors
    /// Input validation errors; `MissingInput` (`feats`) if the config has `dim_feat` but no
    /// features are given; `InputShape` for features of another width (or token features whose
    /// embedding width `dim` is not `dim_feat`); `UnexpectedInput` for token features without
    /// `num_tokens`; `IndexOutOfRange` for a token outside the embedding.
    pub fn forward(&mut self, inp: &ModelInputs) -> Result<StateDict, Error> {
        let bound = self.bind(inp)?;
        if self.with_gradients {
            self.zero_cotangents(&bound)?;
        }
        self.graphs[bound.graph].1.run()?;
        self.read_outputs(&bound)
    }

    /// Validates `inp`, compiles the graph for its kind of features on first use and sets
    /// its inputs.
    fn bind(&mut self, inp: &ModelInputs) -> Result<Bound, Error> {
        inp.validate()?;
        let cfg = self.model.cfg.clone();
        let (b, n) = (inp.batch(), inp.nodes());
        let f = cfg.feat_width();
        let kind = match &inp.feats {
            NodeFeats::Dense(t) if t.shape.get(2) == Some(&0) => {
                if f > 0 {
                    return Err(Error::MissingInput { name: "feats" });
                }
                FeatKind::Absent
            }
            NodeFeats::Dense(t) => {
                if t.shape[2] != f {
                    return Err(Error::InputShape {
                        name: "feats",
                        expected: format!("({b}, {n}, {f}) (dim_feat)"),
                        found: t.shape.clone(),
                    });
                }
                FeatKind::Dense(f)
            }
            NodeFeats::Tokens { ids, .. } => {
                let Some(num) = cfg.num_tokens else {
                    return Err(Error::UnexpectedInput { name: "feats" });
                };
                if cfg.dim != f {
                    return Err(Error::InputShape {
                        name: "feats",
                        expected: format!(
                            "float features ({b}, {n}, {f}): token embeddings have width dim = {} but dim_feat is {f}",
                            cfg.dim
                        ),
                        found: vec![b, n],
                    });
                }
                if let Some((index, &found)) = ids
                    .iter()
                    .enumerate()
                    .find(|(_, &t)| t < 0 || t as u64 >= num as u64)
                {
                    return Err(Error::IndexOutOfRange {
                        name: "feats",
                        index,
                        found,
                        bound: num,
                    });
                }
                FeatKind::Tokens
            }
            NodeFeats::Degrees(_) => {
                return Err(Error::InputShape {
                    name: "feats",
                    expected: format!("({b}, {n}, {f}) floats or ({b}, {n}) tokens"),
                    found: vec![],
                })
            }
        };
        let pos = match self.graphs.iter().position(|(k, ..)| *k == kind) {
            Some(p) => p,
            None => {
                let objective = self.with_gradients.then_some(self.objective);
                let (mut g, o) = self.model.graph(kind, self.instrumented, objective)?;
                gradients::apply_overrides(&mut g, &self.overrides)?;
                g.set_device(self.device)?;
                self.graphs.push((kind, g, o));
                self.graphs.len() - 1
            }
        };
        let s = &mut self.graphs[pos].1;
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        s.set("coors", f32s(&inp.coors.data), &[b, n, 3])?;
        let mask = match &inp.mask {
            Some(m) => m.data.iter().map(|&v| f32::from(u8::from(v))).collect(),
            None => vec![1.0; b * n],
        };
        s.set("mask", mask, &[b, n])?;
        let fw = match (&inp.feats, kind) {
            (NodeFeats::Dense(t), FeatKind::Dense(f)) => {
                s.set("feats", f32s(&t.data), &[b, n, f])?;
                f
            }
            (NodeFeats::Tokens { ids, .. }, FeatKind::Tokens) => {
                s.set("tokens", ids.iter().map(|&t| t as f32).collect(), &[b * n])?;
                cfg.dim
            }
            _ => 0,
        };
        Ok(Bound {
            graph: pos,
            kind,
            batch: b,
            nodes: n,
            feat_width: fw,
        })
    }

    /// The named outputs of the last run of `bound`'s graph.
    fn read_outputs(&self, bound: &Bound) -> Result<StateDict, Error> {
        let cfg = &self.model.cfg;
        let (b, n, fw, kind) = (bound.batch, bound.nodes, bound.feat_width, bound.kind);
        let x = self.graphs[bound.graph].1.get("x")?;
        let k = 3 + fw;
        let c = if cfg.reduce_dim_out { 1 } else { cfg.dim };
        // x is [b, n, k, c]; outputs are (b, n, [c,] components)
        let split = |lo: usize, hi: usize| -> Vec<f64> {
            let mut out = Vec::with_capacity(b * n * c * (hi - lo));
            for row in 0..b * n {
                for ch in 0..c {
                    for comp in lo..hi {
                        out.push(f64::from(x.data[(row * k + comp) * c + ch]));
                    }
                }
            }
            out
        };
        let shape = |w: usize| {
            if cfg.reduce_dim_out {
                vec![b, n, w]
            } else {
                vec![b, n, c, w]
            }
        };
        let mut sd = StateDict::new();
        if matches!(kind, FeatKind::Absent) {
            sd.insert("out", Tensor::new(shape(3), split(0, 3))?);
        } else {
            sd.insert("coors", Tensor::new(shape(3), split(0, 3))?);
            sd.insert("feats", Tensor::new(shape(fw), split(3, k))?);
        }
        Ok(sd)
    }
}
