//! Pointwise activations, typed so that they only apply to scalars (degree 0): a pointwise
//! function of the components of a degree l > 0 feature does not commute with rotations.

use std::marker::PhantomData;

use luminal::prelude::*;

use super::graph::{retype, FeatureTensors, GraphFeatures, X};
use super::Layer;
use crate::fiber::{Degree, DegreeOf, Features, Fiber, ScalarOnly, ScalarOp};

/// A pointwise nonlinearity f: R -> R, applicable to degree-0 features only
/// ([`ScalarOnly`]).
pub trait ScalarActivation: ScalarOp {
    /// f(x).
    fn apply(&self, x: f32) -> f32;

    /// f applied elementwise as graph operations.
    fn graph(&self, x: GraphTensor<(X, X, X)>) -> GraphTensor<(X, X, X)>;
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
    fn graph(&self, x: GraphTensor<(X, X, X)>) -> GraphTensor<(X, X, X)> {
        x.relu()
    }
}
impl ScalarActivation for Silu {
    fn apply(&self, x: f32) -> f32 {
        x / (1.0 + (-x).exp())
    }
    fn graph(&self, x: GraphTensor<(X, X, X)>) -> GraphTensor<(X, X, X)> {
        x.swish()
    }
}
impl ScalarActivation for Sigmoid {
    fn apply(&self, x: f32) -> f32 {
        1.0 / (1.0 + (-x).exp())
    }
    fn graph(&self, x: GraphTensor<(X, X, X)>) -> GraphTensor<(X, X, X)> {
        x.sigmoid()
    }
}
impl ScalarActivation for Tanh {
    fn apply(&self, x: f32) -> f32 {
        x.tanh()
    }
    fn graph(&self, x: GraphTensor<(X, X, X)>) -> GraphTensor<(X, X, X)> {
        // luminal's `tanh` subtracts an unsized constant; add the negated value instead
        (x * 2.0).sigmoid() * 2.0 + (-1.0)
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

impl<F, A, D> Activation<F, A, D>
where
    F: Fiber,
    A: ScalarActivation,
    D: ScalarOnly<A> + DegreeOf<F>,
{
    /// Adds the activation to a graph: `A` on the degree-0 tensor of `x`, other degrees
    /// passed through (no weights).
    pub fn build<R: Dimension>(&self, x: &GraphFeatures<F, R>) -> GraphFeatures<F, R> {
        let spec = F::spec();
        let degrees = spec
            .degrees()
            .iter()
            .zip(x.untyped().tensors())
            .map(|(d, t)| {
                if d.l == D::L {
                    retype(self.act.graph(retype(*t)))
                } else {
                    *t
                }
            })
            .collect();
        GraphFeatures::wrap(FeatureTensors::from_parts(spec, degrees))
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

/// Below this argument [`saturating_sigmoid`] holds its value (`sigmoid(-80) ≈ 1.8e-35`).
pub const SIGMOID_FLOOR: f32 = -80.0;

/// `sigmoid(x) = 1 / (1 + e^-x)` with the argument floored at [`SIGMOID_FLOOR`], so that
/// `e^-x` stays finite in float32: the value changes by less than 2e-35, and the backward
/// pass never forms `0 · ∞` (luminal's `sigmoid` overflows `e^-x` to `∞` below `x ≈ -88`,
/// whose derivative `g · e^-x` is then NaN even where `g = 0`).
pub fn saturating_sigmoid<S: Shape>(x: GraphTensor<S>) -> GraphTensor<S> {
    ((x.max_f32(SIGMOID_FLOOR) * -1.0).exp() + 1.0).recip()
}

/// SiLU `x · sigmoid(x)` through [`saturating_sigmoid`] (finite gradients for any finite `x`).
pub fn saturating_swish<S: Shape>(x: GraphTensor<S>) -> GraphTensor<S> {
    x * saturating_sigmoid(x)
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;
    use crate::exec::Session;
    use crate::testing::rng;
    use se3_macros::fiber;

    #[fiber(0:3, 1:2)]
    struct F;

    #[test]
    fn graph_activations_match_the_eager_ones_and_leave_higher_degrees_alone(
    ) -> Result<(), crate::Error> {
        let (mut r, seed) = rng();
        let x = Features::<F>::from_fn(4, |_, _, _, _| r.gen_range(-3.0..3.0));
        fn one<A: ScalarActivation>(
            act: A,
            x: &Features<F>,
            seed: u64,
        ) -> Result<(), crate::Error> {
            let layer = Activation::<F, A>::new(act);
            let want = Layer::forward(&layer, x);
            let mut s = Session::new();
            let gx = GraphFeatures::<F>::input(&mut s, "x");
            layer.build(&gx).output(&mut s, "y");
            for (k, b) in x.blocks().iter().enumerate() {
                let l = F::spec().degrees()[k].l;
                s.set(&format!("x.{l}"), b.data().to_vec(), &b.shape())?;
            }
            s.run()?;
            for (k, b) in want.blocks().iter().enumerate() {
                let l = F::spec().degrees()[k].l;
                let got = s.get(&format!("y.{l}"))?.data;
                for (g, w) in got.iter().zip(b.data()) {
                    assert!((g - w).abs() < 1e-5, "seed {seed} {}: {g} vs {w}", A::NAME);
                }
            }
            Ok(())
        }
        one(Relu, &x, seed)?;
        one(Silu, &x, seed)?;
        one(Sigmoid, &x, seed)?;
        one(Tanh, &x, seed)?;
        Ok(())
    }

    #[test]
    fn saturating_swish_has_finite_gradients_where_luminal_swish_gives_nan(
    ) -> Result<(), crate::Error> {
        let (mut r, seed) = rng();
        // moderate arguments (same values as SiLU) and far negative ones (e^-x overflows)
        let mut xs: Vec<f32> = (0..16).map(|_| r.gen_range(-20.0f32..20.0)).collect();
        xs.extend((0..8).map(|_| r.gen_range(-400.0f32..-90.0)));
        let n = xs.len();
        let run = |saturating: bool| -> Result<(Vec<f32>, Vec<f32>), crate::Error> {
            let mut s = Session::new();
            let x = s.input_with_shape::<(X,)>("x", crate::exec::InputKind::Values, &[n.into()]);
            let y = if saturating {
                saturating_swish(x)
            } else {
                x.swish()
            };
            let g = crate::autodiff::grad(y.no_shape(), &[x.no_shape()])?;
            s.output("y", y);
            s.output("g", g[0]);
            s.set("x", xs.clone(), &[n])?;
            s.run()?;
            Ok((s.get("y")?.data, s.get("g")?.data))
        };
        let (y, g) = run(true)?;
        let (_, g_plain) = run(false)?;
        for (i, &x) in xs.iter().enumerate() {
            let sig = 1.0 / (1.0 + (-f64::from(x)).exp());
            let (want_y, want_g) = (f64::from(x) * sig, sig * (1.0 + f64::from(x) * (1.0 - sig)));
            assert!(
                (f64::from(y[i]) - want_y).abs() < 1e-5 * (1.0 + want_y.abs()),
                "seed {seed}: swish({x}) = {} want {want_y}",
                y[i]
            );
            assert!(
                (f64::from(g[i]) - want_g).abs() < 1e-5,
                "seed {seed}: swish'({x}) = {} want {want_g}",
                g[i]
            );
        }
        // the reason for the floor: luminal's sigmoid gives 0 * inf there
        assert!(
            g_plain[16..].iter().any(|v| v.is_nan()),
            "seed {seed}: {g_plain:?}"
        );
        Ok(())
    }
}
