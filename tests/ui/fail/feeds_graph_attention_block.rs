// rule: graph layer input (FeedsGraph) — an AttentionBlock<Hidden> given graph features of
// Narrow (same degrees, fewer channels).
use luminal::prelude::*;
use se3::exec::{InputKind, Session};
use se3::layers::{AttentionOptions, EdgeBasis, EdgeGraph};
use se3::prelude::*;

#[fiber(0:16, 1:4)]
struct Narrow;
#[fiber(0:32, 1:8)]
struct Hidden;

fn main() -> Result<(), Error> {
    let mut rng = rand::thread_rng();
    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let edges = EdgeGraph::input(&mut s, "edges", coords).grouped(8);
    let basis = EdgeBasis::new(&mut s, "", &edges, 1)?;
    let x = GraphFeatures::<Narrow>::input(&mut s, "x");
    let block = AttentionBlock::<Hidden>::new(AttentionOptions::default(), false, &mut rng)?;
    let _y = block.build(&mut s, "block.", &x, &edges, &basis)?;
    Ok(())
}
