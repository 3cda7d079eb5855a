// rule: Clebsch-Gordan selection (CouplesTo) — 1 x 1 -> 3 exceeds l1 + l2.
use se3::prelude::*;

#[fiber(0:8, 1:8, 2:4, 3:2)]
struct Big;

fn main() {
    let _tp = TensorProduct::<Big, Big, Big>::new()
        .path::<Degree<1>, Degree<1>, Degree<2>>()
        .path::<Degree<1>, Degree<1>, Degree<3>>();
}
