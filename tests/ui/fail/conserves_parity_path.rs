// rule: parity (ConservesParity) — 1o x 1o is even, it cannot produce 1o.
use se3::prelude::*;

#[fiber(0 e:8, 1o:4)]
struct Polar;

fn main() {
    let _tp = TensorProduct::<Polar, Polar, Polar>::new()
        .path::<Degree<1>, Degree<1>, Degree<0>>()
        .path::<Degree<1>, Degree<1>, Degree<1>>();
}
