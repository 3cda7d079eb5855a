//! Equiformer gradients: se3's backward pass (float32) against equiformer-pytorch 0.5.4's
//! autograd in float64 (`gradients.safetensors`: `L = Σ_out <out, cotangent.out>`,
//! `param.<key>` for every parameter, `input.feats` scaled by `embedding_grad_frac` as the
//! library does), the coordinates' gradient (not stored: the library detaches it) against
//! finite differences, and three Adam steps against `training.safetensors`.
//! Errors are per tensor: the largest absolute difference over the tensor's largest magnitude.

mod common;
use common::*;

use rand::Rng;
use se3_models::checkpoint::StateDict;
use se3_models::equiformer::{CompiledEquiformer, Equiformer, EquiformerConfig, EquiformerForward};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::Error;

/// A reference model compiled with gradients, its inputs and its stored tensors.
struct Loaded {
    model: CompiledEquiformer,
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
    Ok(Loaded { model, inputs })
}

/// Compares every stored `param.*` / `input.*` gradient of the folder `d`; returns the worst
/// relative error, where, and how many tensors were compared.
pub fn gradient_parity(d: &std::path::Path) -> Result<(f64, String, usize), Error> {
    let (_, reference, got) = gradient_run(d)?;
    compare(&reference, &got)
}

/// The model of folder `d` run with the stored cotangents: the model, the reference and se3's
/// gradients.
fn gradient_run(d: &std::path::Path) -> Result<(Loaded, StateDict, StateDict), Error> {
    let mut m = load_from(d)?;
    let reference = StateDict::load(d.join("gradients.safetensors"))?;
    let (_, got) = m.model.forward_and_gradients(&m.inputs, &reference)?;
    Ok((m, reference, got))
}

/// The worst relative error over the stored `param.*` / `input.*` tensors, where, and how many.
fn compare(reference: &StateDict, got: &StateDict) -> Result<(f64, String, usize), Error> {
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

/// Gradient parity of reference `name`, then its coordinates' gradient against finite
/// differences ([`coordinates_match_finite_differences`]).
fn check_reference(name: &str) -> Result<(), Error> {
    let (mut m, reference, got) = gradient_run(&dir(name))?;
    let (worst, at, checked) = compare(&reference, &got)?;
    println!("{name}: {checked} gradients, worst relative error {worst:.3e} ({at})");
    assert!(checked > 10, "{name}: only {checked} gradients compared");
    assert!(worst < 1e-4, "{name}: gradient off by {worst:.3e} at {at}");
    coordinates_match_finite_differences(name, &mut m, &reference, &got)
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

/// Three steps of se3's Adam (lr 1e-2) through the [`Differentiable`] interface (dispatch
/// from the files, mean-squared-error objective) against `torch.optim.Adam` on
/// equiformer-pytorch in float64: the losses before each step and after the last, and every
/// parameter after the third step.
fn adam_follows_torch(name: &str) -> Result<(), Error> {
    use se3_core::train::{Adam, Optimizer, Param};
    use se3_models::differentiable::{differentiable_from_files, Objective};
    let d = dir(name);
    let file = ModelFile::load(d.join("config.json"))?;
    let weights = StateDict::load(d.join("weights.safetensors"))?;
    let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    let reference = StateDict::load(d.join("training.safetensors"))?;
    let mut model = differentiable_from_files(&file, &weights, Objective::MeanSquaredError)?;
    let keys: Vec<String> = model.parameters().iter().map(|p| p.name.clone()).collect();
    let mut values: Vec<Vec<f32>> = model.parameters().iter().map(|p| p.value.clone()).collect();
    // every parameter torch trains, and nothing else (no buffers)
    let torch_params = reference
        .iter()
        .filter(|(k, _)| k.starts_with("param."))
        .count();
    assert_eq!(keys.len(), torch_params, "{name}: parameter count");
    let want_loss = reference
        .get("loss")
        .map(|t| t.data.clone())
        .unwrap_or_default();
    let mut adam = Adam::new(1e-2);
    let mut losses = vec![];
    let mut min_grad: Vec<Vec<f32>> = values.iter().map(|v| vec![f32::MAX; v.len()]).collect();
    for step in 0..=3 {
        let run = model.gradients(&inputs, &reference)?;
        losses.push(run.loss);
        if step == 3 {
            break;
        }
        let mut gs: Vec<Vec<f32>> = Vec::new();
        for k in &keys {
            let g = run
                .grads
                .get(&format!("param.{k}"))
                .ok_or(Error::MissingKey {
                    key: format!("param.{k}"),
                    expected: vec![],
                })?;
            gs.push(g.data.iter().map(|&v| v as f32).collect());
        }
        for (m, g) in min_grad.iter_mut().zip(&gs) {
            for (a, b) in m.iter_mut().zip(g) {
                *a = a.min(b.abs());
            }
        }
        let mut params: Vec<Param<'_>> = keys
            .iter()
            .zip(values.iter_mut())
            .zip(&gs)
            .map(|((k, v), g)| Param {
                name: k,
                value: v,
                grad: g,
            })
            .collect();
        adam.step(&mut params)?;
        for (k, v) in keys.iter().zip(&values) {
            model.set_parameter(k, v.clone())?;
        }
    }
    let loss_err = losses
        .iter()
        .zip(&want_loss)
        .map(|(a, b)| (a - b).abs() / b.abs())
        .fold(0.0, f64::max);
    println!("{name} Adam: losses {losses:?} (torch {want_loss:?}), worst relative {loss_err:.3e}");
    // per tensor, relative to its largest value; split by the smallest |g| an element had
    // over the steps (the account of elements with small gradients is in `gradients.rs`'s
    // `tfn_stack` test: Adam's step is about `lr sign(g)` once |g| >> eps, so a gradient near
    // eps turns float32 rounding into a different step)
    const SENSITIVE: f32 = 1e-3;
    let mut conditioned = (0.0f64, String::new());
    let mut small_gradient = (0.0f64, String::new(), 0usize);
    for ((k, v), mg) in keys.iter().zip(&values).zip(&min_grad) {
        let want = reference
            .get(&format!("param.{k}"))
            .ok_or(Error::MissingKey {
                key: format!("param.{k}"),
                expected: vec![v.len()],
            })?;
        let scale = want
            .data
            .iter()
            .fold(0.0f64, |a, b| a.max(b.abs()))
            .max(1e-30);
        for (i, ((&x, &y), &g)) in v.iter().zip(&want.data).zip(mg).enumerate() {
            let e = (f64::from(x) - y).abs() / scale;
            let at = || format!("{k}[{i}] got {x} want {y} (min |g| {g:.1e})");
            if g < SENSITIVE {
                small_gradient.2 += 1;
                if e > small_gradient.0 {
                    small_gradient = (e, at(), small_gradient.2);
                }
            } else if e > conditioned.0 {
                conditioned = (e, at());
            }
        }
    }
    println!(
        "{name} Adam: parameters after 3 steps {:.3e} ({}) where |g| >= {SENSITIVE:e} at every step; {} elements with a smaller |g|, worst {:.3e} ({})",
        conditioned.0, conditioned.1, small_gradient.2, small_gradient.0, small_gradient.1
    );
    assert_eq!(want_loss.len(), 4);
    assert!(
        loss_err < 1e-4,
        "{name}: losses {losses:?} vs torch {want_loss:?}"
    );
    assert!(
        conditioned.0 < 1e-4,
        "{name}: parameters off by {:.3e} at {}",
        conditioned.0,
        conditioned.1
    );
    assert!(
        small_gradient.0 < 1e-2,
        "{name}: parameters with small gradients off by {:.3e} at {}",
        small_gradient.0,
        small_gradient.1
    );
    Ok(())
}

#[test]
fn equi_l2dist_adam_steps_follow_torch_training() -> Result<(), Error> {
    adam_follows_torch("equi_l2dist")
}

#[test]
fn equi_mlp_adam_steps_follow_torch_training() -> Result<(), Error> {
    adam_follows_torch("equi_mlp")
}

/// The coordinates' gradient (through the edge distances and frames; the library detaches
/// it, so it is not stored) against central differences of the float32 graph's loss along
/// three fresh random directions.
fn coordinates_match_finite_differences(
    name: &str,
    m: &mut Loaded,
    reference: &StateDict,
    grads: &StateDict,
) -> Result<(), Error> {
    let mut r = rng(rand::random());
    let g = grads.get("input.coors").ok_or(Error::MissingKey {
        key: "input.coors".into(),
        expected: m.inputs.coors.shape.clone(),
    })?;
    let loss = |model: &mut CompiledEquiformer, inp: &ModelInputs| -> Result<f64, Error> {
        let out = model.forward(inp)?;
        let mut l = 0.0;
        for (k, c) in reference.iter() {
            if let Some(o) = k.strip_prefix("cotangent.").and_then(|n| out.get(n)) {
                l += o.data.iter().zip(&c.data).map(|(a, b)| a * b).sum::<f64>();
            }
        }
        Ok(l)
    };
    let mut checked = 0;
    for _ in 0..8 {
        if checked == 3 {
            break;
        }
        let dirn: Vec<f64> = (0..g.data.len()).map(|_| r.gen_range(-1.0..1.0)).collect();
        let analytic: f64 = g.data.iter().zip(&dirn).map(|(a, b)| a * b).sum();
        // the size of the terms, `Σ |∂L/∂x_i d_i|`: the scale of the directional derivative
        // that the float32 differences' rounding noise does not shrink with (relative to
        // `|<∇L, d>|` alone, a direction whose terms nearly cancel looked like a 2.7% error)
        let terms: f64 = g.data.iter().zip(&dirn).map(|(a, b)| (a * b).abs()).sum();
        let mut fd_at = |h: f64| -> Result<f64, Error> {
            let mut at = |sign: f64| -> Result<f64, Error> {
                let mut inp = m.inputs.clone();
                for (x, d) in inp.coors.data.iter_mut().zip(&dirn) {
                    *x += sign * h * d;
                }
                loss(&mut m.model, &inp)
            };
            Ok((at(1.0)? - at(-1.0)?) / (2.0 * h))
        };
        // h small against the distance gaps that decide the neighbours, large against
        // float32 rounding; a step that changes the neighbour choice makes the loss jump
        // (the two steps disagree by far more than the rounding): that direction is skipped
        let (fd, fd_half) = (fd_at(1e-3)?, fd_at(5e-4)?);
        if (fd - fd_half).abs() > 1e-2 * terms.max(1e-30) {
            println!(
                "{name}: neighbour choice changed along a direction ({fd} vs {fd_half}), skipped"
            );
            continue;
        }
        let err = (fd - analytic).abs() / terms.max(1e-30);
        // the float32 forward's rounding, divided by h, is the differences' own noise: the two
        // steps' disagreement measures it
        let noise = 2.0 * (fd - fd_half).abs() / terms.max(1e-30);
        println!("{name}: d L / d coors along a random direction: {analytic:.6} vs finite differences {fd:.6} (relative to the terms' size {terms:.3}: {err:.2e}, noise {noise:.2e})");
        assert!(
            err < 2e-3 + noise,
            "{name}: coordinate gradient {analytic} vs finite differences {fd} (h/2: {fd_half}), terms {terms}"
        );
        checked += 1;
    }
    assert_eq!(
        checked, 3,
        "{name}: too many directions changed the neighbours"
    );
    Ok(())
}

/// Gradient parity on random configurations (`tests/data/extra_reference/equiformer/`,
/// `generate.py` stores torch's float64 gradients for a seeded cotangent beside the forward
/// reference); `SE3_EQUI_EXTRA_DIR=<folder of case folders>` runs another set.
#[test]
fn random_equiformer_configs_gradients_match_torch() -> Result<(), Error> {
    let cases = gradient_case_dirs(
        "SE3_EQUI_EXTRA_DIR",
        "tests/data/extra_reference/equiformer/cases",
        3,
    )?;
    let mut failures = Vec::new();
    for d in &cases {
        let name = d
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match gradient_parity(d) {
            Ok((worst, at, checked)) => {
                println!("{name}: {checked} gradients, worst relative error {worst:.3e} ({at})");
                if worst >= 1e-4 || checked == 0 {
                    failures.push(format!("{name}: {worst:.3e} at {at}"));
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
