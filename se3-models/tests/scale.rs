//! Large clouds: the SE(3)-Transformer's grid neighbour selection against the dense ranking
//! (ties included), and the blocked forward (graph run on blocks of centres with their
//! neighbourhoods) against the unblocked forward.

mod common;

use common::*;
use rand::Rng;
use se3_models::checkpoint::Tensor;
use se3_models::inputs::{BoolTensor, ModelInputs, NodeFeats};
use se3_models::se3_transformer::graph::{select_neighbors, PairInputs, SelectionParams};
use se3_models::se3_transformer::{Se3TransformerConfig, Se3TransformerForward, Se3TransformerNet};
use se3_models::Error;

#[test]
fn grid_selection_equals_the_dense_ranking_with_ties_masks_and_radius() {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    for round in 0..4 {
        let n = r.gen_range(400..900);
        // rounds 0, 1: a coarse integer lattice (many equal distances at the cut); 2, 3: floats
        let coors: Vec<[f64; 3]> = (0..n)
            .map(|_| {
                [0, 1, 2].map(|_| {
                    if round < 2 {
                        f64::from(r.gen_range(-4..5))
                    } else {
                        r.gen_range(-5.0..5.0)
                    }
                })
            })
            .collect();
        let mask: Vec<bool> = (0..n).map(|_| r.gen_bool(0.9)).collect();
        let all_pairs = vec![true; n * n];
        let p = SelectionParams {
            num_neighbors: Some(r.gen_range(1..20)),
            valid_radius: if round % 2 == 0 { f64::INFINITY } else { 1.8 },
            causal: false,
            attend_sparse: false,
            max_sparse_neighbors: None,
            num_adj_degrees: None,
        };
        let plain = PairInputs {
            coors: &coors,
            mask: Some(&mask),
            adj: None,
            neighbor_mask: None,
            edge_feat: None,
        };
        // an all-true neighbor_mask ranks the same pairs the same way, through every pair
        let dense = PairInputs {
            neighbor_mask: Some(&all_pairs),
            ..plain
        };
        let got = select_neighbors(&p, &plain, None, 0);
        let want = select_neighbors(&p, &dense, None, 0);
        assert_eq!(got, want, "round {round}, n {n}, {p:?} (SE3_SEED={seed})");
    }
}

/// `n` points uniform in a cube at unit density, features N(0,1)-like, 10% masked.
fn cloud(r: &mut impl Rng, n: usize, dim: usize) -> ModelInputs {
    let side = (n as f64).cbrt();
    ModelInputs {
        feats: NodeFeats::Dense(dense(r, vec![1, n, dim])),
        coors: Tensor {
            shape: vec![1, n, 3],
            data: (0..n * 3).map(|_| r.gen_range(0.0..side)).collect(),
        },
        mask: Some(BoolTensor {
            shape: vec![1, n],
            data: (0..n).map(|_| r.gen_bool(0.9)).collect(),
        }),
        adj_mat: None,
        edges: None,
        neighbor_mask: None,
        global_feats: None,
    }
}

#[test]
fn blocked_forward_gives_the_outputs_of_the_unblocked_forward() -> Result<(), Error> {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    // (kwargs, message-passing layers); blocks take exactly that many hops, no margin
    for (kwargs, hops) in [
        // conv_in, a conv layer, two attention blocks, conv_out
        (
            serde_json::json!({"dim": 8, "heads": 2, "dim_head": 4, "depth": 2,
                "num_degrees": 2, "num_neighbors": 6, "num_conv_layers": 1}),
            5,
        ),
        // conv_in, two conv layers, three attention blocks, conv_out
        (
            serde_json::json!({"dim": 8, "heads": 2, "dim_head": 4, "depth": 3,
                "num_degrees": 2, "num_neighbors": 4, "num_conv_layers": 2}),
            7,
        ),
        // conv_in, one EGNN block (no conv_out: with use_egnn the library drops output_degrees)
        (
            serde_json::json!({"dim": 8, "depth": 1, "num_degrees": 2, "num_neighbors": 5,
                "use_egnn": true, "output_degrees": 2, "reduce_dim_out": true}),
            2,
        ),
        // rotary angles and a position embedding read each node's place in the whole cloud
        (
            serde_json::json!({"dim": 8, "heads": 2, "dim_head": 4, "depth": 1,
                "num_degrees": 2, "num_neighbors": 5, "rotary_position": true,
                "rotary_rel_dist": true, "num_positions": 1500}),
            3,
        ),
    ] {
        let cfg = Se3TransformerConfig::from_kwargs(&kwargs)?;
        let fwd = Se3TransformerForward::default();
        let mut model =
            Se3TransformerNet::from_config(&cfg, &random_weights(&cfg, &mut r)?)?.compile()?;
        assert_eq!(model.message_hops(), hops, "{kwargs}");
        let n = 1500;
        let inputs = cloud(&mut r, n, 8);
        let want = model.forward_inputs(&inputs, &fwd)?;
        let (got, stats) = model.forward_blocked(&inputs, &fwd, 150)?;
        assert_eq!(stats.blocks, 10);
        assert!(
            stats.max_nodes < n,
            "a block's neighbourhood is the whole cloud: {stats:?}"
        );
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (name, w) in want.iter() {
            let g = got
                .get(name)
                .ok_or(Error::MissingInput { name: "output" })?;
            assert_eq!(g.shape, w.shape);
            let scale = w.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
            let err = g
                .data
                .iter()
                .zip(&w.data)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            eprintln!(
                "{hops} hops, {name}: blocked vs unblocked {:.2e} of the output scale, {stats:?}",
                err / scale
            );
            assert!(
                err / scale < 1e-5,
                "{name}: blocked differs by {err:.3e} (scale {scale:.3e}, {kwargs}, SE3_SEED={seed})"
            );
        }
    }
    Ok(())
}
