//! Pointwise activations, typed so that they only apply to scalars (degree 0): a pointwise
//! function of the components of a degree l > 0 feature does not commute with rotations.

use std::marker::PhantomData;

use super::Layer;
use crate::fiber::{Degree, DegreeOf, Features, Fiber, ScalarOnly, ScalarOp};

/// A pointwise nonlinearity f: R -> R, applicable to degree-0 features only
/// ([`ScalarOnly`]).
pub trait ScalarActivation: ScalarOp {
    /// f(x).
    fn apply(&self, x: f32) -> f32;
}

/// max(x, 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relu;

/// x * sigmoid(x) (the swish of e3nn's gates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Silu;

/// 1 / (1 + exp(-x)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sigmoid;

/// tanh(x); odd, so also equivariant on odd (pseudo)scalars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tanh;

impl ScalarOp for Relu {
    const NAME: &'static str = "relu";
}
impl ScalarOp for Silu {
    const NAME: &'static str = "silu";
}
impl ScalarOp for Sigmoid {
    const NAME: &'static str = "sigmoid";
}
impl ScalarOp for Tanh {
    const NAME: &'static str = "tanh";
}

impl ScalarActivation for Relu {
    fn apply(&self, x: f32) -> f32 {
        x.max(0.0)
    }
}
impl ScalarActivation for Silu {
    fn apply(&self, x: f32) -> f32 {
        x / (1.0 + (-x).exp())
    }
}
impl ScalarActivation for Sigmoid {
    fn apply(&self, x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }
}
impl ScalarActivation for Tanh {
    fn apply(&self, x: f32) -> f32 {
        x.tanh()
    }
}

/// The activation `A` applied to degree `D` (default `Degree<0>`) of fiber `F`, other
/// degrees passed through. Constructible only for `D = Degree<0>`.
#[derive(Debug, Clone, Copy)]
pub struct Activation<F, A, D = Degree<0>> {
    act: A,
    types: PhantomData<(F, D)>,
}

impl<F: Fiber, A: ScalarActivation, D> Activation<F, A, D> {
    /// The layer applying `act` to degree `D` of `F`.
    #[rustfmt::skip]
    pub fn new(act: A) -> Self where D: ScalarOnly<A> + DegreeOf<F> {
        Activation {
            act,
            types: PhantomData,
        }
    }
}

impl<F, A, D> Layer for Activation<F, A, D>
where
    F: Fiber,
    A: ScalarActivation,
    D: ScalarOnly<A> + DegreeOf<F>,
{
    type In = F;
    type Out = F;

    fn forward(&self, x: &Features<F>) -> Features<F> {
        x.activate(self.act, D::default())
    }
}
