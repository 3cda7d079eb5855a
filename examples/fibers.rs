//! Declares the fibers of a small custom equivariant network and prints their structure
//! (degrees, channels, widths, dimensions), the layers that connect them and a forward
//! pass on random features. Every connection below is checked by the compiler; see
//! `tests/ui/fail/` for what happens when one is wrong.
//!
//! Run with `cargo run --release --example fibers`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3::fiber::{DegreeMarker, Group, IrrepList, IrrepVisitor, ParityMarker};
use se3::prelude::*;

/// Per-atom input: 16 scalar channels (element embedding).
#[fiber(0:16)]
pub struct Atoms;

/// Hidden features: 32 scalars, 8 vectors, 4 degree-2 channels.
#[fiber(0:32, 1:8, 2:4)]
pub struct Hidden;

/// A narrower bottleneck with the same degrees.
#[fiber(0:16, 1:4, 2:2)]
pub struct Bottleneck;

/// Scalar read-out (energy per atom).
#[fiber(0:1)]
pub struct Energy;

/// An E(3) fiber: even scalars, odd vectors (positions, forces), even degree-2 tensors.
#[fiber("0e:8, 1o:4, 2e:2")]
pub struct Polar;

/// Prints a fiber: one line per degree, then its total dimension.
fn describe<F: Fiber>() {
    let group = <F::Group as Group>::NAME;
    println!(
        "{:<10} {:<18} {group:<6} dim {}",
        F::NAME,
        F::spec().to_string(),
        F::DIM
    );
    for d in F::degrees() {
        let parity = d.parity.map_or(String::new(), |p| format!(" ({p:?})"));
        println!(
            "           degree {}{parity}: {} channels x {} components = {}",
            d.l,
            d.channels,
            d.width(),
            d.dim()
        );
    }
}

/// Lists the degree types of a fiber at compile time.
struct Names(Vec<String>);
impl IrrepVisitor for Names {
    fn visit<D: DegreeMarker, P: ParityMarker>(&mut self, _index: usize) {
        self.0.push(format!("Degree<{}>", D::L));
    }
}

fn main() -> Result<(), Error> {
    println!("fibers:");
    describe::<Atoms>();
    describe::<Hidden>();
    describe::<Bottleneck>();
    describe::<Energy>();
    describe::<Polar>();

    let mut names = Names(Vec::new());
    <Hidden as Fiber>::Irreps::for_each(&mut names);
    println!(
        "\nHidden, degree by degree at compile time: {}",
        names.0.join(", ")
    );

    // Layers: each one names its input and output fibers.
    let mut rng = StdRng::seed_from_u64(7);
    let down = Linear::<Hidden, Bottleneck>::new(&mut rng);
    let act = Activation::<Bottleneck, Silu>::new(Silu);
    let up = Linear::<Bottleneck, Hidden>::new(&mut rng);
    let block = down.then(act).then(up);

    let tp = TensorProduct::<Polar, Polar, Polar>::new()
        .path::<Degree<0>, Degree<1>, Degree<1>>()
        .path::<Degree<1>, Degree<1>, Degree<0>>()
        .path::<Degree<1>, Degree<1>, Degree<2>>()
        .path::<Degree<2>, Degree<1>, Degree<1>>();
    println!("\ntensor product Polar x Polar -> Polar, paths (l1 x l2 -> j):");
    for p in tp.paths() {
        println!("  {} x {} -> {} {:?}", p.l1, p.l2, p.j, p.parity);
    }

    // A forward pass on random features of 5 nodes.
    let h = Features::<Hidden>::from_fn(5, |_, _, _, _| rng.gen_range(-1.0..1.0));
    let out = (block.forward(&h) + h.clone())?;
    println!("\nresidual block on 5 nodes:");
    for (d, b) in out.degrees().into_iter().zip(out.blocks()) {
        println!("  degree {}: tensor {:?}", d.l, b.shape());
    }
    let energy = out.invariant::<Degree<0>>().sum();
    let vector_norms = out.norms::<Degree<1>>();
    println!("  sum of degree-0 outputs (invariant): {energy:.4}");
    println!(
        "  per-channel norms of degree 1: shape {:?}",
        vector_norms.shape()
    );
    Ok(())
}
