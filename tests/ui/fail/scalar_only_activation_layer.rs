// rule: scalar-only ops (ScalarOnly) — an activation layer declared on degree 2.
use se3::prelude::*;

#[fiber(0:32, 2:8)]
struct Hidden;

fn main() {
    let _act = Activation::<Hidden, Silu, Degree<2>>::new(Silu);
}
