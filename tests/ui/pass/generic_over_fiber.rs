// Generic code over any `F: Fiber` and over layers compiles.
use se3::fiber::{
    DegreeMarker, HasDegree, Invariant, IrrepList, IrrepVisitor, ParityMarker,
};
use se3::prelude::*;

#[fiber(0:32, 1:8)]
pub struct Hidden;
#[fiber(0:16, 1:4)]
pub struct Narrow;

/// Works for every fiber: run-time degree iteration.
fn describe<F: Fiber>() -> String {
    F::degrees()
        .into_iter()
        .map(|d| format!("{}x{}", d.channels, d.width()))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// Compile-time degree iteration.
struct Widths(Vec<usize>);
impl IrrepVisitor for Widths {
    fn visit<D: DegreeMarker, P: ParityMarker>(&mut self, _index: usize) {
        self.0.push(D::WIDTH);
    }
}

/// Works for every fiber with invariant scalars.
fn energy<F>(h: &Features<F>) -> f32
where
    F: HasDegree<Degree<0>>,
    Degree<0>: Invariant<F>,
{
    h.activate(Relu, Degree::<0>).invariant::<Degree<0>>().sum()
}

/// A residual block generic over the fiber pair.
fn block<F, G>(down: &Linear<F, G>, up: &Linear<G, F>, x: &Features<F>) -> Result<Features<F>, Error>
where
    F: Fiber,
    G: Fiber,
{
    let y = up.forward(&down.forward(x));
    x.residual(&y)
}

/// Generic over layers.
fn run<L: Layer>(layer: &L, x: &Features<L::In>) -> Features<L::Out> {
    layer.forward(x)
}

fn main() -> Result<(), Error> {
    assert_eq!(describe::<Hidden>(), "32x1 + 8x3");
    let mut w = Widths(Vec::new());
    <Hidden as Fiber>::Irreps::for_each(&mut w);
    assert_eq!(w.0, vec![1, 3]);
    let mut rng = rand::thread_rng();
    let x = Features::<Hidden>::zeros(2);
    let y = block(&Linear::<Hidden, Narrow>::new(&mut rng), &Linear::new(&mut rng), &x)?;
    let _ = energy(&y);
    let _ = run(&Linear::<Hidden, Hidden>::new(&mut rng), &y);
    Ok(())
}
