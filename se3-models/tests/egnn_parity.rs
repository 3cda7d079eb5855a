//! Parity of the compiled EGNN graphs (float32) with egnn-pytorch 0.2.8's float64 outputs, for
//! every reference model of the library (`tests/reference/models/egnn_*`) and the random-config
//! cases of `tests/data/extra_reference/egnn/`.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use se3_models::checkpoint::StateDict;
use se3_models::egnn::{CompiledEgnn, Egnn};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::Error;

/// Largest relative error (max |got - want| / max |want|) allowed per output.
const TOL: f64 = 1e-4;

/// Runs the model in `folder` and returns the worst relative error per output.
fn parity(folder: &Path) -> Result<Vec<(String, f64)>, Error> {
    let file = ModelFile::load(folder.join("config.json"))?;
    let weights = StateDict::load(folder.join("weights.safetensors"))?;
    let inputs = ModelInputs::load(
        folder.join("inputs.safetensors"),
        &file.forward_kwargs.tensors,
    )?;
    let mut model = CompiledEgnn::new(Egnn::from_parts(&file, &weights)?);
    let out = model.forward(&inputs)?;
    let want = StateDict::load(folder.join("outputs.safetensors"))?;
    let mut errs = Vec::new();
    for (key, t) in want.iter() {
        let Some(base) = key.strip_suffix("_f64") else {
            continue;
        };
        let got = out.get(base).ok_or(Error::MissingKey {
            key: base.into(),
            expected: t.shape.clone(),
        })?;
        assert_eq!(got.shape, t.shape, "{}: {base} shape", folder.display());
        errs.push((base.to_string(), rel_error(&got.data, &t.data)));
    }
    assert!(!errs.is_empty(), "{}: no float64 outputs", folder.display());
    Ok(errs)
}

fn check(folder: &Path) -> Result<(), Error> {
    for (name, e) in parity(folder)? {
        println!("{} {name}: max rel err {e:.3e}", folder.display());
        assert!(
            e <= TOL,
            "{}: output {name} relative error {e:.3e} > {TOL:e}",
            folder.display()
        );
    }
    Ok(())
}

#[test]
fn egnn_layer_coors_only_matches_reference() -> Result<(), Error> {
    check(&dir("egnn_layer_coors_only"))
}

#[test]
fn egnn_layer_feats_only_matches_reference() -> Result<(), Error> {
    check(&dir("egnn_layer_feats_only"))
}

#[test]
fn egnn_net_adj_global_matches_reference() -> Result<(), Error> {
    check(&dir("egnn_net_adj_global"))
}

#[test]
fn egnn_net_edges_matches_reference() -> Result<(), Error> {
    check(&dir("egnn_net_edges"))
}

/// The committed random cases, or the folder named by `SE3_EGNN_CASES` (a generator run).
fn extra_dir() -> PathBuf {
    match std::env::var_os("SE3_EGNN_CASES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/extra_reference/egnn"),
    }
}

/// Loading and running a case the library rejects must fail with a typed error.
fn rejected(folder: &Path) -> Result<Error, String> {
    let run = || -> Result<(), Error> {
        let file = ModelFile::load(folder.join("config.json"))?;
        let weights = StateDict::load(folder.join("weights.safetensors")).unwrap_or_default();
        let inputs = ModelInputs::load(
            folder.join("inputs.safetensors"),
            &file.forward_kwargs.tensors,
        )?;
        CompiledEgnn::new(Egnn::from_parts(&file, &weights)?).forward(&inputs)?;
        Ok(())
    };
    match run() {
        Err(e) => Ok(e),
        Ok(()) => Err(format!(
            "{}: torch rejects it, se3 ran it",
            folder.display()
        )),
    }
}

#[test]
fn egnn_random_configs_match_reference() -> Result<(), Error> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(extra_dir())
        .map_err(|source| Error::Io {
            path: extra_dir().display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no random EGNN cases");
    let (mut worst, mut refused) = (0.0f64, 0);
    for case in &cases {
        if case.join("expect_error.txt").exists() {
            let e = rejected(case).map_err(|msg| Error::InvalidConfig {
                field: "case",
                expected: "a typed error",
                found: msg,
            })?;
            println!("{}: refused: {e}", case.display());
            refused += 1;
            continue;
        }
        for (name, e) in parity(case)? {
            println!("{} {name}: max rel err {e:.3e}", case.display());
            worst = worst.max(e);
            assert!(
                e <= TOL,
                "{}: {name} relative error {e:.3e}",
                case.display()
            );
        }
    }
    println!(
        "{} cases ({refused} refused as torch refuses them), worst rel err {worst:.3e}",
        cases.len()
    );
    Ok(())
}
