//! Fibers: which degrees a feature has and how many channels each, at the type level and at
//! run time.
//!
//! A fiber is declared with `#[fiber(0:32, 1:8)] struct Hidden;` (SE(3): 32 scalars and 8
//! vectors) or `#[fiber("0e:8, 1o:4")] struct Polar;` (E(3): a parity per degree; also
//! written `#[fiber(0 e:8, 1 o:4)]`, since Rust lexes a glued `0e` as a float). In a type
//! position, `fiber_type!(0:32, 1:8)` gives an anonymous fiber. Degrees run from 0 to
//! [`MAX_DEGREE`] = 10, each listed once, in increasing order, with at least one channel.
//!
//! Layers are generic over fibers and every connection is a trait bound with a message of
//! its own ([`rules`]): features of different fibers do not add, a fiber has only its
//! degrees, `Linear` keeps degrees, tensor-product paths obey the Clebsch-Gordan selection
//! rule and parity, SE(3) and E(3) fibers do not mix, pointwise activations and biases act
//! on degree 0 only, and invariants come from degree 0 only.
//!
//! - [`degree`]: `Degree<L>` markers (L <= [`MAX_DEGREE`] = 10), parities, groups.
//! - [`fiber`](mod@fiber): the [`Fiber`] trait implemented by `#[fiber(...)]` structs.
//! - [`inline`]: anonymous fibers for type positions (`fiber_type!(0:32, 1:8)`).
//! - [`spec`]: the run-time [`FiberSpec`] (`0:32, 1:8`, `0e:8, 1o:4`).
//! - [`features`]: [`Features<F>`], one `[nodes, channels, 2l + 1]` tensor per degree.
//! - [`rules`]: one trait per type rule, each with a message that names the rule.

pub mod degree;
pub mod features;
#[allow(clippy::module_inception)]
pub mod fiber;
pub mod inline;
pub mod rules;
pub mod spec;

pub use degree::{
    Degree, DegreeMarker, Even, Group, NoParity, Odd, ParityMarker, Se3, ToTypenum, E3, MAX_DEGREE,
};
pub use features::{Cat, DegreeTensor, Features, Invariants};
pub use fiber::{Cons, Fiber, Irrep, IrrepList, IrrepVisitor, Nil};
pub use inline::{Absent, Ch, Inline, Slot};
pub use rules::{
    AsFeatures, AsGraphFeatures, Bias, ConservesParity, CouplesTo, DegreeOf, FeedsGraph, FeedsInto,
    Follows, GateFibers, HasDegree, Invariant, InvariantParity, SameDegrees, SameFiber,
    SameGroupAs, ScalarOnly, ScalarOp, Triangle,
};
pub use spec::{DegreeSpec, DegreeTable, FiberSpec, Parity};
