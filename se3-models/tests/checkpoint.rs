//! Checkpoint key lists, typed load errors, config errors and input validation.

mod common;

use std::collections::BTreeSet;

use common::*;
use se3_models::checkpoint::{SaveDtype, StateDict, Tensor};
use se3_models::inputs::{BoolTensor, ModelInputs, NodeFeats};
use se3_models::model_file::ModelFile;
use se3_models::se3_transformer::{Se3TransformerConfig, Se3TransformerOracle};
use se3_models::tfn::{TfnStack, TfnStackConfig};
use se3_models::Error;

#[test]
fn expected_keys_equal_every_reference_state_dict() -> Result<(), Error> {
    let names = se3t_reference_names();
    assert!(names.len() >= 18, "found only {names:?}");
    for name in names.iter().map(String::as_str).chain(["tfn_stack"]) {
        let file = ModelFile::load(dir(name).join("config.json"))?;
        let expected = if file.is_tfn_stack() {
            TfnStack::expected_keys(&TfnStackConfig::from_kwargs(&file.constructor_kwargs)?)?
        } else {
            Se3TransformerOracle::expected_keys(&Se3TransformerConfig::from_kwargs(
                &file.constructor_kwargs,
            )?)?
        };
        let sd = StateDict::load(dir(name).join("weights.safetensors"))?;
        let want: BTreeSet<(String, Vec<usize>)> = sd
            .iter()
            .map(|(k, t)| (k.to_string(), t.shape.clone()))
            .collect();
        let got: BTreeSet<(String, Vec<usize>)> = expected.iter().cloned().collect();
        assert_eq!(got.len(), expected.len(), "{name}: duplicate expected keys");
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: keys in the checkpoint but not expected: {missing:?}; expected but absent: {extra:?}"
        );
        sd.check_keys(&expected)?;
    }
    Ok(())
}

#[test]
fn missing_key_is_reported_with_expected_shape() -> Result<(), Error> {
    let l = load_se3t("se3t_basic")?;
    let mut sd = l.weights.clone();
    let key = "conv_in.self_interact.weights.0";
    sd.remove(key);
    let err = Se3TransformerOracle::from_state_dict(&l.cfg, &sd).err();
    assert!(
        matches!(&err, Some(Error::MissingKey { key: k, expected }) if k == key && expected == &vec![8, 8]),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn wrong_shape_is_reported() -> Result<(), Error> {
    let l = load_se3t("se3t_basic")?;
    let mut sd = l.weights.clone();
    sd.insert("net.blocks.0.0.attn.to_q.weights.1", Tensor::zeros(&[8, 7]));
    let err = Se3TransformerOracle::from_state_dict(&l.cfg, &sd).err();
    assert!(
        matches!(&err, Some(Error::WrongShape { expected, found, .. }) if expected == &vec![8, 8] && found == &vec![8, 7]),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn unexpected_key_is_reported() -> Result<(), Error> {
    let l = load_se3t("se3t_basic")?;
    let mut sd = l.weights.clone();
    sd.insert("net.blocks.9.0.attn.to_q.weights.0", Tensor::zeros(&[8, 8]));
    let err = Se3TransformerOracle::from_state_dict(&l.cfg, &sd).err();
    assert!(
        matches!(&err, Some(Error::UnexpectedKey { key, .. }) if key.starts_with("net.blocks.9")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn integer_tensor_in_checkpoint_is_a_dtype_error() -> Result<(), Error> {
    let data: Vec<u8> = [1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![3], &data)
        .map_err(|source| Error::Safetensors {
            path: "test".into(),
            source,
        })?;
    let bytes = safetensors::tensor::serialize([("w", view)], &None).map_err(|source| {
        Error::Safetensors {
            path: "test".into(),
            source,
        }
    })?;
    let err = StateDict::from_bytes(&bytes).err();
    assert!(
        matches!(&err, Some(Error::WrongDtype { key, .. }) if key == "w"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn checkpoint_round_trip_gives_identical_outputs() -> Result<(), Error> {
    let l = load_se3t("se3t_tokens_out2")?;
    let path = std::env::temp_dir().join(format!(
        "se3_models_roundtrip_{}.safetensors",
        std::process::id()
    ));
    l.weights.save(&path, SaveDtype::F32)?;
    let back = StateDict::load(&path)?;
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        back, l.weights,
        "float32 weights must survive a float32 round trip exactly"
    );
    let a =
        Se3TransformerOracle::from_state_dict(&l.cfg, &l.weights)?.forward(&l.inputs, &l.fwd)?;
    let b = Se3TransformerOracle::from_state_dict(&l.cfg, &back)?.forward(&l.inputs, &l.fwd)?;
    assert_eq!(a, b);
    // half precision loads too (values rounded)
    let half = StateDict::from_bytes(&l.weights.to_bytes(SaveDtype::F16)?)?;
    Se3TransformerOracle::from_state_dict(&l.cfg, &half)?;
    Ok(())
}

#[test]
fn unknown_kwarg_is_rejected() {
    let err = Se3TransformerConfig::from_kwargs(
        &serde_json::json!({"dim": 8, "num_degrees": 2, "dim_heads": 4}),
    )
    .err();
    assert!(
        matches!(&err, Some(Error::UnknownKwarg { name, .. }) if name == "dim_heads"),
        "{err:?}"
    );
    let err = TfnStackConfig::from_kwargs(
        &serde_json::json!({"fibers": [{"0": 2}, {"0": 2}], "pool": false}),
    )
    .err();
    assert!(
        matches!(&err, Some(Error::UnknownKwarg { name, .. }) if name == "pool"),
        "{err:?}"
    );
    let err = se3_models::se3_transformer::Se3TransformerForward::from_literals(
        &serde_json::json!({"return_type": 0, "mask": 1}),
    )
    .err();
    assert!(
        matches!(&err, Some(Error::UnknownKwarg { name, .. }) if name == "mask"),
        "{err:?}"
    );
}

#[test]
fn impossible_configs_name_their_field() {
    let cases = [
        (
            serde_json::json!({"dim": 8, "num_degrees": 2, "linear_proj_keys": true, "tie_key_values": true}),
            "tie_key_values",
        ),
        (
            serde_json::json!({"dim": 8, "num_degrees": 2, "causal": true, "attend_self": false}),
            "attend_self",
        ),
        (serde_json::json!({"dim": 8}), "num_degrees"),
        (
            serde_json::json!({"dim": 8, "num_degrees": 2, "num_edge_tokens": 3}),
            "edge_dim",
        ),
        (
            serde_json::json!({"dim": 8, "num_degrees": 2, "input_degrees": 3}),
            "input_degrees",
        ),
        (
            serde_json::json!({"dim": 8, "num_degrees": 2, "reversible": true, "global_feats_dim": 2}),
            "global_feats_dim",
        ),
    ];
    for (kw, field) in cases {
        let err = Se3TransformerConfig::from_kwargs(&kw).err();
        assert!(
            matches!(&err, Some(Error::InvalidConfig { field: f, .. }) if *f == field),
            "{kw}: {err:?}"
        );
    }
    let err = Se3TransformerConfig::from_kwargs(&serde_json::json!({"dim": "eight"})).err();
    assert!(matches!(err, Some(Error::ConfigParse { .. })), "{err:?}");
}

#[test]
fn degree_above_the_basis_is_a_typed_error() -> Result<(), Error> {
    // harmonics up to 2 * max_degree must exist in se3-core (L_MAX = 16)
    let cfg = Se3TransformerConfig::from_kwargs(&serde_json::json!({"dim": 4, "num_degrees": 10}))?;
    let err = Se3TransformerOracle::expected_keys(&cfg).err();
    assert!(
        matches!(
            err,
            Some(Error::Core(se3_core::Error::DegreeTooHigh { .. }))
        ),
        "{err:?}"
    );
    Ok(())
}

fn forward_err(inputs: &ModelInputs) -> Result<Option<Error>, Error> {
    let l = load_se3t("se3t_basic")?;
    let m = Se3TransformerOracle::from_state_dict(&l.cfg, &l.weights)?;
    Ok(m.forward(inputs, &l.fwd).err())
}

#[test]
fn bad_inputs_give_typed_errors() -> Result<(), Error> {
    let base = load_se3t("se3t_basic")?.inputs;

    let mut nan = base.clone();
    nan.coors.data[7] = f64::NAN;
    let err = forward_err(&nan)?;
    assert!(
        matches!(
            err,
            Some(Error::NonFinite {
                name: "coors",
                index: 7
            })
        ),
        "{err:?}"
    );

    let mut empty = base.clone();
    empty.coors = Tensor::zeros(&[2, 0, 3]);
    empty.feats = NodeFeats::Dense(Tensor::zeros(&[2, 0, 8]));
    empty.mask = None;
    let err = forward_err(&empty)?;
    assert!(
        matches!(err, Some(Error::EmptyGraph { nodes: 0, .. })),
        "{err:?}"
    );

    let mut short_mask = base.clone();
    short_mask.mask = Some(BoolTensor {
        shape: vec![2, 11],
        data: vec![true; 22],
    });
    let err = forward_err(&short_mask)?;
    assert!(
        matches!(err, Some(Error::InputShape { name: "mask", .. })),
        "{err:?}"
    );

    let mut wrong_dim = base.clone();
    wrong_dim.feats = NodeFeats::Dense(Tensor::zeros(&[2, 12, 5]));
    let err = forward_err(&wrong_dim)?;
    assert!(
        matches!(err, Some(Error::InputShape { name: "feats", .. })),
        "{err:?}"
    );

    let mut tokens = base.clone();
    tokens.feats = NodeFeats::Tokens {
        shape: vec![2, 12],
        ids: vec![0; 24],
    };
    let err = forward_err(&tokens)?;
    assert!(
        matches!(err, Some(Error::InputShape { name: "feats", .. })),
        "{err:?}"
    );

    let edge_model = load_se3t("se3t_edge_tokens")?;
    let m = Se3TransformerOracle::from_state_dict(&edge_model.cfg, &edge_model.weights)?;
    let mut no_edges = edge_model.inputs.clone();
    no_edges.edges = None;
    let err = m.forward(&no_edges, &edge_model.fwd).err();
    assert!(
        matches!(err, Some(Error::MissingInput { name: "edges" })),
        "{err:?}"
    );
    let mut bad_edge = edge_model.inputs.clone();
    if let Some(se3_models::inputs::EdgeInput::Tokens { ids, .. }) = &mut bad_edge.edges {
        ids[3] = 99;
    }
    let err = m.forward(&bad_edge, &edge_model.fwd).err();
    assert!(
        matches!(
            err,
            Some(Error::IndexOutOfRange {
                name: "edges",
                found: 99,
                ..
            })
        ),
        "{err:?}"
    );
    Ok(())
}

/// A safetensors file read one tensor at a time reports what the state-dict loader reports: a
/// missing key with its expected shape, a wrong shape, a key the model has no place for, a
/// non-float tensor, and a file that is not safetensors; each as its typed error.
#[test]
fn streamed_checkpoint_errors_are_typed() -> Result<(), Error> {
    use se3_models::se3_transformer::Se3TransformerNet;
    let l = load_se3t("se3t_basic")?;
    let tmp = std::env::temp_dir().join(format!("se3-streamed-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|source| Error::Io {
        path: tmp.display().to_string(),
        source,
    })?;
    let save = |sd: &StateDict, file: &str| -> Result<std::path::PathBuf, Error> {
        let p = tmp.join(file);
        sd.save(&p, SaveDtype::F32)?;
        Ok(p)
    };
    let key = "conv_in.self_interact.weights.0";

    let mut sd = l.weights.clone();
    sd.remove(key);
    let err = Se3TransformerNet::from_safetensors(&l.cfg, save(&sd, "missing.safetensors")?).err();
    assert!(
        matches!(&err, Some(Error::Core(se3_core::Error::MissingKey { key: k, expected })) if k == key && expected == &vec![8, 8]),
        "{err:?}"
    );

    let mut sd = l.weights.clone();
    sd.insert(key, Tensor::new(vec![8, 9], vec![0.5; 72])?);
    let err = Se3TransformerNet::from_safetensors(&l.cfg, save(&sd, "shape.safetensors")?).err();
    assert!(
        matches!(&err, Some(Error::Core(se3_core::Error::WrongShape { key: k, expected, found })) if k == key && expected == &vec![8, 8] && found == &vec![8, 9]),
        "{err:?}"
    );

    let mut sd = l.weights.clone();
    sd.insert("conv_in.extra", Tensor::new(vec![2], vec![1.0, 2.0])?);
    let err = Se3TransformerNet::from_safetensors(&l.cfg, save(&sd, "extra.safetensors")?).err();
    assert!(
        matches!(&err, Some(Error::UnexpectedKey { key: k, shape }) if k == "conv_in.extra" && shape == &vec![2]),
        "{err:?}"
    );

    // an integer tensor where a weight belongs
    let mut header = serde_json::json!({});
    header[key] = serde_json::json!({"dtype": "I32", "shape": [8, 8], "data_offsets": [0, 256]});
    let text = header.to_string();
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 256));
    let p = tmp.join("int.safetensors");
    std::fs::write(&p, &bytes).map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })?;
    let mut f = se3_models::checkpoint::SafetensorsFile::open(&p)?;
    let err = se3_models::checkpoint::WeightSource::take(&mut f, key, &[8, 8]).err();
    assert!(
        matches!(&err, Some(Error::WrongDtype { key: k, .. }) if k == key),
        "{err:?}"
    );

    // offsets past the end of the file, a truncated header, and no file at all
    let mut short = bytes.clone();
    short.truncate(bytes.len() - 8);
    std::fs::write(&p, &short).map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })?;
    let err = se3_models::checkpoint::SafetensorsFile::open(&p).err();
    assert!(matches!(&err, Some(Error::Safetensors { .. })), "{err:?}");
    std::fs::write(&p, &bytes[..12]).map_err(|source| Error::Io {
        path: p.display().to_string(),
        source,
    })?;
    let err = se3_models::checkpoint::SafetensorsFile::open(&p).err();
    assert!(matches!(&err, Some(Error::Safetensors { .. })), "{err:?}");
    let err = se3_models::checkpoint::SafetensorsFile::open(tmp.join("absent.safetensors")).err();
    assert!(matches!(&err, Some(Error::Io { .. })), "{err:?}");
    std::fs::remove_dir_all(&tmp).ok();
    Ok(())
}
