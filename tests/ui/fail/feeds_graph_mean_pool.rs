// rule: graph layer input (FeedsGraph) — a MeanPool<Hidden> given graph features of Atoms.
use se3::exec::Session;
use se3::prelude::*;

#[fiber(0:16)]
struct Atoms;
#[fiber(0:32, 1:8)]
struct Hidden;

fn main() -> Result<(), Error> {
    let mut s = Session::new();
    let x = GraphFeatures::<Atoms>::input(&mut s, "x");
    let _pooled = MeanPool::<Hidden>::new().build(&x, None)?;
    Ok(())
}
