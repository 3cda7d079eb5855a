//! Equivariance of the compiled Equiformer graph on fresh random weights, inputs, rotations,
//! translations and node permutations (seed printed as `SE3_SEED`, replayable).

mod common;
use common::*;

use nalgebra::Matrix3;
use rand::seq::SliceRandom;
use rand::Rng;
use se3_core::basis::{equiformer_zbasis, QjPrecision};
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::equiformer::{CompiledEquiformer, Equiformer, EquiformerConfig, EquiformerForward};
use se3_models::inputs::{BoolTensor, EdgeInput, ModelInputs, NodeFeats};
use se3_models::Error;
use serde_json::json;

/// Random weights for every key of `cfg`: z-basis buffers computed, norm scales and LayerNorm
/// gains near 1, everything else U(-1, 1) / sqrt(last axis).
fn random_weights(cfg: &EquiformerConfig, r: &mut impl Rng) -> Result<StateDict, Error> {
    let mut sd = StateDict::new();
    for (k, shape) in Equiformer::expected_keys(cfg)? {
        let n: usize = shape.iter().product();
        let data: Vec<f64> = if let Some(pair) = k.strip_prefix("basis:(") {
            let mut it = pair.trim_end_matches(')').split(',');
            let a: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let b: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let z = equiformer_zbasis(a, b, QjPrecision::RoundedF32)?;
            let m = z.nrows();
            (0..m * m).map(|i| z[(i / m, i % m)]).collect()
        } else if k.contains("transforms") || k.ends_with("gamma") {
            (0..n).map(|_| 1.0 + 0.2 * r.gen_range(-1.0..1.0)).collect()
        } else {
            let fan = (*shape.last().unwrap_or(&1)).max(1) as f64;
            (0..n)
                .map(|_| r.gen_range(-1.0..1.0) / fan.sqrt())
                .collect()
        };
        sd.insert(k, Tensor::new(shape, data)?);
    }
    Ok(sd)
}

/// Random inputs for `cfg`: features (or tokens), coordinates, a mask if `masked`, a chain plus
/// random bonds as `adj_mat` when the config needs one, edge tokens or features.
fn random_inputs(
    cfg: &EquiformerConfig,
    r: &mut impl Rng,
    b: usize,
    n: usize,
    masked: bool,
) -> Result<ModelInputs, Error> {
    let shape = cfg.shape()?;
    let feats = match cfg.num_tokens {
        Some(t) => NodeFeats::Tokens {
            shape: vec![b, n],
            ids: (0..b * n).map(|_| r.gen_range(0..t as i64)).collect(),
        },
        None => NodeFeats::Dense(dense(r, vec![b, n, shape.dim_in[0]])),
    };
    let mut coors = dense(r, vec![b, n, 3]);
    coors.data.iter_mut().for_each(|v| *v *= 2.0);
    let mut inp = ModelInputs {
        feats,
        coors,
        mask: masked.then(|| BoolTensor {
            shape: vec![b, n],
            data: (0..b * n).map(|i| i % n != n - 2).collect(),
        }),
        adj_mat: None,
        edges: None,
        neighbor_mask: None,
        global_feats: None,
    };
    if cfg.attend_sparse_neighbors || cfg.num_adj_degrees_embed.is_some() {
        let mut adj = vec![false; b * n * n];
        for bi in 0..b {
            for i in 0..n - 1 {
                let j = if r.gen_bool(0.7) {
                    i + 1
                } else {
                    r.gen_range(0..n)
                };
                adj[(bi * n + i) * n + j] = true;
                adj[(bi * n + j) * n + i] = true;
            }
        }
        inp.adj_mat = Some(BoolTensor {
            shape: vec![b, n, n],
            data: adj,
        });
    }
    if cfg.has_edges() {
        inp.edges = Some(match cfg.num_edge_tokens {
            Some(t) => EdgeInput::Tokens {
                shape: vec![b, n, n],
                ids: (0..b * n * n).map(|_| r.gen_range(0..t as i64)).collect(),
            },
            None => EdgeInput::Dense(dense(r, vec![b, n, n, cfg.edge_dim.unwrap_or(0)])),
        });
    }
    Ok(inp)
}

/// `inp` with nodes reordered: new node `i` is old node `perm[i]` (in every batch element).
fn permute_nodes(inp: &ModelInputs, perm: &[usize]) -> ModelInputs {
    let (b, n) = (inp.batch(), inp.nodes());
    let rows = |data: &[f64], w: usize| -> Vec<f64> {
        let mut out = Vec::with_capacity(data.len());
        for bi in 0..b {
            for &p in perm {
                out.extend_from_slice(&data[(bi * n + p) * w..(bi * n + p + 1) * w]);
            }
        }
        out
    };
    let pairs = |w: usize, get: &dyn Fn(usize) -> f64| -> Vec<f64> {
        let mut out = Vec::new();
        for bi in 0..b {
            for &i in perm {
                for &j in perm {
                    for c in 0..w {
                        out.push(get(((bi * n + i) * n + j) * w + c));
                    }
                }
            }
        }
        out
    };
    let mut out = inp.clone();
    out.coors.data = rows(&inp.coors.data, 3);
    match (&inp.feats, &mut out.feats) {
        (NodeFeats::Dense(t), NodeFeats::Dense(o)) => o.data = rows(&t.data, t.shape[2]),
        (NodeFeats::Tokens { ids, .. }, NodeFeats::Tokens { ids: o, .. }) => {
            let f: Vec<f64> = ids.iter().map(|&v| v as f64).collect();
            *o = rows(&f, 1).iter().map(|&v| v as i64).collect();
        }
        _ => {}
    }
    if let (Some(a), Some(o)) = (&inp.adj_mat, &mut out.adj_mat) {
        o.data = pairs(1, &|i| f64::from(u8::from(a.data[i])))
            .iter()
            .map(|&v| v != 0.0)
            .collect();
    }
    match (&inp.edges, &mut out.edges) {
        (Some(EdgeInput::Tokens { ids, .. }), Some(EdgeInput::Tokens { ids: o, .. })) => {
            *o = pairs(1, &|i| ids[i] as f64)
                .iter()
                .map(|&v| v as i64)
                .collect();
        }
        (Some(EdgeInput::Dense(t)), Some(EdgeInput::Dense(o))) => {
            o.data = pairs(t.shape[3], &|i| t.data[i]);
        }
        _ => {}
    }
    out
}

/// Worst relative error of rotation + translation (and, if `permute`, of a node permutation).
fn equivariance(kwargs: serde_json::Value, masked: bool, permute: bool) -> Result<f64, Error> {
    let (mut r, seed) = se3_core::testing::rng();
    let cfg = EquiformerConfig::from_kwargs(&kwargs)?;
    let sd = random_weights(&cfg, &mut r)?;
    let mut model = CompiledEquiformer::new(
        Equiformer::from_state_dict(&cfg, &sd)?,
        EquiformerForward::default(),
    );
    let (b, n) = (2, 9);
    let inp = random_inputs(&cfg, &mut r, b, n, masked)?;
    let out = model.forward(&inp)?;
    let rot: Matrix3<f64> = random_rotation(&mut r);
    let shift = [
        r.gen_range(-3.0..3.0),
        r.gen_range(-3.0..3.0),
        r.gen_range(-3.0..3.0),
    ];
    let mut moved = inp.clone();
    moved.coors = rotate_rows(&inp.coors, &rot, shift);
    let out_moved = model.forward(&moved)?;
    let mut worst = 0.0f64;
    for (k, t) in out.iter() {
        let want = if k == "type1" {
            rotate_rows(t, &rot, [0.0; 3])
        } else {
            t.clone()
        };
        let got = out_moved
            .get(k)
            .ok_or(Error::MissingInput { name: "output" })?;
        let e = rel_error(&got.data, &want.data);
        println!("seed {seed} {kwargs}: {k} rotation+translation rel err {e:.2e}");
        worst = worst.max(e);
    }
    if permute {
        let mut perm: Vec<usize> = (0..n).collect();
        perm.shuffle(&mut r);
        let out_perm = model.forward(&permute_nodes(&inp, &perm))?;
        for (k, t) in out.iter() {
            let w = t.data.len() / (b * n);
            let mut want = Vec::with_capacity(t.data.len());
            for bi in 0..b {
                for &p in &perm {
                    want.extend_from_slice(&t.data[(bi * n + p) * w..(bi * n + p + 1) * w]);
                }
            }
            let got = out_perm
                .get(k)
                .ok_or(Error::MissingInput { name: "output" })?;
            let e = rel_error(&got.data, &want);
            println!("seed {seed} {kwargs}: {k} permutation rel err {e:.2e}");
            worst = worst.max(e);
        }
    }
    Ok(worst)
}

const TOL: f64 = 1e-4;

#[test]
fn l2_attention_is_rotation_translation_and_permutation_equivariant() -> Result<(), Error> {
    let kw = json!({"dim": [8, 4, 2], "num_degrees": 3, "heads": 2, "dim_head": [4, 2, 2],
        "depth": 2, "num_neighbors": 4, "radial_hidden_dim": 8, "reduce_dim_out": true,
        "num_linear_attn_heads": 1, "linear_attn_dim_head": 3});
    assert!(equivariance(kw.clone(), true, false)? < TOL);
    assert!(equivariance(kw, false, true)? < TOL);
    Ok(())
}

#[test]
fn mlp_attention_reversible_ff_out_is_equivariant() -> Result<(), Error> {
    let kw = json!({"dim": [8, 4], "num_degrees": 2, "heads": [2, 1], "dim_head": 4,
        "depth": 2, "num_neighbors": 5, "radial_hidden_dim": 8, "l2_dist_attention": false,
        "reversible": true, "reduce_dim_out": true, "linear_out": false,
        "single_headed_kv": true, "attn_hidden_dim_mult": 2, "num_linear_attn_heads": 2});
    assert!(equivariance(kw.clone(), true, false)? < TOL);
    assert!(equivariance(kw, false, true)? < TOL);
    Ok(())
}

#[test]
fn tokens_edges_bonds_and_adjacency_labels_are_equivariant() -> Result<(), Error> {
    let kw = json!({"dim": [8, 4, 2], "num_degrees": 3, "heads": 2, "dim_head": [2, 2, 1],
        "depth": 1, "num_neighbors": 2, "radial_hidden_dim": 8, "num_tokens": 5,
        "num_edge_tokens": 3, "edge_dim": 3, "attend_sparse_neighbors": true,
        "num_adj_degrees_embed": 2, "adj_dim": 2, "ff_include_htype_norms": true,
        "gate_attn_head_outputs": false});
    assert!(equivariance(kw.clone(), true, false)? < TOL);
    assert!(equivariance(kw, false, true)? < TOL);
    let dense_edges = json!({"dim": [6, 3], "num_degrees": 2, "heads": 1, "dim_head": 3,
        "depth": 1, "num_neighbors": 3, "radial_hidden_dim": 8, "edge_dim": 2,
        "valid_radius": 2.5, "num_positions": 9});
    // Positional embeddings tie features to node indices: no permutation check.
    assert!(equivariance(dense_edges, true, false)? < TOL);
    Ok(())
}
