// rule: graph layer input (FeedsGraph) — a LayerNorm<Hidden> given graph features of Atoms.
use se3::exec::Session;
use se3::prelude::*;

#[fiber(0:16)]
struct Atoms;
#[fiber(0:32, 1:8)]
struct Hidden;

fn main() -> Result<(), Error> {
    let mut s = Session::new();
    let x = GraphFeatures::<Atoms>::input(&mut s, "x");
    let norm = LayerNorm::<Hidden>::new();
    let _y = norm.build(&mut s, "norm.", &x)?;
    Ok(())
}
