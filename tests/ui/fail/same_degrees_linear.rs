// rule: same degrees (SameDegrees) — Linear cannot create or drop degrees.
use se3::prelude::*;

#[fiber(0:16)]
struct Atoms;
#[fiber(0:32, 1:8)]
struct Hidden;

fn main() {
    let mut rng = rand::thread_rng();
    let _layer = Linear::<Atoms, Hidden>::new(&mut rng);
}
