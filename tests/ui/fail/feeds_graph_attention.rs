// rule: graph layer input (FeedsGraph) — an Attention<Hidden> given the output of a
// Conv<Atoms, Narrow>.
use luminal::prelude::*;
use se3::exec::{InputKind, Session};
use se3::layers::{AttentionOptions, ConvOptions, EdgeBasis, EdgeGraph};
use se3::prelude::*;

#[fiber(0:16)]
struct Atoms;
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
    let x = GraphFeatures::<Atoms>::input(&mut s, "x");
    let conv = Conv::<Atoms, Narrow>::new(ConvOptions::default(), &mut rng)?;
    let h = conv.build(&mut s, "conv.", &x, &edges, &basis)?;
    let attention = Attention::<Hidden>::new(AttentionOptions::default(), &mut rng)?;
    let _y = attention.build(&mut s, "attn.", &h, &edges, &basis)?;
    Ok(())
}
