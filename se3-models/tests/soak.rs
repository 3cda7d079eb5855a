//! Long runs: one compiled model (a one-conv TFN stack, 0:2 -> 0:2,1:1, random weights) runs
//! 10,000 forwards on clouds of random size (2 ..= 10 nodes, batch 1 or 2). Resident memory
//! (VmRSS) after the run stays within [`GROWTH_BOUND`] of what it was after a warm-up, and a fixed
//! probe cloud gives bit-identical outputs before, during and after the run.
//!
//! The same for training: the differentiable form of that stack (in-graph mean squared error)
//! takes 1,000 Adam steps on clouds of random size with random targets; VmRSS stays within the
//! same bound of its value after a warm-up, and a probe step (fixed cloud and targets, at the
//! initial parameters, which are put back for it and then replaced by the trained ones) gives
//! bit-identical outputs, loss and gradients every 250 steps.

use rand::{Rng, SeedableRng};
use se3_core::train::{Adam, Optimizer, Param};
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::differentiable::{Differentiable, Gradients, Objective};
use se3_models::inputs::{BoolTensor, ModelInputs, NodeFeats};
use se3_models::tfn::graph::{TfnGraph, TfnSession};
use se3_models::tfn::{TfnStack, TfnStackConfig};
use se3_models::Error;

/// Forwards of the soak.
const RUNS: usize = 10_000;
/// Training steps of the training soak.
const STEPS: usize = 1_000;
/// Most resident bytes the run may add after the warm-up: the engine's buffer pool keeps at most
/// 96 MiB (`se3_core::exec::pool`), a tiny model's buffers are far below its 64 KiB pooling size,
/// so any steady growth (a leak of a few hundred bytes a run) shows long before this.
const GROWTH_BOUND: u64 = 8 << 20;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn vm_rss_bytes() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn config() -> Result<TfnStackConfig, Error> {
    TfnStackConfig::from_kwargs(&serde_json::json!({
        "fibers": [{"0": 2}, {"0": 2, "1": 1}]
    }))
}

fn model(r: &mut impl Rng) -> Result<TfnSession, Error> {
    let cfg = config()?;
    TfnGraph::from_state_dict(&cfg, &weights(&cfg, r)?)?.compile()
}

/// Random weights near a working point: gains and scales about 1, the rest about 0.
fn weights(cfg: &TfnStackConfig, r: &mut impl Rng) -> Result<StateDict, Error> {
    let mut sd = StateDict::new();
    for (k, shape) in TfnStack::expected_keys(cfg)? {
        let n: usize = shape.iter().product();
        let centre = if shape.len() == 1 && (k.ends_with("weight") || k.ends_with("scale")) {
            1.0
        } else {
            0.0
        };
        let data = (0..n).map(|_| centre + r.gen_range(-0.3..0.3)).collect();
        sd.insert(k, Tensor::new(shape, data)?);
    }
    Ok(sd)
}

fn cloud(r: &mut impl Rng, b: usize, n: usize) -> ModelInputs {
    let mut vals = |len: usize| -> Vec<f64> { (0..len).map(|_| r.gen_range(-1.5..1.5)).collect() };
    ModelInputs {
        feats: NodeFeats::Dense(Tensor {
            shape: vec![b, n, 2],
            data: vals(b * n * 2),
        }),
        coors: Tensor {
            shape: vec![b, n, 3],
            data: vals(b * n * 3),
        },
        mask: Some(BoolTensor {
            shape: vec![b, n],
            data: (0..b * n).map(|i| i % n != n - 1 || n < 3).collect(),
        }),
        adj_mat: None,
        edges: None,
        neighbor_mask: None,
        global_feats: None,
    }
}

#[test]
fn ten_thousand_forwards_keep_memory_flat_and_results_identical() -> TestResult {
    se3_core::exec::pool::pin_mmap_threshold();
    let seed = se3_core::testing::seed();
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut session = model(&mut r)?;
    let probe = cloud(&mut r, 2, 9);
    let reference = session.forward(&probe)?;
    let check_probe = |session: &mut TfnSession, when: usize| -> TestResult {
        let again = session.forward(&probe)?;
        assert!(
            again == reference,
            "probe outputs changed after {when} forwards (SE3_SEED={seed})"
        );
        Ok(())
    };
    let mut random_forward = |session: &mut TfnSession| -> Result<(), Error> {
        let (b, n) = (r.gen_range(1..=2), r.gen_range(2..=10));
        let out = session.forward(&cloud(&mut r, b, n))?;
        assert!(out
            .iter()
            .all(|(_, t)| t.data.iter().all(|v| v.is_finite())));
        Ok(())
    };
    for _ in 0..500 {
        random_forward(&mut session)?;
    }
    let warm = vm_rss_bytes()?;
    for i in 0..RUNS {
        random_forward(&mut session)?;
        if i % 2000 == 1999 {
            check_probe(&mut session, i + 1)?;
        }
    }
    let end = vm_rss_bytes()?;
    eprintln!(
        "soak: {RUNS} forwards, VmRSS after warm-up {:.1} MiB, after the run {:.1} MiB",
        warm as f64 / 1048576.0,
        end as f64 / 1048576.0
    );
    assert!(
        end <= warm + GROWTH_BOUND,
        "resident memory grew from {warm} to {end} bytes over {RUNS} forwards (SE3_SEED={seed})"
    );
    Ok(())
}

/// Random regression targets in the shapes of the stack's outputs on a `b x n` cloud:
/// `type0` (b, n, 2, 1) and `type1` (b, n, 1, 3).
fn targets(r: &mut impl Rng, b: usize, n: usize) -> Result<StateDict, Error> {
    let mut t = StateDict::new();
    for (name, c, m) in [("target.type0", 2, 1), ("target.type1", 1, 3)] {
        let len = b * n * c * m;
        let data = (0..len).map(|_| r.gen_range(-1.0..1.0)).collect();
        t.insert(name, Tensor::new(vec![b, n, c, m], data)?);
    }
    Ok(t)
}

/// The parameters' current values, by name.
fn parameter_values(model: &dyn Differentiable) -> Vec<(String, Vec<f32>)> {
    model
        .parameters()
        .iter()
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect()
}

/// Sets every parameter to `values`.
fn set_values(model: &mut dyn Differentiable, values: &[(String, Vec<f32>)]) -> Result<(), Error> {
    for (name, v) in values {
        model.set_parameter(name, v.clone())?;
    }
    Ok(())
}

/// One Adam step from the gradients of `run`; returns the loss.
fn adam_step(
    model: &mut dyn Differentiable,
    adam: &mut Adam,
    run: &Gradients,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut values = parameter_values(model);
    let mut grads = Vec::with_capacity(values.len());
    for (name, _) in &values {
        let g = run
            .grads
            .get(&format!("param.{name}"))
            .ok_or_else(|| format!("no gradient of parameter {name}"))?;
        grads.push(g.data.iter().map(|&x| x as f32).collect::<Vec<f32>>());
    }
    let mut params: Vec<Param<'_>> = values
        .iter_mut()
        .zip(&grads)
        .map(|((name, value), grad)| Param { name, value, grad })
        .collect();
    adam.step(&mut params)?;
    set_values(model, &values)?;
    Ok(run.loss)
}

#[test]
fn a_thousand_training_steps_keep_memory_flat_and_results_identical() -> TestResult {
    se3_core::exec::pool::pin_mmap_threshold();
    let seed = se3_core::testing::seed();
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let cfg = config()?;
    let sd = weights(&cfg, &mut r)?;
    let mut model = TfnGraph::from_state_dict(&cfg, &sd)?
        .compile_differentiable(&sd, Objective::MeanSquaredError)?;
    let model: &mut dyn Differentiable = &mut model;
    let initial = parameter_values(model);
    let (probe, probe_targets) = (cloud(&mut r, 2, 9), targets(&mut r, 2, 9)?);
    let reference = model.gradients(&probe, &probe_targets)?;
    assert!(reference.loss.is_finite() && reference.loss > 0.0);
    let check_probe = |model: &mut dyn Differentiable, when: usize| -> TestResult {
        let trained = parameter_values(model);
        set_values(model, &initial)?;
        let again = model.gradients(&probe, &probe_targets)?;
        set_values(model, &trained)?;
        assert!(
            again.loss.to_bits() == reference.loss.to_bits()
                && again.outputs == reference.outputs
                && again.grads == reference.grads,
            "probe step changed after {when} training steps: loss {} vs {} (SE3_SEED={seed})",
            again.loss,
            reference.loss
        );
        Ok(())
    };
    let mut adam = Adam::new(1e-3);
    let mut random_step =
        |model: &mut dyn Differentiable| -> Result<f64, Box<dyn std::error::Error>> {
            let (b, n) = (r.gen_range(1..=2), r.gen_range(2..=10));
            let (inputs, given) = (cloud(&mut r, b, n), targets(&mut r, b, n)?);
            let run = model.gradients(&inputs, &given)?;
            assert!(run.loss.is_finite(), "loss {} (SE3_SEED={seed})", run.loss);
            adam_step(model, &mut adam, &run)
        };
    for _ in 0..100 {
        random_step(model)?;
    }
    let warm = vm_rss_bytes()?;
    let mut first_losses = 0.0;
    let mut last_losses = 0.0;
    for i in 0..STEPS {
        let loss = random_step(model)?;
        if i < 100 {
            first_losses += loss;
        } else if i >= STEPS - 100 {
            last_losses += loss;
        }
        if i % 250 == 249 {
            check_probe(model, i + 1)?;
        }
    }
    let end = vm_rss_bytes()?;
    eprintln!(
        "training soak: {STEPS} steps, mean loss of the first 100 {:.4}, of the last 100 {:.4}; \
         VmRSS after warm-up {:.1} MiB, after the run {:.1} MiB",
        first_losses / 100.0,
        last_losses / 100.0,
        warm as f64 / 1048576.0,
        end as f64 / 1048576.0
    );
    assert!(
        parameter_values(model) != initial,
        "training changed no parameter (SE3_SEED={seed})"
    );
    assert!(
        end <= warm + GROWTH_BOUND,
        "resident memory grew from {warm} to {end} bytes over {STEPS} training steps (SE3_SEED={seed})"
    );
    Ok(())
}
