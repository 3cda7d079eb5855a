//! Degrees and parities as types: `Degree<1>` is the vector degree, `Even`/`Odd` the parity
//! of an E(3) irrep, `NoParity` marks SE(3) fibers.
//!
//! The user-facing marker is `Degree<const L: usize>`, which reads as itself in compiler
//! messages (`Degree<1>`, not `UInt<UTerm, B1>`). Arithmetic on degrees (the Clebsch-Gordan
//! triangle rule) is done in typenum, reached through [`ToTypenum`], the way nalgebra bridges
//! its `Const<N>` dimensions.

use super::spec::Parity;

/// The highest degree a fiber may hold: 10. Degrees `0..=MAX_DEGREE` have a [`Degree`]
/// marker with a typenum bridge; the `#[fiber]` macro and `FiberSpec` reject higher ones.
pub const MAX_DEGREE: usize = 10;

/// The degree `L` of an irreducible representation of SO(3), of dimension 2L + 1.
///
/// `Degree<0>` holds scalars, `Degree<1>` vectors, `Degree<2>` traceless symmetric
/// matrices. Only `L <= MAX_DEGREE` implements [`DegreeMarker`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Degree<const L: usize>;

/// Bridge from a readable degree marker to the typenum unsigned integer used for
/// compile-time arithmetic (sums and comparisons in the Clebsch-Gordan rule).
pub trait ToTypenum {
    /// The typenum integer equal to the degree.
    type Typenum: typenum::Unsigned;
}

/// A supported degree marker: `Degree<L>` with `L <= MAX_DEGREE`.
///
/// `WIDTH` = 2L + 1 is the length of the m axis (rows ordered m = -L..=L).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a supported degree",
    label = "not a `Degree<L>` with L <= 10",
    note = "se3 supports degrees 0..=10 (`se3::fiber::MAX_DEGREE`)"
)]
pub trait DegreeMarker: ToTypenum + Copy + Default + Send + Sync + 'static {
    /// The degree l.
    const L: usize;
    /// The dimension 2l + 1 of the irrep.
    const WIDTH: usize = 2 * Self::L + 1;
}

macro_rules! degrees {
    ($($l:literal => $u:ident),* $(,)?) => {$(
        impl ToTypenum for Degree<$l> {
            type Typenum = typenum::$u;
        }
        #[diagnostic::do_not_recommend]
        impl DegreeMarker for Degree<$l> {
            const L: usize = $l;
        }
    )*};
}

degrees!(0 => U0, 1 => U1, 2 => U2, 3 => U3, 4 => U4, 5 => U5, 6 => U6, 7 => U7, 8 => U8,
    9 => U9, 10 => U10);

/// The even parity of an E(3) irrep: unchanged under inversion (`0e` scalars, `1e`
/// pseudovectors such as angular momentum).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Even;

/// The odd parity of an E(3) irrep: sign flip under inversion (`0o` pseudoscalars,
/// `1o` ordinary vectors such as positions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Odd;

/// The parity marker of SE(3) fibers, which only see rotations and carry no parity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NoParity;

/// A parity marker: [`Even`], [`Odd`] (E(3) fibers) or [`NoParity`] (SE(3) fibers).
pub trait ParityMarker: Copy + Default + Send + Sync + 'static {
    /// The run-time parity, `None` for SE(3).
    const PARITY: Option<Parity>;
}

impl ParityMarker for Even {
    const PARITY: Option<Parity> = Some(Parity::Even);
}
impl ParityMarker for Odd {
    const PARITY: Option<Parity> = Some(Parity::Odd);
}
impl ParityMarker for NoParity {
    const PARITY: Option<Parity> = None;
}

/// The symmetry group a fiber is equivariant under: [`Se3`] (rotations and translations)
/// or [`E3`] (also reflections, so every degree carries a parity).
pub trait Group: Copy + Default + Send + Sync + 'static {
    /// "SE(3)" or "E(3)".
    const NAME: &'static str;
}

/// The group of rotations and translations; fibers without parity letters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Se3;

/// The group of rotations, reflections and translations; fibers whose degrees all carry a
/// parity (`0e`, `1o`, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct E3;

impl Group for Se3 {
    const NAME: &'static str = "SE(3)";
}
impl Group for E3 {
    const NAME: &'static str = "E(3)";
}

#[cfg(test)]
mod tests {
    use super::*;
    use typenum::Unsigned;

    fn typenum_of<D: DegreeMarker>() -> usize {
        <D::Typenum as Unsigned>::USIZE
    }

    #[test]
    fn typenum_bridge_equals_degree() {
        assert_eq!(typenum_of::<Degree<0>>(), 0);
        assert_eq!(typenum_of::<Degree<3>>(), 3);
        assert_eq!(typenum_of::<Degree<MAX_DEGREE>>(), MAX_DEGREE);
    }

    #[test]
    fn width_is_two_l_plus_one() {
        assert_eq!(<Degree<0> as DegreeMarker>::WIDTH, 1);
        assert_eq!(<Degree<1> as DegreeMarker>::WIDTH, 3);
        assert_eq!(<Degree<10> as DegreeMarker>::WIDTH, 21);
    }
}
