//! An SE(3)-Transformer assembled from typed layers: the fibers are `#[fiber]` types, the model
//! is `conv_in: Conv<Atoms, Hidden>` -> 2 x (`AttentionBlock<Hidden>`,
//! `FeedForwardBlock<Hidden>`) -> `conv_out: Conv<Hidden, Readout>`, built as one luminal
//! graph. It runs on a batch of random point clouds, then on the same clouds rotated and
//! translated, and prints the equivariance error of the outputs (degree 0 must not change,
//! degree 1 must rotate with the points).
//!
//! With a reference folder as argument (`config.json` + `weights.safetensors` of a
//! se3-transformer-pytorch `SE3Transformer` with these fibers, e.g.
//! `tests/reference/models/se3t_basic` after changing `Readout` to `0:8`), the weights are
//! loaded from the checkpoint instead of drawn at random.
//!
//! Run with `cargo run --release --example se3_transformer_typed [-- <reference folder>]`.

use luminal::prelude::*;
use nalgebra::Vector3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3::exec::{InputKind, Session};
use se3::layers::{AttentionBlock, Conv, EdgeBasis, EdgeGraph, FeedForwardBlock, GraphFeatures};
use se3::models::checkpoint::StateDict;
use se3::models::model_file::ModelFile;
use se3::models::se3_transformer::{
    knn_edges, Se3TransformerConfig, Se3TransformerOptions, TypedSe3Transformer,
};
use se3::prelude::*;
use se3::so3::wigner_d;
use se3::testing::{random_rotation, random_vector, rel_error, rotate_rows};

/// Per-point input: 8 scalar channels (`feats (b, n, 8)`).
#[fiber(0:8)]
struct Atoms;

/// The trunk: 8 scalars and 8 vectors per point (`dim = 8, num_degrees = 2`).
#[fiber(0:8, 1:8)]
struct Hidden;

/// Output: 4 invariants and 2 vectors per point.
#[fiber(0:4, 1:2)]
struct Readout;

/// The typed graph of the model, spelled out (`TypedSe3Transformer::build` does the same):
/// every `build` call only compiles if the features it is given have the layer's input fiber,
/// and its weights are named as the checkpoint keys under the given prefix.
fn assemble(
    s: &mut Session,
    x: &GraphFeatures<Atoms>,
    edges: &EdgeGraph,
    basis: &EdgeBasis,
    model: &TypedSe3Transformer<Atoms, Hidden, Readout>,
) -> Result<GraphFeatures<Readout>, se3::models::Error> {
    if model.options().reversible {
        // the two-stream reversible trunk is written out in `TypedSe3Transformer::build`
        return model.build(s, x, edges, basis);
    }
    // the layers as typed se3-core layers: `build` takes only features of their input fiber
    let conv_in: Conv<Atoms, Hidden> = model.conv_in()?;
    let mut h: GraphFeatures<Hidden> = conv_in.build(s, "conv_in.", x, edges, basis)?;
    for (i, (norm, conv)) in model.convs()?.iter().enumerate() {
        h = norm.build(s, &format!("convs.{i}.1."), &h)?;
        h = conv.build(s, &format!("convs.{i}.0."), &h, edges, basis)?;
    }
    let blocks: Vec<(AttentionBlock<Hidden>, FeedForwardBlock<Hidden>)> = model.blocks()?;
    for (i, (attention, feed_forward)) in blocks.iter().enumerate() {
        h = attention.build(s, &format!("net.blocks.{i}.0."), &h, edges, basis)?;
        h = feed_forward.build(s, &format!("net.blocks.{i}.1."), &h)?;
    }
    let conv_out: Conv<Hidden, Readout> =
        model.conv_out()?.ok_or(se3::models::Error::NotTyped {
            option: "output_degrees = None",
        })?;
    let y = conv_out.build(s, "conv_out.", &h, edges, basis)?;
    Ok(match model.norm()? {
        Some(norm) => norm.build(s, "norm.", &y)?,
        None => y,
    })
}

/// Runs the session on `batch` stacked clouds: coordinates, the library's kNN edges
/// (computed on the host) and the input features in; one `Vec` per output degree out.
fn run(
    s: &mut Session,
    options: &Se3TransformerOptions,
    coords: &[[f64; 3]],
    batch: usize,
    x: &Features<Atoms>,
) -> Result<Vec<Vec<f64>>, Box<dyn std::error::Error>> {
    let rows = coords.len();
    // all pairs (num_neighbors = None): every other node of the cloud
    let k = options
        .num_neighbors
        .unwrap_or((coords.len() / batch.max(1)).saturating_sub(1));
    let (src, dst) = knn_edges(coords, batch, None, k, options.valid_radius, options.causal);
    s.set_dim('k', k);
    let e = src.len();
    s.set(
        "coords",
        coords.iter().flatten().map(|&v| v as f32).collect(),
        &[rows, 3],
    )?;
    s.set("edges.src", src, &[e])?;
    s.set("edges.dst", dst, &[e])?;
    let b = x.degree::<Degree<0>>();
    s.set("x.0", b.data().to_vec(), &b.shape())?;
    s.run()?;
    Readout::degrees()
        .into_iter()
        .map(|d| {
            let y = s.get(&format!("y.{}", d.l))?;
            Ok(y.data.iter().map(|&v| f64::from(v)).collect())
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = StdRng::seed_from_u64(7);
    // the library's defaults but for the sizes (`Se3TransformerOptions` has every option of
    // se3-transformer-pytorch's constructor that the typed assembly runs)
    let options = Se3TransformerOptions {
        depth: 2,
        heads: 2,
        dim_head: 4,
        num_neighbors: Some(6),
        ..Se3TransformerOptions::default()
    };
    let model = match std::env::args().nth(1) {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            let file = ModelFile::load(dir.join("config.json"))?;
            let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
            let options = TypedSe3Transformer::<Atoms, Hidden, Readout>::options_of(&cfg)?;
            let sd = StateDict::load(dir.join("weights.safetensors"))?;
            println!("loaded {}", dir.display());
            TypedSe3Transformer::<Atoms, Hidden, Readout>::load(&sd, options)?
        }
        None => TypedSe3Transformer::<Atoms, Hidden, Readout>::new(options, &mut rng)?,
    };
    let options = *model.options();

    // One graph: coordinates and kNN edges in, kernel basis from the coordinates, the layers.
    let mut s = Session::new();
    let coords_in = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let x_in = GraphFeatures::<Atoms>::input(&mut s, "x");
    // `k` neighbour slots per node, set with the edges each run
    let edges = EdgeGraph::input(&mut s, "edges", coords_in).grouped('k');
    let basis = EdgeBasis::new(&mut s, "", &edges, Hidden::max_degree())?;
    let y = assemble(&mut s, &x_in, &edges, &basis, &model)?;
    y.output(&mut s, "y");
    s.compile();

    let (batch, n) = (2, 24);
    let coords: Vec<[f64; 3]> = (0..batch * n)
        .map(|_| {
            let v = random_vector(&mut rng, 2.0);
            [v.x, v.y, v.z]
        })
        .collect();
    let x = Features::<Atoms>::from_fn(batch * n, |_, _, _, _| rng.gen_range(-1.0..1.0));
    let y = run(&mut s, &options, &coords, batch, &x)?;

    let rot = random_rotation(&mut rng);
    let shift = random_vector(&mut rng, 5.0);
    let moved: Vec<[f64; 3]> = coords
        .iter()
        .map(|p| {
            let q = rot * Vector3::from(*p) + shift;
            [q.x, q.y, q.z]
        })
        .collect();
    // `Atoms` holds scalars only, so the input features do not change under the rotation
    let y_moved = run(&mut s, &options, &moved, batch, &x)?;

    for (d, (a, b)) in Readout::degrees().into_iter().zip(y.iter().zip(&y_moved)) {
        let want = rotate_rows(&wigner_d(d.l, &rot)?, a);
        println!(
            "degree {} output ({} x {} channels): equivariance error {:.2e}",
            d.l,
            batch * n,
            d.channels,
            rel_error(b, &want)
        );
    }
    Ok(())
}
