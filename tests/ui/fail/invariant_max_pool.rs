// rule: invariant output (Invariant) — max pooling of degree-1 features (a component-wise
// maximum of vectors does not rotate with them).
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;

fn main() {
    let _pool = MaxPool::<Hidden, Degree<1>>::new();
}
