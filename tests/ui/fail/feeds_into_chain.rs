// rule: layer chaining (Follows) — the output fiber of one layer is not the next input.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;
#[fiber(0:16, 1:4)]
struct Narrow;
#[fiber(0:64, 1:16)]
struct Wide;

fn main() {
    let mut rng = rand::thread_rng();
    let down = Linear::<Hidden, Narrow>::new(&mut rng);
    let up = Linear::<Hidden, Wide>::new(&mut rng);
    let _net = down.then(up);
}
