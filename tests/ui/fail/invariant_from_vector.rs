// rule: invariant output (Invariant) — an energy read from degree-1 features.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;

fn main() {
    let h = Features::<Hidden>::zeros(4);
    let _energy = h.invariant::<Degree<1>>().sum();
}
