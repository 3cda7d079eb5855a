// rule: scalar-only ops (ScalarOnly) — ReLU on degree-1 features breaks equivariance.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;

fn main() {
    let h = Features::<Hidden>::zeros(4);
    let _ = h.activate(Relu, Degree::<1>);
}
