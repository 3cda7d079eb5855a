//! se3: SE(3)/E(3)-equivariant neural networks on 3D point clouds and graphs.
//!
//! This crate re-exports [`se3_core`] at its root (so `se3::so3`, `se3::fiber`, ...), the
//! `#[fiber]` macro, and the model zoo as [`models`].

pub use se3_core::*;
pub use se3_macros::{fiber, fiber_type, Module};

// The types that appear in fiber-rule messages, at the root so that rustc names them
// `se3::Degree<1>` rather than through a longer path.
pub use se3_core::fiber::{
    Bias, Cat, Degree, DegreeTensor, Even, Features, FiberSpec, Invariants, NoParity, Odd, Se3, E3,
};
pub use se3_core::layers::{
    Activation, Attention, AttentionBlock, Conv, FeedForwardBlock, Gate, GraphFeatures, LayerNorm,
    Linear, MaxPool, MeanPool, Norm, Path, Relu, Sigmoid, Silu, Tanh, TensorProduct,
};
pub use se3_models as models;

/// What a model file needs: the `#[fiber]` macro, the fiber traits and value types, the
/// degree and parity markers, the layers and the error type.
///
/// ```
/// use se3::prelude::*;
///
/// #[fiber(0:16, 1:4)]
/// struct Narrow;
/// #[fiber(0:32, 1:8)]
/// struct Hidden;
///
/// # fn main() -> Result<(), Error> {
/// let mut rng = rand::thread_rng();
/// let x = Features::<Hidden>::zeros(10);
/// let down = Linear::<Hidden, Narrow>::new(&mut rng);
/// let y = down.forward(&x);
/// assert_eq!(y.degree::<Degree<1>>().shape(), [10, 4, 3]);
/// assert_eq!(Hidden::spec().to_string(), "0:32, 1:8");
/// # Ok(())
/// # }
/// ```
pub mod prelude {
    pub use crate::fiber::{
        Degree, DegreeMarker, DegreeTensor, Even, Features, Fiber, FiberSpec, HasDegree,
        Invariants, NoParity, Odd, Se3, E3,
    };
    pub use crate::layers::{
        Activation, Attention, AttentionBlock, Conv, FeedForwardBlock, Gate, GraphFeatures, Layer,
        LayerNorm, Linear, MaxPool, MeanPool, Norm, Path, Relu, Sigmoid, Silu, Tanh, TensorProduct,
    };
    pub use crate::module::{Cloud, Compiled, Forward, GraphCtx, Init, Module, Neighbors, Result};
    pub use crate::Error;
    pub use se3_macros::{fiber, fiber_type, Module};
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
