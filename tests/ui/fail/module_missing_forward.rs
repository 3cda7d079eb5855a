// rule: a module is compiled through its typed forward (Forward) — `Net` derives `Module`
// but has no `impl Forward for Net`.
use se3::prelude::*;

#[fiber(0:4)]
struct Atoms;
#[fiber(0:8, 1:2)]
struct Hidden;

#[derive(Module)]
struct Net {
    conv: Conv<Atoms, Hidden>,
}

fn main() -> Result<(), Error> {
    let net = Net::new(&mut rand::thread_rng())?.compile(Neighbors::knn(8))?;
    let _ = net;
    Ok(())
}
