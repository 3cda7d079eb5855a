// The typed graph layers connect when the fibers meet, in concrete and generic code.
use luminal::prelude::*;
use se3::exec::{InputKind, Session};
use se3::layers::{AttentionOptions, ConvOptions, EdgeBasis, EdgeGraph};
use se3::prelude::*;

#[fiber(0:16)]
pub struct Atoms;
#[fiber(0:12, 1:4, 2:2)]
pub struct GateIn;
#[fiber(0:6, 1:4, 2:2)]
pub struct Hidden;
#[fiber("0e:5, 1o:3")]
pub struct PolarGateIn;
#[fiber("0e:2, 1o:3")]
pub struct Polar;

/// A residual attention stage over any fiber.
fn stage<F: Fiber>(
    s: &mut Session,
    x: &GraphFeatures<F>,
    edges: &EdgeGraph,
    basis: &EdgeBasis,
    rng: &mut impl rand::Rng,
) -> Result<GraphFeatures<F>, Error> {
    let opts = AttentionOptions { heads: 2, dim_head: 2, ..AttentionOptions::default() };
    let h = LayerNorm::<F>::new().build(s, "ln.", x)?;
    let h = Attention::<F>::new(opts, rng)?.build(s, "att.", &h, edges, basis)?;
    let h = AttentionBlock::<F>::new(opts, true, rng)?.build(s, "ab.", &h, edges, basis)?;
    FeedForwardBlock::<F>::new(false, rng)?.build(s, "ff.", &h)
}

fn main() -> Result<(), Error> {
    let mut rng = rand::thread_rng();
    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let edges = EdgeGraph::input(&mut s, "edges", coords).grouped(4);
    let basis = EdgeBasis::new(&mut s, "", &edges, 2)?;
    let x = GraphFeatures::<Atoms>::input(&mut s, "x");
    let g = Conv::<Atoms, GateIn>::new(ConvOptions::default(), &mut rng)?
        .build(&mut s, "conv.", &x, &edges, &basis)?;
    let h: GraphFeatures<Hidden> = Gate::<GateIn, Hidden>::new()?.build(&mut s, "gate.", &g)?;
    let h = stage(&mut s, &h, &edges, &basis, &mut rng)?;
    let _mean: GraphFeatures<Hidden, Const<1>> = MeanPool::<Hidden>::new().build(&h, None)?;
    let _max = MaxPool::<Hidden>::new().build(&h, None)?;
    let _polar = Gate::<PolarGateIn, Polar>::new()?;
    let _ = MaxPool::<Polar>::new();
    Ok(())
}
