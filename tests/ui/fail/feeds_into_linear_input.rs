// rule: layer input (FeedsInto) — a Linear<Atoms, Atoms> applied to Features<Hidden>.
use se3::prelude::*;

#[fiber(0:16)]
struct Atoms;
#[fiber(0:32, 1:8)]
struct Hidden;

fn main() {
    let mut rng = rand::thread_rng();
    let layer = Linear::<Atoms, Atoms>::new(&mut rng);
    let h = Features::<Hidden>::zeros(4);
    let _ = layer.forward(&h);
}
