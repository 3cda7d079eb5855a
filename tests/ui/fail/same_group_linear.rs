// rule: SE(3) vs E(3) (SameGroupAs) — a Linear from an SE(3) fiber to an E(3) fiber.
use se3::prelude::*;

#[fiber(0:8, 1:4)]
struct Plain;
#[fiber(0 e:8, 1o:4)]
struct Polar;

fn main() {
    let mut rng = rand::thread_rng();
    let _layer = Linear::<Plain, Polar>::new(&mut rng);
}
