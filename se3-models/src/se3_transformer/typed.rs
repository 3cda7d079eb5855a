//! The SE(3)-Transformer assembled by hand from typed se3-core layers: a user declares the
//! fibers with `#[fiber]` and gets `conv_in -> depth x (AttentionBlock, FeedForwardBlock) ->
//! conv_out` (optionally with `num_conv_layers` NormSE3 + ConvSE3 pairs after `conv_in` and
//! the output NormSE3 of `norm_out`) as one luminal graph, loadable from a
//! se3-transformer-pytorch state dict.
//!
//! A sketch (the README and `examples/se3_transformer_typed.rs` have the whole program,
//! compiled and run):
//!
//! ```text
//! #[fiber(0:8)]        struct Atoms;   // input: type-0 features (`feats (b, n, 8)`)
//! #[fiber(0:8, 1:8)]   struct Hidden;  // dim = 8, num_degrees = 2
//! #[fiber(0:8)]        struct Readout; // output_degrees = 1
//!
//! let model = TypedSe3Transformer::<Atoms, Hidden, Readout>::load(&state_dict, options)?;
//! let mut run = model.compile()?;
//! let y: Features<Readout> = run.forward(&coords, batch, Some(&mask), &x)?;
//! ```
//!
//! The graph is [`TypedSe3Transformer::build`]: each layer is a typed se3-core layer
//! ([`Conv<In, Hidden>`], [`AttentionBlock<Hidden>`], [`FeedForwardBlock<Hidden>`],
//! [`Conv<Hidden, Out>`]), so a fiber that does not connect is a compile error, and the session
//! weights are named as the checkpoint keys (`conv_in.kernel_unary.(0,1).rp.net.0.weight`,
//! `net.blocks.0.0.attn.to_q.weights.1`, ...).
//!
//! Semantics are the library's for the options this assembly has ([`TypedOptions`]):
//! neighbours are the `num_neighbors` nearest other nodes of the same cloud (ties by index),
//! valid if within `valid_radius` and both nodes are unmasked; ConvSE3 layers mean-pool with
//! self-interaction; attention over the valid neighbours (and the node itself with
//! `attend_self`). The neighbour lists are computed on the host and fed to the graph with the
//! coordinates; the kernel basis is built in the graph from the coordinates. Batches run as
//! one graph of `b n` stacked nodes. Options outside this set (atom or edge tokens, global
//! features, EGNN, ...) are [`Error::NotTyped`]; [`Se3Transformer`] runs them.
//! Continuous edge features (`edge_dim`) and Fourier-encoded distances feed every radial
//! network ([`TypedSession::forward_with_edges`]).
//!
//! [`Se3Transformer`]: crate::se3_transformer::Se3Transformer

use std::marker::PhantomData;

use luminal::prelude::*;
use rand::Rng;
use se3_core::exec::IndexBound;
use se3_core::exec::{InputKind, Session};
use se3_core::fiber::{DegreeTensor, Features, Fiber, FiberSpec};
use se3_core::layers::graph::{expand_at, X};
use se3_core::layers::{
    AttentionBlock, AttentionOptions, Conv, ConvOptions, EdgeBasis, EdgeGraph, FeatureTensors,
    FeedForwardBlock, GraphFeatures, Norm, NormActivation, NormScale, Param, Pool, RotaryAngles,
    RotaryEmbedding,
};

use crate::checkpoint::StateDict;
use crate::checkpoint::StateDictSource;
use crate::se3_transformer::config::Se3TransformerConfig;
use crate::se3_transformer::graph::{
    adjacency_degrees, select_neighbors, sparse_selection, PairInputs, SelectionParams,
};
use crate::Error;

mod module;

/// The options of a typed SE(3)-Transformer besides its fibers (se3-transformer-pytorch
/// kwargs of the same names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypedOptions {
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
    /// switches `norm_out` on with it (as [`TypedOptions::from_config`] does).
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
    /// degree 0 of every attention attends to ([`TypedSession::forward_with`]).
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
    /// input (`In` is degree 0 only; [`TypedSession::forward_tokens`]).
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
}

impl Default for TypedOptions {
    /// se3-transformer-pytorch's defaults of its optional arguments (`heads = 8`, `dim_head =
    /// 24`, `attend_self`, `num_neighbors = infinity`, `valid_radius = 1e5`, every other
    /// option off) with `depth = 1`.
    fn default() -> Self {
        TypedOptions {
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
        }
    }
}

impl TypedOptions {
    /// The width of the bond-distance embedding among the edge features (0 without).
    fn adjacency_width(&self) -> usize {
        if self.num_adj_degrees.is_some() {
            self.adj_dim
        } else {
            0
        }
    }

    /// The width of the edge features given as input (continuous or tokens), without the
    /// bond-distance embedding.
    fn edge_input_width(&self) -> usize {
        self.edge_dim.saturating_sub(self.adjacency_width())
    }

    /// The first option whose inputs only [`TypedSession`] feeds (embedding ids, rotary
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
    fn takes_adjacency(&self) -> bool {
        self.attend_sparse_neighbors || self.num_adj_degrees.is_some()
    }

    /// The rotary embeddings' frequencies of fresh weights, if any.
    fn fresh_rotary(&self) -> Result<Option<RotaryEmbedding>, Error> {
        if !(self.rotary_position || self.rotary_rel_dist) {
            return Ok(None);
        }
        Ok(Some(RotaryEmbedding::new(
            self.dim_head,
            self.rotary_position,
            self.rotary_rel_dist,
        )?))
    }

    /// The options of `cfg`, after checking that `In`, `Hidden`, `Out` are its fibers.
    ///
    /// # Errors
    /// `NotTyped` naming the first option the typed assembly does not have (tokens, edges,
    /// sparse neighbours, EGNN, output reduction, infinite `num_neighbors`);
    /// `Core(FiberMismatch)` if a fiber differs from the config's.
    pub fn from_config<In: Fiber, Hidden: Fiber, Out: Fiber>(
        cfg: &Se3TransformerConfig,
    ) -> Result<Self, Error> {
        let unsupported = [
            ("use_egnn", cfg.use_egnn),
            ("reduce_dim_out", cfg.reduce_dim_out),
        ];
        if let Some((option, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(Error::NotTyped { option });
        }
        let shape = cfg.shape()?;
        let spec = |dims: &[(usize, usize)]| -> Result<FiberSpec, Error> {
            let text: Vec<String> = dims.iter().map(|(l, c)| format!("{l}:{c}")).collect();
            Ok(text.join(", ").parse()?)
        };
        In::check_spec(&spec(&shape.fiber_in)?)?;
        if cfg.num_tokens.is_some() && In::degrees().into_iter().any(|d| d.l != 0) {
            return Err(Error::NotTyped {
                option: "num_tokens with an input fiber beyond degree 0",
            });
        }
        Hidden::check_spec(&spec(&shape.fiber_hidden)?)?;
        let out = shape.fiber_out.as_deref().ok_or(Error::NotTyped {
            option: "output_degrees = None",
        })?;
        Out::check_spec(&spec(out)?)?;
        Ok(TypedOptions {
            depth: cfg.depth,
            heads: cfg.heads,
            dim_head: cfg.dim_head,
            attend_self: cfg.attend_self,
            norm_gated_scale: cfg.norm_gated_scale,
            num_neighbors: cfg.num_neighbors,
            valid_radius: cfg.valid_radius,
            num_conv_layers: cfg.num_conv_layers,
            norm_out: cfg.norm_out || cfg.reversible,
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
        })
    }

    fn norm_scale(&self) -> NormScale {
        if self.norm_gated_scale {
            NormScale::Gated
        } else {
            NormScale::PerChannel
        }
    }

    /// The checkpoint prefixes of block pair `i`.
    fn block_prefixes(&self, i: usize) -> (String, String) {
        if self.reversible {
            (
                format!("net.blocks.{i}.f.net."),
                format!("net.blocks.{i}.g.net."),
            )
        } else {
            (format!("net.blocks.{i}.0."), format!("net.blocks.{i}.1."))
        }
    }

    fn attention(&self) -> AttentionOptions {
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
    fn conv(&self) -> ConvOptions {
        ConvOptions {
            edge_dim: self.edge_dim,
            fourier: self.fourier,
            self_interaction: true,
            pool: Pool::Mean,
        }
    }
}

/// An SE(3)-Transformer of typed layers from fiber `In` through `Hidden` to `Out` (module
/// doc): `conv_in: Conv<In, Hidden>`, `num_conv_layers` pairs of `Norm<Hidden>` and
/// `Conv<Hidden, Hidden>`, `depth` pairs of `AttentionBlock<Hidden>` and
/// `FeedForwardBlock<Hidden>`, `conv_out: Conv<Hidden, Out>`, with `norm_out` a `Norm<Out>`.
#[derive(Debug, Clone)]
pub struct TypedSe3Transformer<In: Fiber, Hidden: Fiber, Out: Fiber> {
    /// `conv_in` (keys `conv_in.*`).
    pub conv_in: Conv<In, Hidden>,
    /// `convs` (keys `convs.<i>.1.*` for the norm, `convs.<i>.0.*` for the convolution,
    /// applied norm first).
    pub convs: Vec<(Norm<Hidden>, Conv<Hidden, Hidden>)>,
    /// The trunk (keys `net.blocks.<i>.0.*`, `net.blocks.<i>.1.*`).
    pub blocks: Vec<(AttentionBlock<Hidden>, FeedForwardBlock<Hidden>)>,
    /// `conv_out` (keys `conv_out.*`).
    pub conv_out: Conv<Hidden, Out>,
    /// `norm` (keys `norm.*`), present with `norm_out`.
    pub norm: Option<Norm<Out>>,
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
    options: TypedOptions,
}

impl<In: Fiber, Hidden: Fiber, Out: Fiber> TypedSe3Transformer<In, Hidden, Out> {
    /// A model with fresh weights.
    ///
    /// # Errors
    /// Those of the layers' constructors (`ZeroChannels` for `heads * dim_head = 0`).
    pub fn new(options: TypedOptions, rng: &mut impl Rng) -> Result<Self, Error> {
        let conv_in = Conv::new(options.conv(), rng)?;
        let convs = (0..options.num_conv_layers)
            .map(|_| {
                Ok((
                    Norm::new(options.norm_scale(), NormActivation::Gelu),
                    Conv::new(options.conv(), rng)?,
                ))
            })
            .collect::<Result<_, Error>>()?;
        let blocks = (0..options.depth)
            .map(|_| {
                Ok((
                    AttentionBlock::new(options.attention(), options.norm_gated_scale, rng)?,
                    FeedForwardBlock::new(options.norm_gated_scale, rng)?,
                ))
            })
            .collect::<Result<_, Error>>()?;
        Ok(TypedSe3Transformer {
            conv_in,
            convs,
            blocks,
            conv_out: Conv::new(options.conv(), rng)?,
            norm: options
                .norm_out
                .then(|| Norm::new(options.norm_scale(), NormActivation::Identity)),
            pos_emb: options.num_positions.map(|p| {
                Param::uniform(
                    "pos_emb.weight".into(),
                    vec![p, position_width::<In>()],
                    1.0,
                    rng,
                )
            }),
            rotary: options.fresh_rotary()?,
            edge_emb: options.num_edge_tokens.map(|t| {
                Param::uniform(
                    "edge_emb.weight".into(),
                    vec![t, options.edge_input_width()],
                    1.0,
                    rng,
                )
            }),
            adj_emb: match (options.num_adj_degrees, options.adjacency_width()) {
                (Some(d), w) if w > 0 => Some(Param::uniform(
                    "adj_emb.weight".into(),
                    vec![d + 1, w],
                    1.0,
                    rng,
                )),
                _ => None,
            },
            token_emb: options.num_tokens.map(|t| {
                Param::uniform(
                    "token_emb.weight".into(),
                    vec![t, position_width::<In>()],
                    1.0,
                    rng,
                )
            }),
            options,
        })
    }

    /// Loads a se3-transformer-pytorch `SE3Transformer` state dict (values rounded to f32).
    ///
    /// # Errors
    /// `Core(MissingKey)` / `Core(WrongShape)` naming the key and its expected shape (a fiber
    /// or option that differs from the checkpoint's shows here), `Core(NonFiniteWeight)`, and
    /// `UnexpectedKey` for a tensor of the dict that no layer reads.
    pub fn load(sd: &StateDict, options: TypedOptions) -> Result<Self, Error> {
        let mut src = StateDictSource::new(sd);
        let conv_in = Conv::load(&mut src, "conv_in.", options.conv())?;
        let mut convs = Vec::with_capacity(options.num_conv_layers);
        for i in 0..options.num_conv_layers {
            convs.push((
                Norm::load(
                    &mut src,
                    &format!("convs.{i}.1."),
                    options.norm_scale(),
                    NormActivation::Gelu,
                )?,
                Conv::load(&mut src, &format!("convs.{i}.0."), options.conv())?,
            ));
        }
        let mut blocks = Vec::with_capacity(options.depth);
        for i in 0..options.depth {
            let (pa, pf) = options.block_prefixes(i);
            blocks.push((
                AttentionBlock::load(&mut src, &pa, options.attention(), options.norm_gated_scale)?,
                FeedForwardBlock::load(&mut src, &pf, options.norm_gated_scale)?,
            ));
        }
        let conv_out = Conv::load(&mut src, "conv_out.", options.conv())?;
        let norm = if options.norm_out {
            Some(Norm::load(
                &mut src,
                "norm.",
                options.norm_scale(),
                NormActivation::Identity,
            )?)
        } else {
            None
        };
        let token_emb = match options.num_tokens {
            Some(t) => Some(Param::load(
                &mut src,
                "token_emb.weight".into(),
                vec![t, position_width::<In>()],
            )?),
            None => None,
        };
        let edge_emb = match options.num_edge_tokens {
            Some(t) => Some(Param::load(
                &mut src,
                "edge_emb.weight".into(),
                vec![t, options.edge_input_width()],
            )?),
            None => None,
        };
        let adj_emb = match (options.num_adj_degrees, options.adjacency_width()) {
            (Some(d), w) if w > 0 => Some(Param::load(
                &mut src,
                "adj_emb.weight".into(),
                vec![d + 1, w],
            )?),
            _ => None,
        };
        let pos_emb = match options.num_positions {
            Some(p) => {
                let c = sd
                    .get("pos_emb.weight")
                    .map_or(0, |t| t.shape[1..].iter().product());
                let width = if c == 1 { 1 } else { position_width::<In>() };
                Some(Param::load(
                    &mut src,
                    "pos_emb.weight".into(),
                    vec![p, width],
                )?)
            }
            None => None,
        };
        let rotary = match options.fresh_rotary()? {
            Some(fresh) => {
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
            None => None,
        };
        src.finish()?;
        Ok(TypedSe3Transformer {
            conv_in,
            convs,
            blocks,
            conv_out,
            norm,
            pos_emb,
            rotary,
            token_emb,
            edge_emb,
            adj_emb,
            options,
        })
    }

    /// The options.
    pub fn options(&self) -> &TypedOptions {
        &self.options
    }

    /// The highest degree of the kernel basis the layers need.
    pub fn max_degree() -> usize {
        In::max_degree()
            .max(Hidden::max_degree())
            .max(Out::max_degree())
    }

    /// The degree-0 input `token_emb[tokens]` (`[N, c, 1]`) of input `tokens` (one id per
    /// node); `In` is degree 0 only ([`TypedOptions::from_config`] checks it).
    fn embed_tokens(&self, s: &mut Session, table: &Param) -> Result<GraphFeatures<In>, Error> {
        let rows: GraphTensor<(Dyn<'n'>, X)> = embedded(s, "tokens", table, false)?;
        let x0 = expand_at::<_, (Dyn<'n'>, X, X)>(rows, 2, 1);
        Ok(GraphFeatures::new(FeatureTensors::new(
            In::spec(),
            vec![se3_core::layers::graph::reshape(
                x0,
                &['n'.into(), table.shape[1].into(), 1.into()],
            )],
        )?)?)
    }

    /// `x` with the position embedding `table` (`[num_positions, c]`) of input `positions`
    /// (each node's index in its cloud) added to degree 0 (a width-1 table to every channel).
    fn embed_positions(
        &self,
        s: &mut Session,
        table: &Param,
        x: &GraphFeatures<In>,
    ) -> Result<GraphFeatures<In>, Error> {
        let rows_of: GraphTensor<(Dyn<'n'>, X)> = embedded(s, "positions", table, false)?;
        let mut tensors = x.untyped().tensors().to_vec();
        for (d, t0) in In::degrees().into_iter().zip(tensors.iter_mut()) {
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
        Ok(GraphFeatures::new(FeatureTensors::new(
            In::spec(),
            tensors,
        )?)?)
    }

    /// Adds the layers to `s` on node features `x`, over `edges` (grouped by destination,
    /// `num_neighbors` per node) with their kernel `basis`; weights are named as the
    /// checkpoint keys.
    ///
    /// # Errors
    /// Those of the layers' `build` (`InvalidOp` for ungrouped edges).
    pub fn build(
        &self,
        s: &mut Session,
        x: &GraphFeatures<In>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<GraphFeatures<Out>, Error> {
        let mut h: GraphFeatures<Hidden> = self.conv_in.build(s, "conv_in.", x, edges, basis)?;
        for (i, (norm, conv)) in self.convs.iter().enumerate() {
            h = norm.build(s, &format!("convs.{i}.1."), &h)?;
            h = conv.build(s, &format!("convs.{i}.0."), &h, edges, basis)?;
        }
        if self.options.reversible {
            let (mut x1, mut x2) = (h.clone(), h);
            for (i, (attention, feed_forward)) in self.blocks.iter().enumerate() {
                let (pa, pf) = self.options.block_prefixes(i);
                let y1 = attention.build(s, &pa, &x2, edges, basis)?.residual(&x1);
                let y2 = feed_forward.build(s, &pf, &y1)?.residual(&x2);
                (x1, x2) = (y1, y2);
            }
            h = mean_of(&x1, &x2)?;
        } else {
            for (i, (attention, feed_forward)) in self.blocks.iter().enumerate() {
                let (pa, pf) = self.options.block_prefixes(i);
                h = attention.build(s, &pa, &h, edges, basis)?;
                h = feed_forward.build(s, &pf, &h)?;
            }
        }
        let y = self.conv_out.build(s, "conv_out.", &h, edges, basis)?;
        Ok(match &self.norm {
            Some(norm) => norm.build(s, "norm.", &y)?,
            None => y,
        })
    }

    /// The whole forward pass as one compiled session: inputs `coords (N, 3)`, `x.<l>`
    /// (`[N, c, 2l + 1]`), `edges.src`, `edges.dst` (`N * num_neighbors`, `-1` for missing
    /// edges), with `edge_dim > 0` also `edges.features` (`[N * num_neighbors, edge_dim]`);
    /// outputs `y.<l>`.
    ///
    /// # Errors
    /// As [`TypedSe3Transformer::build`].
    pub fn compile(&self) -> Result<TypedSession<In, Out>, Error> {
        let mut s = Session::new();
        let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
        let x = match &self.token_emb {
            Some(table) => self.embed_tokens(&mut s, table)?,
            None => GraphFeatures::<In>::input(&mut s, "x"),
        };
        // `k` neighbour slots per node, set each run (sparse neighbours add to it)
        let mut edges = EdgeGraph::input(&mut s, "edges", coords).grouped('k');
        // the radial networks' edge features: the input's (continuous or embedded tokens),
        // then the embedding of the pair's bond distance
        let mut parts: Vec<GraphTensor<(Dyn<'e'>, X)>> = Vec::new();
        if let Some(table) = &self.edge_emb {
            parts.push(embedded(&mut s, "edges.tokens", table, true)?);
        } else if self.options.edge_input_width() > 0 {
            parts.push(s.input_with_shape::<(Dyn<'e'>, Dyn<'-'>)>(
                "edges.features",
                InputKind::Values,
                &['e'.into(), self.options.edge_input_width().into()],
            ));
        }
        if let Some(table) = &self.adj_emb {
            parts.push(embedded(&mut s, "edges.adjacency", table, true)?);
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
            edges.rotary = Some(RotaryAngles::input(&mut s, "rotary", dh, rot.rotated(dh))?);
        }
        let x = match &self.pos_emb {
            Some(table) => self.embed_positions(&mut s, table, &x)?,
            None => x,
        };
        let basis = EdgeBasis::new(&mut s, "", &edges, Self::max_degree())?;
        self.build(&mut s, &x, &edges, &basis)?.output(&mut s, "y");
        s.compile();
        Ok(TypedSession {
            session: s,
            options: self.options,
            rotary: self.rotary.clone(),
            fibers: PhantomData,
        })
    }
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
fn position_width<In: Fiber>() -> usize {
    In::degrees()
        .into_iter()
        .find(|d| d.l == 0)
        .map_or(0, |d| d.channels)
}

/// `(a + b) / 2`, degree by degree.
fn mean_of<F: Fiber>(
    a: &GraphFeatures<F>,
    b: &GraphFeatures<F>,
) -> Result<GraphFeatures<F>, Error> {
    let tensors = a
        .untyped()
        .tensors()
        .iter()
        .zip(b.untyped().tensors())
        .map(|(x, y)| (*x + *y) * 0.5)
        .collect();
    Ok(GraphFeatures::new(FeatureTensors::new(
        F::spec(),
        tensors,
    )?)?)
}

/// A compiled [`TypedSe3Transformer`], ready to run on batches of point clouds.
#[derive(Debug)]
pub struct TypedSession<In: Fiber, Out: Fiber> {
    session: Session,
    /// The model's options (what the host feeds: selection, embeddings' inputs).
    options: TypedOptions,
    /// The model's rotary frequencies (the host computes the angles).
    rotary: Option<RotaryEmbedding>,
    fibers: PhantomData<fn(In) -> Out>,
}

impl<In: Fiber, Out: Fiber> TypedSession<In, Out> {
    /// The session (inputs and outputs named as in [`TypedSe3Transformer::compile`]).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Runs `batch` clouds of `n` nodes each, stacked: `coords` and `x` hold `batch * n` rows,
    /// `mask` (if any) one flag per row. For a model without edge features.
    ///
    /// # Errors
    /// As [`TypedSession::forward_with_edges`].
    pub fn forward(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: &Features<In>,
    ) -> Result<Features<Out>, Error> {
        self.forward_with_edges(coords, batch, mask, x, None)
    }

    /// As [`TypedSession::forward`], with the continuous edge features of every ordered pair
    /// of each cloud, `(batch, n, n, edge_dim)` row-major (the library's `edges` input).
    ///
    /// # Errors
    /// As [`TypedSession::forward_with`].
    pub fn forward_with_edges(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: &Features<In>,
        edge_features: Option<&[f64]>,
    ) -> Result<Features<Out>, Error> {
        let extra = CloudInputs {
            edges: edge_features,
            ..CloudInputs::default()
        };
        self.forward_with(coords, batch, mask, x, extra)
    }

    /// As [`TypedSession::forward`], with the optional inputs of [`CloudInputs`].
    ///
    /// # Errors
    /// `EmptyGraph` for no nodes or fewer than 2 per cloud, `InputShape` if the row counts do
    /// not agree or are not a multiple of `batch`, the edge features are not
    /// `batch n n edge_dim` values or the global tokens not `batch g global_feats_dim` (`g >=
    /// 1`), `MissingInput` / `UnexpectedInput` for edge features or global tokens the model
    /// needs / does not take, `NonFinite` for NaN or infinite coordinates, edge features or
    /// global tokens; errors of the session.
    pub fn forward_with(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: &Features<In>,
        extra: CloudInputs<'_>,
    ) -> Result<Features<Out>, Error> {
        if self.options.num_tokens.is_some() {
            return Err(Error::MissingInput {
                name: "tokens (the model embeds atom tokens: TypedSession::forward_tokens)",
            });
        }
        self.run(coords, batch, mask, NodeInput::Features(x), extra)
    }

    /// As [`TypedSession::forward_with`] for a model with `num_tokens`: the nodes are token
    /// ids (`batch * n`, each in `0..num_tokens`), embedded by `token_emb.weight` into the
    /// degree-0 input.
    ///
    /// # Errors
    /// `UnexpectedInput` for a model without tokens, `InputShape` for a token count other than
    /// the node count, `Core(BadIndex)` for an id out of range; as
    /// [`TypedSession::forward_with`].
    pub fn forward_tokens(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        tokens: &[i64],
        extra: CloudInputs<'_>,
    ) -> Result<Features<Out>, Error> {
        if self.options.num_tokens.is_none() {
            return Err(Error::UnexpectedInput { name: "tokens" });
        }
        self.run(coords, batch, mask, NodeInput::Tokens(tokens), extra)
    }

    fn run(
        &mut self,
        coords: &[[f64; 3]],
        batch: usize,
        mask: Option<&[bool]>,
        x: NodeInput<'_, In>,
        extra: CloudInputs<'_>,
    ) -> Result<Features<Out>, Error> {
        let rows = coords.len();
        if batch == 0 || rows == 0 || rows / batch < 2 {
            return Err(Error::EmptyGraph {
                batch,
                nodes: rows.checked_div(batch).unwrap_or(0),
            });
        }
        let nodes = match x {
            NodeInput::Features(x) => x.nodes(),
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
        if let Some(index) = coords.iter().flatten().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                name: "coords",
                index,
            });
        }
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
            Some(a) => Some(self.options.bonds(a, batch, n)),
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
            if let Some(index) = f.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    name: "edges",
                    index,
                });
            }
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
        let (src, dst) = select_edges(
            coords,
            batch,
            mask,
            extra.neighbor_mask,
            &self.selection(),
            sparse,
        );
        let s = &mut self.session;
        if self.options.num_positions.is_some() {
            let positions = (0..rows).map(|i| (i % n) as f32).collect();
            s.set("positions", positions, &[rows])?;
        }
        if let Some(rot) = &self.rotary {
            let dh = self.options.dim_head;
            let (nc, ns) = rot.cos_sin(dh, (0..rows).map(|i| (i % n, 0.0)));
            let edge = |(&j, &i): (&f32, &f32)| -> (usize, f64) {
                if j < 0.0 || i < 0.0 {
                    return (0, 0.0);
                }
                let (a, b) = (coords[i as usize], coords[j as usize]);
                let d2: f64 = (0..3).map(|c| (a[c] - b[c]) * (a[c] - b[c])).sum();
                (j as usize % n, d2.sqrt())
            };
            let (ec, es) = rot.cos_sin(dh, src.iter().zip(&dst).map(edge));
            let e = src.len();
            s.set("rotary.node_cos", nc, &[rows, dh])?;
            s.set("rotary.node_sin", ns, &[rows, dh])?;
            s.set("rotary.edge_cos", ec, &[e, dh])?;
            s.set("rotary.edge_sin", es, &[e, dh])?;
        }
        if let Some((tokens, values)) = global {
            let width = values.len() / (rows * tokens);
            s.set("global", values, &[rows, tokens, width])?;
        }
        let e = src.len();
        if let Some(f) = edge_features {
            s.set(
                "edges.features",
                gather_edge_features(f, &src, &dst, n, ed),
                &[e, ed],
            )?;
        }
        if let (Some(b), true) = (&bonds, self.options.adjacency_width() > 0) {
            let labels = pair_ids(&src, &dst, n, |c, i, j| b.labels[c][i * n + j]);
            s.set("edges.adjacency", labels, &[e])?;
        }
        if let Some(t) = edge_tokens {
            let ids = pair_ids(&src, &dst, n, |c, i, j| t[(c * n + i) * n + j]);
            s.set("edges.tokens", ids, &[e])?;
        }
        let flat: Vec<f32> = coords.iter().flatten().map(|&v| v as f32).collect();
        s.set("coords", flat, &[rows, 3])?;
        s.set_dim('k', e / rows);
        s.set("edges.src", src, &[e])?;
        s.set("edges.dst", dst, &[e])?;
        match x {
            NodeInput::Features(x) => {
                for (d, b) in In::degrees().into_iter().zip(x.blocks()) {
                    s.set(&format!("x.{}", d.l), b.data().to_vec(), &b.shape())?;
                }
            }
            NodeInput::Tokens(t) => {
                s.set("tokens", t.iter().map(|&v| v as f32).collect(), &[rows])?;
            }
        }
        s.run()?;
        let blocks = Out::degrees()
            .into_iter()
            .map(|d| {
                let y = s.get(&format!("y.{}", d.l))?;
                Ok(DegreeTensor::from_vec(
                    [rows, d.channels, d.width()],
                    y.data,
                )?)
            })
            .collect::<Result<_, Error>>()?;
        Ok(Features::from_blocks(blocks)?)
    }
}

impl<In: Fiber, Out: Fiber> TypedSession<In, Out> {
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

/// Per cloud: bond-distance labels (`n n`), the bonded pairs the sparse selection ranks
/// first, and the number of extra slots.
struct Bonds {
    labels: Vec<Vec<i64>>,
    sparse: Vec<Vec<bool>>,
    num_sparse: usize,
}

impl TypedOptions {
    /// The library's use of `adj_mat` (`(batch, n, n)` or one `(n, n)`): with
    /// `num_adj_degrees` the labels and the adjacency of the last power
    /// ([`adjacency_degrees`]); with sparse attention the bonds every node ranks first
    /// ([`sparse_selection`]).
    fn bonds(&self, adj: &[bool], batch: usize, n: usize) -> Bonds {
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
            sparse_selection(&current, n, self.max_sparse_neighbors, 0)
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

/// The nodes of a typed forward: features, or token ids the model embeds.
#[derive(Clone, Copy)]
enum NodeInput<'a, In: Fiber> {
    Features(&'a Features<In>),
    Tokens(&'a [i64]),
}

/// Optional inputs of a typed forward besides coordinates, mask and node features.
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
    if let Some(index) = g.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            name: "global_feats",
            index,
        });
    }
    let n = rows / batch;
    let out = (0..rows)
        .flat_map(|i| g[(i / n) * per_cloud..(i / n + 1) * per_cloud].iter())
        .map(|&v| v as f32)
        .collect();
    Ok((per_cloud / width, out))
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
/// of a typed graph: the selection of the compiled model and the oracle
/// ([`select_neighbors`](crate::se3_transformer::graph::select_neighbors): for node `i`, the
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
    select_edges(coords, batch, mask, None, &params, None)
}

/// [`knn_edges`] with the selection's parameters and each cloud's `neighbor_mask` (`(batch, n,
/// n)`, checked by the caller).
fn select_edges(
    coords: &[[f64; 3]],
    batch: usize,
    mask: Option<&[bool]>,
    neighbor_mask: Option<&[bool]>,
    params: &SelectionParams,
    sparse: Option<(&[Vec<bool>], usize)>,
) -> (Vec<f32>, Vec<f32>) {
    let num_sparse = sparse.map_or(0, |s| s.1);
    let rows = coords.len();
    let n = rows.checked_div(batch).unwrap_or(0);
    // slots per node: the neighbours and the bonded extras, or every other node
    let k = match params.num_neighbors {
        Some(k) => k + num_sparse,
        None => n.saturating_sub(1),
    };
    let (mut src, mut dst) = (vec![-1.0; rows * k], vec![-1.0; rows * k]);
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
            if valid {
                src[(base + i) * k + kk] = (base + j) as f32;
                dst[(base + i) * k + kk] = (base + i) as f32;
            }
        }
    }
    (src, dst)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use rand::Rng;
    use se3_core::testing::{random_rotation, random_vector, rel_error, rng, TOL_F32};
    use se3_macros::fiber;

    use super::*;
    use crate::checkpoint::Tensor;
    use crate::inputs::{BoolTensor, EdgeInput, ModelInputs, NodeFeats};
    use crate::model_file::ModelFile;
    use crate::se3_transformer::{Se3Transformer, Se3TransformerForward, Se3TransformerOracle};

    #[fiber(0:8)]
    struct Atoms;
    #[fiber(0:8, 1:8)]
    struct Hidden;
    #[fiber(0:8)]
    struct Readout;

    #[fiber(0:6)]
    struct Scalars;
    #[fiber(0:6, 1:6, 2:6)]
    struct Wide;
    #[fiber(0:6, 1:6)]
    struct Vectors;

    fn reference(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/reference/models")
            .join(name)
    }

    /// The typed assembly of reference folder `name` with fibers `In`, `Hidden`, `Out`, loaded
    /// from its weights and run on its inputs; returns the max relative error over its
    /// float64 outputs (pooled on the host for `return_pooled`) and the run with its inputs.
    #[allow(clippy::type_complexity)]
    fn reference_parity<In: Fiber, Hidden: Fiber, Out: Fiber>(
        name: &str,
    ) -> Result<
        (
            f64,
            TypedSession<In, Out>,
            Vec<[f64; 3]>,
            usize,
            Option<Vec<bool>>,
            Features<In>,
        ),
        Error,
    > {
        let dir = reference(name);
        let file = ModelFile::load(dir.join("config.json"))?;
        let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
        let options = TypedOptions::from_config::<In, Hidden, Out>(&cfg)?;
        let sd = StateDict::load(dir.join("weights.safetensors"))?;
        let model = TypedSe3Transformer::<In, Hidden, Out>::load(&sd, options)?;
        let inputs =
            ModelInputs::load(dir.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
        let (b, n) = (inputs.batch(), inputs.nodes());
        let mut tokens = None;
        let x = match &inputs.feats {
            NodeFeats::Dense(t) => {
                let c = t.shape[2];
                Features::<In>::from_fn(b * n, |_, node, ch, _| t.data[node * c + ch] as f32)
            }
            NodeFeats::Degrees(map) => {
                let mut missing = false;
                let x = Features::<In>::from_fn(b * n, |d, node, ch, m| match map.get(&d.l) {
                    Some(t) => t.data[(node * d.channels + ch) * d.width() + m] as f32,
                    None => {
                        missing = true;
                        0.0
                    }
                });
                if missing {
                    return Err(Error::MissingInput { name: "feats" });
                }
                x
            }
            NodeFeats::Tokens { ids, .. } => {
                tokens = Some(ids.clone());
                Features::<In>::zeros(b * n)
            }
        };
        let coords: Vec<[f64; 3]> = (0..b).flat_map(|bi| inputs.points(bi)).collect();
        let mask = inputs.mask.as_ref().map(|m| m.data.clone());
        let mut run = model.compile()?;
        let (edges, edge_tokens) = match &inputs.edges {
            Some(EdgeInput::Dense(t)) => (Some(t.data.as_slice()), None),
            Some(EdgeInput::Tokens { ids, .. }) => (None, Some(ids.as_slice())),
            None => (None, None),
        };
        let extra = CloudInputs {
            edges,
            global: inputs.global_feats.as_ref().map(|t| t.data.as_slice()),
            neighbor_mask: inputs.neighbor_mask.as_ref().map(|t| t.data.as_slice()),
            edge_tokens,
            adjacency: inputs.adj_mat.as_ref().map(|t| t.data.as_slice()),
        };
        let y = match &tokens {
            Some(t) => run.forward_tokens(&coords, b, mask.as_deref(), t, extra)?,
            None => run.forward_with(&coords, b, mask.as_deref(), &x, extra)?,
        };
        let want = StateDict::load(dir.join("outputs.safetensors"))?;
        let single = Out::degrees().len() == 1;
        let mut worst = 0.0f64;
        for (d, block) in Out::degrees().into_iter().zip(y.blocks()) {
            let key = match fwd.return_type {
                Some(r) if r != d.l => continue,
                Some(_) => "out".to_string(),
                None if single => "out".to_string(),
                None => format!("type{}", d.l),
            };
            let mut got: Vec<f64> = block.data().iter().map(|&v| f64::from(v)).collect();
            if fwd.return_pooled {
                let w = d.dim();
                got = (0..b)
                    .flat_map(|bi| {
                        let rows: Vec<usize> = (bi * n..(bi + 1) * n)
                            .filter(|&i| mask.as_ref().is_none_or(|m| m[i]))
                            .collect();
                        let got = &got;
                        (0..w).map(move |k| {
                            rows.iter().map(|&i| got[i * w + k]).sum::<f64>()
                                / rows.len().max(1) as f64
                        })
                    })
                    .collect();
            }
            let t = want.get(&format!("{key}_f64")).ok_or(Error::MissingKey {
                key: format!("{name}: {key}_f64"),
                expected: vec![],
            })?;
            let err = rel_error(&got, &t.data);
            println!("typed {name} vs reference {key}_f64: max rel err {err:.2e}");
            worst = worst.max(err);
        }
        Ok((worst, run, coords, b, mask, x))
    }

    #[test]
    fn typed_assembly_of_se3t_basic_matches_the_reference_and_is_invariant() -> Result<(), Error> {
        let (err, mut run, coords, b, mask, x) =
            reference_parity::<Atoms, Hidden, Readout>("se3t_basic")?;
        assert!(err < TOL_F32, "typed se3t_basic off by {err:.2e}");
        let y = run.forward(&coords, b, mask.as_deref(), &x)?;
        let got: Vec<f64> = y.blocks()[0].data().iter().map(|&v| f64::from(v)).collect();

        // invariance of the type-0 output under a fresh rotation and translation
        let (mut r, seed) = rng();
        let rot = random_rotation(&mut r);
        let t = random_vector(&mut r, 2.0);
        let moved: Vec<[f64; 3]> = coords
            .iter()
            .map(|p| {
                let q = rot * nalgebra::Vector3::from(*p) + t;
                [q.x, q.y, q.z]
            })
            .collect();
        let y2 = run.forward(&moved, b, mask.as_deref(), &x)?;
        let got2: Vec<f64> = y2.blocks()[0]
            .data()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let inv = rel_error(&got2, &got);
        println!("seed {seed}: typed se3t_basic invariance error {inv:.2e}");
        assert!(inv < TOL_F32, "seed {seed}: invariance error {inv:.2e}");
        Ok(())
    }

    #[fiber(0:8, 1:8)]
    struct ScalarsVectors;
    #[fiber(0:4)]
    struct Atoms4;
    #[fiber(0:4, 1:4, 2:4, 3:4)]
    struct Degrees4;
    #[fiber(0:4, 1:4)]
    struct Out4;
    #[fiber(0:4, 1:2)]
    struct Small;

    #[test]
    fn typed_assembly_matches_the_references_with_vector_inputs_convs_norm_out_edges_reversible_kv_variants_causal_global_rotary_masks_tokens_bonds(
    ) -> Result<(), Error> {
        // input_degrees 2: feats of degrees 0 and 1 in, type0 and type1 out
        let (err, ..) =
            reference_parity::<ScalarsVectors, Hidden, ScalarsVectors>("se3t_input_degrees2")?;
        assert!(err < TOL_F32, "typed se3t_input_degrees2 off by {err:.2e}");
        // num_conv_layers 1, gated norms, norm_out, no self-attention, out_fiber_dict, pooled
        let (err, ..) = reference_parity::<Atoms, Hidden, Small>("se3t_convs_gated_pooled")?;
        assert!(
            err < TOL_F32,
            "typed se3t_convs_gated_pooled off by {err:.2e}"
        );
        // continuous edge features and Fourier-encoded distances in every radial network
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_fourier_edges")?;
        assert!(err < TOL_F32, "typed se3t_fourier_edges off by {err:.2e}");
        // reversible trunk (two streams, output norm switched on)
        let (err, ..) = reference_parity::<Atoms, Hidden, Hidden>("se3t_reversible")?;
        assert!(err < TOL_F32, "typed se3t_reversible off by {err:.2e}");
        // tied keys and values: the value convolution gives the keys too (no to_k weights)
        let (err, ..) = reference_parity::<Atoms, Hidden, Hidden>("se3t_tie_kv")?;
        assert!(err < TOL_F32, "typed se3t_tie_kv off by {err:.2e}");
        // one key/value head shared by the query heads
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_one_headed_kv")?;
        assert!(err < TOL_F32, "typed se3t_one_headed_kv off by {err:.2e}");
        // keys a linear map of the neighbour's features
        let (err, ..) = reference_parity::<Atoms, Hidden, Hidden>("se3t_linear_proj_keys")?;
        assert!(
            err < TOL_F32,
            "typed se3t_linear_proj_keys off by {err:.2e}"
        );
        // global tokens attended by degree 0
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_global_feats")?;
        assert!(err < TOL_F32, "typed se3t_global_feats off by {err:.2e}");
        // bonded neighbours ranked first, bond distances embedded into the edge features
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_sparse_adj")?;
        assert!(err < TOL_F32, "typed se3t_sparse_adj off by {err:.2e}");
        // edge tokens embedded into the radial networks' edge features
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_edge_tokens")?;
        assert!(err < TOL_F32, "typed se3t_edge_tokens off by {err:.2e}");
        // atom tokens embedded into the degree-0 input, two output degrees
        let (err, ..) = reference_parity::<Atoms, Hidden, Hidden>("se3t_tokens_out2")?;
        assert!(err < TOL_F32, "typed se3t_tokens_out2 off by {err:.2e}");
        // pairs excluded by a neighbour mask
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_neighbor_mask")?;
        assert!(err < TOL_F32, "typed se3t_neighbor_mask off by {err:.2e}");
        // four degrees, tied keys and values, a radius that cuts edges
        let (err, ..) = reference_parity::<Atoms4, Degrees4, Out4>("se3t_deg4_radius")?;
        assert!(err < TOL_F32, "typed se3t_deg4_radius off by {err:.2e}");
        // rotary position and distance embeddings, null keys and values, a position embedding
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_rotary_nullkv")?;
        assert!(err < TOL_F32, "typed se3t_rotary_nullkv off by {err:.2e}");
        // causal neighbour selection (node i sees j < i)
        let (err, ..) = reference_parity::<Atoms, Hidden, Readout>("se3t_causal")?;
        assert!(err < TOL_F32, "typed se3t_causal off by {err:.2e}");
        Ok(())
    }

    #[test]
    fn typed_options_reject_other_fibers_and_untyped_options() -> Result<(), Error> {
        let file = ModelFile::load(reference("se3t_basic").join("config.json"))?;
        let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        assert!(matches!(
            TypedOptions::from_config::<Atoms, Readout, Readout>(&cfg),
            Err(Error::Core(se3_core::Error::FiberMismatch { .. }))
        ));
        let mut egnn = cfg.clone();
        egnn.use_egnn = true;
        assert!(matches!(
            TypedOptions::from_config::<Atoms, Hidden, Readout>(&egnn),
            Err(Error::NotTyped { option: "use_egnn" })
        ));
        Ok(())
    }

    /// A config the reference folders do not have (degree 2 hidden, type-1 output, gated
    /// pre-norms, depth 2, a radius that cuts edges; null key/values, linear or tied keys, one
    /// key/value head, causal selection, global tokens, rotary embeddings, a position embedding,
    /// sparse (bonded) neighbours, bond-distance embeddings and all-pairs neighbours drawn at random), random weights, random masked
    /// clouds: the typed assembly gives the outputs of `Se3Transformer`.
    #[test]
    fn typed_assembly_equals_the_compiled_model_on_random_clouds() -> Result<(), Error> {
        let (mut r, seed) = rng();
        // the library takes tied keys only from a convolution
        let linear_keys = r.gen_bool(0.5);
        let global_width = r.gen_bool(0.5).then(|| r.gen_range(1..4));
        let sparse = r.gen_bool(0.4);
        // all pairs (the library's default) now and then
        let neighbours = (!r.gen_bool(0.25)).then_some(5);
        let adj_degrees = r.gen_bool(0.4).then(|| r.gen_range(1..4));
        let rotary = match r.gen_range(0..4) {
            0 => (true, false),
            1 => (false, true),
            2 => (true, true),
            _ => (false, false),
        };
        let kwargs = serde_json::json!({
            "dim": 6, "heads": 2, "dim_head": 4, "depth": 2, "num_degrees": 3,
            "output_degrees": 2, "num_neighbors": neighbours, "valid_radius": 2.5,
            "norm_gated_scale": true, "attend_self": true,
            "use_null_kv": r.gen_bool(0.5), "linear_proj_keys": linear_keys,
            "tie_key_values": !linear_keys && r.gen_bool(0.5),
            "one_headed_key_values": r.gen_bool(0.5), "causal": r.gen_bool(0.5),
            "global_feats_dim": global_width,
            "rotary_position": rotary.0, "rotary_rel_dist": rotary.1,
            "num_positions": r.gen_bool(0.5).then_some(16),
            "attend_sparse_neighbors": sparse, "num_adj_degrees": adj_degrees,
            "adj_dim": if adj_degrees.is_some() { 2 } else { 0 }
        });
        println!("seed {seed}: {kwargs}");
        let cfg = Se3TransformerConfig::from_kwargs(&kwargs)?;
        let sd = StateDict::random_near_one(Se3TransformerOracle::expected_keys(&cfg)?, &mut r)?;
        let options = TypedOptions::from_config::<Scalars, Wide, Vectors>(&cfg)?;
        let mut typed =
            TypedSe3Transformer::<Scalars, Wide, Vectors>::load(&sd, options)?.compile()?;
        let mut compiled = Se3Transformer::new(&Se3TransformerOracle::from_state_dict(&cfg, &sd)?)?;
        let (b, n) = (2, r.gen_range(7..14));
        let coords: Vec<[f64; 3]> = (0..b * n)
            .map(|_| {
                let v = random_vector(&mut r, 1.5);
                [v.x, v.y, v.z]
            })
            .collect();
        let mask: Vec<bool> = (0..b * n).map(|i| i % n < 2 || r.gen_bool(0.8)).collect();
        // symmetric random bonds per cloud
        let mut bonds = vec![false; b * n * n];
        for bi in 0..b {
            for i in 0..n {
                for j in 0..i {
                    let on = r.gen_bool(0.2);
                    bonds[(bi * n + i) * n + j] = on;
                    bonds[(bi * n + j) * n + i] = on;
                }
            }
        }
        let takes_adj = sparse || adj_degrees.is_some();
        let feats: Vec<f64> = (0..b * n * 6).map(|_| r.gen_range(-1.0..1.0)).collect();
        let global = match global_width {
            Some(w) => {
                let g = r.gen_range(1..4);
                let v = (0..b * g * w).map(|_| r.gen_range(-1.0..1.0)).collect();
                Some(Tensor::new(vec![b, g, w], v)?)
            }
            None => None,
        };
        let inputs = ModelInputs {
            feats: NodeFeats::Dense(Tensor::new(vec![b, n, 6], feats.clone())?),
            coors: Tensor::new(vec![b, n, 3], coords.iter().flatten().copied().collect())?,
            mask: Some(BoolTensor {
                shape: vec![b, n],
                data: mask.clone(),
            }),
            adj_mat: takes_adj.then(|| BoolTensor {
                shape: vec![b, n, n],
                data: bonds.clone(),
            }),
            edges: None,
            neighbor_mask: None,
            global_feats: global.clone(),
        };
        let want = compiled.forward(&inputs, &Se3TransformerForward::default())?;
        let x = Features::<Scalars>::from_fn(b * n, |_, node, c, _| feats[node * 6 + c] as f32);
        let extra = CloudInputs {
            global: global.as_ref().map(|t| t.data.as_slice()),
            adjacency: takes_adj.then_some(bonds.as_slice()),
            ..CloudInputs::default()
        };
        let y = typed.forward_with(&coords, b, Some(&mask), &x, extra)?;
        for (d, block) in Vectors::degrees().into_iter().zip(y.blocks()) {
            let key = format!("type{}", d.l);
            let w = want
                .get(&key)
                .ok_or(Error::MissingInput { name: "typeN" })?;
            let got: Vec<f64> = block.data().iter().map(|&v| f64::from(v)).collect();
            let err = rel_error(&got, &w.data);
            println!("seed {seed}: typed vs compiled {key}: max rel err {err:.2e}");
            assert!(err < TOL_F32, "seed {seed}: {key} off by {err:.2e}");
        }
        Ok(())
    }

    #[test]
    fn typed_forward_rejects_bad_clouds_with_typed_errors() -> Result<(), Error> {
        let (mut r, _) = rng();
        let options = TypedOptions {
            depth: 1,
            heads: 1,
            dim_head: 2,
            num_neighbors: Some(3),
            valid_radius: 10.0,
            num_conv_layers: 1,
            norm_out: true,
            ..TypedOptions::default()
        };
        let mut run =
            TypedSe3Transformer::<Atoms, Hidden, Readout>::new(options, &mut r)?.compile()?;
        let pts = |n: usize| -> Vec<[f64; 3]> { (0..n).map(|i| [i as f64, 0.5, -0.25]).collect() };
        let x = Features::<Atoms>::zeros(8);
        let mut nan = pts(8);
        nan[3][1] = f64::NAN;
        assert!(matches!(
            run.forward(&nan, 1, None, &x),
            Err(Error::NonFinite { name: "coords", .. })
        ));
        assert!(matches!(
            run.forward(&pts(7), 1, None, &x),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            run.forward(&pts(8), 3, None, &x),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            run.forward(&pts(8), 1, Some(&[true; 5]), &x),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            run.forward(&pts(8), 8, None, &x),
            Err(Error::EmptyGraph { .. })
        ));
        assert!(matches!(
            run.forward(&[], 1, None, &Features::<Atoms>::zeros(0)),
            Err(Error::EmptyGraph { .. })
        ));
        assert!(matches!(
            run.forward_with_edges(&pts(8), 1, None, &x, Some(&[0.0; 64])),
            Err(Error::UnexpectedInput { name: "edges" })
        ));
        assert!(matches!(
            run.forward_tokens(&pts(8), 1, None, &[0; 8], CloudInputs::default()),
            Err(Error::UnexpectedInput { name: "tokens" })
        ));
        // a model of atom tokens: ids in range, one per node, and no feature input
        let tokens = TypedOptions {
            num_tokens: Some(3),
            ..options
        };
        let mut run_t =
            TypedSe3Transformer::<Atoms, Hidden, Readout>::new(tokens, &mut r)?.compile()?;
        let y = run_t.forward_tokens(
            &pts(8),
            1,
            None,
            &[0, 1, 2, 0, 1, 2, 0, 1],
            CloudInputs::default(),
        )?;
        assert!(y.blocks()[0].data().iter().all(|v| v.is_finite()));
        let bad = [0, 1, 2, 3, 1, 2, 0, 1];
        assert!(matches!(
            run_t.forward_tokens(&pts(8), 1, None, &bad, CloudInputs::default()),
            Err(Error::Core(se3_core::Error::BadIndex { name, .. })) if name == "tokens"
        ));
        assert!(matches!(
            run_t.forward_tokens(&pts(8), 1, None, &[0; 7], CloudInputs::default()),
            Err(Error::InputShape { .. })
        ));
        assert!(matches!(
            run_t.forward(&pts(8), 1, None, &x),
            Err(Error::MissingInput { .. })
        ));
        // edge tokens: required by a model that embeds them, refused by one that does not
        assert!(matches!(
            run.forward_with(
                &pts(8),
                1,
                None,
                &x,
                CloudInputs {
                    edge_tokens: Some(&[0; 64]),
                    ..CloudInputs::default()
                }
            ),
            Err(Error::UnexpectedInput {
                name: "edge_tokens"
            })
        ));
        let edge_tokens = TypedOptions {
            num_edge_tokens: Some(2),
            edge_dim: 3,
            ..options
        };
        let mut run_e =
            TypedSe3Transformer::<Atoms, Hidden, Readout>::new(edge_tokens, &mut r)?.compile()?;
        assert!(matches!(
            run_e.forward(&pts(8), 1, None, &x),
            Err(Error::MissingInput {
                name: "edge_tokens"
            })
        ));
        let ids: Vec<i64> = (0..64).map(|i| i % 2).collect();
        let with_ids = CloudInputs {
            edge_tokens: Some(&ids),
            ..CloudInputs::default()
        };
        let y = run_e.forward_with(&pts(8), 1, None, &x, with_ids)?;
        assert!(y.blocks()[0].data().iter().all(|v| v.is_finite()));
        let bad: Vec<i64> = (0..64).map(|i| i % 3).collect();
        assert!(matches!(
            run_e.forward_with(
                &pts(8),
                1,
                None,
                &x,
                CloudInputs {
                    edge_tokens: Some(&bad),
                    ..CloudInputs::default()
                }
            ),
            Err(Error::Core(se3_core::Error::BadIndex { .. }))
        ));
        // the module path (a graph of its own) refuses what only the typed session feeds
        let causal = TypedOptions {
            causal: true,
            ..options
        };
        let model = TypedSe3Transformer::<Atoms, Hidden, Readout>::new(causal, &mut r)?;
        assert!(matches!(
            se3_core::module::Module::compile(&model, se3_core::module::Neighbors::knn(3)),
            Err(se3_core::Error::InvalidParameter { what: "causal", .. })
        ));
        // a cloud with fewer nodes than num_neighbors and all but one node masked: finite
        let y = run.forward(&pts(3), 1, Some(&[true, false, false]), &Features::zeros(3))?;
        assert!(y.blocks()[0].data().iter().all(|v| v.is_finite()));
        Ok(())
    }
}
