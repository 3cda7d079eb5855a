//! se3-transformer-pytorch 0.9's `SE3Transformer`.
//!
//! [`Se3TransformerNet`] (`net.rs`) is the model, assembled once from se3-core's layers
//! (`ConvLayer`, `AttentionBlockLayer`, `FeedForwardBlockLayer`, `NormLayer`,
//! `FiberEgnnLayer`, `LinearLayer`) with its config ([`Se3TransformerConfig`]) and checkpoint key
//! names: one float32 luminal graph for the forward ([`NetSession`], also blocked for large clouds
//! and with memory estimates), the same graph with its backward pass for `se3 grad` and
//! training (`net/differentiable.rs`). [`TypedSe3Transformer`] is that model with its fibers as
//! `#[fiber]` types. Neighbour selection (`graph.rs`) runs on the host.
//!
//! [`Se3TransformerOracle`] (`oracle/`: the plain float64 forward pass and its float64 layers,
//! `attention.rs`, `conv.rs`, `radial.rs`, `norm.rs`, `egnn.rs`, `features.rs`,
//! `reassociated.rs`; the TFN stack's float64 path shares the conv, norm and radial layers) is
//! what the graph is checked against in tests (and `se3 infer --engine oracle`); it is not used
//! to build or run the model.

pub mod basis;
pub mod config;
pub mod graph;
pub mod net;
pub mod oracle;
pub(crate) mod torch_topk;
pub mod typed;

pub use config::{DimSpec, Se3TransformerConfig, Se3TransformerForward, Se3TransformerShape};
pub use net::{
    knn_edges, BlockStats, CloudInputs, EgnnTrunk, MemoryEstimate, NetFibers, NetSession,
    Se3TransformerNet, Se3TransformerOptions,
};
pub use oracle::reassociated::Contraction;
pub use oracle::Se3TransformerOracle;
pub use typed::{TypedSe3Transformer, TypedSession};
