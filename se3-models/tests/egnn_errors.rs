//! Typed errors of the EGNN models: configs egnn-pytorch rejects (or cannot run), checkpoints
//! that are not the model's, and inputs that do not fit the config.

mod common;
use common::*;

use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::egnn::{CompiledEgnn, Egnn, EgnnConfig, EgnnNetworkConfig};
use se3_models::inputs::{EdgeInput, ModelInputs, NodeFeats};
use se3_models::model_file::ModelFile;
use se3_models::Error;
use serde_json::json;

fn load(name: &str) -> Result<(ModelFile, StateDict, ModelInputs), Error> {
    let file = ModelFile::load(dir(name).join("config.json"))?;
    let weights = StateDict::load(dir(name).join("weights.safetensors"))?;
    let inputs = ModelInputs::load(
        dir(name).join("inputs.safetensors"),
        &file.forward_kwargs.tensors,
    )?;
    Ok((file, weights, inputs))
}

fn run(name: &str, edit: impl FnOnce(&mut ModelFile, &mut ModelInputs)) -> Result<(), Error> {
    run_with(name, |f, _, i| edit(f, i))
}

fn run_with(
    name: &str,
    edit: impl FnOnce(&mut ModelFile, &mut StateDict, &mut ModelInputs),
) -> Result<(), Error> {
    let (mut file, mut weights, mut inputs) = load(name)?;
    edit(&mut file, &mut weights, &mut inputs);
    CompiledEgnn::new(Egnn::from_parts(&file, &weights)?).forward(&inputs)?;
    Ok(())
}

#[test]
fn configs_the_library_rejects_are_typed_errors() {
    let bad_layer = [
        json!({"dim": 8, "m_pool_method": "max"}),
        json!({"dim": 8, "update_feats": false, "update_coors": false}),
        json!({"dim": 8, "no_such_option": 1}),
        json!({"dim": 0}),
    ];
    for kw in bad_layer {
        let e = EgnnConfig::from_kwargs(&kw);
        assert!(
            matches!(
                e,
                Err(Error::InvalidConfig { .. } | Error::UnknownKwarg { .. })
            ),
            "{kw}: {e:?}"
        );
    }
    let bad_network = [
        json!({"depth": 1, "dim": 8, "norm_feats": true}),
        json!({"depth": 1, "dim": 8, "num_adj_degrees": 0}),
        json!({"depth": 0, "dim": 8}),
        json!({"depth": 1, "dim": 8, "global_linear_attn_every": 1, "num_global_tokens": 0}),
        json!({"depth": 1, "dim": 8, "heads": 2}),
    ];
    for kw in bad_network {
        let e = EgnnNetworkConfig::from_kwargs(&kw);
        assert!(
            matches!(
                e,
                Err(Error::InvalidConfig { .. } | Error::UnknownKwarg { .. })
            ),
            "{kw}: {e:?}"
        );
    }
}

#[test]
fn a_checkpoint_of_another_model_is_refused() -> Result<(), Error> {
    let (file, mut weights, _) = load("egnn_net_edges")?;
    let mut extra = weights.clone();
    extra.insert("layers.0.1.stray", Tensor::zeros(&[2]));
    assert!(matches!(
        Egnn::from_parts(&file, &extra),
        Err(Error::UnexpectedKey { .. })
    ));
    weights.remove("layers.1.1.coors_norm.scale");
    let e = Egnn::from_parts(&file, &weights);
    assert!(
        matches!(
            e,
            Err(Error::Core(se3_core::Error::MissingKey { .. }) | Error::MissingKey { .. })
        ),
        "{e:?}"
    );
    Ok(())
}

#[test]
fn more_neighbours_than_nodes_is_refused() {
    let e = run("egnn_layer_coors_only", |f, _| {
        f.constructor_kwargs["num_nearest_neighbors"] = json!(13);
    });
    assert!(matches!(e, Err(Error::InvalidConfig { .. })), "{e:?}");
}

#[test]
fn missing_adjacency_and_edges_are_refused() {
    let e = run("egnn_net_adj_global", |_, i| i.adj_mat = None);
    assert!(
        matches!(e, Err(Error::MissingInput { name: "adj_mat" })),
        "{e:?}"
    );
    let e = run("egnn_layer_feats_only", |_, i| i.edges = None);
    assert!(
        matches!(e, Err(Error::MissingInput { name: "edges" })),
        "{e:?}"
    );
}

#[test]
fn tokens_out_of_range_and_too_many_nodes_are_refused() {
    let e = run("egnn_net_edges", |_, i| {
        if let NodeFeats::Tokens { ids, .. } = &mut i.feats {
            ids[3] = 10;
        }
    });
    assert!(
        matches!(e, Err(Error::IndexOutOfRange { name: "feats", .. })),
        "{e:?}"
    );
    let e = run("egnn_net_edges", |_, i| {
        if let Some(EdgeInput::Tokens { ids, .. }) = &mut i.edges {
            ids[5] = -1;
        }
    });
    assert!(
        matches!(e, Err(Error::IndexOutOfRange { name: "edges", .. })),
        "{e:?}"
    );
    // 12 nodes, 11 positions (the library asserts n <= num_positions).
    let e = run_with("egnn_net_edges", |f, w, _| {
        f.constructor_kwargs["num_positions"] = json!(11);
        w.insert("pos_emb.weight", Tensor::zeros(&[11, 16]));
    });
    assert!(
        matches!(e, Err(Error::InputShape { name: "feats", .. })),
        "{e:?}"
    );
}

#[test]
fn features_of_the_wrong_kind_are_refused() {
    // Dense features where the network embeds tokens, and tokens where a layer wants floats.
    let e = run("egnn_net_edges", |_, i| {
        i.feats = NodeFeats::Dense(dense(&mut rng(1), vec![2, 12, 16]));
    });
    assert!(
        matches!(e, Err(Error::InputShape { name: "feats", .. })),
        "{e:?}"
    );
    let e = run("egnn_layer_coors_only", |_, i| {
        i.feats = NodeFeats::Dense(dense(&mut rng(1), vec![2, 12, 15]));
    });
    assert!(
        matches!(e, Err(Error::InputShape { name: "feats", .. })),
        "{e:?}"
    );
}

#[test]
fn expected_keys_are_exactly_the_reference_checkpoints() -> Result<(), Error> {
    use se3_models::egnn::EgnnKind;
    let mut dirs: Vec<_> = [
        "egnn_layer_coors_only",
        "egnn_layer_feats_only",
        "egnn_net_adj_global",
        "egnn_net_edges",
    ]
    .iter()
    .map(|n| dir(n))
    .collect();
    let extra = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/extra_reference/egnn");
    for e in std::fs::read_dir(&extra).map_err(|source| Error::Io {
        path: extra.display().to_string(),
        source,
    })? {
        let p = e
            .map_err(|source| Error::Io {
                path: extra.display().to_string(),
                source,
            })?
            .path();
        if p.join("weights.safetensors").exists() {
            dirs.push(p);
        }
    }
    for d in dirs {
        let file = ModelFile::load(d.join("config.json"))?;
        let weights = StateDict::load(d.join("weights.safetensors"))?;
        weights.check_keys(&Egnn::expected_keys(&EgnnKind::from_file(&file)?))?;
    }
    Ok(())
}
