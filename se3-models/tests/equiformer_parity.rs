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
