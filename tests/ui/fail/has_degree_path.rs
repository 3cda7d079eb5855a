// rule: has degree (DegreeOf, from HasDegree) — a tensor-product path from a degree the input lacks.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;
#[fiber(0:16)]
struct Atoms;

fn main() {
    let _tp = TensorProduct::<Atoms, Hidden, Hidden>::new()
        .path::<Degree<2>, Degree<1>, Degree<1>>();
}
