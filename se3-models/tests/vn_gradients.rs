//! VN-Transformer gradients through `differentiable_from_files`: se3's backward pass (float32,
//! fused attention backward) against PyTorch autograd in float64 for every `vn_*` reference
//! (`gradients.safetensors`), and three Adam steps of `vn_feat_eps0` on the in-graph mean
//! squared error against `torch.optim.Adam` (`training.safetensors`); the same comparison on the
//! random configurations of `tests/data/extra_reference/vn_transformer/cases` that store gradients.
//! Errors are per tensor: the largest absolute difference over the tensor's largest magnitude.

mod common;
use common::*;

use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::differentiable::{differentiable_from_files, Differentiable, Objective};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::Error;

struct Loaded {
    model: Box<dyn Differentiable>,
    inputs: ModelInputs,
}

fn load(name: &str, objective: Objective) -> Result<Loaded, Error> {
    load_from(&dir(name), objective)
}

fn load_from(d: &std::path::Path, objective: Objective) -> Result<Loaded, Error> {
    let file = ModelFile::load(d.join("config.json"))?;
    let weights = StateDict::load(d.join("weights.safetensors"))?;
    let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    let model = differentiable_from_files(&file, &weights, objective)?;
    Ok(Loaded { model, inputs })
}

/// Gradient parity of the reference `name`, per stored tensor, relative to the tensor's
/// largest magnitude. The bar is 1e-4, or twice PyTorch's own float32 error on that tensor
/// where float32 cannot do better (`gradients_f32.safetensors`, made by
/// `tests/data/vn_gradients/torch_float32_gradients.py`: attention with saturated softmax
/// rows makes some weight gradients ill-conditioned, torch float32 is off by up to 3e-2).
/// Tensors that are zero in exact arithmetic (torch float64 stores rounding noise, e.g. the key
/// bias under dot attention: shifting every key by one vector leaves the softmax unchanged, or
/// exact zeros) must be zero to float32 rounding: at most 1e-6 of the model's largest gradient.
fn gradient_parity(name: &str) -> Result<(), Error> {
    let (violations, compared) = gradient_parity_at(&dir(name), name)?;
    assert!(violations.is_empty(), "{name}: {violations:#?}");
    assert!(compared > 10, "{name}: only {compared} gradients compared");
    Ok(())
}

/// The comparison of [`gradient_parity`] for the folder `d` (with `gradients.safetensors` and
/// `gradients_f32.safetensors`): prints the worst tensor; returns the tensors that miss their
/// bar and how many tensors were compared.
fn gradient_parity_at(d: &std::path::Path, name: &str) -> Result<(Vec<String>, usize), Error> {
    let mut m = load_from(d, Objective::Cotangents)?;
    let reference = StateDict::load(d.join("gradients.safetensors"))?;
    let torch_f32 = StateDict::load(d.join("gradients_f32.safetensors"))?;
    let got = m.model.gradients(&m.inputs, &reference)?.grads;
    let stored: Vec<(&str, &Tensor)> = reference
        .iter()
        .filter(|(k, _)| k.starts_with("param.") || k.starts_with("input."))
        .collect();
    let magnitude = |t: &Tensor| t.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let model_scale = stored.iter().fold(0.0f64, |a, (_, t)| a.max(magnitude(t)));
    let (mut worst, mut worst_torch) = ((0.0f64, String::new()), 0.0f64);
    let (mut within, mut bar_by_torch, mut zeros) = (0, 0, 0);
    let mut violations = Vec::new();
    for (k, want) in &stored {
        let g = got.get(k).ok_or(Error::MissingKey {
            key: k.to_string(),
            expected: want.shape.clone(),
        })?;
        assert_eq!(g.shape, want.shape, "{name} {k}: shape");
        let t32 = torch_f32.get(k).ok_or(Error::MissingKey {
            key: format!("{k} (gradients_f32.safetensors)"),
            expected: want.shape.clone(),
        })?;
        let (e_torch, _) = rel_error_at(&t32.data, &want.data);
        // zero in exact arithmetic: float64 rounding noise that torch float32 does not
        // reproduce, or exactly zero (or noise) in float64 at 1e-12 of the model's scale
        if e_torch > 1.0 || magnitude(want) <= 1e-12 * model_scale {
            zeros += 1;
            let rel = magnitude(g) / model_scale;
            println!("{name}: {k} is zero in exact arithmetic: max |se3| / model scale {rel:.2e}");
            if rel >= 1e-6 {
                violations.push(format!("{k} should vanish, max |g| {rel:.3e} of the scale"));
            }
            continue;
        }
        let (e, i) = rel_error_at(&g.data, &want.data);
        if e < 1e-4 {
            within += 1;
        } else {
            bar_by_torch += 1;
        }
        worst_torch = worst_torch.max(e_torch);
        if e > worst.0 {
            worst = (
                e,
                format!(
                    "{k}[{i}] got {} want {}, torch float32 error {e_torch:.2e}",
                    g.data[i], want.data[i]
                ),
            );
        }
        if e >= 1e-4_f64.max(2.0 * e_torch) {
            violations.push(format!("{k} off by {e:.3e} (torch float32: {e_torch:.3e})"));
        }
    }
    println!(
        "{name}: {} gradients, worst relative error {:.3e} ({}); torch float32 worst {worst_torch:.3e}; \
         {within} within 1e-4, {bar_by_torch} within 2x torch float32, {zeros} zero in exact arithmetic",
        stored.len(),
        worst.0,
        worst.1
    );
    Ok((violations, stored.len()))
}

#[test]
fn vn_feat_eps0_gradients_match_torch_autograd() -> Result<(), Error> {
    gradient_parity("vn_feat_eps0")
}

#[test]
fn vn_feat_eps1e6_gradients_match_torch_autograd() -> Result<(), Error> {
    gradient_parity("vn_feat_eps1e-6")
}

#[test]
fn vn_l2dist_transl_gradients_match_torch_autograd() -> Result<(), Error> {
    gradient_parity("vn_l2dist_transl")
}

#[test]
fn vn_feat_eps0_adam_steps_follow_torch_training() -> Result<(), Error> {
    use se3_core::train::{Adam, Optimizer, Param};
    let mut m = load("vn_feat_eps0", Objective::MeanSquaredError)?;
    let reference = StateDict::load(dir("vn_feat_eps0").join("training.safetensors"))?;
    // the trained parameters are torch's `named_parameters()` (`ln.beta` is a buffer)
    let names: Vec<String> = m
        .model
        .parameters()
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let mut values: Vec<Vec<f32>> = m
        .model
        .parameters()
        .iter()
        .map(|p| p.value.clone())
        .collect();
    let stored = reference
        .iter()
        .filter(|(k, _)| k.starts_with("param."))
        .count();
    assert_eq!(names.len(), stored, "parameters {names:?}");
    let want_loss = reference
        .get("loss")
        .map(|t| t.data.clone())
        .unwrap_or_default();
    assert_eq!(want_loss.len(), 4);
    let mut adam = Adam::new(1e-2);
    let mut losses = vec![];
    // per element, the smallest |gradient| over the steps
    let mut min_grad: Vec<Vec<f64>> = values
        .iter()
        .map(|v| vec![f64::INFINITY; v.len()])
        .collect();
    for step in 0..=3 {
        let run = m.model.gradients(&m.inputs, &reference)?;
        losses.push(run.loss);
        if step == 3 {
            break;
        }
        let grads = run.grads;
        let gs: Vec<Vec<f32>> = names
            .iter()
            .map(|n| {
                grads
                    .get(&format!("param.{n}"))
                    .map(|t| t.data.iter().map(|&v| v as f32).collect())
                    .unwrap_or_default()
            })
            .collect();
        for (mins, g) in min_grad.iter_mut().zip(&gs) {
            for (m, x) in mins.iter_mut().zip(g) {
                *m = m.min(f64::from(x.abs()));
            }
        }
        let mut params: Vec<Param<'_>> = names
            .iter()
            .zip(values.iter_mut())
            .zip(&gs)
            .map(|((n, v), g)| Param {
                name: n,
                value: v,
                grad: g,
            })
            .collect();
        adam.step(&mut params)?;
        for (n, v) in names.iter().zip(&values) {
            m.model.set_parameter(n, v.clone())?;
        }
    }
    let loss_err = losses
        .iter()
        .zip(&want_loss)
        .map(|(a, b)| (a - b).abs() / b.abs())
        .fold(0.0, f64::max);
    println!(
        "vn_feat_eps0 Adam: losses {losses:?} (torch {want_loss:?}), worst relative {loss_err:.3e}"
    );
    assert!(loss_err < 1e-4, "losses {losses:?} vs torch {want_loss:?}");
    // Adam moves an element by about lr g / (|g| + eps'): where a step's |g| is at the scale of
    // eps = 1e-8 (below 1e-5), the move depends on float32 rounding of g. In torch's float64
    // run, encoder.layers.1.2.1.U[50, 5] has g = 0, 0, then -8.9e-8 (its ReLU row wakes up in
    // step 3; torch float32 gets -6.0e-8): neither exactly zero nor above noise, so that step
    // is 0.54 lr in float64 and 0.50 lr in float32 (torch's own float32 run ends 3.8e-4 away).
    // Such elements are held to one step (lr); the others to 1e-4 of their tensor's scale.
    let lr = 1e-2;
    let (mut worst, mut worst_sensitive, mut sensitive) = ((0.0f64, String::new()), 0.0f64, 0);
    for ((n, v), mins) in names.iter().zip(&values).zip(&min_grad) {
        let want = reference
            .get(&format!("param.{n}"))
            .ok_or(Error::MissingKey {
                key: format!("param.{n}"),
                expected: vec![v.len()],
            })?;
        let scale = want.data.iter().fold(0.0f64, |a, x| a.max(x.abs()));
        for (i, ((&x, &w), &g)) in v.iter().zip(&want.data).zip(mins).enumerate() {
            let d = (f64::from(x) - w).abs();
            if g < 1e-5 {
                sensitive += 1;
                worst_sensitive = worst_sensitive.max(d);
                assert!(d < lr, "{n}[{i}]: {x} vs torch {w} (gradient near eps)");
            } else if d / scale > worst.0 {
                worst = (d / scale, format!("{n}[{i}] got {x} want {w}"));
            }
        }
    }
    println!(
        "vn_feat_eps0 Adam: parameters after 3 steps, worst relative error {:.3e} ({}); \
         {sensitive} elements with a gradient below 1e-5 in some step, worst absolute {worst_sensitive:.3e}",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 1e-4,
        "parameters off by {:.3e} at {}",
        worst.0,
        worst.1
    );
    Ok(())
}

/// Gradient parity on configurations outside tests/reference: every case folder of
/// `tests/data/extra_reference/vn_transformer/cases` with a `gradients.safetensors`
/// (`generate.py --gradients`, torch float64) and `gradients_f32.safetensors`
/// (`tests/data/vn_gradients/torch_float32_gradients.py`), each tensor held to the bar of
/// [`gradient_parity`]. `SE3_VN_GRAD_CASES=<folder of case folders>` runs another set.
#[test]
fn random_vn_configs_gradients_match_torch() -> Result<(), Error> {
    let cases = gradient_case_dirs(
        "SE3_VN_GRAD_CASES",
        "tests/data/extra_reference/vn_transformer/cases",
        5,
    )?;
    let mut failures = Vec::new();
    for d in &cases {
        let name = d
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match gradient_parity_at(d, &name) {
            Ok((violations, compared)) => {
                if compared < 3 {
                    failures.push(format!("{name}: only {compared} gradients compared"));
                }
                failures.extend(violations.into_iter().map(|v| format!("{name}: {v}")));
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures over {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}
