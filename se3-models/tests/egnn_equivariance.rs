//! E(n) equivariance of the compiled EGNN models on fresh random draws: for every egnn-pytorch
//! reference config, new random features and coordinates, then a random rotation, a random
//! reflection (rotation times a mirror) and a random translation of the coordinates, and a random
//! permutation of the nodes. Features must be invariant, coordinates must move as
//! `x -> Q x + t`, and permuting the nodes (with mask, adjacency and edges) must permute the outputs
//! (not checked with learned position embeddings, which depend on the node order by design).

mod common;
use common::*;

use nalgebra::Matrix3;
use rand::seq::SliceRandom;
use rand::Rng;

use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::egnn::{CompiledEgnn, Egnn};
use se3_models::inputs::{BoolTensor, EdgeInput, ModelInputs, NodeFeats};
use se3_models::model_file::ModelFile;
use se3_models::Error;

/// Largest relative error allowed (float32 graphs; observed ~3e-7).
const TOL: f64 = 2e-5;

const MODELS: &[&str] = &[
    "egnn_layer_coors_only",
    "egnn_layer_feats_only",
    "egnn_net_adj_global",
    "egnn_net_edges",
];

fn load(name: &str) -> Result<(CompiledEgnn, ModelInputs, ModelFile), Error> {
    let file = ModelFile::load(dir(name).join("config.json"))?;
    let weights = StateDict::load(dir(name).join("weights.safetensors"))?;
    let inputs = ModelInputs::load(
        dir(name).join("inputs.safetensors"),
        &file.forward_kwargs.tensors,
    )?;
    Ok((
        CompiledEgnn::new(Egnn::from_parts(&file, &weights)?),
        inputs,
        file,
    ))
}

/// Fresh random features (or tokens within the reference's range), coordinates and dense edges.
fn redraw(inp: &ModelInputs, r: &mut impl Rng) -> ModelInputs {
    let mut out = inp.clone();
    out.coors = Tensor {
        shape: inp.coors.shape.clone(),
        data: (0..inp.coors.data.len())
            .map(|_| 1.5 * r.gen_range(-1.0..1.0))
            .collect(),
    };
    out.feats = match &inp.feats {
        NodeFeats::Dense(t) => NodeFeats::Dense(dense(r, t.shape.clone())),
        NodeFeats::Tokens { shape, ids } => {
            let bound = ids.iter().copied().max().unwrap_or(0) + 1;
            NodeFeats::Tokens {
                shape: shape.clone(),
                ids: ids.iter().map(|_| r.gen_range(0..bound)).collect(),
            }
        }
        other => other.clone(),
    };
    if let Some(EdgeInput::Dense(t)) = &inp.edges {
        out.edges = Some(EdgeInput::Dense(dense(r, t.shape.clone())));
    }
    out
}

fn outputs(model: &mut CompiledEgnn, inp: &ModelInputs) -> Result<(Tensor, Tensor), Error> {
    let out = model.forward(inp)?;
    let get = |k: &str| {
        out.get(k).cloned().ok_or(Error::MissingKey {
            key: k.into(),
            expected: vec![],
        })
    };
    Ok((get("feats")?, get("coors")?))
}

fn check_moved(name: &str, what: &str, q: &Matrix3<f64>, seed: u64) -> Result<(), Error> {
    let (mut model, reference, _) = load(name)?;
    let mut r = rng(seed);
    let inp = redraw(&reference, &mut r);
    let t = [
        r.gen_range(-3.0..3.0),
        r.gen_range(-3.0..3.0),
        r.gen_range(-3.0..3.0),
    ];
    let (f0, x0) = outputs(&mut model, &inp)?;
    let mut moved = inp.clone();
    moved.coors = rotate_rows(&inp.coors, q, t);
    let (f1, x1) = outputs(&mut model, &moved)?;
    let want_x = rotate_rows(&x0, q, t);
    let ef = rel_error(&f1.data, &f0.data);
    let ex = rel_error(&x1.data, &want_x.data);
    println!("{name} {what} (seed {seed}): feats {ef:.2e}, coors {ex:.2e}");
    assert!(
        ef <= TOL,
        "{name} {what} seed {seed}: feats not invariant ({ef:.2e})"
    );
    assert!(
        ex <= TOL,
        "{name} {what} seed {seed}: coors not equivariant ({ex:.2e})"
    );
    Ok(())
}

fn seed() -> u64 {
    rand::random()
}

#[test]
fn egnn_outputs_follow_rotations_and_translations() -> Result<(), Error> {
    for name in MODELS {
        let s = seed();
        let q = random_rotation(&mut rng(s ^ 0x5eed));
        check_moved(name, "rotation + translation", &q, s)?;
    }
    Ok(())
}

#[test]
fn egnn_outputs_follow_reflections() -> Result<(), Error> {
    for name in MODELS {
        let s = seed();
        let mirror = Matrix3::from_diagonal(&nalgebra::Vector3::new(1.0, 1.0, -1.0));
        let q = random_rotation(&mut rng(s ^ 0x5eed)) * mirror;
        assert!(q.determinant() < 0.0);
        check_moved(name, "reflection + translation", &q, s)?;
    }
    Ok(())
}

/// Rows of a `(b, n, ...)` row-major tensor with the node axis permuted: new node `i` is old `p[i]`.
fn permute_nodes<T: Copy>(data: &[T], b: usize, n: usize, p: &[usize]) -> Vec<T> {
    let w = data.len() / (b * n);
    let mut out = Vec::with_capacity(data.len());
    for bi in 0..b {
        for &i in p {
            out.extend_from_slice(&data[(bi * n + i) * w..(bi * n + i + 1) * w]);
        }
    }
    out
}

/// A `(b, n, n, ...)` pair tensor (or `(n, n)` when `b` is 1 and shared) with both node axes permuted.
fn permute_pairs<T: Copy>(data: &[T], b: usize, n: usize, p: &[usize]) -> Vec<T> {
    let w = data.len() / (b * n * n);
    let mut out = Vec::with_capacity(data.len());
    for bi in 0..b {
        for &i in p {
            for &j in p {
                let at = ((bi * n + i) * n + j) * w;
                out.extend_from_slice(&data[at..at + w]);
            }
        }
    }
    out
}

#[test]
fn egnn_outputs_follow_node_permutations() -> Result<(), Error> {
    for name in MODELS {
        let (mut model, reference, file) = load(name)?;
        if file.constructor_kwargs.get("num_positions").is_some() {
            continue;
        }
        let s = seed();
        let mut r = rng(s);
        let inp = redraw(&reference, &mut r);
        let (b, n) = (inp.batch(), inp.nodes());
        let mut p: Vec<usize> = (0..n).collect();
        p.shuffle(&mut r);
        let mut moved = inp.clone();
        moved.coors.data = permute_nodes(&inp.coors.data, b, n, &p);
        moved.feats = match &inp.feats {
            NodeFeats::Dense(t) => NodeFeats::Dense(Tensor {
                shape: t.shape.clone(),
                data: permute_nodes(&t.data, b, n, &p),
            }),
            NodeFeats::Tokens { shape, ids } => NodeFeats::Tokens {
                shape: shape.clone(),
                ids: permute_nodes(ids, b, n, &p),
            },
            other => other.clone(),
        };
        moved.mask = inp.mask.as_ref().map(|m| BoolTensor {
            shape: m.shape.clone(),
            data: permute_nodes(&m.data, b, n, &p),
        });
        moved.adj_mat = inp.adj_mat.as_ref().map(|a| {
            let nb = if a.shape.len() == 2 { 1 } else { b };
            BoolTensor {
                shape: a.shape.clone(),
                data: permute_pairs(&a.data, nb, n, &p),
            }
        });
        moved.edges = match &inp.edges {
            Some(EdgeInput::Dense(t)) => Some(EdgeInput::Dense(Tensor {
                shape: t.shape.clone(),
                data: permute_pairs(&t.data, b, n, &p),
            })),
            Some(EdgeInput::Tokens { shape, ids }) => Some(EdgeInput::Tokens {
                shape: shape.clone(),
                ids: permute_pairs(ids, b, n, &p),
            }),
            None => None,
        };
        let (f0, x0) = outputs(&mut model, &inp)?;
        let (f1, x1) = outputs(&mut model, &moved)?;
        let ef = rel_error(&f1.data, &permute_nodes(&f0.data, b, n, &p));
        let ex = rel_error(&x1.data, &permute_nodes(&x0.data, b, n, &p));
        println!("{name} permutation (seed {s}): feats {ef:.2e}, coors {ex:.2e}");
        assert!(ef <= TOL, "{name} seed {s}: feats not permuted ({ef:.2e})");
        assert!(ex <= TOL, "{name} seed {s}: coors not permuted ({ex:.2e})");
    }
    Ok(())
}
