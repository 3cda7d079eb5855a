//! The type rules of fibers, one marker trait per rule. Each says, when broken, which rule
//! in words, where and how to fix it (`#[diagnostic::on_unimplemented]`); the impls that
//! make legal combinations hold carry `#[diagnostic::do_not_recommend]` so that rustc
//! reports the rule rather than the typenum arithmetic or a list of every legal impl.
//!
//! | rule | trait | checked by |
//! |---|---|---|
//! | same fiber | [`SameFiber`] | `+`, `-`, `Features::residual` |
//! | layer input | [`FeedsInto`] | `Linear::forward` |
//! | chaining | [`Follows`] | `Layer::then` |
//! | same degrees | [`SameDegrees`] | `Linear::new`, `Features::concat` |
//! | has degree | [`DegreeOf`] (from [`HasDegree`]) | `Features::degree`, tensor-product paths |
//! | Clebsch-Gordan selection | [`CouplesTo`] | `TensorProduct::path`, `Path::new` |
//! | parity | [`ConservesParity`] | `TensorProduct::path` |
//! | SE(3) vs E(3) | [`SameGroupAs`] (and [`SameDegrees`]) | `TensorProduct::new` (`Linear::new`) |
//! | scalar-only ops | [`ScalarOnly`] | `Features::activate`, `Features::add_bias`, `Activation::new` |
//! | invariant output | [`Invariant`] | `Features::invariant`, `MaxPool::new` |
//! | graph layer input | [`FeedsGraph`] | `build` of `Gate`, `LayerNorm`, `Attention`, the blocks, pools |
//! | gate fibers | [`GateFibers`] (+ a channel count check at build time) | `Gate::new` |
//!
//! The fiber-level rules take `Features<F>` or the layer as `Self` (not the user's fiber
//! struct), which keeps rustc's message short.

use std::ops::Add;

use typenum::{IsLessOrEqual, Sum, B1, U0};

use super::degree::Degree;
use super::degree::{DegreeMarker, Even, Group, NoParity, Odd, ParityMarker};
use super::features::Cat;
use super::features::Features;
use super::fiber::{Cons, Fiber, Irrep, IrrepList};
use crate::layers::{Gate, GraphFeatures, Layer, Linear};
use luminal::prelude::Dimension;

/// Rule 1: `Self` is `Features<F>`, so it can be added to, subtracted from or joined by a
/// residual connection with features of fiber `F`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be combined with features of fiber `{F}`",
    label = "expected features of fiber `{F}`",
    note = "`+`, `-` and residual connections need one fiber on both sides; map one side with a `Linear` to `{F}` first"
)]
pub trait SameFiber<F: Fiber> {
    /// The features, seen as `Features<F>` (the identity).
    fn same(x: &Self) -> &Features<F>;
}

#[diagnostic::do_not_recommend]
impl<F: Fiber, X: AsFeatures<Fiber = F>> SameFiber<F> for X {
    fn same(x: &X) -> &Features<F> {
        x.as_features()
    }
}

/// A value that is `Features<Self::Fiber>` (implemented by `Features<F>` only); the
/// fiber-level rules are stated through it.
pub trait AsFeatures {
    /// The fiber of the features.
    type Fiber: Fiber;
    /// The features themselves.
    fn as_features(&self) -> &Features<Self::Fiber>;
}

impl<F: Fiber> AsFeatures for Features<F> {
    type Fiber = F;
    fn as_features(&self) -> &Features<F> {
        self
    }
}

/// Rule 2a: `Self` is `Features<In>`, so it may be given to a layer whose input fiber is
/// `In`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot feed a layer whose input fiber is `{In}`",
    label = "expected features of fiber `{In}`",
    note = "a layer's input fiber must equal the fiber of the features it is given"
)]
pub trait FeedsInto<In: Fiber> {
    /// The features, seen as the layer's input (the identity).
    fn feed(x: &Self) -> &Features<In>;
}

#[diagnostic::do_not_recommend]
impl<In: Fiber, X: AsFeatures<Fiber = In>> FeedsInto<In> for X {
    fn feed(x: &X) -> &Features<In> {
        x.as_features()
    }
}

/// Rule 2b: layer `Self` may follow layer `L`: the output fiber of `L` is the input
/// fiber of `Self` (checked by [`Layer::then`]).
#[diagnostic::on_unimplemented(
    message = "layer `{Self}` cannot follow layer `{L}`",
    label = "the output fiber of `{L}` is not the input fiber of this layer",
    note = "consecutive layers must meet: the first layer's `Out` fiber is the next layer's `In` fiber"
)]
pub trait Follows<L: Layer>: Layer {
    /// The previous layer's output, seen as this layer's input (the identity).
    fn feed(x: &Features<L::Out>) -> &Features<Self::In>;
}

#[diagnostic::do_not_recommend]
impl<L: Layer, B: Layer> Follows<L> for B
where
    Features<L::Out>: FeedsInto<B::In>,
{
    fn feed(x: &Features<L::Out>) -> &Features<B::In> {
        <Features<L::Out> as FeedsInto<B::In>>::feed(x)
    }
}

/// Rule 3: the per-degree map `Self` (a `Linear<In, Out>`, a concatenation `Cat<A, B>`)
/// joins two fibers with the same degrees and parities (channel counts may differ):
/// `Linear` mixes channels within a degree, never across degrees, and concatenation stacks
/// channels degree by degree.
#[diagnostic::on_unimplemented(
    message = "`{Self}` joins fibers with different degrees",
    label = "the two fibers need the same degrees (and parities)",
    note = "per-degree maps keep every degree: e.g. `0:32, 1:8` and `0:16, 1:4`; SE(3) and E(3) fibers never match"
)]
pub trait SameDegrees {}

#[diagnostic::do_not_recommend]
impl<In: Fiber, Out: Fiber<Irreps = In::Irreps>> SameDegrees for Linear<In, Out> {}

#[diagnostic::do_not_recommend]
impl<A: Fiber, B: Fiber<Irreps = A::Irreps>> SameDegrees for Cat<A, B> {}

/// Rule 4: fiber `Self` has degree `D`; gives its channels, parity and block position.
#[diagnostic::on_unimplemented(
    message = "fiber `{Self}` has no degree `{D}`",
    label = "`{Self}` has no `{D}` block",
    note = "use a degree that the fiber's `#[fiber(...)]` lists, or add it there"
)]
pub trait HasDegree<D: DegreeMarker>: Fiber {
    /// The number of channels of degree `D`.
    const CHANNELS: usize;
    /// The position of degree `D` among the fiber's degrees (its block index).
    const INDEX: usize;
    /// The parity of degree `D` (`NoParity` in SE(3) fibers).
    type Parity: ParityMarker;
}

/// Rule 4, as a bound on the degree: `Self` is a degree of fiber `F` (holds exactly when
/// `F: HasDegree<Self>`). Methods take `D: DegreeOf<F>` so that the message names both.
#[diagnostic::on_unimplemented(
    message = "fiber `{F}` has no degree `{Self}`",
    label = "`{F}` has no `{Self}` block",
    note = "use a degree that the `#[fiber(...)]` of `{F}` lists, or add it there"
)]
pub trait DegreeOf<F: Fiber>: DegreeMarker {
    /// The number of channels of this degree in `F`.
    const CHANNELS: usize;
    /// The position of this degree among the degrees of `F` (its block index).
    const INDEX: usize;
    /// The parity of this degree in `F`.
    type Parity: ParityMarker;
}

#[diagnostic::do_not_recommend]
impl<F: HasDegree<D>, D: DegreeMarker> DegreeOf<F> for D {
    const CHANNELS: usize = <F as HasDegree<D>>::CHANNELS;
    const INDEX: usize = <F as HasDegree<D>>::INDEX;
    type Parity = <F as HasDegree<D>>::Parity;
}

/// Rule 5: `Self` is a legal output degree of `L1 x L2`: |l1 - l2| <= j <= l1 + l2
/// (equivalently the triangle inequalities j <= l1 + l2, l1 <= l2 + j, l2 <= l1 + j),
/// the Clebsch-Gordan selection rule.
#[diagnostic::on_unimplemented(
    message = "no Clebsch-Gordan path `{L1}` x `{L2}` -> `{Self}`",
    label = "output degree outside |l1 - l2| ..= l1 + l2",
    note = "choose an output degree j with |l1 - l2| <= j <= l1 + l2"
)]
pub trait CouplesTo<L1: DegreeMarker, L2: DegreeMarker>: DegreeMarker {}

/// The triangle inequalities on typenum integers: `Self` <= A + B, A <= B + `Self`,
/// B <= A + `Self`. The arithmetic behind [`CouplesTo`].
pub trait Triangle<A, B> {}

impl<A, B, C> Triangle<A, B> for C
where
    A: Add<B> + Add<C>,
    B: Add<C>,
    C: IsLessOrEqual<Sum<A, B>, Output = B1>,
    A: IsLessOrEqual<Sum<B, C>, Output = B1>,
    B: IsLessOrEqual<Sum<A, C>, Output = B1>,
{
}

#[diagnostic::do_not_recommend]
impl<L1: DegreeMarker, L2: DegreeMarker, J: DegreeMarker> CouplesTo<L1, L2> for J where
    J::Typenum: Triangle<L1::Typenum, L2::Typenum>
{
}

/// Rule 6: the output parity `Self` of a tensor-product path is the product `P1 * P2` of
/// its input parities (inversion acts by the sign product). SE(3) paths carry `NoParity`.
#[diagnostic::on_unimplemented(
    message = "parity `{P1}` x `{P2}` cannot give parity `{Self}`",
    label = "a tensor-product path keeps parity: the output parity must be the product of the input parities",
    note = "even x even = odd x odd = even, even x odd = odd: choose an output degree of that parity"
)]
pub trait ConservesParity<P1: ParityMarker, P2: ParityMarker>: ParityMarker {}

#[diagnostic::do_not_recommend]
impl ConservesParity<Even, Even> for Even {}
#[diagnostic::do_not_recommend]
impl ConservesParity<Odd, Odd> for Even {}
#[diagnostic::do_not_recommend]
impl ConservesParity<Even, Odd> for Odd {}
#[diagnostic::do_not_recommend]
impl ConservesParity<Odd, Even> for Odd {}
#[diagnostic::do_not_recommend]
impl ConservesParity<NoParity, NoParity> for NoParity {}

/// Rule 7: fibers of one operation are all SE(3) (no parity) or all E(3) (parity on every
/// degree).
#[diagnostic::on_unimplemented(
    message = "an `{Self}` fiber cannot be mixed with an `{G}` fiber",
    label = "this fiber is `{Self}`, the others are `{G}`",
    note = "SE(3) fibers (`0:8`) carry no parity, E(3) fibers (`0e:8`) do: declare the fibers of one network the same way"
)]
pub trait SameGroupAs<G: Group>: Group {}

#[diagnostic::do_not_recommend]
impl<G: Group> SameGroupAs<G> for G {}

/// An operation that is only equivariant on scalars (degree 0): pointwise nonlinearities
/// and biases. Its type name appears in the [`ScalarOnly`] message.
pub trait ScalarOp: Copy + Send + Sync + 'static {
    /// A short name, such as `"relu"`.
    const NAME: &'static str;
}

/// The bias of a layer, as a [`ScalarOp`]: adding a constant vector is only equivariant on
/// degree 0 (a fixed direction in degree l > 0 does not rotate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bias;

impl ScalarOp for Bias {
    const NAME: &'static str = "bias";
}

/// Rule 8: `Op` may act on degree `Self`, which holds only for `Degree<0>`:
/// f(D_l(R) x) = D_l(R) f(x) for pointwise f and all rotations R only when l = 0.
#[diagnostic::on_unimplemented(
    message = "`{Op}` is only equivariant on degree 0, not on `{Self}`",
    label = "`{Op}` applied to `{Self}` features",
    note = "pointwise nonlinearities and biases commute with rotations only on scalars; for higher degrees use a norm or gate nonlinearity"
)]
pub trait ScalarOnly<Op: ScalarOp>: DegreeMarker {}

#[diagnostic::do_not_recommend]
impl<Op: ScalarOp, D: DegreeMarker<Typenum = U0>> ScalarOnly<Op> for D {}

/// Rule 9: degree `Self` of fiber `F` is invariant (unchanged by every rotation, and by
/// inversion for E(3)): only degree 0, even or without parity. What an energy, a loss or
/// attention logits must be read from.
#[diagnostic::on_unimplemented(
    message = "`{Self}` features of fiber `{F}` are not invariant",
    label = "an invariant (energy, loss, logits) is read from degree 0 only (`0e` in E(3) fibers)",
    note = "read `Degree<0>`, or take per-channel norms with `.norms::<{Self}>()` first"
)]
pub trait Invariant<F: Fiber>: DegreeMarker {}

#[diagnostic::do_not_recommend]
impl<F: Fiber, D: DegreeOf<F> + DegreeMarker<Typenum = U0>> Invariant<F> for D where
    D::Parity: InvariantParity
{
}

/// The parities of invariant scalars: even (E(3)) or none (SE(3)); not odd, since a
/// pseudoscalar flips sign under inversion.
pub trait InvariantParity: ParityMarker {}
impl InvariantParity for Even {}
impl InvariantParity for NoParity {}

/// A value that is `GraphFeatures<Self::Fiber, Self::Rows>` (implemented by `GraphFeatures`
/// only); [`FeedsGraph`] is stated through it.
pub trait AsGraphFeatures {
    /// The fiber of the features.
    type Fiber: Fiber;
    /// The row axis (nodes or edges).
    type Rows: Dimension;
    /// The features themselves.
    fn as_graph_features(&self) -> &GraphFeatures<Self::Fiber, Self::Rows>;
}

impl<F: Fiber, R: Dimension> AsGraphFeatures for GraphFeatures<F, R> {
    type Fiber = F;
    type Rows = R;
    fn as_graph_features(&self) -> &GraphFeatures<F, R> {
        self
    }
}

/// Rule 10: `Self` is `GraphFeatures<In, _>`, so it may be given to a graph layer whose
/// input fiber is `In` (the graph form of [`FeedsInto`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot feed a graph layer whose input fiber is `{In}`",
    label = "expected graph features of fiber `{In}`",
    note = "a layer's input fiber must equal the fiber of the features it is given; map them to `{In}` first (a `Linear` or a `Conv`)"
)]
pub trait FeedsGraph<In: Fiber> {
    /// The row axis of the features.
    type Rows: Dimension;
    /// The features, seen as the layer's input (the identity).
    fn feed_graph(x: &Self) -> &GraphFeatures<In, Self::Rows>;
}

#[diagnostic::do_not_recommend]
impl<In: Fiber, X: AsGraphFeatures<Fiber = In>> FeedsGraph<In> for X {
    type Rows = X::Rows;
    fn feed_graph(x: &X) -> &GraphFeatures<In, X::Rows> {
        x.as_graph_features()
    }
}

/// Rule 11: the gate `Self` (a `Gate<In, Out>`) maps `0:(s + g), l1:c1, ..` to
/// `0:s, l1:c1, ..`: both fibers start with invariant scalars (degree 0, `0e` in E(3)) and
/// list the same higher degrees with the same parities. The channel count
/// `c0(In) = c0(Out) + sum_{l > 0} c_l` (one gate per gated channel) is checked when
/// `Gate::new` is instantiated (a constant evaluated at build time; `cargo check` skips it).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a gate: its fibers need degree 0 and the same higher degrees",
    label = "the input and output fibers of a gate differ in their degrees (or lack invariant scalars)",
    note = "a gate maps `0:(s + g), 1:c1, 2:c2` to `0:s, 1:c1, 2:c2` (g = c1 + c2, one gate per gated channel); both fibers list degree 0 (`0` or `0e`) and the same higher degrees"
)]
pub trait GateFibers {}

#[diagnostic::do_not_recommend]
impl<In, Out, P, T> GateFibers for Gate<In, Out>
where
    In: Fiber<Irreps = Cons<Irrep<Degree<0>, P>, T>>,
    Out: Fiber<Irreps = Cons<Irrep<Degree<0>, P>, T>>,
    P: InvariantParity,
    T: IrrepList,
{
}
