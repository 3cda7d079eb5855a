//! Equivariant layers, generic over fibers.
//!
//! A layer names its input and output fibers as types (`Linear<In, Out>`) and implements
//! [`Layer`]; [`Layer::then`] chains two layers and compiles only if the first one's output
//! fiber is the second one's input fiber ([`Follows`]). Every other connection rule is a
//! bound on the layer's constructor (see [`crate::fiber::rules`]).
//!
//! # Graph layers
//! Layers also build luminal graph operations on a [`Session`](crate::exec::Session). Each
//! has a run-time form configured by [`FiberSpec`](crate::fiber::FiberSpec)s (for models
//! read from JSON) and a typed form that is a thin wrapper over it:
//!
//! | run-time                  | typed                | graph value in / out                         |
//! |---------------------------|----------------------|----------------------------------------------|
//! | [`LinearLayer`]           | [`Linear<In, Out>`]  | [`FeatureTensors`] / [`GraphFeatures<F>`]    |
//! | [`ConvLayer`]             | [`Conv<In, Out>`]    | node features + [`EdgeGraph`] + [`EdgeBasis`]|
//! | [`NormLayer`]             | [`Norm<F>`]          | features of one fiber                        |
//! | [`TensorProductLayer`]    | [`TensorProduct<A, B, Out>`] (`layer`, `build`) | two inputs, same rows |
//! | [`GateLayer`]             | [`Gate<In, Out>`]    | `0:(s+G), l:c..` -> `0:s, l:c..` (degrees and channels type-checked) |
//! | [`EquivariantLayerNorm`]  | [`LayerNorm<F>`]     | features of one fiber                        |
//! | -                         | [`Activation<F, A>`] (`build`) | degree 0 only (type-checked)       |
//! | [`AttentionLayer`], [`AttentionBlockLayer`], [`FeedForwardBlockLayer`] | [`Attention<F>`], [`AttentionBlock<F>`], [`FeedForwardBlock<F>`] | SE(3)-Transformer blocks (grouped edges), fiber-preserving |
//! | [`pool_nodes`]            | [`MeanPool<F>`], [`MaxPool<F>`] | node readout, mean (any degree) / max (invariant degree 0, type-checked) |
//! | [`conv_grouped`] ([`PairEdges`]) | -        | reassociated ConvSE3 sums / logits on grouped edges |
//! | [`slot_softmax()`] ([`SlotLogits`]) | -     | SE(3)-Transformer attention's softmax over neighbour, single (self / null) and shared (global) slots |
//! | [`RotaryEmbedding`], [`RotaryAngles`] | -     | rotary position / distance embeddings of degree-0 attention (on [`EdgeGraph::rotary`]) |
//! | [`RadialBank`]            | -                    | the hidden layers of many [`RadialMlp`]s on one edge input |
//! | [`VnLinear`], [`VnRelu`], [`VnLayerNorm`], [`VnAttention`], [`VnFeedForward`], [`VnInvariant`] | - | vector-neuron features `[b, n, components, channels]` ([`vector_neuron`]) |
//! | [`DepthwiseTensorProductLayer`] ([`AlignedEdges`], [`EquiformerRadial`]) | - | equiformer's DTP on edge-aligned frames, pooled or per neighbour slot |
//! | [`EquiformerAttentionLayer`], [`EquiformerFeedForwardLayer`] | - | equiformer's L2-distance / MLP attention and feed-forward blocks |
//! | [`RmsNormLayer`], [`SiluGateLayer`] | -          | equiformer's RMS norm of per-channel norms, its SiLU / sigmoid gate |
//! | [`TaylorLinearAttentionLayer`] ([`NodeBatch`]) | - | degree-0 Taylor-kernel linear attention over all nodes of a batch element |
//!
//! The typed forms of fiber-preserving layers take any `X: FeedsGraph<F>` (only
//! `GraphFeatures<F, _>` qualifies), so a wrong fiber is a compile error that names the rule
//! ([`crate::fiber::FeedsGraph`]).
//!
//! Usage: declare inputs (`FeatureTensors::input(&mut s, "x", &spec)`, coordinates
//! `s.input::<(Dyn<'n'>, Const<3>)>(..)`, edges `EdgeGraph::input(&mut s, "edges", coords)`),
//! build the kernel basis once per graph (`EdgeBasis::new(&mut s, "", &edges, max_degree)`),
//! then `layer.build(&mut s, "prefix.", &x, ..)` per layer: each layer declares its weights as
//! session weights `<prefix><checkpoint key>` and sets them to its values, so the session is
//! ready to run. Layers are created fresh (`new`) or loaded from a [`ParamSource`] (`load`)
//! in se3-transformer-pytorch's key layout (`kernel_unary.(i,o).rp.net.*`,
//! `self_interact.weights.<l>`, `transform.<l>.scale|w_gate`) or e3nn's for linear layers
//! ([`LinearLayout`]).
//!
//! Feature tensors are `[rows, channels, 2l + 1]` per degree; rows are nodes (`Dyn<'n'>`)
//! or edges (`Dyn<'e'>`); missing edges are `-1` in `src`/`dst` and contribute nothing.
//!
//! # Convolution paths and E(3)
//! [`ConvLayer::build`] computes the pooled sums of every degree pair by one of five paths
//! ([`ConvPath`], chosen with [`ConvLayer::with_path`]; all give the same values up to rounding
//! and are tested against each other). The default, [`ConvPath::Fused`], is the engine's fused
//! radial edge op [`crate::ops::radial_edge_conv()`]: from the radial networks' hidden
//! activations (all pairs' in one [`RadialBank`] op) it contracts the kernel basis, the gathered source rows and the radial network's
//! last layer per destination node in cache (`A_n = sum_e w_e Kx_e (x) h_e`, then the last layer
//! once per node; per edge for nodes with few edges), parallel over nodes without atomics, so
//! the per-edge radial weights `(E, c_out c_in nf)` (the largest tensor of the other paths) are
//! never formed. It is the default because it takes any edge layout and has the fastest
//! backward on CPU (`se3 bench layers` prints all five and where the time goes). The others:
//! [`ConvPath::Contracted`], on edges grouped by node the attention values' fused edge
//! contraction with the pooling weights as the attention (the SE(3)-Transformer's inference
//! graphs; its backward is slower than the fused op's);
//! [`ConvPath::Grouped`], the reassociated contraction the compiled SE(3)-Transformer uses
//! ([`conv_grouped::weighted_sum`], graph GEMMs, edges grouped by node);
//! [`ConvPath::Gemm`], per-edge messages from batched GEMMs, scatter-added; and
//! [`ConvPath::EdgeConv`], per-edge weight matrices `W_e[(o, p), (c, q)] = w_e sum_f R_f(e)[o, c]
//! K_f(e)[p, q]` applied by the fused [`crate::ops::edge_conv()`] op (the most per-edge values,
//! the slowest).
//!
//! Fibers with parities (E(3)) keep a kernel frequency `J` of `(l_in, p_in) -> (l_out, p_out)`
//! only if `p_in (-1)^J = p_out` (spherical harmonics of degree `J` have parity `(-1)^J`);
//! pairs without any are dropped. Self-interaction and [`LinearLayer`] connect only entries of
//! equal degree **and** parity (e3nn's rule): where the input and output parities differ at a
//! degree, that degree gets no self-interaction term, and biases go on even scalars only.

pub mod activation;
pub mod attention;
pub mod conv;
pub mod conv_grouped;
pub mod dense;
pub mod depthwise_tp;
pub mod edges;
pub mod egnn;
pub mod equiformer_attention;
pub mod equiformer_feedforward;
pub mod equiformer_radial;
pub mod fiber_egnn;
pub mod gate;
pub mod global_attention;
pub mod graph;
pub mod layer_norm;
pub mod linear;
pub mod norm;
pub mod pool;
pub mod radial;
pub mod rms_norm;
pub mod rotary;
pub mod silu_gate;
pub mod slot_softmax;
pub mod taylor_linear_attention;
pub mod tensor_product;
pub mod vector_neuron;

pub use activation::{Activation, Relu, ScalarActivation, Sigmoid, Silu, Tanh};
pub use attention::{
    Attention, AttentionBlock, AttentionBlockLayer, AttentionLayer, AttentionOptions,
    FeedForwardBlock, FeedForwardBlockLayer,
};
pub use conv::{Conv, ConvLayer, ConvOptions, ConvPath, Pool};
pub use conv_grouped::PairEdges;
pub use dense::DenseLinear;
pub use depthwise_tp::{AlignedEdges, DepthwiseTensorProductLayer, DtpOptions, ZBasis};
pub use edges::{EdgeBasis, EdgeGraph};
pub use egnn::{
    EdgeFeature, EgnnLayer, EgnnNeighborhood, EgnnOptions, EgnnOutput, EgnnPath, MessagePool,
};
pub use equiformer_attention::{EquiformerAttentionLayer, EquiformerAttentionOptions};
pub use equiformer_feedforward::EquiformerFeedForwardLayer;
pub use equiformer_radial::EquiformerRadial;
pub use fiber_egnn::{FiberEgnnLayer, FiberEgnnOptions};
pub use gate::{Gate, GateLayer};
pub use global_attention::{GlobalLinearAttention, GlobalSizes};
pub use graph::{FeatureTensors, GraphFeatures, Param, ParamSource};
pub use layer_norm::{EquivariantLayerNorm, LayerNorm};
pub use linear::{Linear, LinearLayer, LinearLayout};
pub use norm::{Norm, NormActivation, NormLayer, NormScale};
pub use pool::{pool_nodes, MaxPool, MeanPool, NodePool};
pub use radial::{RadialBank, RadialMlp, RADIAL_HIDDEN};
pub use rms_norm::RmsNormLayer;
pub use rotary::{RotaryAngles, RotaryEmbedding};
pub use silu_gate::SiluGateLayer;
pub use slot_softmax::{slot_softmax, SlotLogits, SlotWeights};
pub use taylor_linear_attention::{NodeBatch, TaylorLinearAttentionLayer};
pub use tensor_product::{Path, PathSpec, ProductMode, TensorProduct, TensorProductLayer};
pub use vector_neuron::{
    VnAttention, VnAttentionKind, VnFeedForward, VnInvariant, VnLayerNorm, VnLinear, VnRelu,
    VnTensor,
};

use crate::fiber::{Features, Fiber, Follows};

/// A layer from features of fiber `In` to features of fiber `Out`, evaluated eagerly.
pub trait Layer {
    /// The input fiber.
    type In: Fiber;
    /// The output fiber.
    type Out: Fiber;

    /// The layer applied to `x`.
    fn forward(&self, x: &Features<Self::In>) -> Features<Self::Out>;

    /// This layer followed by `next`; compiles only if `Self::Out` is `next`'s input fiber.
    fn then<B: Follows<Self>>(self, next: B) -> Chain<Self, B>
    where
        Self: Sized,
    {
        Chain { first: self, next }
    }
}

/// Two layers in sequence, `next(first(x))`.
#[derive(Debug, Clone)]
pub struct Chain<A, B> {
    first: A,
    next: B,
}

impl<A: Layer, B: Follows<A>> Layer for Chain<A, B> {
    type In = A::In;
    type Out = B::Out;

    fn forward(&self, x: &Features<A::In>) -> Features<B::Out> {
        let h = self.first.forward(x);
        self.next.forward(B::feed(&h))
    }
}
