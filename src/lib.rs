//! se3: SE(3)/E(3)-equivariant neural networks on 3D point clouds and graphs.
//!
//! This crate re-exports [`se3_core`] at its root (so `se3::so3`, `se3::fiber`, ...), the
//! `#[fiber]` macro, and the model zoo as [`models`].

pub use se3_core::*;
pub use se3_models as models;

/// What a model file needs.
pub mod prelude {
    pub use crate::Error;
}
