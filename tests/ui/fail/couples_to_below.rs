// rule: Clebsch-Gordan selection (CouplesTo) — 3 x 1 -> 0 is below |l1 - l2|.
use se3::prelude::*;

fn main() {
    let _path = Path::<Degree<3>, Degree<1>, Degree<0>>::new();
}
