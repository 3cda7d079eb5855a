//! The SE(3)-Transformer's graph (se3-core layers, float32) on configurations that are not among the
//! reference folders: against the float64 oracle on random weights and inputs (one compiled graph
//! run at two node counts), rotation + translation equivariance (type-0 invariant, type-1 rotates
//! as `f -> f R^T`), and bad input giving typed errors. Fresh seed per run (`SE3_SEED` replays).

mod common;

use common::*;
use rand::Rng;
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::inputs::{BoolTensor, ModelInputs, NodeFeats};
use se3_models::se3_transformer::{
    Se3TransformerConfig, Se3TransformerForward, Se3TransformerOracle,
};
use se3_models::Error;

/// Float32 graph against the float64 oracle, relative to the largest output magnitude.
const TOL_ORACLE: f64 = 1e-4;
/// The same for EGNN trunks: their higher-degree update `n(v) = v / |v| (|v| s + b)` of
/// `v = h_i - h_j` is discontinuous at `v = 0` (the bias `b` keeps the direction's weight), so
/// float32 rounding of two nearly equal neighbour features is amplified by `b / |v|`; random
/// clouds hit such pairs now and then (seed 37: 4.6e-5 on one type-1 entry).
const TOL_ORACLE_EGNN: f64 = 1e-3;
/// Equivariance of the float32 graph.
const TOL_EQUIV: f64 = 1e-4;

/// Random inputs for `cfg`: features of its input fiber, coordinates, a mask with the last node of
/// the second graph masked, a chain adjacency, edge tokens or values, global features.
fn inputs_for(
    cfg: &Se3TransformerConfig,
    r: &mut impl Rng,
    b: usize,
    n: usize,
) -> Result<ModelInputs, Error> {
    let shape = cfg.shape()?;
    let feats = if let Some(t) = cfg.num_tokens {
        NodeFeats::Tokens {
            shape: vec![b, n],
            ids: (0..b * n).map(|_| r.gen_range(0..t as i64)).collect(),
        }
    } else if shape.fiber_in.len() == 1 {
        NodeFeats::Dense(dense(r, vec![b, n, shape.fiber_in[0].1]))
    } else {
        NodeFeats::Degrees(
            shape
                .fiber_in
                .iter()
                .map(|&(l, c)| (l, dense(r, vec![b, n, c, 2 * l + 1])))
                .collect(),
        )
    };
    let mut inp = ModelInputs {
        feats,
        coors: Tensor {
            shape: vec![b, n, 3],
            data: (0..b * n * 3).map(|_| r.gen_range(-1.5..1.5)).collect(),
        },
        mask: Some(BoolTensor {
            shape: vec![b, n],
            data: (0..b * n).map(|i| i % n != n - 1 || i / n == 0).collect(),
        }),
        adj_mat: None,
        edges: None,
        neighbor_mask: None,
        global_feats: None,
    };
    add_optional_inputs(cfg, &mut inp, r, b, n);
    Ok(inp)
}

/// Option combinations not among the reference folders (everything the graph compiles).
fn unseen_cases() -> Vec<(&'static str, serde_json::Value, serde_json::Value)> {
    vec![
        (
            "three degrees, no self attention, radius, type-1 return",
            serde_json::json!({"dim": 6, "heads": 3, "dim_head": 2, "depth": 2, "num_degrees": 3,
                "output_degrees": 2, "num_neighbors": 4, "valid_radius": 1.3, "attend_self": false}),
            serde_json::json!({"return_type": 1}),
        ),
        (
            "per-degree dims, sparse adjacency only, adj degrees 3, convs, gated norms, reduce",
            serde_json::json!({"dim": 4, "dim_in": [3, 2], "input_degrees": 2,
                "hidden_fiber_dict": {"0": 5, "1": 3, "2": 2}, "out_fiber_dict": {"0": 2, "1": 3},
                "heads": 2, "dim_head": 3, "depth": 1, "num_neighbors": 0, "attend_sparse_neighbors": true,
                "num_adj_degrees": 3, "adj_dim": 2, "reduce_dim_out": true, "num_conv_layers": 2,
                "norm_out": true, "norm_gated_scale": true}),
            serde_json::json!({}),
        ),
        (
            "one-headed kv, causal, global feats, linear keys, null kv, tokens",
            serde_json::json!({"dim": 8, "heads": 2, "dim_head": 4, "depth": 1, "num_degrees": 2,
                "output_degrees": 2, "one_headed_key_values": true, "num_tokens": 5,
                "causal": true, "global_feats_dim": 3, "linear_proj_keys": true, "use_null_kv": true}),
            serde_json::json!({}),
        ),
        (
            "reversible, tied kv, fourier-encoded float edges, single head without to_out",
            serde_json::json!({"dim": 4, "heads": 1, "dim_head": 4, "depth": 2, "num_degrees": 2,
                "output_degrees": 2, "reversible": true, "tie_key_values": true, "edge_dim": 2,
                "fourier_encode_dist": true, "rel_dist_num_fourier_features": 2, "num_neighbors": 5}),
            serde_json::json!({"return_type": 1}),
        ),
        (
            "rotary position and distance, one-headed kv, linear keys, attend_self",
            serde_json::json!({"dim": 8, "heads": 2, "dim_head": 4, "depth": 1, "num_degrees": 2,
                "output_degrees": 2, "rotary_position": true, "rotary_rel_dist": true,
                "one_headed_key_values": true, "linear_proj_keys": true, "num_positions": 12,
                "num_neighbors": 5}),
            serde_json::json!({}),
        ),
        (
            "rotary distance, tied kv, global feats, null kv",
            serde_json::json!({"dim": 6, "heads": 3, "dim_head": 4, "depth": 2, "num_degrees": 2,
                "output_degrees": 2, "rotary_rel_dist": true, "tie_key_values": true,
                "global_feats_dim": 2, "use_null_kv": true}),
            serde_json::json!({}),
        ),
        (
            "egnn with feedforward, clamp, fourier-encoded float edges, three degrees",
            serde_json::json!({"dim": 6, "depth": 2, "num_neighbors": 5, "use_egnn": true,
                "hidden_fiber_dict": {"0": 6, "1": 3, "2": 2}, "egnn_hidden_dim": 8,
                "egnn_feedforward": true, "egnn_weights_clamp_value": 0.5, "edge_dim": 3,
                "fourier_encode_dist": true, "rel_dist_num_fourier_features": 3}),
            serde_json::json!({}),
        ),
        (
            "egnn with edge tokens and radius",
            serde_json::json!({"dim": 4, "depth": 1, "num_degrees": 2, "use_egnn": true,
                "num_edge_tokens": 3, "edge_dim": 2, "valid_radius": 1.5, "num_neighbors": 4}),
            serde_json::json!({}),
        ),
        (
            "edge tokens with adjacency labels, bond subsampling",
            serde_json::json!({"dim": 4, "heads": 2, "dim_head": 2, "depth": 1, "num_degrees": 2,
                "output_degrees": 2, "num_neighbors": 2, "attend_sparse_neighbors": true,
                "max_sparse_neighbors": 1, "num_adj_degrees": 2, "adj_dim": 3,
                "num_edge_tokens": 3, "edge_dim": 2}),
            serde_json::json!({}),
        ),
    ]
}

fn worst_diff(what: &str, got: &StateDict, want: &StateDict) -> Result<f64, Error> {
    let mut worst = 0.0f64;
    for (k, t) in want.iter() {
        let g = got.get(k).ok_or(Error::MissingKey {
            key: format!("{what}: {k}"),
            expected: t.shape.clone(),
        })?;
        assert_eq!(g.shape, t.shape, "{what}: shape of {k}");
        worst = worst.max(rel_error(&g.data, &t.data));
    }
    Ok(worst)
}

#[test]
fn compiled_matches_oracle_on_unseen_configs_at_two_sizes() -> Result<(), Error> {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    for (what, kwargs, literals) in unseen_cases() {
        let cfg = Se3TransformerConfig::from_kwargs(&kwargs)?;
        let fwd = Se3TransformerForward::from_literals(&literals)?;
        let weights = random_weights(&cfg, &mut r)?;
        let oracle = Se3TransformerOracle::from_state_dict(&cfg, &weights)?;
        let mut compiled = net_session(&cfg, &weights)?;
        for n in [7, 11] {
            let inp = inputs_for(&cfg, &mut r, 2, n)?;
            let want = oracle.forward(&inp, &fwd)?;
            let got = compiled.forward_inputs(&inp, &fwd)?;
            let e = worst_diff(what, &got, &want)?;
            println!("{what}, n = {n}: compiled vs oracle max rel err {e:.3e}");
            let tol = if cfg.use_egnn {
                TOL_ORACLE_EGNN
            } else {
                TOL_ORACLE
            };
            assert!(
                e < tol,
                "{what} (n = {n}, SE3_SEED={seed}): compiled vs oracle max rel err {e:.3e}"
            );
        }
    }
    Ok(())
}

#[test]
fn compiled_is_equivariant_on_every_option_group() -> Result<(), Error> {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    let mut cases = unseen_cases();
    cases.push((
        "basic kNN with type-0 and type-1 outputs",
        serde_json::json!({"dim": 8, "heads": 2, "dim_head": 4, "depth": 2, "num_degrees": 2,
            "output_degrees": 2, "num_neighbors": 6}),
        serde_json::json!({}),
    ));
    for (what, mut kwargs, literals) in cases {
        // Learned null keys/values of degree >= 1 are fixed vectors that do not rotate: the library
        // itself is not equivariant with `use_null_kv` (the oracle test above covers its parity).
        if let Some(obj) = kwargs.as_object_mut() {
            obj.remove("use_null_kv");
        }
        let cfg = Se3TransformerConfig::from_kwargs(&kwargs)?;
        let fwd = Se3TransformerForward::from_literals(&literals)?;
        let weights = random_weights(&cfg, &mut r)?;
        let mut compiled = net_session(&cfg, &weights)?;
        let inp = inputs_for(&cfg, &mut r, 2, 10)?;
        let rot = random_rotation(&mut r);
        let shift = [
            r.gen_range(-3.0..3.0),
            r.gen_range(-3.0..3.0),
            r.gen_range(-3.0..3.0),
        ];
        let mut moved = inp.clone();
        moved.coors = rotate_rows(&inp.coors, &rot, shift);
        if let NodeFeats::Degrees(m) = &mut moved.feats {
            for (l, t) in m.iter_mut() {
                assert!(*l <= 1, "this test rotates inputs of degree <= 1 only");
                if *l == 1 {
                    *t = rotate_rows(t, &rot, [0.0; 3]);
                }
            }
        }
        let base = compiled.forward_inputs(&inp, &fwd)?;
        let after = compiled.forward_inputs(&moved, &fwd)?;
        let out_degree = if cfg.output_degrees == Some(1) {
            0
        } else {
            fwd.return_type.unwrap_or(0)
        };
        let mut checked = 0;
        for (k, t) in base.iter() {
            let l = if k == "out" {
                out_degree
            } else {
                k.trim_start_matches("type").parse().unwrap_or(usize::MAX)
            };
            let want = match l {
                0 => t.clone(),
                1 => rotate_rows(t, &rot, [0.0; 3]),
                _ => continue,
            };
            let got = after.get(k).ok_or(Error::MissingKey {
                key: k.into(),
                expected: t.shape.clone(),
            })?;
            let e = rel_error(&got.data, &want.data);
            println!("{what}: output {k} (degree {l}) equivariance error {e:.3e}");
            assert!(
                e < TOL_EQUIV,
                "{what} (SE3_SEED={seed}): output {k} (degree {l}) equivariance error {e:.3e}"
            );
            checked += 1;
        }
        assert!(checked > 0, "{what}: no degree-0/1 output checked");
    }
    Ok(())
}

#[test]
fn compiled_rejects_bad_input_with_typed_errors() -> Result<(), Error> {
    let mut r = rng(se3_core::testing::seed());
    let cfg = Se3TransformerConfig::from_kwargs(&serde_json::json!({"dim": 4, "heads": 1,
        "dim_head": 4, "depth": 1, "num_degrees": 2, "num_neighbors": 3}))?;
    let fwd = Se3TransformerForward::from_literals(&serde_json::json!({}))?;
    let weights = random_weights(&cfg, &mut r)?;
    let mut compiled = net_session(&cfg, &weights)?;
    let good = inputs_for(&cfg, &mut r, 1, 6)?;
    let mut nan = good.clone();
    nan.coors.data[4] = f64::NAN;
    assert!(matches!(
        compiled.forward_inputs(&nan, &fwd),
        Err(Error::NonFinite { .. })
    ));
    let mut wrong = good.clone();
    wrong.feats = NodeFeats::Dense(dense(&mut r, vec![1, 6, 5]));
    assert!(matches!(
        compiled.forward_inputs(&wrong, &fwd),
        Err(Error::InputShape { .. })
    ));
    let mut lonely = good.clone();
    lonely.coors = dense(&mut r, vec![1, 1, 3]);
    lonely.feats = NodeFeats::Dense(dense(&mut r, vec![1, 1, 4]));
    lonely.mask = None;
    assert!(matches!(
        compiled.forward_inputs(&lonely, &fwd),
        Err(Error::EmptyGraph { .. })
    ));
    // still usable after errors
    compiled.forward_inputs(&good, &fwd)?;
    Ok(())
}
