// rule: SE(3) vs E(3) (SameGroupAs) — E(3) inputs coupled into an SE(3) output fiber.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;
#[fiber("0e:8, 1o:4")]
struct Polar;

fn main() {
    let _tp = TensorProduct::<Polar, Polar, Hidden>::new();
}
