//! Typed tensor-product paths l1 x l2 -> j between fibers: which paths a tensor product
//! has is checked at compile time (degrees present, Clebsch-Gordan selection rule, parity,
//! SE(3) vs E(3)). The coefficients and the forward pass come with the layers that use
//! them (`so3::clebsch_gordan`).

use std::marker::PhantomData;

use crate::fiber::{
    ConservesParity, CouplesTo, DegreeMarker, DegreeOf, Fiber, Parity, ParityMarker, SameGroupAs,
};

/// The run-time record of one path: input degrees `l1` (of the first fiber), `l2` (of the
/// second), output degree `j`, and the output parity for E(3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PathSpec {
    /// Degree taken from the first input.
    pub l1: usize,
    /// Degree taken from the second input.
    pub l2: usize,
    /// Output degree, |l1 - l2| <= j <= l1 + l2.
    pub j: usize,
    /// Output parity (p1 * p2) for E(3), `None` for SE(3).
    pub parity: Option<Parity>,
}

/// A Clebsch-Gordan path `L1 x L2 -> J` as a type; constructible only if
/// |l1 - l2| <= j <= l1 + l2 ([`CouplesTo`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<L1, L2, J>(PhantomData<(L1, L2, J)>);

impl<L1: DegreeMarker, L2: DegreeMarker, J: DegreeMarker> Path<L1, L2, J> {
    /// The path; compiles only if |l1 - l2| <= j <= l1 + l2.
    #[rustfmt::skip]
    pub fn new() -> Self where J: CouplesTo<L1, L2> {
        Path(PhantomData)
    }

    /// Its degrees (SE(3), no parity).
    pub fn spec(&self) -> PathSpec {
        PathSpec {
            l1: L1::L,
            l2: L2::L,
            j: J::L,
            parity: None,
        }
    }
}

/// A tensor product of features of fiber `A` with features of fiber `B` into fiber `Out`,
/// as a list of paths added with [`TensorProduct::path`]. All three fibers belong to one
/// group ([`SameGroupAs`]).
#[derive(Debug, Clone)]
pub struct TensorProduct<A, B, Out> {
    paths: Vec<PathSpec>,
    fibers: PhantomData<fn(A, B) -> Out>,
}

impl<A, B, Out> Default for TensorProduct<A, B, Out>
where
    A: Fiber,
    B: Fiber,
    Out: Fiber,
    B::Group: SameGroupAs<A::Group>,
    Out::Group: SameGroupAs<A::Group>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Fiber, B: Fiber, Out: Fiber> TensorProduct<A, B, Out> {
    /// A tensor product with no path yet; compiles only if `A`, `B` and `Out` are all
    /// SE(3) or all E(3) fibers.
    #[rustfmt::skip]
    pub fn new() -> Self where B::Group: SameGroupAs<A::Group>, Out::Group: SameGroupAs<A::Group> {
        TensorProduct {
            paths: Vec::new(),
            fibers: PhantomData,
        }
    }

    /// Adds the path `L1 x L2 -> J`: compiles only if `A` has `L1`, `B` has `L2`, `Out`
    /// has `J`, |l1 - l2| <= j <= l1 + l2, and (E(3)) the parity of `J` in `Out` is the
    /// product of the parities of `L1` in `A` and `L2` in `B`.
    #[rustfmt::skip]
    pub fn path<L1: DegreeOf<A>, L2: DegreeOf<B>, J: DegreeOf<Out> + CouplesTo<L1, L2>>(mut self) -> Self where J::Parity: ConservesParity<L1::Parity, L2::Parity> {
        self.paths.push(PathSpec {
            l1: L1::L,
            l2: L2::L,
            j: J::L,
            parity: <J::Parity as ParityMarker>::PARITY,
        });
        self
    }

    /// The paths in the order they were added.
    pub fn paths(&self) -> &[PathSpec] {
        &self.paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fiber::Degree;
    use se3_macros::fiber;

    #[fiber("0e:4, 1o:2")]
    struct Polar;
    #[fiber("0e:2, 1e:2, 2e:1")]
    struct EvenOut;

    #[test]
    fn paths_record_degrees_and_product_parity() {
        let tp = TensorProduct::<Polar, Polar, EvenOut>::new()
            .path::<Degree<1>, Degree<1>, Degree<0>>()
            .path::<Degree<1>, Degree<1>, Degree<1>>()
            .path::<Degree<1>, Degree<1>, Degree<2>>();
        let js: Vec<_> = tp
            .paths()
            .iter()
            .map(|p| (p.l1, p.l2, p.j, p.parity))
            .collect();
        assert_eq!(
            js,
            vec![
                (1, 1, 0, Some(Parity::Even)),
                (1, 1, 1, Some(Parity::Even)),
                (1, 1, 2, Some(Parity::Even))
            ]
        );
        assert_eq!(
            Path::<Degree<2>, Degree<3>, Degree<1>>::new().spec(),
            PathSpec {
                l1: 2,
                l2: 3,
                j: 1,
                parity: None
            }
        );
    }
}
