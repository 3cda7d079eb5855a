// rule: invariant output (Invariant) — an odd scalar (0o) flips sign under inversion.
use se3::prelude::*;

#[fiber("0o:4, 1o:4")]
struct Chiral;

fn main() {
    let h = Features::<Chiral>::zeros(4);
    let _energy = h.invariant::<Degree<0>>().sum();
}
