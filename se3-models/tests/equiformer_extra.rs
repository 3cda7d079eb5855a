//! Generality check of the Equiformer graph: random equiformer-pytorch 0.5.4 configs made by
//! `tests/data/extra_reference/equiformer/generate.py` (float64 torch outputs), each run through
//! the compiled float32 graph; configs torch rejects must end in a typed error here.
//!
//! `SE3_EQUI_EXTRA_DIR=<folder of case folders>` runs another set (e.g. the full local output of
//! the generator) instead of the committed one.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use se3_models::checkpoint::StateDict;
use se3_models::equiformer::{CompiledEquiformer, Equiformer, EquiformerConfig, EquiformerForward};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::Error;

/// Graph (float32) against torch float64, relative to the largest output.
const TOL: f64 = 1e-4;

fn cases_dir() -> PathBuf {
    match std::env::var("SE3_EQUI_EXTRA_DIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/extra_reference/equiformer/cases"),
    }
}

/// Loads and runs case `d`: the outputs, or the first error.
fn run(d: &Path) -> Result<StateDict, Error> {
    let file = ModelFile::load(d.join("config.json"))?;
    let cfg = EquiformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let fwd = EquiformerForward::from_literals(&file.forward_kwargs.literals)?;
    let sd = StateDict::load(d.join("weights.safetensors"))?;
    let inp = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    CompiledEquiformer::new(Equiformer::from_state_dict(&cfg, &sd)?, fwd).forward(&inp)
}

#[test]
fn random_equiformer_configs_match_torch_or_fail_as_torch() -> Result<(), Error> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .map_err(|e| Error::Io {
            path: cases_dir().display().to_string(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").exists())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no cases in {}", cases_dir().display());
    let mut failures = Vec::new();
    for d in &names {
        let name = d
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if d.join("torch_error.txt").exists() {
            match run(d) {
                Err(e) => println!("{name}: rejected as torch: {e}"),
                Ok(_) => failures.push(format!("{name}: torch rejects it, se3 ran it")),
            }
            continue;
        }
        let got = match run(d) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let want = StateDict::load(d.join("outputs.safetensors"))?;
        let mut worst = 0.0f64;
        for (k, t) in want.iter() {
            let Some(base) = k.strip_suffix("_f64") else {
                continue;
            };
            match got.get(base) {
                Some(g) if g.shape == t.shape => {
                    worst = worst.max(rel_error_at(&g.data, &t.data).0)
                }
                Some(g) => failures.push(format!(
                    "{name}: {base} shape {:?} != {:?}",
                    g.shape, t.shape
                )),
                None => failures.push(format!("{name}: no output {base}")),
            }
        }
        println!("{name}: max rel err {worst:.2e}");
        if worst > TOL {
            failures.push(format!("{name}: max rel err {worst:.2e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
    Ok(())
}
