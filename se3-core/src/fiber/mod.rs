//! Fibers: which degrees a feature has and how many channels each, at the type level and at
//! run time.
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
    AsFeatures, Bias, ConservesParity, CouplesTo, DegreeOf, FeedsInto, Follows, HasDegree,
    Invariant, InvariantParity, SameDegrees, SameFiber, SameGroupAs, ScalarOnly, ScalarOp,
    Triangle,
};
pub use spec::{DegreeSpec, DegreeTable, FiberSpec, Parity};
