//! The memory estimate of the SE(3)-Transformer (`estimate_memory`, printed by
//! `se3 infer --estimate`), made before a forward, against what the forward then measures: the
//! graph's peak of inputs and intermediates alive at once (se3-core `MemoryStats`).

mod common;

use common::*;
use rand::Rng;
use se3_models::checkpoint::Tensor;
use se3_models::inputs::{BoolTensor, ModelInputs, NodeFeats};
use se3_models::se3_transformer::{Se3TransformerConfig, Se3TransformerForward, Se3TransformerNet};
use se3_models::Error;

#[test]
fn the_estimate_made_before_a_forward_is_within_a_fifth_of_the_measured_graph_peak(
) -> Result<(), Error> {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    let cfg = Se3TransformerConfig::from_kwargs(&serde_json::json!({
        "dim": 8, "heads": 2, "dim_head": 4, "depth": 1, "num_degrees": 2, "num_neighbors": 8
    }))?;
    let fwd = Se3TransformerForward::default();
    let mut model =
        Se3TransformerNet::from_config(&cfg, &random_weights(&cfg, &mut r)?)?.compile()?;
    // a batch of three small clouds runs as one graph, which the estimate must size
    for (b, n) in [(1usize, 40usize), (1, 300), (3, 40)] {
        let estimate = model.estimate_memory(b, n)?;
        assert_eq!(estimate.neighbours, 8);
        let inputs = ModelInputs {
            feats: NodeFeats::Dense(dense(&mut r, vec![b, n, 8])),
            coors: Tensor {
                shape: vec![b, n, 3],
                data: (0..b * n * 3).map(|_| r.gen_range(-3.0..3.0)).collect(),
            },
            mask: Some(BoolTensor {
                shape: vec![b, n],
                data: vec![true; b * n],
            }),
            adj_mat: None,
            edges: None,
            neighbor_mask: None,
            global_feats: None,
        };
        model.forward_inputs(&inputs, &fwd)?;
        let measured = model.session().memory_stats().peak_intermediates as f64;
        let ratio = estimate.graph_peak as f64 / measured;
        assert!(
            (0.8..=1.25).contains(&ratio),
            "batch {b}, n = {n}: estimate {} bytes, measured {measured} (ratio {ratio:.3}, SE3_SEED={seed})",
            estimate.graph_peak
        );
    }
    assert!(matches!(
        model.estimate_memory(1, 1),
        Err(Error::EmptyGraph { nodes: 1, .. })
    ));
    Ok(())
}
