//! conv -> norm -> linear -> conv as a module on the 8 nearest neighbours: compiled, run, checked.
use rand::{rngs::StdRng, Rng, SeedableRng};
use se3::prelude::*;
use se3::testing::{assert_module_equivariant, random_vectors};
#[fiber(0:4)]
struct Atoms;
#[fiber(0:16, 1:8, 2:4)]
struct Hidden;
#[fiber(0:8, 1:4, 2:2)]
struct Narrow;
#[fiber(0:2, 1:1)]
struct Out;
#[derive(Module)]
struct Net {
    conv1: Conv<Atoms, Hidden>,
    norm: Norm<Hidden>,
    linear: Linear<Hidden, Narrow>,
    conv2: Conv<Narrow, Out>,
}

impl Forward for Net {
    type In = Atoms;
    type Out = Out;
    fn forward(&self, g: &mut GraphCtx, x: GraphFeatures<Atoms>) -> Result<GraphFeatures<Out>> {
        let h = self.conv1.apply(g, &x)?;
        let h = self.norm.apply(g, &h)?;
        let h = self.linear.apply(g, &h)?;
        self.conv2.apply(g, &h)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut net = Net::new(&mut rng)?.compile(Neighbors::knn(8))?;
    let x = Features::<Atoms>::from_fn(64, |_, _, _, _| rng.gen_range(-1.0..1.0));
    let y: Features<Out> = net.forward(&Cloud::new(random_vectors(&mut rng, 64, 2.0)), &x)?;
    let report = assert_module_equivariant(&mut net, &mut rng, 64, 1e-4)?;
    println!("{} nodes of {}; {report}", y.nodes(), Out::spec());
    Ok(())
}
