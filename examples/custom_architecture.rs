//! A small custom equivariant network declared with `#[fiber]` types and se3's graph layers:
//! `Conv<Atoms, Hidden>` -> `Norm<Hidden>` -> `Linear<Hidden, Narrow>` -> `Conv<Narrow, Out>`
//! on the 8 nearest neighbours of every point, compiled once to a luminal graph and run on
//! random points. It prints the outputs' equivariance error: the network is run again on the
//! points rotated and translated, and its degree-1 output is compared with the rotated
//! original output (degree 0 must not change).
//!
//! Run with `cargo run --release --example custom_architecture`.

use luminal::prelude::{symbolic::Expression, *};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3::exec::{InputKind, Session};
use se3::layers::{
    Conv, ConvOptions, EdgeBasis, EdgeGraph, GraphFeatures, Norm, NormActivation, NormScale, Pool,
};
use se3::ops::{neighbors, NeighborSpec};
use se3::prelude::*;
use se3::so3::wigner_d;
use se3::testing::{random_rotation, random_vector, rel_error, rotate_rows};

/// Per-point input: 4 scalar channels.
#[fiber(0:4)]
struct Atoms;

/// Hidden features: scalars, vectors and degree-2 tensors.
#[fiber(0:16, 1:8, 2:4)]
struct Hidden;

/// The same degrees, fewer channels.
#[fiber(0:8, 1:4, 2:2)]
struct Narrow;

/// Output: 2 invariant scalars and one vector per point.
#[fiber(0:2, 1:1)]
struct Out;

const K: usize = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = StdRng::seed_from_u64(42);
    let conv1 = Conv::<Atoms, Hidden>::new(ConvOptions::default(), &mut rng)?;
    let norm = Norm::<Hidden>::new(NormScale::PerChannel, NormActivation::Gelu);
    let linear = Linear::<Hidden, Narrow>::new(&mut rng);
    let conv2 = Conv::<Narrow, Out>::new(
        ConvOptions {
            pool: Pool::Mean,
            ..ConvOptions::default()
        },
        &mut rng,
    )?;

    // The graph: points -> kNN edges -> kernel basis -> layers. Every connection is typed:
    // `conv2.build(.., &h, ..)` only compiles if `h` is `GraphFeatures<Narrow>`.
    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let x = GraphFeatures::<Atoms>::input(&mut s, "x");
    let nb = neighbors::<_, K>(coords, None, NeighborSpec::default());
    s.derive_dim('e', Expression::from('n') * K);
    let edges = EdgeGraph::from_neighbors(coords, &nb, None);
    let basis = EdgeBasis::new(&mut s, "", &edges, 2)?;
    let h = conv1.build(&mut s, "conv1.", &x, &edges, &basis)?;
    let h = norm.build(&mut s, "norm.", &h)?;
    let h = linear.build(&mut s, "linear.", &h)?;
    let y = conv2.build(&mut s, "conv2.", &h, &edges, &basis)?;
    y.output(&mut s, "y");
    s.compile();

    let n = 64;
    let points: Vec<[f64; 3]> = (0..n)
        .map(|_| {
            let v = random_vector(&mut rng, 2.0);
            [v.x, v.y, v.z]
        })
        .collect();
    let feats: Vec<f32> = (0..n * 4).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut run = |pts: &[[f64; 3]]| -> Result<(Vec<f64>, Vec<f64>), se3::Error> {
        let flat = pts.iter().flatten().map(|&v| v as f32).collect();
        s.set("coords", flat, &[n, 3])?;
        s.set("x.0", feats.clone(), &[n, 4, 1])?;
        s.run()?;
        let get = |k: &str| -> Result<Vec<f64>, se3::Error> {
            Ok(s.get(k)?.data.iter().map(|&v| f64::from(v)).collect())
        };
        Ok((get("y.0")?, get("y.1")?))
    };
    let (s0, v0) = run(&points)?;

    let rot = random_rotation(&mut rng);
    let shift = random_vector(&mut rng, 5.0);
    let moved: Vec<[f64; 3]> = points
        .iter()
        .map(|p| {
            let q = rot * nalgebra::Vector3::from(*p) + shift;
            [q.x, q.y, q.z]
        })
        .collect();
    let (s1, v1) = run(&moved)?;
    let v0_rotated = rotate_rows(&wigner_d(1, &rot)?, &v0);
    println!(
        "custom network {} -> {} -> {} -> {} on {n} points, {K} neighbours",
        Atoms::spec(),
        Hidden::spec(),
        Narrow::spec(),
        Out::spec()
    );
    println!(
        "degree-0 output: invariance error   {:.2e}",
        rel_error(&s1, &s0)
    );
    println!(
        "degree-1 output: equivariance error {:.2e}",
        rel_error(&v1, &v0_rotated)
    );
    println!("first point: scalars {:?}, vector {:?}", &s0[..2], &v0[..3]);
    Ok(())
}
