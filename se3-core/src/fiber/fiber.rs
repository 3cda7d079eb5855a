//! The `Fiber` trait: the type-level description of a feature type (which degrees, how many
//! channels each, parity, total dimension), implemented by `#[fiber]` structs.

use std::fmt::Debug;
use std::marker::PhantomData;

use super::degree::{DegreeMarker, Group, ParityMarker};
use super::spec::{DegreeSpec, DegreeTable, FiberSpec};

/// A fiber: the per-node feature type of an equivariant network, a direct sum of
/// `channels` copies of each irrep of degree l (dimension 2l + 1), with a parity per degree
/// for E(3).
///
/// Implemented by `#[fiber(0:32, 1:8)] struct Hidden;`; layers are generic over it
/// (`Linear<In: Fiber, Out: Fiber>`). Degrees are sorted increasingly and unique; features
/// of a fiber hold one `[nodes, channels, 2l + 1]` block per degree in that order.
///
/// Two views of the degrees:
/// - run time: [`Fiber::DEGREES`] (a `const` table) and [`Fiber::spec`];
/// - compile time: [`Fiber::Irreps`], a type-level list of `Irrep<Degree<L>, Parity>`
///   walked with an [`IrrepVisitor`], and the [`HasDegree`](super::HasDegree) impls.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a fiber",
    label = "not declared with `#[fiber(...)]`, as in `#[fiber(0:32, 1:8)] struct {Self};`"
)]
pub trait Fiber: Copy + Default + Debug + Send + Sync + 'static {
    /// The declared name, such as `"Hidden"`.
    const NAME: &'static str;
    /// The degrees with their channels and parities, sorted by degree.
    const DEGREES: DegreeTable;
    /// The total dimension per node: sum over degrees of channels * (2l + 1).
    const DIM: usize = Self::DEGREES.dim();
    /// [`Se3`](super::Se3) if no degree carries a parity, [`E3`](super::E3) otherwise.
    type Group: Group;
    /// The degrees and parities as a type-level list `Cons<Irrep<Degree<L>, P>, ...>`:
    /// two fibers with equal `Irreps` have the same degrees (channels may differ).
    type Irreps: IrrepList;

    /// The run-time spec (`0:32, 1:8`).
    fn spec() -> FiberSpec {
        FiberSpec::from(Self::DEGREES)
    }

    /// Checks that a run-time spec (from a config or a checkpoint) is this fiber.
    ///
    /// # Errors
    /// `FiberMismatch` naming both specs if they differ in any degree, channel count or
    /// parity.
    fn check_spec(spec: &FiberSpec) -> Result<(), crate::Error> {
        let expected = Self::spec();
        if &expected == spec {
            Ok(())
        } else {
            Err(crate::Error::FiberMismatch {
                fiber: Self::NAME,
                expected: expected.to_string(),
                found: spec.to_string(),
            })
        }
    }

    /// The degrees in increasing order.
    fn degrees() -> DegreeTable {
        Self::DEGREES
    }

    /// The number of channels of degree `l`, `None` if the fiber lacks it.
    fn channels(l: usize) -> Option<usize> {
        Self::DEGREES.channels(l)
    }

    /// The highest degree.
    fn max_degree() -> usize {
        Self::DEGREES.max_degree()
    }
}

impl IntoIterator for DegreeTable {
    type Item = DegreeSpec;
    type IntoIter = std::iter::Take<std::array::IntoIter<DegreeSpec, { super::MAX_DEGREE + 1 }>>;

    fn into_iter(self) -> Self::IntoIter {
        let len = self.len();
        let mut entries = [DegreeSpec::new(0, 0, None); super::MAX_DEGREE + 1];
        entries[..len].copy_from_slice(self.as_slice());
        entries.into_iter().take(len)
    }
}

/// One irrep of a fiber at the type level: degree marker `D` and parity marker `P`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Irrep<D, P>(PhantomData<(D, P)>);

/// The end of a type-level irrep list.
#[derive(Debug, Clone, Copy, Default)]
pub struct Nil;

/// A type-level irrep list: head `H`, tail `T`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cons<H, T>(PhantomData<(H, T)>);

/// Code run once per degree of a fiber, with the degree and parity as types
/// (compile-time iteration over [`Fiber::Irreps`]).
pub trait IrrepVisitor {
    /// Called for the degree at position `index` of the fiber.
    fn visit<D: DegreeMarker, P: ParityMarker>(&mut self, index: usize);
}

/// A type-level list of irreps ([`Cons`] / [`Nil`]).
pub trait IrrepList: Send + Sync + 'static {
    /// The number of irreps.
    const LEN: usize;

    /// Visits the irreps in order, numbering them from `start`.
    fn visit_from<V: IrrepVisitor>(visitor: &mut V, start: usize);

    /// Visits every irrep in order, numbering them from 0.
    fn for_each<V: IrrepVisitor>(visitor: &mut V) {
        Self::visit_from(visitor, 0);
    }
}

impl IrrepList for Nil {
    const LEN: usize = 0;
    fn visit_from<V: IrrepVisitor>(_: &mut V, _: usize) {}
}

impl<D: DegreeMarker, P: ParityMarker, T: IrrepList> IrrepList for Cons<Irrep<D, P>, T> {
    const LEN: usize = 1 + T::LEN;
    fn visit_from<V: IrrepVisitor>(visitor: &mut V, start: usize) {
        visitor.visit::<D, P>(start);
        T::visit_from(visitor, start + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fiber::{Degree, DegreeOf, Even, HasDegree, NoParity, Odd, Parity, Se3, E3};
    use se3_macros::fiber;
    use std::any::TypeId;

    #[fiber(0:32, 1:8)]
    struct Hidden;
    #[fiber(0 e:8, 1 o:4)]
    struct Polar;
    #[fiber("0e:8, 1o:4")]
    struct PolarString;
    /// Documented fiber with every degree.
    #[fiber(0:1, 1:1, 2:1, 3:1, 4:1, 5:1, 6:1, 7:1, 8:1, 9:1, 10:2)]
    pub struct Deep;

    #[test]
    fn macro_fiber_reports_its_degrees_channels_and_dimension() {
        assert_eq!(Hidden::NAME, "Hidden");
        assert_eq!(Hidden::spec().to_string(), "0:32, 1:8");
        assert_eq!(Hidden::DIM, 32 + 8 * 3);
        assert_eq!(Hidden::channels(1), Some(8));
        assert_eq!(Hidden::channels(2), None);
        assert_eq!(Hidden::max_degree(), 1);
        assert_eq!(<Hidden as HasDegree<Degree<1>>>::INDEX, 1);
        assert_eq!(<Degree<0> as DegreeOf<Hidden>>::CHANNELS, 32);
        assert_eq!(<Hidden as Fiber>::Irreps::LEN, 2);
        assert_eq!(
            TypeId::of::<<Hidden as Fiber>::Group>(),
            TypeId::of::<Se3>()
        );
        assert_eq!(
            TypeId::of::<<Hidden as HasDegree<Degree<0>>>::Parity>(),
            TypeId::of::<NoParity>()
        );
    }

    #[test]
    fn check_spec_accepts_only_the_same_spec() -> Result<(), crate::Error> {
        Hidden::check_spec(&"0:32, 1:8".parse()?)?;
        for other in ["0:32, 1:4", "0:32", "0e:32, 1o:8", "0:32, 2:8"] {
            assert!(matches!(
                Hidden::check_spec(&other.parse()?),
                Err(crate::Error::FiberMismatch {
                    fiber: "Hidden",
                    ..
                })
            ));
        }
        Ok(())
    }

    #[test]
    fn macro_parity_forms_agree() {
        assert_eq!(Polar::spec(), PolarString::spec());
        assert_eq!(Polar::spec().to_string(), "0e:8, 1o:4");
        assert_eq!(Polar::DEGREES.as_slice()[1].parity, Some(Parity::Odd));
        assert_eq!(TypeId::of::<<Polar as Fiber>::Group>(), TypeId::of::<E3>());
        assert_eq!(
            TypeId::of::<<Polar as HasDegree<Degree<0>>>::Parity>(),
            TypeId::of::<Even>()
        );
        assert_eq!(
            TypeId::of::<<PolarString as HasDegree<Degree<1>>>::Parity>(),
            TypeId::of::<Odd>()
        );
    }

    #[test]
    fn max_degree_ten_is_declarable() {
        assert_eq!(Deep::max_degree(), crate::fiber::MAX_DEGREE);
        assert_eq!(<Deep as HasDegree<Degree<10>>>::CHANNELS, 2);
        assert_eq!(
            Deep::DIM,
            (0..10).map(|l| 2 * l + 1).sum::<usize>() + 2 * 21
        );
    }

    struct Collect(Vec<(usize, usize, Option<Parity>)>);
    impl IrrepVisitor for Collect {
        fn visit<D: DegreeMarker, P: ParityMarker>(&mut self, index: usize) {
            self.0.push((index, D::L, P::PARITY));
        }
    }

    #[test]
    fn compile_time_iteration_matches_run_time_degrees() {
        let mut c = Collect(Vec::new());
        <Polar as Fiber>::Irreps::for_each(&mut c);
        let run_time: Vec<_> = Polar::degrees()
            .into_iter()
            .enumerate()
            .map(|(i, d)| (i, d.l, d.parity))
            .collect();
        assert_eq!(c.0, run_time);
    }
}
