//! se3-transformer-pytorch 0.9's `SE3Transformer`.
//!
//! [`Se3Transformer`] is the model: its layers compiled to one float32 luminal graph
//! (`compiled/`), loaded from a PyTorch state dict, with gradients ([`TrainableSe3Transformer`]).
//! [`Se3TransformerOracle`] (`oracle.rs` and the float64 layer files beside it) is the plain
//! float64 forward pass the graph is checked against; it also parses the checkpoint and prepares
//! each batch element's neighbour selection and kernel basis, which the graph takes as inputs.
//! [`TypedSe3Transformer`] assembles the same network from the typed se3-core layers.

pub(crate) mod attention;
pub mod basis;
pub mod config;
pub(crate) mod conv;
pub(crate) mod egnn;
pub mod features;
pub mod graph;
pub mod net;
pub(crate) mod norm;
pub mod oracle;
pub(crate) mod radial;
pub mod reassociated;
pub(crate) mod torch_topk;
pub mod typed;

pub use config::{DimSpec, Se3TransformerConfig, Se3TransformerForward, Se3TransformerShape};
pub use net::{
    knn_edges, BlockStats, CloudInputs, EgnnTrunk, MemoryEstimate, NetFibers, NetSession,
    Se3TransformerNet, Se3TransformerOptions,
};
pub use oracle::Se3TransformerOracle;
pub use reassociated::Contraction;
pub use typed::{TypedSe3Transformer, TypedSession};
