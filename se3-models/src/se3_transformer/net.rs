//! The SE(3)-Transformer assembled from se3-core's layers, with run-time fibers: `conv_in ->
//! num_conv_layers x (NormSE3, ConvSE3) -> trunk -> conv_out -> norm -> linear_out`, one luminal
//! graph loaded from a se3-transformer-pytorch state dict. The trunk is `depth` pairs of
//! attention and feed-forward blocks (sequential, or reversible: two streams `x1 = x2 = x`,
//! `y1 = x1 + A(x2)`, `y2 = x2 + F(y1)`, output `(x1 + x2) / 2`), or with `use_egnn` the
//! library's EGNN layers over fibers ([`se3_core::layers::FiberEgnnLayer`]).
//!
//! [`Se3TransformerNet`] is the one implementation of the model's graph: the typed assembly
//! ([`crate::se3_transformer::TypedSe3Transformer`], fibers as `#[fiber]` types) wraps it, and
//! [`NetSession::forward_inputs`] runs it on a reference `inputs.safetensors` (what the zoo and
//! `se3 infer` run). Weights are session weights named as the checkpoint keys
//! (`conv_in.kernel_unary.(0,1).rp.net.0.weight`, `net.blocks.0.0.attn.to_q.weights.1`, ...).
//!
//! Semantics are the library's ([`Se3TransformerOptions`]): neighbours are the
//! `num_neighbors` nearest other nodes of the same cloud (ties as PyTorch's `topk`), valid if
//! within `valid_radius` and both nodes are unmasked; with `causal` only earlier nodes, with a
//! `neighbor_mask` only allowed pairs, with `attend_sparse_neighbors` bonded pairs first.
//! ConvSE3 layers mean-pool with self-interaction; attention over the valid neighbours (and the
//! node itself with `attend_self`), null keys, global tokens and rotary angles as options of
//! [`se3_core::layers::AttentionLayer`]. Neighbour selection runs on the host
//! ([`crate::se3_transformer::graph`]); the kernel basis, the edge geometry and every
//! embedding (tokens, positions, edge tokens, bond distances) are built in the graph, so they
//! are trainable and differentiable. Batches run as one graph of `b n` stacked nodes.

use luminal::prelude::*;
use rand::Rng;
use se3_core::exec::IndexBound;
use se3_core::exec::{InputKind, Session};
use se3_core::fiber::{DegreeTensor, FiberSpec};
use se3_core::layers::graph::{expand_at, X};
use se3_core::layers::{
    AttentionBlockLayer, AttentionOptions, ConvLayer, ConvOptions, ConvPath, EdgeBasis, EdgeGraph,
    FeatureTensors, FeedForwardBlockLayer, FiberEgnnLayer, FiberEgnnOptions, LinearLayer,
    LinearLayout, NormActivation, NormLayer, NormScale, Param, Pool, RotaryAngles, RotaryEmbedding,
};
use se3_core::module::LayerEntry;

use crate::checkpoint::{StateDict, StateDictSource, Tensor};
use crate::inputs::{EdgeInput, ModelInputs, NodeFeats};
use crate::se3_transformer::basis::{QjSigns, Se3tBasis};
use crate::se3_transformer::config::{Se3TransformerConfig, Se3TransformerForward};
use crate::se3_transformer::graph::{
    adjacency_degrees, select_neighbors, sparse_selection, PairInputs, SelectionParams,
};
use crate::Error;

mod blocked;
mod differentiable;

pub use blocked::{BlockStats, MemoryEstimate};
pub use differentiable::DifferentiableSe3Transformer;

/// The options of an SE(3)-Transformer besides its fibers (se3-transformer-pytorch kwargs of
/// the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Se3TransformerOptions {
    /// Number of (attention, feed-forward) block pairs.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Channels per head and degree.
    pub dim_head: usize,
    /// Nodes attend to themselves too.
    pub attend_self: bool,
    /// `norm_gated_scale` of the blocks' pre-norms.
    pub norm_gated_scale: bool,
    /// Nearest neighbours per node (clouds with fewer other nodes get missing edges);
    /// `None`: every other node of the cloud (the library's default, infinity).
    pub num_neighbors: Option<usize>,
    /// Neighbours farther than this are not valid.
    pub valid_radius: f64,
    /// `num_conv_layers`: (NormSE3, ConvSE3) pairs on the hidden fiber after `conv_in`.
    pub num_conv_layers: usize,
    /// `norm_out`: a NormSE3 without nonlinearity after `conv_out`.
    pub norm_out: bool,
    /// `reversible`: the trunk runs two streams `x1 = x2 = x`, `y1 = x1 + A(x2)`,
    /// `y2 = x2 + F(y1)` per block pair (each block has its own residual too) and returns
    /// `(x1 + x2) / 2`; keys `net.blocks.<i>.f.net.*` and `net.blocks.<i>.g.net.*`. The library
    /// switches `norm_out` on with it (as [`Se3TransformerOptions::from_config`] does).
    pub reversible: bool,
    /// `edge_dim`: width of continuous edge features `(b, n, n, edge_dim)` fed to every radial
    /// network next to the distance (0 for none).
    pub edge_dim: usize,
    /// `fourier_encode_dist` with `rel_dist_num_fourier_features`: the distance also enters
    /// the radial networks as `sin(d / 2^k)`, `cos(d / 2^k)`, `k < K`.
    pub fourier: Option<usize>,
    /// `tie_key_values`: the attention's keys are its values (no `to_k` weights).
    pub tie_key_values: bool,
    /// `one_headed_key_values`: one key/value head (`dim_head` channels) for every query head.
    pub one_headed_key_values: bool,
    /// `use_null_kv`: a learned null key and value per degree in every attention.
    pub use_null_kv: bool,
    /// `linear_proj_keys`: keys are a linear map of the neighbour's features.
    pub linear_proj_keys: bool,
    /// `causal`: node `i` takes its neighbours among the nodes `j < i` of its cloud (the
    /// library requires `attend_self` with it).
    pub causal: bool,
    /// `global_feats_dim`: width of the global tokens `(batch, g, global_feats_dim)` that
    /// degree 0 of every attention attends to ([`CloudInputs::global`]).
    pub global_feats_dim: Option<usize>,
    /// `num_positions`: a learned embedding of each node's index in its cloud
    /// (`pos_emb.weight`, `[num_positions, c]` with `c` the input's degree-0 channels or 1)
    /// added to the degree-0 input; clouds have at most `num_positions` nodes.
    pub num_positions: Option<usize>,
    /// `rotary_position`: degree-0 attention rotated by node indices
    /// ([`se3_core::layers::rotary`]).
    pub rotary_position: bool,
    /// `rotary_rel_dist`: degree-0 attention rotated by `100 |r_ij|`.
    pub rotary_rel_dist: bool,
    /// `num_tokens`: nodes are token ids embedded by `token_emb.weight` into the degree-0
    /// input (the input fiber is degree 0 only; [`NetSession::forward_tokens`]).
    pub num_tokens: Option<usize>,
    /// `num_edge_tokens`: the edge features are token ids of every ordered pair
    /// ([`CloudInputs::edge_tokens`]) embedded by `edge_emb.weight` (`[num_edge_tokens,
    /// edge_dim]`) in the graph.
    pub num_edge_tokens: Option<usize>,
    /// `attend_sparse_neighbors`: bonded pairs ([`CloudInputs::adjacency`]) are ranked first
    /// and every node gets as many more slots as the most bonded node has bonds (capped by
    /// `max_sparse_neighbors`).
    pub attend_sparse_neighbors: bool,
    /// `max_sparse_neighbors` (`None`: every bond; a cap keeps a random subset of a node's
    /// bonds, with the library's distribution and this crate's draws).
    pub max_sparse_neighbors: Option<usize>,
    /// `num_adj_degrees`: pairs are labelled by bond distance `1..=num_adj_degrees` (0
    /// otherwise) and, with `adj_dim > 0`, the label's embedding `adj_emb.weight`
    /// (`[num_adj_degrees + 1, adj_dim]`) joins the edge features (`edge_dim` counts it).
    pub num_adj_degrees: Option<usize>,
    /// `adj_dim`: width of the bond-distance embedding.
    pub adj_dim: usize,
    /// `use_egnn`: the trunk is `depth` EGNN layers over the hidden fiber (keys
    /// `net.layers.<i>.0.*`, with `egnn_feedforward` a feed-forward block `net.layers.<i>.1.*`)
    /// and there is no `conv_out` (the output fiber is the hidden one).
    pub egnn: Option<EgnnTrunk>,
    /// `reduce_dim_out`: `linear_out` maps every output degree to one channel, which the
    /// outputs drop (`(b, n, 2l + 1)`).
    pub reduce_dim_out: bool,
    /// A `conv_out` from the hidden fiber to the output fiber (keys `conv_out.*`); the library
    /// has none with `use_egnn` or `output_degrees = None`, whose output is the hidden fiber.
    pub conv_out: bool,
}
impl Default for Se3TransformerOptions {
    /// se3-transformer-pytorch's defaults of its optional arguments (`heads = 8`, `dim_head =
    /// 24`, `attend_self`, `num_neighbors = infinity`, `valid_radius = 1e5`, every other
    /// option off) with `depth = 1`.
    fn default() -> Self {
        Se3TransformerOptions {
            depth: 1,
            heads: 8,
            dim_head: 24,
            attend_self: true,
            norm_gated_scale: false,
            num_neighbors: None,
            valid_radius: 1e5,
            num_conv_layers: 0,
            norm_out: false,
            reversible: false,
            edge_dim: 0,
            fourier: None,
            tie_key_values: false,
            one_headed_key_values: false,
            use_null_kv: false,
            linear_proj_keys: false,
            causal: false,
            global_feats_dim: None,
            num_positions: None,
            rotary_position: false,
            rotary_rel_dist: false,
            num_tokens: None,
            num_edge_tokens: None,
            attend_sparse_neighbors: false,
            max_sparse_neighbors: None,
            num_adj_degrees: None,
            adj_dim: 0,
            egnn: None,
            reduce_dim_out: false,
            conv_out: true,
        }
    }
}
impl Se3TransformerOptions {
    /// The width of the bond-distance embedding among the edge features (0 without).
    pub(crate) fn adjacency_width(&self) -> usize {
        if self.num_adj_degrees.is_some() {
            self.adj_dim
        } else {
            0
        }
    }

    /// The width of the edge features given as input (continuous or tokens), without the
    /// bond-distance embedding.
    pub(crate) fn edge_input_width(&self) -> usize {
        self.edge_dim.saturating_sub(self.adjacency_width())
    }

    /// The first option whose inputs only [`NetSession`] feeds (embedding ids, rotary
    /// angles, its own neighbour selection), so that a graph built elsewhere
    /// (`Module::forward` on a `GraphCtx`) would not honour it.
    pub(crate) fn session_only(&self) -> Option<&'static str> {
        [
            ("num_tokens", self.num_tokens.is_some()),
            ("num_positions", self.num_positions.is_some()),
            ("num_edge_tokens", self.num_edge_tokens.is_some()),
            ("rotary_position", self.rotary_position),
            ("rotary_rel_dist", self.rotary_rel_dist),
            ("causal", self.causal),
            ("attend_sparse_neighbors", self.attend_sparse_neighbors),
            ("num_adj_degrees", self.num_adj_degrees.is_some()),
        ]
        .into_iter()
        .find_map(|(name, on)| on.then_some(name))
    }

    /// Whether the selection reads an adjacency matrix.
    pub(crate) fn takes_adjacency(&self) -> bool {
        self.attend_sparse_neighbors || self.num_adj_degrees.is_some()
    }

    /// The rotary embeddings' frequencies of fresh weights, if any.
    pub(crate) fn fresh_rotary(&self) -> Result<Option<RotaryEmbedding>, Error> {
        if !(self.rotary_position || self.rotary_rel_dist) || self.rotary_frequencies() == 0 {
            // with no channel to rotate (`dim_head` below the number of rotaries) the library's
            // rotation is the identity
            return Ok(None);
        }
        Ok(Some(RotaryEmbedding::new(
            self.dim_head,
            self.rotary_position,
            self.rotary_rel_dist,
        )?))
    }

    /// The rotary frequencies (`rotary_pos_emb.inv_freq`'s length; 0 without rotary).
    fn rotary_frequencies(&self) -> usize {
        if !(self.rotary_position || self.rotary_rel_dist) {
            return 0;
        }
        RotaryEmbedding::frequencies(self.dim_head, self.rotary_position, self.rotary_rel_dist)
    }

    /// The options and fibers of `cfg`.
    ///
    /// # Errors
    /// The config's validation errors ([`Se3TransformerConfig::shape`]).
    pub fn from_config(cfg: &Se3TransformerConfig) -> Result<(Self, NetFibers), Error> {
        let shape = cfg.shape()?;
        let spec = |dims: &[(usize, usize)]| -> Result<FiberSpec, Error> {
            let text: Vec<String> = dims.iter().map(|(l, c)| format!("{l}:{c}")).collect();
            Ok(text.join(", ").parse()?)
        };
        let hidden = spec(&shape.fiber_hidden)?;
        let fibers = NetFibers {
            input: spec(&shape.fiber_in)?,
            output: match &shape.fiber_out {
                Some(f) => spec(f)?,
                None => hidden.clone(),
            },
            hidden,
        };
        let options = Se3TransformerOptions {
            depth: cfg.depth,
            heads: cfg.heads,
            dim_head: cfg.dim_head,
            attend_self: cfg.attend_self,
            norm_gated_scale: cfg.norm_gated_scale,
            num_neighbors: cfg.num_neighbors,
            valid_radius: cfg.valid_radius,
            num_conv_layers: cfg.num_conv_layers,
            norm_out: (cfg.norm_out || cfg.reversible) && shape.fiber_out.is_some(),
            reversible: cfg.reversible,
            edge_dim: shape.edge_dim,
            fourier: cfg
                .fourier_encode_dist
                .then_some(cfg.rel_dist_num_fourier_features),
            tie_key_values: cfg.tie_key_values,
            one_headed_key_values: cfg.one_headed_key_values,
            use_null_kv: cfg.use_null_kv,
            linear_proj_keys: cfg.linear_proj_keys,
            causal: cfg.causal,
            global_feats_dim: cfg.global_feats_dim,
            num_positions: cfg.num_positions,
            rotary_position: cfg.rotary_position,
            rotary_rel_dist: cfg.rotary_rel_dist,
            num_tokens: cfg.num_tokens,
            num_edge_tokens: cfg.num_edge_tokens,
            attend_sparse_neighbors: cfg.attend_sparse_neighbors,
            max_sparse_neighbors: cfg.max_sparse_neighbors,
            num_adj_degrees: cfg.num_adj_degrees,
            adj_dim: cfg.adj_dim,
            egnn: cfg.use_egnn.then_some(EgnnTrunk {
                hidden: cfg.egnn_hidden_dim,
                weights_clamp_value: cfg.egnn_weights_clamp_value,
                feedforward: cfg.egnn_feedforward,
            }),
            reduce_dim_out: cfg.reduce_dim_out,
            conv_out: shape.fiber_out.is_some(),
        };
        Ok((options, fibers))
    }

    pub(crate) fn norm_scale(&self) -> NormScale {
        if self.norm_gated_scale {
            NormScale::Gated
        } else {
            NormScale::PerChannel
        }
    }

    /// The checkpoint prefixes of block pair `i`.
    pub(crate) fn block_prefixes(&self, i: usize) -> (String, String) {
        if self.reversible {
            (
                format!("net.blocks.{i}.f.net."),
                format!("net.blocks.{i}.g.net."),
            )
        } else {
            (format!("net.blocks.{i}.0."), format!("net.blocks.{i}.1."))
        }
    }

    pub(crate) fn attention(&self) -> AttentionOptions {
        AttentionOptions {
            heads: self.heads,
            dim_head: self.dim_head,
            attend_self: self.attend_self,
            edge_dim: self.edge_dim,
            fourier: self.fourier,
            tie_key_values: self.tie_key_values,
            one_headed_key_values: self.one_headed_key_values,
            use_null_kv: self.use_null_kv,
            linear_proj_keys: self.linear_proj_keys,
            global_feats_dim: self.global_feats_dim,
        }
    }

    /// `ConvSE3` as `SE3Transformer` builds `conv_in`, `convs` and `conv_out`: mean pooling
    /// and self-interaction, the distance (and edge features) as the radial input.
    pub(crate) fn conv(&self) -> ConvOptions {
        ConvOptions {
            edge_dim: self.edge_dim,
            fourier: self.fourier,
            self_interaction: true,
            pool: Pool::Mean,
        }
    }
}
/// `use_egnn`'s options (se3-transformer-pytorch's `egnn_*` kwargs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EgnnTrunk {
    /// `egnn_hidden_dim`: width of the edge messages.
    pub hidden: usize,
    /// `egnn_weights_clamp_value`: the coordinate weights are clamped to `[-v, v]`.
    pub weights_clamp_value: Option<f64>,
    /// `egnn_feedforward`: a feed-forward block after every EGNN layer.
    pub feedforward: bool,
}

/// The fibers of an SE(3)-Transformer: its input, its trunk's and its output's (the hidden
/// fiber without `conv_out`; before `reduce_dim_out`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFibers {
    /// The node features in (degree 0 of the token or position embeddings' width).
    pub input: FiberSpec,
    /// The trunk's fiber.
    pub hidden: FiberSpec,
    /// `conv_out`'s fiber, or the hidden one without `conv_out`.
    pub output: FiberSpec,
}

/// The trunk of an [`Se3TransformerNet`].
#[derive(Debug, Clone)]
pub enum Trunk {
    /// `depth` pairs of attention and feed-forward blocks (keys `net.blocks.<i>.0.*` /
    /// `.1.*`, or `net.blocks.<i>.f.net.*` / `.g.net.*` when reversible).
    Attention(Vec<(AttentionBlockLayer, FeedForwardBlockLayer)>),
    /// `depth` EGNN layers, each with an optional feed-forward block (keys
    /// `net.layers.<i>.0.*` / `.1.*`).
    Egnn(Vec<(FiberEgnnLayer, Option<FeedForwardBlockLayer>)>),
}

/// An SE(3)-Transformer of se3-core layers (module doc).
#[derive(Debug, Clone)]
pub struct Se3TransformerNet {
    /// `conv_in` (keys `conv_in.*`).
    pub conv_in: ConvLayer,
    /// `convs` (keys `convs.<i>.1.*` for the norm, `convs.<i>.0.*` for the convolution,
    /// applied norm first).
    pub convs: Vec<(NormLayer, ConvLayer)>,
    /// The trunk.
    pub trunk: Trunk,
    /// `conv_out` (keys `conv_out.*`).
    pub conv_out: Option<ConvLayer>,
    /// `norm` (keys `norm.*`), present with `norm_out`.
    pub norm: Option<NormLayer>,
    /// `linear_out` (keys `linear_out.weights.<l>`), present with `reduce_dim_out`.
    pub linear_out: Option<LinearLayer>,
    /// `pos_emb.weight` (`[num_positions, c]`), present with `num_positions`.
    pub pos_emb: Option<Param>,
    /// `token_emb.weight` (`[num_tokens, c]`, `c` the input's degree-0 channels), present with
    /// `num_tokens`.
    pub token_emb: Option<Param>,
    /// `edge_emb.weight` (`[num_edge_tokens, edge_dim]`), present with `num_edge_tokens`.
    pub edge_emb: Option<Param>,
    /// `adj_emb.weight` (`[num_adj_degrees + 1, adj_dim]`), present with `num_adj_degrees`
    /// and `adj_dim > 0`.
    pub adj_emb: Option<Param>,
    /// `rotary_pos_emb.inv_freq`, present with rotary embeddings.
    pub rotary: Option<RotaryEmbedding>,
    fibers: NetFibers,
    options: Se3TransformerOptions,
    /// The `(J, d_in, d_out)` whose Q_J sign the kernel basis flips relative to se3-core's
    /// ([`Se3TransformerNet::set_qj_signs`]).
    sign_flips: Vec<(usize, usize, usize)>,
}

/// Where a model's checkpoint parameters come from: se3-core's
/// [`se3_core::layers::ParamSource`] (float32 values by key and shape) with the shape of a key
/// (to tell the library's width-1 position table) and float64 buffers (rotary frequencies).
pub trait NetSource: se3_core::layers::ParamSource {
    /// The shape of `key`, if the source has it.
    fn shape_of(&self, key: &str) -> Option<Vec<usize>>;

    /// The float64 values of buffer `key` of `shape`.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`.
    fn take_f64(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f64>, se3_core::Error>;
}

impl NetSource for StateDictSource<'_> {
    fn shape_of(&self, key: &str) -> Option<Vec<usize>> {
        StateDictSource::shape_of(self, key)
    }

    fn take_f64(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f64>, se3_core::Error> {
        StateDictSource::take_f64(self, key, shape)
    }
}

/// The layers' parameters: fresh ones, or a checkpoint's.
enum Weights<'a, R> {
    Fresh(&'a mut R),
    Load(&'a mut dyn NetSource),
}

impl Se3TransformerNet {
    /// A model with fresh weights.
    ///
    /// # Errors
    /// Those of the layers' constructors (`ZeroChannels` for `heads * dim_head = 0`).
    pub fn new(
        fibers: NetFibers,
        options: Se3TransformerOptions,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        Self::assemble(fibers, options, Weights::Fresh(rng))
    }

    /// Loads a se3-transformer-pytorch `SE3Transformer` state dict (values rounded to f32).
    ///
    /// # Errors
    /// `Core(MissingKey)` / `Core(WrongShape)` naming the key and its expected shape (a fiber
    /// or option that differs from the checkpoint's shows here), `Core(NonFiniteWeight)`, and
    /// `UnexpectedKey` for a tensor of the dict that no layer reads.
    pub fn load(
        sd: &StateDict,
        fibers: NetFibers,
        options: Se3TransformerOptions,
    ) -> Result<Self, Error> {
        let mut src = StateDictSource::new(sd);
        let net = Self::load_from(&mut src, fibers, options)?;
        src.finish()?;
        Ok(net)
    }

    /// The model of `cfg` with the weights of the safetensors file at `path`, read one tensor at
    /// a time (the file is never held whole, nor in float64).
    ///
    /// # Errors
    /// Those of opening the file; as [`Se3TransformerNet::load`].
    pub fn from_safetensors(
        cfg: &Se3TransformerConfig,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, Error> {
        let (options, fibers) = Se3TransformerOptions::from_config(cfg)?;
        let mut file = crate::checkpoint::SafetensorsFile::open(path)?;
        let net = Self::load_from(&mut file, fibers, options)?;
        file.finish()?;
        Ok(net)
    }

    /// Every checkpoint key of `cfg`'s model with its shape, in the order the layers read
    /// them (what a state dict must hold).
    ///
    /// # Errors
    /// The config's validation errors.
    pub fn expected_keys(cfg: &Se3TransformerConfig) -> Result<Vec<(String, Vec<usize>)>, Error> {
        let (options, fibers) = Se3TransformerOptions::from_config(cfg)?;
        let mut keys = crate::checkpoint::KeyRecorder::default();
        Self::load_from(&mut keys, fibers, options)?;
        Ok(keys.keys)
    }

    /// Loads the parameters from `src` (a checkpoint read as it is needed, or weights drawn as
    /// they are asked for); unlike [`Se3TransformerNet::load`] it does not check that every
    /// tensor of the source was read.
    ///
    /// # Errors
    /// As [`Se3TransformerNet::load`] but `UnexpectedKey`.
    pub fn load_from(
        src: &mut dyn NetSource,
        fibers: NetFibers,
        options: Se3TransformerOptions,
    ) -> Result<Self, Error> {
        Self::assemble::<rand::rngs::StdRng>(fibers, options, Weights::Load(src))
    }

    /// The model of a `config.json`'s constructor kwargs with the weights `sd`.
    ///
    /// # Errors
    /// As [`Se3TransformerOptions::from_config`] and [`Se3TransformerNet::load`].
    pub fn from_config(cfg: &Se3TransformerConfig, sd: &StateDict) -> Result<Self, Error> {
        let (options, fibers) = Se3TransformerOptions::from_config(cfg)?;
        Self::load(sd, fibers, options)
    }

    fn assemble<R: Rng>(
        fibers: NetFibers,
        options: Se3TransformerOptions,
        mut w: Weights<'_, R>,
    ) -> Result<Self, Error> {
        let (fin, hidden, fout) = (&fibers.input, &fibers.hidden, &fibers.output);
        let conv = |w: &mut Weights<'_, R>, prefix: &str, a: &FiberSpec, b: &FiberSpec| {
            Ok::<_, Error>(match w {
                Weights::Fresh(rng) => ConvLayer::new(a, b, options.conv(), *rng)?,
                Weights::Load(src) => ConvLayer::load(*src, prefix, a, b, options.conv())?,
            })
        };
        let norm = |w: &mut Weights<'_, R>, prefix: &str, f: &FiberSpec, act| {
            Ok::<_, Error>(match w {
                Weights::Fresh(_) => NormLayer::new(f, options.norm_scale(), act),
                Weights::Load(src) => NormLayer::load(*src, prefix, f, options.norm_scale(), act)?,
            })
        };
        let feed_forward = |w: &mut Weights<'_, R>, prefix: &str, gated: bool| {
            Ok::<_, Error>(match w {
                Weights::Fresh(rng) => FeedForwardBlockLayer::new(hidden, gated, *rng)?,
                Weights::Load(src) => FeedForwardBlockLayer::load(*src, prefix, hidden, gated)?,
            })
        };
        let table = |w: &mut Weights<'_, R>, key: &str, shape: Vec<usize>| {
            Ok::<_, Error>(match w {
                Weights::Fresh(rng) => Param::uniform(key.into(), shape, 1.0, *rng),
                Weights::Load(src) => Param::load(*src, key.into(), shape)?,
            })
        };
        let conv_in = conv(&mut w, "conv_in.", fin, hidden)?;
        let mut convs = Vec::with_capacity(options.num_conv_layers);
        for i in 0..options.num_conv_layers {
            convs.push((
                norm(
                    &mut w,
                    &format!("convs.{i}.1."),
                    hidden,
                    NormActivation::Gelu,
                )?,
                conv(&mut w, &format!("convs.{i}.0."), hidden, hidden)?,
            ));
        }
        let trunk = match options.egnn {
            Some(egnn) => {
                let egnn_options = FiberEgnnOptions {
                    edge_dim: options.edge_dim,
                    hidden: egnn.hidden,
                    weights_clamp_value: egnn.weights_clamp_value,
                };
                let mut layers = Vec::with_capacity(options.depth);
                for i in 0..options.depth {
                    let prefix = format!("net.layers.{i}.0.");
                    let layer = match &mut w {
                        Weights::Fresh(rng) => FiberEgnnLayer::new(hidden, egnn_options, *rng)?,
                        Weights::Load(src) => {
                            FiberEgnnLayer::load(*src, &prefix, hidden, egnn_options)?
                        }
                    };
                    let ff = if egnn.feedforward {
                        Some(feed_forward(&mut w, &format!("net.layers.{i}.1."), false)?)
                    } else {
                        None
                    };
                    layers.push((layer, ff));
                }
                Trunk::Egnn(layers)
            }
            None => {
                let mut blocks = Vec::with_capacity(options.depth);
                for i in 0..options.depth {
                    let (pa, pf) = options.block_prefixes(i);
                    let gated = options.norm_gated_scale;
                    let attention = match &mut w {
                        Weights::Fresh(rng) => {
                            AttentionBlockLayer::new(hidden, options.attention(), gated, *rng)?
                        }
                        Weights::Load(src) => AttentionBlockLayer::load(
                            *src,
                            &pa,
                            hidden,
                            options.attention(),
                            gated,
                        )?,
                    };
                    blocks.push((attention, feed_forward(&mut w, &pf, gated)?));
                }
                Trunk::Attention(blocks)
            }
        };
        let conv_out = if options.conv_out {
            Some(conv(&mut w, "conv_out.", hidden, fout)?)
        } else {
            None
        };
        let norm = if options.norm_out {
            Some(norm(&mut w, "norm.", fout, NormActivation::Identity)?)
        } else {
            None
        };
        let linear_out = if options.reduce_dim_out {
            let ones: FiberSpec = reduced(fout)?;
            Some(match &mut w {
                Weights::Fresh(rng) => LinearLayer::new(fout, &ones, false, *rng)?,
                Weights::Load(src) => LinearLayer::load(
                    *src,
                    "linear_out.",
                    fout,
                    &ones,
                    LinearLayout::Se3TransformerPytorch,
                    false,
                )?,
            })
        } else {
            None
        };
        let token_emb = match options.num_tokens {
            Some(t) => Some(table(
                &mut w,
                "token_emb.weight",
                vec![t, position_width(fin)],
            )?),
            None => None,
        };
        let edge_emb = match options.num_edge_tokens {
            Some(t) => Some(table(
                &mut w,
                "edge_emb.weight",
                vec![t, options.edge_input_width()],
            )?),
            None => None,
        };
        let adj_emb = match (options.num_adj_degrees, options.adjacency_width()) {
            (Some(d), width) if width > 0 => {
                Some(table(&mut w, "adj_emb.weight", vec![d + 1, width])?)
            }
            _ => None,
        };
        let pos_emb = match options.num_positions {
            Some(p) => {
                // the library embeds positions with width 1 when the input has no degree 0
                let width = match &w {
                    Weights::Load(src) if src.shape_of("pos_emb.weight") == Some(vec![p, 1]) => 1,
                    _ => position_width(fin),
                };
                Some(table(&mut w, "pos_emb.weight", vec![p, width])?)
            }
            None => None,
        };
        let rotary = match (options.fresh_rotary()?, &mut w) {
            (Some(fresh), Weights::Load(src)) => {
                let n = RotaryEmbedding::frequencies(
                    options.dim_head,
                    options.rotary_position,
                    options.rotary_rel_dist,
                );
                let stored = src.take_f64("rotary_pos_emb.inv_freq", &[n])?;
                Some(RotaryEmbedding {
                    inv_freq: stored,
                    ..fresh
                })
            }
            (None, Weights::Load(src)) if options.rotary_position || options.rotary_rel_dist => {
                // the checkpoint's empty buffer
                src.take_f64("rotary_pos_emb.inv_freq", &[0])?;
                None
            }
            (fresh, _) => fresh,
        };
        Ok(Se3TransformerNet {
            conv_in,
            convs,
            trunk,
            conv_out,
            norm,
            linear_out,
            pos_emb,
            token_emb,
            edge_emb,
            adj_emb,
            rotary,
            fibers,
            options,
            sign_flips: Vec::new(),
        })
    }

    /// Builds the kernel basis with the Q_J signs of `signs` (another LAPACK build's, see
    /// [`QjSigns`]) instead of the reference data's.
    ///
    /// # Errors
    /// `Core(DegreeTooHigh)` beyond se3-core's harmonics.
    pub fn set_qj_signs(&mut self, signs: &QjSigns) -> Result<(), Error> {
        self.sign_flips = Se3tBasis::with_signs(self.max_degree(), signs)?.sign_flips();
        Ok(())
    }

    /// The options.
    pub fn options(&self) -> &Se3TransformerOptions {
        &self.options
    }

    /// The fibers.
    pub fn fibers(&self) -> &NetFibers {
        &self.fibers
    }

    /// The fiber of the graph's outputs `y.<l>` (one channel per degree with `reduce_dim_out`).
    pub fn output_fiber(&self) -> &FiberSpec {
        self.linear_out
            .as_ref()
            .map_or(&self.fibers.output, LinearLayer::fiber_out)
    }

    /// Layers that pass messages along edges: conv_in, the conv stack, each attention or EGNN
    /// block, conv_out (each widens the set of nodes an output depends on by one hop).
    pub fn message_hops(&self) -> usize {
        let trunk = match &self.trunk {
            Trunk::Attention(blocks) => blocks.len(),
            Trunk::Egnn(layers) => layers.len(),
        };
        1 + self.convs.len() + trunk + usize::from(self.conv_out.is_some())
    }

    /// Whether the library returns the type-0 output alone (`output_degrees = 1`).
    pub fn returns_scalar(&self) -> bool {
        self.options.conv_out && max_degree(&self.fibers.output) == 0
    }

    /// The highest degree of the kernel basis the layers need.
    pub fn max_degree(&self) -> usize {
        let f = &self.fibers;
        max_degree(&f.input)
            .max(max_degree(&f.hidden))
            .max(max_degree(&f.output))
    }

    /// Every parameter as `(<prefix><key>, param)`, in checkpoint order.
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.conv_in.visit_params(&format!("{prefix}conv_in."), f);
        for (i, (norm, conv)) in self.convs.iter().enumerate() {
            norm.visit_params(&format!("{prefix}convs.{i}.1."), f);
            conv.visit_params(&format!("{prefix}convs.{i}.0."), f);
        }
        match &self.trunk {
            Trunk::Attention(blocks) => {
                for (i, (attention, feed_forward)) in blocks.iter().enumerate() {
                    let (pa, pf) = self.options.block_prefixes(i);
                    attention.visit_params(&format!("{prefix}{pa}"), f);
                    feed_forward.visit_params(&format!("{prefix}{pf}"), f);
                }
            }
            Trunk::Egnn(layers) => {
                for (i, (layer, ff)) in layers.iter().enumerate() {
                    layer.visit_params(&format!("{prefix}net.layers.{i}.0."), f);
                    if let Some(ff) = ff {
                        ff.visit_params(&format!("{prefix}net.layers.{i}.1."), f);
                    }
                }
            }
        }
        if let Some(conv) = &self.conv_out {
            conv.visit_params(&format!("{prefix}conv_out."), f);
        }
        if let Some(norm) = &self.norm {
            norm.visit_params(&format!("{prefix}norm."), f);
        }
        if let Some(linear) = &self.linear_out {
            linear.visit_params(&format!("{prefix}linear_out."), f);
        }
        for p in [
            &self.token_emb,
            &self.pos_emb,
            &self.edge_emb,
            &self.adj_emb,
        ]
        .into_iter()
        .flatten()
        {
            f(&format!("{prefix}{}", p.key), p);
        }
    }

    /// Every layer as a module entry (path, kind, fibers) under `prefix`, in checkpoint order.
    pub fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        let fibers = &self.fibers;
        let (fin, hidden, fout) = (&fibers.input, &fibers.hidden, &fibers.output);
        let mut entry =
            |layer: &dyn std::any::Any, key: String, kind, a: &FiberSpec, b: &FiberSpec| {
                f(LayerEntry::new(
                    layer,
                    &format!("{prefix}{key}"),
                    kind,
                    a.clone(),
                    b.clone(),
                ));
            };
        entry(&self.conv_in, "conv_in.".into(), "Conv", fin, hidden);
        for (i, (norm, conv)) in self.convs.iter().enumerate() {
            entry(norm, format!("convs.{i}.1."), "Norm", hidden, hidden);
            entry(conv, format!("convs.{i}.0."), "Conv", hidden, hidden);
        }
        match &self.trunk {
            Trunk::Attention(blocks) => {
                for (i, (attention, feed_forward)) in blocks.iter().enumerate() {
                    let (pa, pf) = self.options.block_prefixes(i);
                    entry(attention, pa, "AttentionBlock", hidden, hidden);
                    entry(feed_forward, pf, "FeedForwardBlock", hidden, hidden);
                }
            }
            Trunk::Egnn(layers) => {
                for (i, (layer, ff)) in layers.iter().enumerate() {
                    entry(layer, format!("net.layers.{i}.0."), "Egnn", hidden, hidden);
                    if let Some(ff) = ff {
                        let key = format!("net.layers.{i}.1.");
                        entry(ff, key, "FeedForwardBlock", hidden, hidden);
                    }
                }
            }
        }
        if let Some(conv) = &self.conv_out {
            entry(conv, "conv_out.".into(), "Conv", hidden, fout);
        }
        if let Some(norm) = &self.norm {
            entry(norm, "norm.".into(), "Norm", fout, fout);
        }
        if let Some(linear) = &self.linear_out {
            entry(
                linear,
                "linear_out.".into(),
                "Linear",
                fout,
                linear.fiber_out(),
            );
        }
    }

    /// Every parameter mutably, as [`Se3TransformerNet::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), se3_core::Error>,
    ) -> Result<(), se3_core::Error> {
        let options = self.options;
        self.conv_in
            .visit_params_mut(&format!("{prefix}conv_in."), f)?;
        for (i, (norm, conv)) in self.convs.iter_mut().enumerate() {
            norm.visit_params_mut(&format!("{prefix}convs.{i}.1."), f)?;
            conv.visit_params_mut(&format!("{prefix}convs.{i}.0."), f)?;
        }
        match &mut self.trunk {
            Trunk::Attention(blocks) => {
                for (i, (attention, feed_forward)) in blocks.iter_mut().enumerate() {
                    let (pa, pf) = options.block_prefixes(i);
                    attention.visit_params_mut(&format!("{prefix}{pa}"), f)?;
                    feed_forward.visit_params_mut(&format!("{prefix}{pf}"), f)?;
                }
            }
            Trunk::Egnn(layers) => {
                for (i, (layer, ff)) in layers.iter_mut().enumerate() {
                    layer.visit_params_mut(&format!("{prefix}net.layers.{i}.0."), f)?;
                    if let Some(ff) = ff {
                        ff.visit_params_mut(&format!("{prefix}net.layers.{i}.1."), f)?;
                    }
                }
            }
        }
        if let Some(conv) = &mut self.conv_out {
            conv.visit_params_mut(&format!("{prefix}conv_out."), f)?;
        }
        if let Some(norm) = &mut self.norm {
            norm.visit_params_mut(&format!("{prefix}norm."), f)?;
        }
        if let Some(linear) = &mut self.linear_out {
            linear.visit_params_mut(&format!("{prefix}linear_out."), f)?;
        }
        for p in [
            &mut self.token_emb,
            &mut self.pos_emb,
            &mut self.edge_emb,
            &mut self.adj_emb,
        ]
        .into_iter()
        .flatten()
        {
            let key = format!("{prefix}{}", p.key);
            f(&key, p)?;
        }
        Ok(())
    }

    /// Adds the layers to `s` on node features `x` (the input fiber), over `edges` (grouped by
    /// destination) with their kernel `basis`, weights named `<prefix><checkpoint key>`;
    /// returns the output fiber's features ([`Se3TransformerNet::output_fiber`]). The
    /// convolutions on the default path run contracted ([`ConvPath::Contracted`], the fastest
    /// forward); a graph to differentiate is built by
    /// [`Se3TransformerNet::build_for_gradients`].
    ///
    /// # Errors
    /// Those of the layers' `build` (`InvalidOp` for ungrouped edges, `FiberMismatch` for
    /// features of another fiber).
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors, Error> {
        self.build_with(s, prefix, x, edges, basis, ConvPath::Contracted)
    }

    /// [`Se3TransformerNet::build`] for a graph that is differentiated: the convolutions keep
    /// the fused radial edge op ([`ConvPath::Fused`]), whose backward is the faster.
    ///
    /// # Errors
    /// As [`Se3TransformerNet::build`].
    pub fn build_for_gradients(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors, Error> {
        self.build_with(s, prefix, x, edges, basis, ConvPath::Fused)
    }

    /// The layers, convolutions on the default path computed by `conv_path`.
    fn build_with(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        conv_path: ConvPath,
    ) -> Result<FeatureTensors, Error> {
        let conv = |c: &ConvLayer, s: &mut Session, prefix: &str, h: &FeatureTensors| {
            let path = match c.path() {
                ConvPath::Fused => conv_path,
                other => other,
            };
            c.build_with_path(s, prefix, h, edges, basis, path)
        };
        let mut h = conv(&self.conv_in, s, &format!("{prefix}conv_in."), x)?;
        for (i, (norm, c)) in self.convs.iter().enumerate() {
            h = norm.build(s, &format!("{prefix}convs.{i}.1."), &h)?;
            h = conv(c, s, &format!("{prefix}convs.{i}.0."), &h)?;
        }
        h = match &self.trunk {
            Trunk::Attention(blocks) if self.options.reversible => {
                let (mut x1, mut x2) = (h.clone(), h);
                for (i, (attention, feed_forward)) in blocks.iter().enumerate() {
                    let (pa, pf) = self.options.block_prefixes(i);
                    let a = attention.build(s, &format!("{prefix}{pa}"), &x2, edges, basis)?;
                    let y1 = sum_of(&a, &x1, 1.0)?;
                    let y2 = sum_of(
                        &feed_forward.build(s, &format!("{prefix}{pf}"), &y1)?,
                        &x2,
                        1.0,
                    )?;
                    (x1, x2) = (y1, y2);
                }
                sum_of(&x1, &x2, 0.5)?
            }
            Trunk::Attention(blocks) => {
                for (i, (attention, feed_forward)) in blocks.iter().enumerate() {
                    let (pa, pf) = self.options.block_prefixes(i);
                    h = attention.build(s, &format!("{prefix}{pa}"), &h, edges, basis)?;
                    h = feed_forward.build(s, &format!("{prefix}{pf}"), &h)?;
                }
                h
            }
            Trunk::Egnn(layers) => {
                for (i, (layer, ff)) in layers.iter().enumerate() {
                    h = layer.build(s, &format!("{prefix}net.layers.{i}.0."), &h, edges)?;
                    if let Some(ff) = ff {
                        h = ff.build(s, &format!("{prefix}net.layers.{i}.1."), &h)?;
                    }
                }
                h
            }
        };
        if let Some(c) = &self.conv_out {
            h = conv(c, s, &format!("{prefix}conv_out."), &h)?;
        }
        if let Some(norm) = &self.norm {
            h = norm.build(s, &format!("{prefix}norm."), &h)?;
        }
        if let Some(linear) = &self.linear_out {
            h = linear.build(s, &format!("{prefix}linear_out."), &h)?;
        }
        Ok(h)
    }

    /// The degree-0 input `token_emb[tokens]` (`[N, c, 1]`) of input `tokens` (one id per
    /// node); the input fiber is degree 0 only ([`Se3TransformerOptions::from_config`]).
    fn embed_tokens(&self, s: &mut Session, table: &Param) -> Result<FeatureTensors, Error> {
        let rows: GraphTensor<(Dyn<'n'>, X)> = embedded(s, "tokens", table, false)?;
        let x0 = expand_at::<_, (Dyn<'n'>, X, X)>(rows, 2, 1);
        Ok(FeatureTensors::new(
            self.fibers.input.clone(),
            vec![se3_core::layers::graph::reshape(
                x0,
                &['n'.into(), table.shape[1].into(), 1.into()],
            )],
        )?)
    }

    /// `x` with the position embedding `table` (`[num_positions, c]`) of input `positions`
    /// (each node's index in its cloud) added to degree 0 (a width-1 table to every channel).
    fn embed_positions(
        &self,
        s: &mut Session,
        table: &Param,
        x: &FeatureTensors,
    ) -> Result<FeatureTensors, Error> {
        let rows_of: GraphTensor<(Dyn<'n'>, X)> = embedded(s, "positions", table, false)?;
        let mut tensors = x.tensors().to_vec();
        for (d, t0) in self.fibers.input.degrees().iter().zip(tensors.iter_mut()) {
            if d.l != 0 {
                continue;
            }
            let add: GraphTensor<(Dyn<'n'>, X)> = if table.shape[1] == 1 {
                let one: GraphTensor<(Dyn<'n'>,)> =
                    se3_core::layers::graph::reshape(rows_of, &['n'.into()]);
                expand_at(one, 1, d.channels)
            } else {
                rows_of
            };
            *t0 += expand_at::<_, (Dyn<'n'>, X, X)>(add, 2, 1);
        }
        Ok(FeatureTensors::new(self.fibers.input.clone(), tensors)?)
    }

    /// The graph's inputs, embeddings and edges on `s`: inputs `coords (N, 3)`, `x.<l>`
    /// (`[N, c, 2l + 1]`; `tokens` with `num_tokens`), `edges.src`, `edges.dst` (`N k`, `-1`
    /// for missing edges), `edges.valid` (1 or 0: every selected neighbour is an edge), and the optional inputs of
    /// the options (`edges.features`, `edges.tokens`, `edges.adjacency`, `global`, `positions`,
    /// `rotary.*`); returns the node features, the edges and their kernel basis.
    ///
    /// # Errors
    /// Those of `Session::set_weight` and the embeddings.
    pub fn declare_inputs(
        &self,
        s: &mut Session,
    ) -> Result<(FeatureTensors, EdgeGraph, EdgeBasis), Error> {
        let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
        let x = match &self.token_emb {
            Some(table) => self.embed_tokens(s, table)?,
            None => FeatureTensors::input(s, "x", &self.fibers.input),
        };
        // `k` neighbour slots per node, set each run (sparse neighbours add to it)
        let mut edges = EdgeGraph::input(s, "edges", coords).grouped('k');
        // every selected neighbour is an edge, valid or not, as the library reads them: the
        // EGNN trunk moves higher degrees along all of them, and attention over a node whose
        // neighbours are all invalid averages them uniformly
        edges.valid = s.input::<(Dyn<'e'>,)>("edges.valid", InputKind::Values);
        // the radial networks' edge features: the input's (continuous or embedded tokens),
        // then the embedding of the pair's bond distance
        let mut parts: Vec<GraphTensor<(Dyn<'e'>, X)>> = Vec::new();
        if let Some(table) = &self.edge_emb {
            parts.push(embedded(s, "edges.tokens", table, true)?);
        } else if self.options.edge_input_width() > 0 {
            parts.push(s.input_with_shape::<(Dyn<'e'>, Dyn<'-'>)>(
                "edges.features",
                InputKind::Values,
                &['e'.into(), self.options.edge_input_width().into()],
            ));
        }
        if let Some(table) = &self.adj_emb {
            parts.push(embedded(s, "edges.adjacency", table, true)?);
        }
        edges.edge_features = match parts.len() {
            0 => None,
            1 => Some(parts[0]),
            _ => Some(se3_core::layers::depthwise_tp::concat_axis1(&parts)),
        };
        if let Some(width) = self.options.global_feats_dim {
            edges.global_features = Some(s.input_with_shape::<(Dyn<'n'>, Dyn<'-'>, Dyn<'-'>)>(
                "global",
                InputKind::Values,
                &['n'.into(), 'g'.into(), width.into()],
            ));
        }
        if let Some(rot) = &self.rotary {
            let dh = self.options.dim_head;
            edges.rotary = Some(RotaryAngles::input(s, "rotary", dh, rot.rotated(dh))?);
        }
        let x = match &self.pos_emb {
            Some(table) => self.embed_positions(s, table, &x)?,
            None => x,
        };
        let basis = EdgeBasis::from_geometry(
            s,
            "",
            edges.rel,
            edges.dist,
            self.max_degree(),
            &self.sign_flips,
        )?;
        Ok((x, edges, basis))
    }

    /// The whole forward pass as one compiled session: the inputs of
    /// [`Se3TransformerNet::declare_inputs`], outputs `y.<l>` of the output fiber.
    ///
    /// # Errors
    /// As [`Se3TransformerNet::build`].
    pub fn compile(&self) -> Result<NetSession, Error> {
        let mut s = Session::new();
        let (x, edges, basis) = self.declare_inputs(&mut s)?;
        let y = self.build(&mut s, "", &x, &edges, &basis)?;
        y.output(&mut s, "y");
        s.compile();
        Ok(NetSession::from_session(s, self))
    }

    /// [`Se3TransformerNet::compile`], moving the weights into the session instead of copying
    /// them (the model is consumed), so that building holds them once.
    ///
    /// # Errors
    /// As [`Se3TransformerNet::compile`].
    pub fn into_session(mut self) -> Result<NetSession, Error> {
        let mut taken: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
        self.visit_params_mut("", &mut |name, p| {
            // the layer declares an empty parameter without a value; it is set below
            taken.push((
                name.to_string(),
                std::mem::take(&mut p.data),
                p.shape.clone(),
            ));
            Ok(())
        })?;
        let mut s = Session::new();
        let (x, edges, basis) = self.declare_inputs(&mut s)?;
        let y = self.build(&mut s, "", &x, &edges, &basis)?;
        y.output(&mut s, "y");
        let declared: std::collections::HashSet<String> =
            s.weights().into_iter().map(|(name, _)| name).collect();
        for (name, data, shape) in taken {
            // a layer may leave an empty parameter out (an EGNN without higher degrees)
            if declared.contains(&name) {
                s.set_weight(&name, data, &shape)?;
            }
        }
        s.compile();
        Ok(NetSession::from_session(s, &self))
    }
}

/// The highest degree of `fiber`.
fn max_degree(fiber: &FiberSpec) -> usize {
    fiber.degrees().iter().map(|d| d.l).max().unwrap_or(0)
}

/// `fiber` with one channel per degree (`reduce_dim_out`'s output).
fn reduced(fiber: &FiberSpec) -> Result<FiberSpec, Error> {
    let text: Vec<String> = fiber
        .degrees()
        .iter()
        .map(|d| format!("{}:1", d.l))
        .collect();
    Ok(text.join(", ").parse()?)
}

/// Rows of `table` at the ids of input `name` (`[D]`; with `allow_missing`, `-1` for no row:
/// zeros), the table a session weight named as its key.
fn embedded<D: Dimension>(
    s: &mut Session,
    name: &str,
    table: &Param,
    allow_missing: bool,
) -> Result<GraphTensor<(D, X)>, Error> {
    let kind = InputKind::Indices {
        bound: IndexBound::Fixed(table.shape[0]),
        allow_missing,
    };
    let ids = s.input::<(D,)>(name, kind);
    let t: GraphTensor<(X, X)> = table.declare(s, "")?;
    Ok(se3_core::ops::gather(t, ids))
}

/// The channels of the position embedding: the input's degree-0 channels (0 without degree 0).
pub(crate) fn position_width(fiber: &FiberSpec) -> usize {
    fiber
        .degrees()
        .iter()
        .find(|d| d.l == 0)
        .map_or(0, |d| d.channels)
}

/// `(a + b) * scale`, degree by degree.
fn sum_of(a: &FeatureTensors, b: &FeatureTensors, scale: f32) -> Result<FeatureTensors, Error> {
    let tensors = a
        .tensors()
        .iter()
        .zip(b.tensors())
        .map(|(x, y)| {
            let t = *x + *y;
            if scale == 1.0 {
                t
            } else {
                t * scale
            }
        })
        .collect();
    Ok(FeatureTensors::new(a.spec().clone(), tensors)?)
}

/// A compiled [`Se3TransformerNet`], ready to run on batches of point clouds.
#[derive(Debug)]
pub struct NetSession {
    session: Session,
    /// The model's options (what the host feeds: selection, embeddings' inputs).
    options: Se3TransformerOptions,
    /// The model's rotary frequencies (the host computes the angles).
    rotary: Option<RotaryEmbedding>,
    /// The fiber of `x.<l>`.
    input: FiberSpec,
    /// The fiber of `y.<l>`.
    output: FiberSpec,
    /// The seed of the bond subsampling with `max_sparse_neighbors`.
    sparse_seed: u64,
    /// `output_degrees = 1`: the library returns the type-0 output alone.
    scalar_output: bool,
    /// [`NetSession::message_hops`].
    hops: usize,
}

/// A batch's inputs checked and every node's neighbours selected, in global row ids (clouds
/// of `n` nodes stacked): what [`NetSession::feed`] sets for all rows or a block of them.
pub(crate) struct Prepared<'a> {
    coords: &'a [[f64; 3]],
    rows: usize,
    n: usize,
    x: NodeInput<'a>,
    bonds: Option<Bonds>,
    edge_tokens: Option<&'a [i64]>,
    edge_features: Option<&'a [f64]>,
    global: Option<(usize, Vec<f32>)>,
    /// Slots per node.
    k: usize,
    /// Edge `i k + kk` of node `i`: source and destination (`-1` for none).
    src: Vec<f32>,
    dst: Vec<f32>,
    /// With the EGNN trunk: every selected neighbour keeps its edge, flagged here.
    valid: Option<Vec<f32>>,
}

/// The nodes of a forward: features (one block per degree of the input fiber), or token ids
/// the model embeds.
#[derive(Clone, Copy)]
pub(crate) enum NodeInput<'a> {
    Features(&'a [DegreeTensor]),
    Tokens(&'a [i64]),
}

impl NetSession {
    /// A session of `net`'s graph built on `session` (the inputs of
    /// [`Se3TransformerNet::declare_inputs`]).
    pub(crate) fn from_session(session: Session, net: &Se3TransformerNet) -> Self {
        NetSession {
            session,
            options: net.options,
            rotary: net.rotary.clone(),
            input: net.fibers.input.clone(),
            output: net.output_fiber().clone(),
            sparse_seed: 0,
            scalar_output: net.returns_scalar(),
            hops: net.message_hops(),
        }
    }

    /// The session (inputs and outputs named as in [`Se3TransformerNet::compile`]).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The fiber of the outputs.
    pub fn output_fiber(&self) -> &FiberSpec {
        &self.output
    }

    /// Seeds the random subset of bonds kept when a node has more than
    /// `max_sparse_neighbors` (the library draws it with torch's generator; se3 with its own).
    pub fn set_sparse_sampling_seed(&mut self, seed: u64) {
        self.sparse_seed = seed;
    }

    /// Runs `batch` clouds of `n` nodes each, stacked: `coords` and `x` (one block
    /// `[batch n, c, 2l + 1]` per degree of the input fiber) hold `batch * n` rows, `mask` (if
    /// any) one flag per row; the optional inputs in `extra`. Returns one block per degree of
    /// the output fiber.
    ///
    /// # Errors
    /// `EmptyGraph` for no nodes or fewer than 2 per cloud, `InputShape` if the row counts do
    /// not agree or are not a multiple of `batch`, the blocks are not the input fiber's, the
    /// edge features are not `batch n n edge_dim` values or the global tokens not `batch g
    /// global_feats_dim` (`g >= 1`), `MissingInput` / `UnexpectedInput` for an optional input
    /// the model needs / does not take, `NonFinite` for NaN or infinite coordinates, edge
    /// features or global tokens; errors of the session.
    pub fn forward(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: &[DegreeTensor],
        extra: CloudInputs<'_>,
    ) -> Result<Vec<DegreeTensor>, Error> {
        if self.options.num_tokens.is_some() {
            return Err(Error::MissingInput {
                name: "tokens (the model embeds atom tokens: NetSession::forward_tokens)",
            });
        }
        let degrees = self.input.degrees();
        let rows = coords.len();
        let fits = x.len() == degrees.len()
            && degrees
                .iter()
                .zip(x)
                .all(|(d, b)| b.shape() == [rows, d.channels, d.width()]);
        if !fits {
            return Err(Error::InputShape {
                name: "x",
                expected: format!("one block [{rows}, c, 2l + 1] per degree of {}", self.input),
                found: x.iter().flat_map(DegreeTensor::shape).collect(),
            });
        }
        self.run(coords, batch, mask, NodeInput::Features(x), extra)
    }

    /// As [`NetSession::forward`] for a model with `num_tokens`: the nodes are token ids
    /// (`batch * n`, each in `0..num_tokens`), embedded by `token_emb.weight` into the
    /// degree-0 input.
    ///
    /// # Errors
    /// `UnexpectedInput` for a model without tokens, `InputShape` for a token count other than
    /// the node count, `Core(BadIndex)` for an id out of range; as [`NetSession::forward`].
    pub fn forward_tokens(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        tokens: &[i64],
        extra: CloudInputs<'_>,
    ) -> Result<Vec<DegreeTensor>, Error> {
        if self.options.num_tokens.is_none() {
            return Err(Error::UnexpectedInput { name: "tokens" });
        }
        self.run(coords, batch, mask, NodeInput::Tokens(tokens), extra)
    }

    /// Runs the model on the inputs of a reference `inputs.safetensors` (`feats`, `coors`,
    /// `mask`, `edges`, `adj_mat`, `global_feats`, `neighbor_mask`) with the forward
    /// literals `fwd` (`return_type`, `return_pooled`); outputs named as the library returns
    /// them (`out`, or `type<l>` per degree), in its shapes.
    ///
    /// # Errors
    /// As [`NetSession::forward`]; `MissingInput` for a degree of the input fiber the inputs
    /// lack, `InvalidConfig` for a `return_type` the model does not output.
    pub fn forward_inputs(
        &mut self,
        inputs: &ModelInputs,
        fwd: &Se3TransformerForward,
    ) -> Result<StateDict, Error> {
        let (b, n) = (inputs.batch(), inputs.nodes());
        let flat = FlatInputs::of(inputs, &self.input)?;
        let y = match flat.tokens {
            Some(ids) => self.forward_tokens(&flat.coords, b, flat.mask, ids, flat.extra)?,
            None => self.forward(&flat.coords, b, flat.mask, &flat.blocks, flat.extra)?,
        };
        self.outputs(y, flat.mask, fwd, b, n)
    }

    /// The library's outputs of blocks `y`: pooled over each cloud's unmasked nodes with
    /// `return_pooled`, the channel axis dropped with `reduce_dim_out`, `out` for
    /// `return_type` (or a single output degree), `type<l>` otherwise.
    fn outputs(
        &self,
        y: Vec<DegreeTensor>,
        mask: Option<&[bool]>,
        fwd: &Se3TransformerForward,
        b: usize,
        n: usize,
    ) -> Result<StateDict, Error> {
        let degrees = self.output.degrees();
        // a model with `output_degrees = 1` returns its type-0 output alone
        let return_type = if self.scalar_output {
            Some(0)
        } else {
            fwd.return_type
        };
        let mut sd = StateDict::new();
        for (d, block) in degrees.iter().zip(y) {
            let w = d.channels * d.width();
            let data: Vec<f64> = block.data().iter().map(|&v| f64::from(v)).collect();
            let data = if fwd.return_pooled {
                (0..b)
                    .flat_map(|bi| {
                        let rows: Vec<usize> = (bi * n..(bi + 1) * n)
                            .filter(|&i| mask.is_none_or(|m| m[i]))
                            .collect();
                        let data = &data;
                        (0..w).map(move |k| {
                            rows.iter().map(|&i| data[i * w + k]).sum::<f64>()
                                / rows.len().max(1) as f64
                        })
                    })
                    .collect()
            } else {
                data
            };
            let mut shape = vec![b];
            if !fwd.return_pooled {
                shape.push(n);
            }
            if !self.options.reduce_dim_out {
                shape.push(d.channels);
            }
            if d.l != 0 {
                shape.push(d.width());
            }
            let t = Tensor::new(shape, data)?;
            match return_type {
                Some(r) if r == d.l => sd.insert("out", t),
                Some(_) => {}
                None => sd.insert(format!("type{}", d.l), t),
            }
        }
        match return_type {
            Some(r) if sd.is_empty() => Err(Error::InvalidConfig {
                field: "return_type",
                expected: "a degree the model outputs",
                found: r.to_string(),
            }),
            _ => Ok(sd),
        }
    }
    fn run(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: NodeInput<'_>,
        extra: CloudInputs<'_>,
    ) -> Result<Vec<DegreeTensor>, Error> {
        let rows = coords.len();
        self.set_inputs(coords, batch, mask, x, extra)?;
        let s = &mut self.session;
        s.run()?;
        self.output
            .degrees()
            .iter()
            .map(|d| {
                let y = s.get(&format!("y.{}", d.l))?;
                Ok(DegreeTensor::from_vec(
                    [rows, d.channels, d.width()],
                    y.data,
                )?)
            })
            .collect()
    }

    /// Checks a forward's inputs and sets them on the session (neighbour selection, rotary
    /// angles and per-edge inputs computed here); returns the edges `(src, dst)`.
    pub(crate) fn set_inputs(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: NodeInput<'_>,
        extra: CloudInputs<'_>,
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        let prepared = self.prepare(coords, batch, mask, x, extra)?;
        let all: Vec<usize> = (0..prepared.rows).collect();
        self.feed(&prepared, &all)?;
        Ok((prepared.src, prepared.dst))
    }

    /// Checks a forward's inputs and selects every node's neighbours (global row ids).
    pub(crate) fn prepare<'a>(
        &self,
        coords: &'a [[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: NodeInput<'a>,
        extra: CloudInputs<'a>,
    ) -> Result<Prepared<'a>, Error> {
        let rows = coords.len();
        if batch == 0 || rows == 0 || rows / batch < 2 {
            return Err(Error::EmptyGraph {
                batch,
                nodes: rows.checked_div(batch).unwrap_or(0),
            });
        }
        let nodes = match x {
            NodeInput::Features(x) => x.first().map_or(0, |b| b.shape()[0]),
            NodeInput::Tokens(t) => t.len(),
        };
        if !rows.is_multiple_of(batch) || nodes != rows || mask.is_some_and(|m| m.len() != rows) {
            return Err(Error::InputShape {
                name: "coords / x / mask",
                expected: format!("{batch} clouds of equal size, one row per node in each"),
                found: vec![rows, nodes, mask.map_or(rows, <[bool]>::len)],
            });
        }
        let n = rows / batch;
        all_finite("coords", coords.iter().flatten())?;
        if let Some(m) = extra.neighbor_mask {
            if m.len() != rows * n {
                return Err(Error::InputShape {
                    name: "neighbor_mask",
                    expected: format!("({batch}, {n}, {n})"),
                    found: vec![m.len()],
                });
            }
        }
        if let Some(p) = self.options.num_positions {
            if n > p {
                return Err(Error::InputShape {
                    name: "coords",
                    expected: format!("at most {p} nodes a cloud (num_positions)"),
                    found: vec![batch, n],
                });
            }
        }
        let bonds = match expected(extra.adjacency, self.options.takes_adjacency(), "adj_mat")? {
            Some(a) if a.len() != rows * n && a.len() != n * n => {
                return Err(Error::InputShape {
                    name: "adj_mat",
                    expected: format!("({batch}, {n}, {n}) or ({n}, {n})"),
                    found: vec![a.len()],
                })
            }
            Some(a) => Some(self.options.bonds(a, batch, n, self.sparse_seed)),
            None => None,
        };
        let token_model = self.options.num_edge_tokens.is_some();
        let edge_tokens = expected(extra.edge_tokens, token_model, "edge_tokens")?;
        if let Some(t) = edge_tokens {
            if t.len() != rows * n {
                return Err(Error::InputShape {
                    name: "edge_tokens",
                    expected: format!("({batch}, {n}, {n})"),
                    found: vec![t.len()],
                });
            }
        }
        let ed = self.options.edge_input_width();
        let edge_features = expected(extra.edges, ed > 0 && !token_model, "edges")?;
        if let Some(f) = edge_features {
            if f.len() != rows * n * ed {
                return Err(Error::InputShape {
                    name: "edges",
                    expected: format!("({batch}, {n}, {n}, {ed})"),
                    found: vec![f.len()],
                });
            }
            all_finite("edges", f)?;
        }
        let given = expected(
            extra.global,
            self.options.global_feats_dim.is_some(),
            "global_feats",
        )?;
        let global = match (given, self.options.global_feats_dim) {
            (Some(g), Some(width)) => Some(global_rows(g, batch, rows, width)?),
            _ => None,
        };
        let sparse = bonds
            .as_ref()
            .filter(|_| self.options.attend_sparse_neighbors)
            .map(|b| (b.sparse.as_slice(), b.num_sparse));
        let (src, dst, valid) = select_edges(
            coords,
            batch,
            mask,
            extra.neighbor_mask,
            &self.selection(),
            sparse,
            true,
        );
        if src.iter().all(|&j| j < 0.0) {
            // no node has a neighbour slot (the library's attention fails on an empty axis)
            return Err(Error::NoNeighbors);
        }
        Ok(Prepared {
            coords,
            rows,
            n,
            x,
            bonds,
            edge_tokens,
            edge_features,
            global,
            k: src.len() / rows,
            src,
            dst,
            valid,
        })
    }

    /// Sets the session's inputs for the nodes `rows` of `p` (global row ids; every row, or a
    /// block and its neighbourhood): their features and coordinates, and their edges with the
    /// sources renumbered among `rows` (a source outside them is a missing edge).
    pub(crate) fn feed(&mut self, p: &Prepared<'_>, rows: &[usize]) -> Result<(), Error> {
        let (n, k) = (p.n, p.k);
        let mut local = vec![usize::MAX; p.rows];
        for (r, &g) in rows.iter().enumerate() {
            local[g] = r;
        }
        // the block's edges in global ids (-1: missing or leaving the block), and local ids
        let e = rows.len() * k;
        let (mut src, mut dst) = (vec![-1.0f32; e], vec![-1.0f32; e]);
        let (mut lsrc, mut ldst) = (vec![-1.0f32; e], vec![-1.0f32; e]);
        let mut valid = p.valid.as_ref().map(|_| vec![0.0f32; e]);
        for (r, &g) in rows.iter().enumerate() {
            for kk in 0..k {
                let (q, at) = (g * k + kk, r * k + kk);
                let (j, i) = (p.src[q], p.dst[q]);
                if j < 0.0 || i < 0.0 || local[j as usize] == usize::MAX {
                    continue;
                }
                (src[at], dst[at]) = (j, i);
                (lsrc[at], ldst[at]) = (local[j as usize] as f32, r as f32);
                if let (Some(v), Some(pv)) = (&mut valid, &p.valid) {
                    v[at] = pv[q];
                }
            }
        }
        let m = rows.len();
        let s = &mut self.session;
        if self.options.num_positions.is_some() {
            let positions = rows.iter().map(|&g| (g % n) as f32).collect();
            s.set("positions", positions, &[m])?;
        }
        if let Some(rot) = &self.rotary {
            let dh = self.options.dim_head;
            let (nc, ns) = rot.cos_sin(dh, rows.iter().map(|&g| (g % n, 0.0)));
            let edge = |(&j, &i): (&f32, &f32)| -> (usize, f64) {
                if j < 0.0 || i < 0.0 {
                    return (0, 0.0);
                }
                let (a, b) = (p.coords[i as usize], p.coords[j as usize]);
                let d2: f64 = (0..3).map(|c| (a[c] - b[c]) * (a[c] - b[c])).sum();
                (j as usize % n, d2.sqrt())
            };
            let (ec, es) = rot.cos_sin(dh, src.iter().zip(&dst).map(edge));
            s.set("rotary.node_cos", nc, &[m, dh])?;
            s.set("rotary.node_sin", ns, &[m, dh])?;
            s.set("rotary.edge_cos", ec, &[e, dh])?;
            s.set("rotary.edge_sin", es, &[e, dh])?;
        }
        if let Some((tokens, values)) = &p.global {
            let width = values.len() / (p.rows * tokens);
            let per_row = tokens * width;
            let block: Vec<f32> = rows
                .iter()
                .flat_map(|&g| values[g * per_row..(g + 1) * per_row].iter().copied())
                .collect();
            s.set("global", block, &[m, *tokens, width])?;
        }
        if let Some(f) = p.edge_features {
            let ed = self.options.edge_input_width();
            s.set(
                "edges.features",
                gather_edge_features(f, &src, &dst, n, ed),
                &[e, ed],
            )?;
        }
        if let (Some(b), true) = (&p.bonds, self.options.adjacency_width() > 0) {
            let labels = pair_ids(&src, &dst, n, |c, i, j| b.labels[c][i * n + j]);
            s.set("edges.adjacency", labels, &[e])?;
        }
        if let Some(t) = p.edge_tokens {
            let ids = pair_ids(&src, &dst, n, |c, i, j| t[(c * n + i) * n + j]);
            s.set("edges.tokens", ids, &[e])?;
        }
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|&g| p.coords[g])
            .map(|v| v as f32)
            .collect();
        s.set("coords", flat, &[m, 3])?;
        s.set_dim('k', k);
        s.set("edges.src", lsrc, &[e])?;
        s.set("edges.dst", ldst, &[e])?;
        if let Some(valid) = valid {
            s.set("edges.valid", valid, &[e])?;
        }
        match p.x {
            NodeInput::Features(x) => {
                for (d, b) in self.input.degrees().iter().zip(x) {
                    let w = d.channels * d.width();
                    let data: Vec<f32> = rows
                        .iter()
                        .flat_map(|&g| b.data()[g * w..(g + 1) * w].iter().copied())
                        .collect();
                    s.set(&format!("x.{}", d.l), data, &[m, d.channels, d.width()])?;
                }
            }
            NodeInput::Tokens(t) => {
                let ids = rows.iter().map(|&g| t[g] as f32).collect();
                s.set("tokens", ids, &[m])?;
            }
        }
        Ok(())
    }

    /// The neighbour selection's parameters.
    fn selection(&self) -> SelectionParams {
        SelectionParams {
            num_neighbors: self.options.num_neighbors,
            valid_radius: self.options.valid_radius,
            causal: self.options.causal,
            attend_sparse: false,
            max_sparse_neighbors: None,
            num_adj_degrees: None,
        }
    }
}

/// The inputs of a reference `inputs.safetensors` as a forward takes them: stacked
/// coordinates, mask, the optional inputs, and the node features (blocks per degree of the
/// input fiber) or token ids.
pub(crate) struct FlatInputs<'a> {
    pub(crate) coords: Vec<[f64; 3]>,
    pub(crate) mask: Option<&'a [bool]>,
    pub(crate) extra: CloudInputs<'a>,
    pub(crate) blocks: Vec<DegreeTensor>,
    pub(crate) tokens: Option<&'a [i64]>,
}

impl<'a> FlatInputs<'a> {
    /// `inputs` for a model whose input fiber is `fiber`.
    ///
    /// # Errors
    /// As [`input_blocks`].
    pub(crate) fn of(inputs: &'a ModelInputs, fiber: &FiberSpec) -> Result<Self, Error> {
        let (b, n) = (inputs.batch(), inputs.nodes());
        let (blocks, tokens) = match &inputs.feats {
            NodeFeats::Tokens { ids, .. } => (Vec::new(), Some(ids.as_slice())),
            feats => (input_blocks(feats, fiber, b * n)?, None),
        };
        Ok(FlatInputs {
            coords: (0..b).flat_map(|bi| inputs.points(bi)).collect(),
            mask: inputs.mask.as_ref().map(|m| m.data.as_slice()),
            extra: CloudInputs::of(inputs),
            blocks,
            tokens,
        })
    }

    /// The nodes as a forward reads them, after checking that the model takes tokens exactly
    /// when the inputs are tokens.
    ///
    /// # Errors
    /// `UnexpectedInput` / `MissingInput` naming `tokens`.
    pub(crate) fn nodes(&self, options: &Se3TransformerOptions) -> Result<NodeInput<'_>, Error> {
        match (self.tokens, options.num_tokens.is_some()) {
            (Some(t), true) => Ok(NodeInput::Tokens(t)),
            (None, false) => Ok(NodeInput::Features(&self.blocks)),
            (Some(_), false) => Err(Error::UnexpectedInput { name: "tokens" }),
            (None, true) => Err(Error::MissingInput { name: "tokens" }),
        }
    }
}

/// The node features of a reference input (`feats (b, n, c)` as degree 0, or one tensor per
/// degree) as one block per degree of `fiber`, `rows = b n`.
fn input_blocks(
    feats: &NodeFeats,
    fiber: &FiberSpec,
    rows: usize,
) -> Result<Vec<DegreeTensor>, Error> {
    fiber
        .degrees()
        .iter()
        .map(|d| {
            let t = match feats {
                NodeFeats::Dense(t) if d.l == 0 => t,
                NodeFeats::Degrees(map) => map.get(&d.l).ok_or(Error::MissingInput {
                    name: "feats (a degree of the input fiber)",
                })?,
                _ => {
                    return Err(Error::MissingInput {
                        name: "feats (a degree of the input fiber)",
                    })
                }
            };
            let shape = [rows, d.channels, d.width()];
            if t.data.len() != rows * d.channels * d.width() {
                return Err(Error::InputShape {
                    name: "feats",
                    expected: format!("{shape:?} per degree {}", d.l),
                    found: t.shape.clone(),
                });
            }
            Ok(DegreeTensor::from_vec(
                shape,
                t.data.iter().map(|&v| v as f32).collect(),
            )?)
        })
        .collect()
}

/// Per cloud: bond-distance labels (`n n`), the bonded pairs the sparse selection ranks
/// first, and the number of extra slots.
struct Bonds {
    labels: Vec<Vec<i64>>,
    sparse: Vec<Vec<bool>>,
    num_sparse: usize,
}

impl Se3TransformerOptions {
    /// The library's use of `adj_mat` (`(batch, n, n)` or one `(n, n)`): with
    /// `num_adj_degrees` the labels and the adjacency of the last power
    /// ([`adjacency_degrees`]); with sparse attention the bonds every node ranks first
    /// ([`sparse_selection`]).
    fn bonds(&self, adj: &[bool], batch: usize, n: usize, seed: u64) -> Bonds {
        let (mut labels, mut current) = (Vec::new(), Vec::new());
        for bi in 0..batch {
            // one matrix for every cloud, or one each
            let at = if adj.len() == n * n { 0 } else { bi * n * n };
            let a = &adj[at..at + n * n];
            let (lab, cur) = match self.num_adj_degrees {
                Some(d) => adjacency_degrees(a, n, d),
                None => (vec![0; n * n], a.to_vec()),
            };
            labels.push(lab);
            current.push(cur);
        }
        let (num_sparse, sparse) = if self.attend_sparse_neighbors {
            sparse_selection(&current, n, self.max_sparse_neighbors, seed)
        } else {
            (0, current)
        };
        Bonds {
            labels,
            sparse,
            num_sparse,
        }
    }
}

/// Optional inputs of a forward besides coordinates, mask and node features.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloudInputs<'a> {
    /// Continuous edge features of every ordered pair of each cloud, `(batch, n, n,
    /// edge_dim)` row-major (the library's `edges`), for a model with `edge_dim > 0`.
    pub edges: Option<&'a [f64]>,
    /// Global tokens of each cloud, `(batch, g, global_feats_dim)` row-major (the library's
    /// `global_feats`), for a model with `global_feats_dim`.
    pub global: Option<&'a [f64]>,
    /// Which ordered pairs of each cloud may be neighbours, `(batch, n, n)` row-major (the
    /// library's `neighbor_mask`): excluded pairs rank after every allowed one and are not
    /// valid.
    pub neighbor_mask: Option<&'a [bool]>,
    /// Edge token ids of every ordered pair of each cloud, `(batch, n, n)` row-major (the
    /// library's `edges` as int64 tokens), for a model with `num_edge_tokens`.
    pub edge_tokens: Option<&'a [i64]>,
    /// Bonds of every ordered pair of each cloud, `(batch, n, n)` row-major, or `(n, n)` for
    /// every cloud (the library's `adj_mat`), for a model with `attend_sparse_neighbors` or
    /// `num_adj_degrees`.
    pub adjacency: Option<&'a [bool]>,
}

impl<'a> CloudInputs<'a> {
    /// The optional inputs of a reference `inputs.safetensors` (`edges` as values or tokens,
    /// `global_feats`, `neighbor_mask`, `adj_mat`).
    pub fn of(inputs: &'a ModelInputs) -> Self {
        let (edges, edge_tokens) = match &inputs.edges {
            Some(EdgeInput::Dense(t)) => (Some(t.data.as_slice()), None),
            Some(EdgeInput::Tokens { ids, .. }) => (None, Some(ids.as_slice())),
            None => (None, None),
        };
        CloudInputs {
            edges,
            global: inputs.global_feats.as_ref().map(|t| t.data.as_slice()),
            neighbor_mask: inputs.neighbor_mask.as_ref().map(|t| t.data.as_slice()),
            edge_tokens,
            adjacency: inputs.adj_mat.as_ref().map(|t| t.data.as_slice()),
        }
    }
}

/// The global tokens `(batch, g, width)` repeated for every node of their cloud: `g` and
/// `[rows, g, width]` as f32.
fn global_rows(
    g: &[f64],
    batch: usize,
    rows: usize,
    width: usize,
) -> Result<(usize, Vec<f32>), Error> {
    let per_cloud = g.len() / batch;
    if g.is_empty() || !g.len().is_multiple_of(batch) || !per_cloud.is_multiple_of(width) {
        return Err(Error::InputShape {
            name: "global_feats",
            expected: format!("({batch}, g, {width}) with g >= 1"),
            found: vec![g.len()],
        });
    }
    all_finite("global_feats", g)?;
    let n = rows / batch;
    let out = (0..rows)
        .flat_map(|i| g[(i / n) * per_cloud..(i / n + 1) * per_cloud].iter())
        .map(|&v| v as f32)
        .collect();
    Ok((per_cloud / width, out))
}

/// `NonFinite` naming input `name` at the first NaN or infinite value.
fn all_finite<'a>(
    name: &'static str,
    values: impl IntoIterator<Item = &'a f64>,
) -> Result<(), Error> {
    match values.into_iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite { name, index }),
        None => Ok(()),
    }
}

/// `given` if the model takes the input (`needed`), `MissingInput` / `UnexpectedInput` naming
/// it otherwise.
fn expected<T>(given: Option<T>, needed: bool, name: &'static str) -> Result<Option<T>, Error> {
    match (given, needed) {
        (Some(_), false) => Err(Error::UnexpectedInput { name }),
        (None, true) => Err(Error::MissingInput { name }),
        (given, _) => Ok(given),
    }
}

/// The id `id(cloud, i, j)` of each valid edge `src -> dst` (global row indices, clouds of `n`
/// nodes; `i` the destination's and `j` the source's index in its cloud), `-1` (no embedding
/// row) for missing edges.
fn pair_ids(
    src: &[f32],
    dst: &[f32],
    n: usize,
    id: impl Fn(usize, usize, usize) -> i64,
) -> Vec<f32> {
    src.iter()
        .zip(dst)
        .map(|(&j, &i)| {
            if j < 0.0 || i < 0.0 {
                return -1.0;
            }
            let (i, j) = (i as usize, j as usize);
            id(i / n, i % n, j % n) as f32
        })
        .collect()
}

/// The features `(b, n, n, d)` of each valid edge `src -> dst` (global row indices), zeros
/// for missing edges: `[E, d]` row-major.
fn gather_edge_features(f: &[f64], src: &[f32], dst: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; src.len() * d];
    for (q, (&j, &i)) in src.iter().zip(dst).enumerate() {
        if j < 0.0 || i < 0.0 {
            continue;
        }
        let (i, j) = (i as usize, j as usize);
        // same cloud: row i = b n + i_l, j = b n + j_l -> pair (b, i_l, j_l) = i n + j_l
        let pair = i * n + j % n;
        for (o, v) in out[q * d..(q + 1) * d]
            .iter_mut()
            .zip(&f[pair * d..(pair + 1) * d])
        {
            *o = *v as f32;
        }
    }
    out
}

/// se3-transformer-pytorch's neighbour selection on `batch` stacked clouds, as the edge inputs
/// of a graph: the selection of [`Se3TransformerNet`] and the oracle
/// ([`select_neighbors`]: for node `i`, the
/// other nodes `j` of its cloud ranked by distance, ties as PyTorch's `topk`, the first
/// `min(k, n - 1)` kept, valid if `|x_i - x_j| <= valid_radius` and both are unmasked; with
/// `causal` only `j < i` are valid, ranked after the others as the library's masked pairs). Edge
/// `i k + kk` has `dst = i`, `src = j`; invalid and padding edges are `-1`. Returns
/// `(src, dst)`.
pub fn knn_edges(
    coords: &[[f64; 3]],
    batch: usize,
    mask: Option<&[bool]>,
    k: usize,
    valid_radius: f64,
    causal: bool,
) -> (Vec<f32>, Vec<f32>) {
    let params = SelectionParams {
        num_neighbors: Some(k),
        valid_radius,
        causal,
        attend_sparse: false,
        max_sparse_neighbors: None,
        num_adj_degrees: None,
    };
    let (src, dst, _) = select_edges(coords, batch, mask, None, &params, None, false);
    (src, dst)
}

/// [`knn_edges`] with the selection's parameters and each cloud's `neighbor_mask` (`(batch, n,
/// n)`, checked by the caller). With `keep_invalid` every selected neighbour keeps its edge
/// and the third vector holds the validity flags (1/0); otherwise invalid edges are missing.
fn select_edges(
    coords: &[[f64; 3]],
    batch: usize,
    mask: Option<&[bool]>,
    neighbor_mask: Option<&[bool]>,
    params: &SelectionParams,
    sparse: Option<(&[Vec<bool>], usize)>,
    keep_invalid: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let num_sparse = sparse.map_or(0, |s| s.1);
    let rows = coords.len();
    let n = rows.checked_div(batch).unwrap_or(0);
    // slots per node: the neighbours and the bonded extras, or every other node
    let k = match params.num_neighbors {
        Some(k) => k + num_sparse,
        None => n.saturating_sub(1),
    };
    let (mut src, mut dst) = (vec![-1.0; rows * k], vec![-1.0; rows * k]);
    let mut flags = vec![0.0; if keep_invalid { rows * k } else { 0 }];
    for bi in 0..batch {
        let base = bi * n;
        let inputs = PairInputs {
            coors: &coords[base..base + n],
            mask: mask.map(|m| &m[base..base + n]),
            adj: None,
            neighbor_mask: neighbor_mask.map(|m| &m[base * n..(base + n) * n]),
            edge_feat: None,
        };
        let bonded = sparse.and_then(|(m, _)| m.get(bi)).map(Vec::as_slice);
        let sel = select_neighbors(params, &inputs, bonded, num_sparse);
        for (e, (&j, &valid)) in sel.nbr.iter().zip(&sel.valid).enumerate() {
            let (i, kk) = (e / sel.k.max(1), e % sel.k.max(1));
            let at = (base + i) * k + kk;
            if valid || keep_invalid {
                src[at] = (base + j) as f32;
                dst[at] = (base + i) as f32;
            }
            if valid && keep_invalid {
                flags[at] = 1.0;
            }
        }
    }
    (src, dst, keep_invalid.then_some(flags))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use se3_core::testing::{rel_error, TOL_F32};

    use super::*;
    use crate::model_file::ModelFile;

    fn reference(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/reference/models")
            .join(name)
    }

    /// The model of reference folder `name` run on its inputs: the max relative error over
    /// its float64 outputs (every output key, in the library's shapes).
    fn reference_error(name: &str) -> Result<f64, Error> {
        let dir = reference(name);
        let file = ModelFile::load(dir.join("config.json"))?;
        let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
        let sd = StateDict::load(dir.join("weights.safetensors"))?;
        let net = Se3TransformerNet::from_config(&cfg, &sd)?;
        let inputs =
            ModelInputs::load(dir.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
        // the weights moved into the session, as the zoo builds it
        let got = net.into_session()?.forward_inputs(&inputs, &fwd)?;
        let want = StateDict::load(dir.join("outputs.safetensors"))?;
        let want_keys: Vec<&str> = want.keys().filter_map(|k| k.strip_suffix("_f64")).collect();
        let got_keys: Vec<&str> = got.keys().collect();
        assert_eq!(got_keys, want_keys, "{name}: output names");
        let mut worst = 0.0f64;
        for (key, t) in got.iter() {
            let w = want.get(&format!("{key}_f64")).ok_or(Error::MissingKey {
                key: format!("{name}: {key}_f64"),
                expected: vec![],
            })?;
            assert_eq!(t.shape, w.shape, "{name}: shape of {key}");
            let err = rel_error(&t.data, &w.data);
            println!("{name}: {key} max rel err {err:.2e}");
            worst = worst.max(err);
        }
        println!("{name}: max rel err {worst:.2e}");
        Ok(worst)
    }

    /// A graph form that rearranges weights on the host (`ConvPath::Grouped`) meets weights
    /// already moved into the session: a typed error naming the parameter, not a panic.
    #[test]
    fn moved_weights_read_on_the_host_are_a_typed_error() -> Result<(), Error> {
        let dir = reference("se3t_basic");
        let file = ModelFile::load(dir.join("config.json"))?;
        let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let sd = StateDict::load(dir.join("weights.safetensors"))?;
        let mut net = Se3TransformerNet::from_config(&cfg, &sd)?;
        net.conv_in = net
            .conv_in
            .clone()
            .with_path(se3_core::layers::ConvPath::Grouped);
        // with the values in place the grouped form builds
        net.compile()?;
        match net.into_session() {
            Err(Error::Core(se3_core::Error::MissingInput { name })) => {
                assert!(name.contains("conv_in") || name.contains("net.6"), "{name}");
            }
            other => panic!("expected MissingInput, got {:?}", other.map(|_| ())),
        }
        Ok(())
    }

    /// Every SE(3)-Transformer reference (all options, the EGNN trunk and the reduced output
    /// included) through the reference-input path of the zoo and `se3 infer`.
    #[test]
    fn every_se3_transformer_reference_matches_its_float64_outputs() -> Result<(), Error> {
        let mut names: Vec<String> = std::fs::read_dir(reference(""))
            .map_err(|source| Error::Io {
                path: reference("").display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("se3t_"))
            .collect();
        names.sort();
        assert_eq!(names.len(), 18, "reference folders {names:?}");
        for name in &names {
            let err = reference_error(name)?;
            assert!(err < TOL_F32, "{name}: off by {err:.2e}");
        }
        Ok(())
    }
}
