//! Anonymous fibers for type positions: `fiber_type!(0:32, 1:8)` expands to an
//! [`Inline`] type with one slot per degree 0..=10, each [`Absent`] or [`Ch<C, P>`]
//! (`C` channels of parity `P`). It implements `Fiber` and `HasDegree` like a declared
//! fiber; declared fibers (`#[fiber]`) read better in messages and are preferred for
//! anything a user names twice.

use std::fmt::Debug;
use std::marker::PhantomData;

use super::degree::{Degree, Group, ParityMarker};
use super::fiber::{Fiber, IrrepList};
use super::rules::HasDegree;
use super::spec::{DegreeSpec, DegreeTable, Parity};
use super::MAX_DEGREE;

/// A degree slot of an [`Inline`] fiber: [`Absent`] or [`Ch<C, P>`].
pub trait Slot: Copy + Default + Debug + Send + Sync + 'static {
    /// The channel count, 0 if absent.
    const CHANNELS: usize;
    /// The parity, `None` if absent or SE(3).
    const PARITY: Option<Parity>;
}

/// An empty degree slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Absent;

/// A degree slot holding `C` channels of parity `P`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Ch<const C: usize, P>(PhantomData<P>);

impl Slot for Absent {
    const CHANNELS: usize = 0;
    const PARITY: Option<Parity> = None;
}

impl<const C: usize, P: ParityMarker + Debug> Slot for Ch<C, P> {
    const CHANNELS: usize = C;
    const PARITY: Option<Parity> = P::PARITY;
}

/// An anonymous fiber of group `G` with slots `D0..=D10` (degree l in slot `Dl`) and
/// type-level irrep list `I` (written out by `fiber_type!`, which keeps it consistent with
/// the slots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[allow(clippy::type_complexity)]
pub struct Inline<G, I, D0, D1, D2, D3, D4, D5, D6, D7, D8, D9, D10>(
    PhantomData<(G, I, D0, D1, D2, D3, D4, D5, D6, D7, D8, D9, D10)>,
);

/// The degree table of slots given as (channels, parity), skipping empty slots.
const fn table(slots: [(usize, Option<Parity>); MAX_DEGREE + 1]) -> DegreeTable {
    let mut specs = [DegreeSpec::new(0, 0, None); MAX_DEGREE + 1];
    let mut n = 0;
    let mut l = 0;
    while l <= MAX_DEGREE {
        if slots[l].0 > 0 {
            specs[n] = DegreeSpec::new(l, slots[l].0, slots[l].1);
            n += 1;
        }
        l += 1;
    }
    let (present, _) = specs.split_at(n);
    DegreeTable::new(present)
}

#[diagnostic::do_not_recommend]
impl<G, I, D0, D1, D2, D3, D4, D5, D6, D7, D8, D9, D10> Fiber
    for Inline<G, I, D0, D1, D2, D3, D4, D5, D6, D7, D8, D9, D10>
where
    G: Group + Debug,
    I: IrrepList + Copy + Default + Debug,
    D0: Slot,
    D1: Slot,
    D2: Slot,
    D3: Slot,
    D4: Slot,
    D5: Slot,
    D6: Slot,
    D7: Slot,
    D8: Slot,
    D9: Slot,
    D10: Slot,
{
    const NAME: &'static str = "fiber_type!";
    const DEGREES: DegreeTable = table([
        (D0::CHANNELS, D0::PARITY),
        (D1::CHANNELS, D1::PARITY),
        (D2::CHANNELS, D2::PARITY),
        (D3::CHANNELS, D3::PARITY),
        (D4::CHANNELS, D4::PARITY),
        (D5::CHANNELS, D5::PARITY),
        (D6::CHANNELS, D6::PARITY),
        (D7::CHANNELS, D7::PARITY),
        (D8::CHANNELS, D8::PARITY),
        (D9::CHANNELS, D9::PARITY),
        (D10::CHANNELS, D10::PARITY),
    ]);
    type Group = G;
    type Irreps = I;
}

/// `HasDegree<Degree<L>>` for an `Inline` whose slot `L` is `Ch<C, P>`; its block index
/// is the number of present slots before it.
macro_rules! inline_has_degree {
    ($l:literal; $($before:ident),*; $($after:ident),*) => {
        #[diagnostic::do_not_recommend]
        impl<G, I, $($before: Slot,)* $($after: Slot,)* const C: usize, P>
            HasDegree<Degree<$l>> for Inline<G, I, $($before,)* Ch<C, P>, $($after),*>
        where
            Self: Fiber,
            P: ParityMarker + Debug,
        {
            const CHANNELS: usize = C;
            const INDEX: usize = 0 $(+ ($before::CHANNELS > 0) as usize)*;
            type Parity = P;
        }
    };
}

inline_has_degree!(0; ; D1, D2, D3, D4, D5, D6, D7, D8, D9, D10);
inline_has_degree!(1; D0; D2, D3, D4, D5, D6, D7, D8, D9, D10);
inline_has_degree!(2; D0, D1; D3, D4, D5, D6, D7, D8, D9, D10);
inline_has_degree!(3; D0, D1, D2; D4, D5, D6, D7, D8, D9, D10);
inline_has_degree!(4; D0, D1, D2, D3; D5, D6, D7, D8, D9, D10);
inline_has_degree!(5; D0, D1, D2, D3, D4; D6, D7, D8, D9, D10);
inline_has_degree!(6; D0, D1, D2, D3, D4, D5; D7, D8, D9, D10);
inline_has_degree!(7; D0, D1, D2, D3, D4, D5, D6; D8, D9, D10);
inline_has_degree!(8; D0, D1, D2, D3, D4, D5, D6, D7; D9, D10);
inline_has_degree!(9; D0, D1, D2, D3, D4, D5, D6, D7, D8; D10);
inline_has_degree!(10; D0, D1, D2, D3, D4, D5, D6, D7, D8, D9;);

/// `fiber_type!` on an invalid list expands to `<Inline<...> as WithErrors<{ errors; 0 }>>::Type`:
/// the type of the valid entries, with the `compile_error!`s in the constant. `Type` is
/// `Self`.
pub trait WithErrors<const N: usize> {
    /// `Self`.
    type Type;
}

impl<T, const N: usize> WithErrors<N> for T {
    type Type = T;
}
