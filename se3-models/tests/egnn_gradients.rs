//! EGNN gradient parity: se3's backward pass (float32) against egnn-pytorch 0.2.8 autograd in
//! float64 (`gradients.safetensors`: `L = Σ_out <out, cotangent.out>`), for every `egnn_*`
//! reference and every random configuration of `tests/data/extra_reference/egnn` that stores
//! gradients; and three Adam steps against torch's trajectories (`training.safetensors`).
//! Errors are per tensor: the largest absolute difference over the tensor's largest magnitude.

mod common;
use common::*;

use se3_models::checkpoint::StateDict;
use se3_models::egnn::{CompiledEgnn, Egnn};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::Error;

fn load(name: &str) -> Result<(CompiledEgnn, ModelInputs), Error> {
    let d = dir(name);
    let file = ModelFile::load(d.join("config.json"))?;
    let weights = StateDict::load(d.join("weights.safetensors"))?;
    let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    Ok((
        CompiledEgnn::new(Egnn::from_parts(&file, &weights)?),
        inputs,
    ))
}

fn gradient_parity(name: &str) -> Result<(), Error> {
    let (mut model, inputs) = load(name)?;
    let reference = StateDict::load(dir(name).join("gradients.safetensors"))?;
    let (_, got) = model.forward_and_gradients(&inputs, &reference)?;
    let (worst, at, checked) = compare(name, &reference, &got)?;
    println!("{name}: {checked} gradients, worst relative error {worst:.3e} ({at})");
    assert!(checked >= 5, "{name}: only {checked} gradients compared");
    assert!(worst < 1e-4, "{name}: gradient off by {worst:.3e} at {at}");
    Ok(())
}

/// Every stored `param.*` / `input.*` of `reference` against se3's `got`, relative to the
/// tensor's largest magnitude: the worst error, where, and how many tensors were compared.
/// Tensors above 1e-4 are printed.
fn compare(
    name: &str,
    reference: &StateDict,
    got: &StateDict,
) -> Result<(f64, String, usize), Error> {
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
        assert_eq!(g.shape, want.shape, "{name} {k}: shape");
        let (e, i) = rel_error_at(&g.data, &want.data);
        if e > 1e-4 {
            println!("{name}: {k} relative error {e:.3e}");
        }
        if e > worst.0 || checked == 0 {
            worst = (
                e,
                format!("{k}[{i}] got {} want {}", g.data[i], want.data[i]),
            );
        }
        checked += 1;
    }
    Ok((worst.0, worst.1, checked))
}

#[test]
fn egnn_layer_coors_only_gradients_match_torch() -> Result<(), Error> {
    gradient_parity("egnn_layer_coors_only")
}

#[test]
fn egnn_layer_feats_only_gradients_match_torch() -> Result<(), Error> {
    gradient_parity("egnn_layer_feats_only")
}

#[test]
fn egnn_net_adj_global_gradients_match_torch() -> Result<(), Error> {
    gradient_parity("egnn_net_adj_global")
}

#[test]
fn egnn_net_edges_gradients_match_torch() -> Result<(), Error> {
    gradient_parity("egnn_net_edges")
}

/// Three steps of Adam (lr 1e-2) on the MSE to torch's targets: the losses before each step
/// and after the last, and the parameters after the third, against torch's float64 run.
fn adam_trajectory(name: &str) -> Result<(), Error> {
    use se3_core::train::{Adam, Optimizer, Param};
    let (mut model, inputs) = load(name)?;
    model.set_path(se3_core::layers::EgnnPath::Unfused);
    let reference = StateDict::load(dir(name).join("training.safetensors"))?;
    let want_loss = reference
        .get("loss")
        .map(|t| t.data.clone())
        .unwrap_or_default();
    assert_eq!(want_loss.len(), 4, "{name}: torch losses");
    let mut values: Vec<(String, Vec<f32>)> = model
        .parameters()
        .iter()
        .map(|(k, _, v)| (k.clone(), v.clone()))
        .collect();
    let mut adam = Adam::new(1e-2);
    let mut losses = vec![];
    let mut zero_grads = vec![];
    for step in 0..=3 {
        let out = model.forward(&inputs)?;
        let (loss, cot) = mse(&out, &reference)?;
        losses.push(loss);
        if step == 3 {
            break;
        }
        let (_, grads) = model.forward_and_gradients(&inputs, &cot)?;
        let gs: Vec<Vec<f32>> = values
            .iter()
            .map(|(k, _)| {
                grads
                    .get(&format!("param.{k}"))
                    .map(|t| t.data.iter().map(|&v| v as f32).collect())
                    .unwrap_or_default()
            })
            .collect();
        if step == 0 {
            zero_grads = gs
                .iter()
                .zip(&values)
                .filter(|(g, _)| g.iter().all(|&v| v == 0.0))
                .map(|(_, (k, _))| k.clone())
                .collect();
        }
        let mut params: Vec<Param<'_>> = values
            .iter_mut()
            .zip(&gs)
            .map(|((k, v), g)| Param {
                name: k,
                value: v,
                grad: g,
            })
            .collect();
        adam.step(&mut params)?;
        for (k, v) in &values {
            model.set_parameter(k, v)?;
        }
    }
    let loss_err = losses
        .iter()
        .zip(&want_loss)
        .map(|(a, b)| (a - b).abs() / b.abs())
        .fold(0.0, f64::max);
    println!("{name} Adam: losses {losses:?} (torch {want_loss:?}), worst relative {loss_err:.3e}");
    println!("{name} Adam: parameters with exactly zero gradient at step 1: {zero_grads:?}");
    assert!(
        loss_err < 1e-4,
        "{name}: losses {losses:?} vs torch {want_loss:?}"
    );
    let mut worst = (0.0f64, String::new());
    for (k, v) in &values {
        let want = reference
            .get(&format!("param.{k}"))
            .ok_or(Error::MissingKey {
                key: format!("param.{k}"),
                expected: vec![v.len()],
            })?;
        let got: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
        let (e, i) = rel_error_at(&got, &want.data);
        if e > worst.0 {
            worst = (e, format!("{k}[{i}] got {} want {}", got[i], want.data[i]));
        }
    }
    println!(
        "{name} Adam: parameters after 3 steps, worst relative error {:.3e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 1e-4,
        "{name}: parameters off by {:.3e} at {}",
        worst.0,
        worst.1
    );
    Ok(())
}

#[test]
fn egnn_net_edges_adam_steps_follow_torch_training() -> Result<(), Error> {
    adam_trajectory("egnn_net_edges")
}

#[test]
fn egnn_layer_feats_only_adam_steps_follow_torch_training() -> Result<(), Error> {
    adam_trajectory("egnn_layer_feats_only")
}

/// The `Differentiable` form (dispatch from the files): with given cotangents it reproduces
/// torch's gradients; with the mean squared error its loss is torch's first training loss and
/// its gradients those of the cotangent form at `2 (out - target) / len`; setting a parameter
/// changes the next run.
#[test]
fn egnn_net_edges_differentiable_matches_torch() -> Result<(), Error> {
    use se3_models::differentiable::{differentiable_from_files, Objective};
    let d = dir("egnn_net_edges");
    let file = ModelFile::load(d.join("config.json"))?;
    let sd = StateDict::load(d.join("weights.safetensors"))?;
    let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    let grads_ref = StateDict::load(d.join("gradients.safetensors"))?;
    let training = StateDict::load(d.join("training.safetensors"))?;
    let mut by_cot = differentiable_from_files(&file, &sd, Objective::Cotangents)?;
    let mut by_mse = differentiable_from_files(&file, &sd, Objective::MeanSquaredError)?;
    assert_eq!(by_cot.parameters().len(), sd.iter().count());
    let run = by_cot.gradients(&inputs, &grads_ref)?;
    let mut worst = 0.0f64;
    for (k, want) in grads_ref.iter() {
        if k.starts_with("param.") || k.starts_with("input.") {
            let g = run.grads.get(k).ok_or(Error::MissingKey {
                key: k.to_string(),
                expected: want.shape.clone(),
            })?;
            worst = worst.max(rel_error_at(&g.data, &want.data).0);
        }
    }
    let m = by_mse.gradients(&inputs, &training)?;
    let want_loss = training.get("loss").map_or(f64::NAN, |t| t.data[0]);
    let loss_err = (m.loss - want_loss).abs() / want_loss.abs();
    let (_, cot) = mse(&m.outputs, &training)?;
    let again = by_cot.gradients(&inputs, &cot)?;
    let mut mse_vs_cot = 0.0f64;
    for (k, g) in again.grads.iter() {
        if let Some(h) = m.grads.get(k) {
            mse_vs_cot = mse_vs_cot.max(rel_error_at(&h.data, &g.data).0);
        }
    }
    println!(
        "egnn_net_edges Differentiable: gradients vs torch {worst:.2e}; MSE loss {} (torch {want_loss}, rel {loss_err:.2e}); MSE vs cotangent form {mse_vs_cot:.2e}",
        m.loss
    );
    assert!(worst < 1e-4, "gradients off by {worst:.2e}");
    assert!(loss_err < 1e-5, "MSE loss {} vs torch {want_loss}", m.loss);
    assert!(
        mse_vs_cot < 1e-6,
        "MSE gradients vs cotangent form {mse_vs_cot:.2e}"
    );
    let first = by_mse
        .parameters()
        .iter()
        .next()
        .map(|p| (p.name.clone(), p.value.clone()));
    if let Some((name, value)) = first {
        by_mse.set_parameter(&name, value.iter().map(|v| v * 1.5 + 0.1).collect())?;
        let moved = by_mse.gradients(&inputs, &training)?;
        assert!(
            (moved.loss - m.loss).abs() > 1e-9 * m.loss.abs(),
            "parameter change had no effect"
        );
        assert!(by_mse.set_parameter(&name, vec![0.0]).is_err());
    }
    Ok(())
}

/// Gradient parity on configurations outside tests/reference: every case folder of
/// `tests/data/extra_reference/egnn` with a `gradients.safetensors` (written by
/// `generate_general.py --gradients`: random `EGNN` / `EGNN_Network` configs and the corner
/// cases), run through the [`Differentiable`](se3_models::differentiable::Differentiable)
/// dispatch with the stored cotangents; every stored gradient within 1e-4 of torch float64.
/// `SE3_EGNN_GRAD_CASES=<folder of case folders>` runs another set.
#[test]
fn random_egnn_configs_gradients_match_torch() -> Result<(), Error> {
    use se3_models::differentiable::{differentiable_from_files, Objective};
    let cases = gradient_case_dirs("SE3_EGNN_GRAD_CASES", "tests/data/extra_reference/egnn", 5)?;
    let mut failures = Vec::new();
    for d in &cases {
        let name = d
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let run = || -> Result<(f64, String, usize), Error> {
            let file = ModelFile::load(d.join("config.json"))?;
            let weights = StateDict::load(d.join("weights.safetensors"))?;
            let inputs =
                ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
            let reference = StateDict::load(d.join("gradients.safetensors"))?;
            let mut model = differentiable_from_files(&file, &weights, Objective::Cotangents)?;
            let got = model.gradients(&inputs, &reference)?.grads;
            compare(&name, &reference, &got)
        };
        match run() {
            Ok((worst, at, checked)) => {
                println!("{name}: {checked} gradients, worst relative error {worst:.3e} ({at})");
                if worst >= 1e-4 || checked < 3 {
                    failures.push(format!("{name}: {worst:.3e} at {at} ({checked} tensors)"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}
