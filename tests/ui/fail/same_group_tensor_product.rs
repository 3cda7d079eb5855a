// rule: SE(3) vs E(3) (SameGroupAs) — a tensor product mixing an SE(3) and an E(3) fiber.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;
#[fiber(0 e:8, 1o:4)]
struct Polar;

fn main() {
    let _tp = TensorProduct::<Hidden, Polar, Hidden>::new();
}
