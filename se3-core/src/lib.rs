//! se3-core: exact SO(3)/O(3) math, degree-typed fibers, equivariant layers and their
//! compiled execution on luminal graphs.
//!
//! Modules, one concept a file:
//! - [`so3`]: real spherical harmonics, Wigner D, Clebsch-Gordan, parity.
//! - [`basis`]: the equivariant kernel basis, radial bases and encodings.
//! - [`fiber`]: the type-level and run-time description of degree-indexed features.
//! - [`exec`]: sessions and compilers that run luminal graphs on the CPU (and CUDA).
//! - [`ops`]: graph operators for point clouds (neighbours, gather, scatter, fused edge kernels).
//! - [`layers`]: equivariant layers generic over fibers.
//! - [`module`]: networks as structs of layers (`#[derive(Module)]`), typed forward, compile, run.
//! - [`autodiff`]: reverse-mode gradients of luminal graphs, emitted as graph ops.
//! - [`train`]: optimizers (SGD, Adam, AdamW as PyTorch), clipping, schedules.

// Generated code of `#[fiber]` names `::se3::...`; inside this crate that is this crate.
extern crate self as se3;

pub mod autodiff;
pub mod basis;
pub mod device;
pub mod error;
pub mod exec;
pub mod fiber;
pub mod layers;
pub mod module;
pub mod ops;
pub mod so3;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod train;

pub use device::{Device, Location};
pub use error::Error;
