// rule: SE(3) vs E(3) (SameGroupAs, caught by SameDegrees in Linear) — SE(3) to E(3).
use se3::prelude::*;

#[fiber(0:8, 1:4)]
struct Plain;
#[fiber(0 e:8, 1o:4)]
struct Polar;

fn main() {
    let mut rng = rand::thread_rng();
    let _layer = Linear::<Plain, Polar>::new(&mut rng);
}
