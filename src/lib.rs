//! se3: SE(3)/E(3)-equivariant neural networks on 3D point clouds and graphs.
//!
//! This crate re-exports [`se3_core`] at its root (so `se3::so3`, `se3::fiber`, ...), the
//! `#[fiber]` macro, and the model zoo as [`models`].

pub use se3_core::*;
pub use se3_macros::{fiber, fiber_type};

// The types that appear in fiber-rule messages, at the root so that rustc names them
// `se3::Degree<1>` rather than through a longer path.
pub use se3_core::fiber::{
    Bias, Cat, Degree, DegreeTensor, Even, Features, FiberSpec, Invariants, NoParity, Odd, Se3, E3,
};
pub use se3_core::layers::{Activation, Linear, Path, Relu, Sigmoid, Silu, Tanh, TensorProduct};
pub use se3_models as models;

/// What a model file needs: the `#[fiber]` macro, the fiber traits and value types, the
/// degree and parity markers, the layers and the error type.
pub mod prelude {
    pub use crate::fiber::{
        Degree, DegreeMarker, DegreeTensor, Even, Features, Fiber, FiberSpec, HasDegree,
        Invariants, NoParity, Odd, Se3, E3,
    };
    pub use crate::layers::{
        Activation, Layer, Linear, Path, Relu, Sigmoid, Silu, Tanh, TensorProduct,
    };
    pub use crate::Error;
    pub use se3_macros::{fiber, fiber_type};
}
