//! Equivariant layers, generic over fibers.
//!
//! A layer names its input and output fibers as types (`Linear<In, Out>`) and implements
//! [`Layer`]; [`Layer::then`] chains two layers and compiles only if the first one's output
//! fiber is the second one's input fiber ([`Follows`]). Every other connection rule is a
//! bound on the layer's constructor (see [`crate::fiber::rules`]).

pub mod activation;
pub mod linear;
pub mod tensor_product;

pub use activation::{Activation, Relu, ScalarActivation, Sigmoid, Silu, Tanh};
pub use linear::Linear;
pub use tensor_product::{Path, PathSpec, TensorProduct};

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
