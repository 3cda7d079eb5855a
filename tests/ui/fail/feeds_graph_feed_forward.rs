// rule: graph layer input (FeedsGraph) — a FeedForwardBlock<Hidden> given the output of a
// Gate<GateIn, Narrow>.
use se3::exec::Session;
use se3::prelude::*;

#[fiber(0:21, 1:4)]
struct GateIn;
#[fiber(0:17, 1:4)]
struct Narrow;
#[fiber(0:32, 1:8)]
struct Hidden;

fn main() -> Result<(), Error> {
    let mut rng = rand::thread_rng();
    let mut s = Session::new();
    let x = GraphFeatures::<GateIn>::input(&mut s, "x");
    let h = Gate::<GateIn, Narrow>::new()?.build(&mut s, "gate.", &x)?;
    let block = FeedForwardBlock::<Hidden>::new(false, &mut rng)?;
    let _y = block.build(&mut s, "ff.", &h)?;
    Ok(())
}
