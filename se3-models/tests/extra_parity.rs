//! Generality check: configs of se3-transformer-pytorch 0.9 outside tests/reference (made by
//! tests/data/extra_reference/generate_general.py on the machine of `qj_signs.json`), each run through
//! the float64 oracle (direct and reassociated contraction) and the compiled float32 graph.
//!
//! `SE3_EXTRA_DIR=<folder of config folders>` runs another set (e.g. the full local output of the
//! generator) instead of the committed one.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use se3_models::checkpoint::StateDict;
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::se3_transformer::basis::QjSigns;
use se3_models::se3_transformer::{
    Contraction, Se3TransformerConfig, Se3TransformerForward, Se3TransformerNet,
    Se3TransformerOracle,
};
use se3_models::Error;

/// Oracle (float64) against torch float64.
const TOL_F64: f64 = 1e-10;
/// Oracle against torch float32, and the compiled float32 graph against torch float64.
const TOL_F32: f64 = 1e-5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/extra_reference")
}

/// Worst relative error of `out` over the outputs of `want` with suffix `suffix`.
fn worst(out: &StateDict, want: &StateDict, suffix: &str) -> Result<f64, String> {
    let mut w = 0.0f64;
    for (k, t) in want.iter() {
        let Some(base) = k.strip_suffix(suffix) else {
            continue;
        };
        let got = out.get(base).ok_or(format!("missing output {base}"))?;
        if got.shape != t.shape {
            return Err(format!(
                "output {base} shape {:?}, want {:?}",
                got.shape, t.shape
            ));
        }
        w = w.max(rel_error_at(&got.data, &t.data).0);
    }
    Ok(w)
}

/// A folder with `torch_error.txt` holds a combination torch rejects (in the constructor, then without
/// weights, or in the forward pass): here too it must end in a typed error, in the oracle and the
/// compiled graph, never in outputs.
fn run_rejected(d: &Path, signs: &QjSigns) -> Result<String, String> {
    let file = ModelFile::load(d.join("config.json")).map_err(|e| e.to_string())?;
    let cfg = match Se3TransformerConfig::from_kwargs(&file.constructor_kwargs) {
        Err(e) => return Ok(format!("rejected as torch: {e}")),
        Ok(c) => c,
    };
    if !d.join("weights.safetensors").exists() {
        return Err("torch's constructor failed, the config was accepted".into());
    }
    let oracle = (|| -> Result<StateDict, Error> {
        let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
        let sd = StateDict::load(d.join("weights.safetensors"))?;
        let mut model = Se3TransformerOracle::from_state_dict(&cfg, &sd)?;
        model.set_qj_signs(signs)?;
        let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
        let out = model.forward(&inputs, &fwd);
        if out.is_ok() {
            let mut net = Se3TransformerNet::from_config(&cfg, &sd)?;
            net.set_qj_signs(signs)?;
            net.into_session()?.forward_inputs(&inputs, &fwd)?;
        }
        out
    })();
    match oracle {
        Err(e) => Ok(format!("rejected as torch: {e}")),
        Ok(_) => Err("torch failed, se3 gave outputs".into()),
    }
}

/// Runs one config folder; returns a one-line report, or the failure.
fn run(d: &Path, signs: &QjSigns) -> Result<String, String> {
    if d.join("torch_error.txt").exists() {
        return run_rejected(d, signs);
    }
    let e = |x: Error| x.to_string();
    let file = ModelFile::load(d.join("config.json")).map_err(e)?;
    let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs).map_err(e)?;
    let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals).map_err(e)?;
    let sd = StateDict::load(d.join("weights.safetensors")).map_err(e)?;
    sd.check_keys(&Se3TransformerOracle::expected_keys(&cfg).map_err(e)?)
        .map_err(e)?;
    let mut model = Se3TransformerOracle::from_state_dict(&cfg, &sd).map_err(e)?;
    model.set_qj_signs(signs).map_err(e)?;
    let inputs =
        ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors).map_err(e)?;
    let want = StateDict::load(d.join("outputs.safetensors")).map_err(e)?;
    let out = model.forward(&inputs, &fwd).map_err(e)?;
    let o64 = worst(&out, &want, "_f64")?;
    let o32 = worst(&out, &want, "_f32")?;
    model.set_contraction(Contraction::Reassociated);
    let ra = worst(&model.forward(&inputs, &fwd).map_err(e)?, &want, "_f64")?;
    model.set_contraction(Contraction::Direct);
    let mut net = Se3TransformerNet::from_config(&cfg, &sd).map_err(e)?;
    net.set_qj_signs(signs).map_err(e)?;
    let mut compiled = net.into_session().map_err(e)?;
    let c = worst(
        &compiled.forward_inputs(&inputs, &fwd).map_err(e)?,
        &want,
        "_f64",
    )?;
    let line =
        format!("oracle {o64:.2e} (vs f32 {o32:.2e}), reassociated {ra:.2e}, compiled {c:.2e}");
    if o64 > TOL_F64 || ra > TOL_F64 || o32 > TOL_F32 || c > TOL_F32 {
        return Err(line);
    }
    Ok(line)
}

#[test]
fn generated_configs_match_torch_in_oracle_and_compiled_graph() -> Result<(), Error> {
    let signs = QjSigns::load(root().join("qj_signs.json"))?;
    // the committed set: generate_general.py's folders under general/ and generate.py's at the root
    let (sets, committed) = match std::env::var("SE3_EXTRA_DIR") {
        Ok(d) => (vec![PathBuf::from(d)], false),
        Err(_) => (vec![root().join("general"), root()], true),
    };
    let mut names: Vec<PathBuf> = Vec::new();
    for set in &sets {
        let rd = std::fs::read_dir(set).map_err(|source| Error::Io {
            path: set.display().to_string(),
            source,
        })?;
        names.extend(
            rd.filter_map(|r| r.ok().map(|e| e.path()))
                .filter(|p| p.join("config.json").exists()),
        );
    }
    names.sort();
    let mut failures = Vec::new();
    for d in &names {
        let name = d.file_name().map(|s| s.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        match run(d, &signs) {
            Ok(line) => println!("ok   {name}: {line}"),
            Err(why) => {
                println!("FAIL {name}: {why}");
                failures.push(name);
            }
        }
    }
    assert!(failures.is_empty(), "failed: {failures:?}");
    if committed {
        assert!(names.len() >= 20, "only {} configs", names.len());
    }
    Ok(())
}

/// Combinations that se3-transformer-pytorch rejects (by an assert or a failing broadcast) are typed
/// errors here, never outputs.
#[test]
fn combinations_the_library_rejects_are_typed_errors() -> Result<(), Error> {
    // rotary channels wider than a head: SinusoidalEmbeddings(5) has 3 frequencies -> 6 channels
    for (dim_head, both) in [(5, false), (6, true), (10, true), (3, false)] {
        let kw = serde_json::json!({"dim": 4, "num_degrees": 1, "dim_head": dim_head,
            "rotary_position": true, "rotary_rel_dist": both});
        match Se3TransformerConfig::from_kwargs(&kw) {
            Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "dim_head"),
            other => panic!("dim_head {dim_head}: {other:?}"),
        }
    }
    // ... and the sizes the library runs are accepted (9 = 2 * 4 + 1 pass-through channel; 1 = no
    // rotary channel at all)
    for dim_head in [9, 12, 1] {
        let kw = serde_json::json!({"dim": 4, "num_degrees": 1, "dim_head": dim_head,
            "rotary_position": true, "rotary_rel_dist": true});
        Se3TransformerConfig::from_kwargs(&kw)?;
    }
    // reversible concatenates the degrees (equal channels needed); global keys/values are sized by
    // the degree-0 hidden channels
    for (kw, field) in [
        (
            serde_json::json!({"dim": 3, "hidden_fiber_dict": {"0": 2, "2": 3}, "reversible": true}),
            "reversible",
        ),
        (
            serde_json::json!({"dim": 3, "hidden_fiber_dict": {"1": 2}, "global_feats_dim": 3}),
            "global_feats_dim",
        ),
    ] {
        match Se3TransformerConfig::from_kwargs(&kw) {
            Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{kw}: {other:?}"),
        }
    }
    // rotary embeddings only touch degree 0: without it any dim_head runs, as in the library
    Se3TransformerConfig::from_kwargs(&serde_json::json!({"dim": 2, "dim_head": 5,
        "hidden_fiber_dict": {"2": 1}, "rotary_position": true}))?;
    // num_neighbors = 0 with an adjacency without bonds: nothing to fetch
    let d = root().join("general/h_causal_sparse_k0");
    let file = ModelFile::load(d.join("config.json"))?;
    let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
    let model = Se3TransformerOracle::from_state_dict(
        &cfg,
        &StateDict::load(d.join("weights.safetensors"))?,
    )?;
    let mut inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    model.forward(&inputs, &fwd)?;
    if let Some(a) = &mut inputs.adj_mat {
        // self bonds only: removed with the diagonal, as in the library
        let n = a.shape[a.shape.len() - 1];
        a.data
            .iter_mut()
            .enumerate()
            .for_each(|(p, v)| *v = p % (n + 1) == 0);
    }
    assert!(matches!(
        model.forward(&inputs, &fwd),
        Err(Error::NoNeighbors)
    ));
    let mut compiled = net_session(&cfg, &StateDict::load(d.join("weights.safetensors"))?)?;
    assert!(matches!(
        compiled.forward_inputs(&inputs, &fwd),
        Err(Error::NoNeighbors)
    ));
    Ok(())
}

/// Python forms of the kwargs that the library accepts: a per-degree `dim` tuple (defaults of
/// `dim_in`, `dim_out` and the hidden fiber, zipped with the degrees) and a `dim_out` tuple shorter
/// than `output_degrees` (fewer output degrees).
#[test]
fn tuple_dims_zip_with_degrees_as_in_the_library() -> Result<(), Error> {
    let cfg = Se3TransformerConfig::from_kwargs(&serde_json::json!({
        "dim": [4, 2], "num_degrees": 3, "output_degrees": 3, "input_degrees": 2}))?;
    let shape = cfg.shape()?;
    assert_eq!(shape.fiber_hidden, vec![(0, 4), (1, 2)]);
    assert_eq!(shape.fiber_in, vec![(0, 4), (1, 2)]);
    assert_eq!(shape.fiber_out, Some(vec![(0, 4), (1, 2)]));
    assert_eq!(shape.max_degree, 2);
    assert_eq!(shape.output_degrees, Some(3));
    let cfg = Se3TransformerConfig::from_kwargs(&serde_json::json!({
        "dim": 3, "dim_out": [2], "num_degrees": 2, "output_degrees": 2}))?;
    assert_eq!(cfg.shape()?.fiber_out, Some(vec![(0, 2)]));
    match Se3TransformerConfig::from_kwargs(&serde_json::json!({
        "dim": [4, 2], "num_degrees": 2, "num_tokens": 5}))
    {
        Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, "dim"),
        other => panic!("tuple dim with tokens: {other:?}"),
    }
    Ok(())
}
