//! The se3 model zoo.
//!
//! * [`checkpoint`]: PyTorch state dicts as safetensors (load, save, key checks).
//! * [`egnn`]: egnn-pytorch 0.2.8's `EGNN` layer and `EGNN_Network`, compiled graphs.
//! * [`limits`]: bounds on the sizes a config may declare (untrusted files).
//! * [`inputs`]: model inputs named as in the reference `inputs.safetensors`.
//! * [`physics`]: simulators, data sets, batching and metrics for learning physics.
//! * [`se3_transformer`]: se3-transformer-pytorch 0.9's `SE3Transformer` config and float64 oracle.
//! * [`tfn`]: a Tensor Field Network stack of ConvSE3 + NormSE3.
//! * [`vn_transformer`]: VN-transformer 0.1's `VNTransformer` (vector neurons), a compiled graph.
//! * [`zoo`]: load any supported reference model from config + weights and run it.

// `#[fiber]` expands to `::se3::` paths; unit tests declare fibers with it.
#[cfg(test)]
extern crate se3_core as se3;

pub mod checkpoint;
pub mod differentiable;
pub mod egnn;
pub mod equiformer;
pub mod error;
pub mod inputs;
pub mod limits;
pub mod model_file;
pub mod physics;
pub mod se3_transformer;
pub mod tfn;
pub mod vn_transformer;
pub mod zoo;

pub use error::Error;
