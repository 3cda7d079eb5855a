//! se3-transformer-pytorch 0.9's `SE3Transformer`: config, and a plain float64 reference forward pass
//! (the oracle that graph implementations are tested against).

pub(crate) mod attention;
pub mod basis;
pub mod compiled;
pub mod config;
pub(crate) mod conv;
pub(crate) mod egnn;
pub mod features;
pub mod graph;
pub(crate) mod norm;
pub(crate) mod radial;
pub mod reassociated;
pub mod reference;
pub(crate) mod rotary;
pub(crate) mod torch_topk;
pub mod typed;

pub use compiled::{
    BlockStats, CompiledSe3Transformer, GraphForm, MemoryEstimate, TrainableSe3Transformer,
};
pub use config::{DimSpec, Se3TransformerConfig, Se3TransformerForward, Se3TransformerShape};
pub use reassociated::Contraction;
pub use reference::Se3Transformer;
pub use typed::{knn_edges, TypedOptions, TypedSe3Transformer, TypedSession};
