//! The se3 model zoo.
//!
//! * [`checkpoint`]: PyTorch state dicts as safetensors (load, save, key checks).
//! * [`inputs`]: model inputs named as in the reference `inputs.safetensors`.
//! * [`se3_transformer`]: se3-transformer-pytorch 0.9's `SE3Transformer` config and float64 oracle.
//! * [`tfn`]: a Tensor Field Network stack of ConvSE3 + NormSE3.
//! * [`zoo`]: load any supported reference model from config + weights and run it.

// `#[fiber]` expands to `::se3::` paths; unit tests declare fibers with it.
#[cfg(test)]
extern crate se3_core as se3;

pub mod checkpoint;
pub mod equiformer;
pub mod error;
pub mod inputs;
pub mod model_file;
pub mod se3_transformer;
pub mod tfn;
pub mod zoo;

pub use error::Error;
