//! Forward parity of the compiled Equiformer graph with equiformer-pytorch 0.5.4's reference
//! outputs (float64 run of the same float32 weights).

mod common;
use common::*;

use se3_models::checkpoint::StateDict;
use se3_models::equiformer::{CompiledEquiformer, Equiformer, EquiformerConfig, EquiformerForward};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::Error;

/// Runs reference `name` through the graph; returns the worst relative error over outputs.
fn worst_error(name: &str) -> Result<f64, Error> {
    let d = dir(name);
    let file = ModelFile::load(d.join("config.json"))?;
    let cfg = EquiformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let sd = StateDict::load(d.join("weights.safetensors"))?;
    let fwd = EquiformerForward::from_literals(&file.forward_kwargs.literals)?;
    let mut model = CompiledEquiformer::new(Equiformer::from_state_dict(&cfg, &sd)?, fwd);
    let inp = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    let got = model.forward(&inp)?;
    let want = StateDict::load(d.join("outputs.safetensors"))?;
    let mut worst = 0.0f64;
    for (k, t) in want.iter() {
        let Some(base) = k.strip_suffix("_f64") else {
            continue;
        };
        let g = got.get(base).ok_or(Error::MissingKey {
            key: format!("{name}: output {base}"),
            expected: t.shape.clone(),
        })?;
        assert_eq!(g.shape, t.shape, "{name}: output {base} shape");
        let (e, idx) = rel_error_at(&g.data, &t.data);
        println!("{name} {base}: max |got - want| / max |want| = {e:.3e} (at {idx})");
        worst = worst.max(e);
    }
    Ok(worst)
}

#[test]
fn equi_l2dist_matches_reference() -> Result<(), Error> {
    let e = worst_error("equi_l2dist")?;
    assert!(e < 1e-4, "equi_l2dist: relative error {e:.3e}");
    Ok(())
}

#[test]
fn equi_mlp_matches_reference() -> Result<(), Error> {
    let e = worst_error("equi_mlp")?;
    assert!(e < 1e-4, "equi_mlp: relative error {e:.3e}");
    Ok(())
}

#[test]
fn equi_tokens_edges_sparse_matches_reference() -> Result<(), Error> {
    let e = worst_error("equi_tokens_edges_sparse")?;
    assert!(e < 1e-4, "equi_tokens_edges_sparse: relative error {e:.3e}");
    Ok(())
}

/// The reference `equi_l2dist` with its config changed by `edit`.
fn edited(edit: impl Fn(&mut serde_json::Value)) -> serde_json::Value {
    let file = ModelFile::load(dir("equi_l2dist").join("config.json"));
    let mut kw = file.map(|f| f.constructor_kwargs).unwrap_or_default();
    edit(&mut kw);
    kw
}

#[test]
fn configs_the_library_rejects_or_se3_does_not_run_are_typed_errors() {
    let cases: [(&str, serde_json::Value); 6] = [
        ("no_such_option", edited(|k| k["no_such_option"] = 1.into())),
        ("dim", edited(|k| k["dim"] = serde_json::json!([4, 4]))),
        ("attend_self", edited(|k| k["attend_self"] = false.into())),
        (
            "linear_attn_dim_head",
            edited(|k| {
                k["num_linear_attn_heads"] = 2.into();
                k["linear_attn_dim_head"] = 0.into();
            }),
        ),
        ("edge_dim", edited(|k| k["num_edge_tokens"] = 3.into())),
        (
            "l2_dist_attention",
            edited(|k| k["attn_hidden_dim_mult"] = 2.into()),
        ),
    ];
    for (field, kw) in cases {
        match EquiformerConfig::from_kwargs(&kw) {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            Err(Error::UnknownKwarg { name, .. }) => assert_eq!(name, field),
            other => panic!("{field}: expected a typed config error, got {other:?}"),
        }
    }
}

#[test]
fn inputs_the_config_cannot_take_are_typed_errors() -> Result<(), Error> {
    let d = dir("equi_tokens_edges_sparse");
    let file = ModelFile::load(d.join("config.json"))?;
    let sd = StateDict::load(d.join("weights.safetensors"))?;
    let inp = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    let run = |kw: &serde_json::Value, inp: &ModelInputs| -> Result<(), Error> {
        let cfg = EquiformerConfig::from_kwargs(kw)?;
        let model = Equiformer::from_state_dict(&cfg, &sd)?;
        CompiledEquiformer::new(model, EquiformerForward::default())
            .forward(inp)
            .map(|_| ())
    };
    let kw = file.constructor_kwargs.clone();
    let mut no_adj = inp.clone();
    no_adj.adj_mat = None;
    assert!(matches!(
        run(&kw, &no_adj),
        Err(Error::MissingInput { name: "adj_mat" })
    ));
    let mut no_edges = inp.clone();
    no_edges.edges = None;
    assert!(matches!(
        run(&kw, &no_edges),
        Err(Error::MissingInput { name: "edges" })
    ));
    // Every node of the reference has at least one bond: a cap of 0 makes torch sample bonds.
    let mut capped = kw.clone();
    capped["max_sparse_neighbors"] = 0.into();
    assert!(matches!(
        run(&capped, &inp),
        Err(Error::InvalidConfig {
            field: "max_sparse_neighbors",
            ..
        })
    ));
    let mut bad_tokens = inp.clone();
    if let se3_models::inputs::NodeFeats::Tokens { ids, .. } = &mut bad_tokens.feats {
        ids[3] = 7;
    }
    assert!(matches!(
        run(&kw, &bad_tokens),
        Err(Error::IndexOutOfRange { name: "feats", .. })
    ));
    // A checkpoint of another config is rejected by key or shape.
    let mut other = kw.clone();
    other["dim"] = serde_json::json!([8, 8, 4]);
    assert!(matches!(
        run(&other, &inp),
        Err(Error::Core(se3_core::Error::WrongShape { .. }))
    ));
    Ok(())
}
