// Legal modules: generic over fibers, nested, tuple structs, arrays, options, boxes, skipped
// fields, renamed fields, custom initialisation.
use se3::layers::{ConvOptions, Pool};
use se3::prelude::*;

#[fiber(0:4)]
struct Atoms;
#[fiber(0:8, 1:2)]
struct Hidden;

#[derive(Module)]
struct Pair<F: Fiber>(Norm<F>, Norm<F>);

#[derive(Module)]
struct Stack<In: Fiber, H: Fiber> {
    #[module(init = |rng| Conv::new(ConvOptions { pool: Pool::Sum, ..Default::default() }, rng))]
    embed: Conv<In, H>,
    pairs: [Pair<H>; 2],
    extra: Option<Box<Pair<H>>>,
    #[module(rename = "final")]
    last: Norm<H>,
    #[module(skip)]
    steps: u32,
}

impl<In: Fiber, H: Fiber> Forward for Stack<In, H> {
    type In = In;
    type Out = H;
    fn forward(&self, g: &mut GraphCtx, x: GraphFeatures<In>) -> Result<GraphFeatures<H>> {
        let mut h = self.embed.apply(g, &x)?;
        for Pair(a, b) in &self.pairs {
            h = a.apply(g, &h)?;
            h = b.apply(g, &h)?;
        }
        self.last.apply(g, &h)
    }
}

fn main() -> Result<(), Error> {
    let stack = Stack::<Atoms, Hidden>::new(&mut rand::thread_rng())?;
    assert_eq!(stack.steps, 0);
    assert!(stack.extra.is_none());
    let paths: Vec<String> = stack.layers().into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["embed", "pairs.0.0", "pairs.0.1", "pairs.1.0", "pairs.1.1", "final"]);
    let _net = stack.compile(Neighbors::knn(4))?;
    Ok(())
}
