// rule: same fiber (SameFiber) — adding features of two different fibers.
use se3::prelude::*;

#[fiber(0:16)]
struct Atoms;
#[fiber(0:32, 1:8)]
struct Hidden;

fn main() {
    let h = Features::<Hidden>::zeros(4);
    let a = Features::<Atoms>::zeros(4);
    let _ = h + a;
}
