//! `se3 bench train`: one training step of the SE(3)-Transformer (forward, the loss
//! `Σ_out mean(out²)`, backward, Adam lr 1e-3) at the sizes of `bench_pytorch_train.py` (dim 32,
//! heads 4, dim_head 16, depth 2, 16 neighbours, degrees 2 and 3, batch 1, return_type 0), next
//! to se3-transformer-pytorch's step measured in the same session by that script.
//!
//! se3's step is [`DifferentiableSe3Transformer`] (the model's se3-core layers with their
//! backward passes, `se3_core::autodiff`) with the in-graph MSE objective
//! ([`Objective::MeanSquaredError`], targets zero): one graph run gives the outputs and every
//! gradient; then se3-core's Adam updates float32 copies of the parameters and
//! [`Differentiable::set_parameter`] writes them back into the graph's weights.
//!
//! Each case runs in a child process (`--case <name>`), so its peak resident set (VmHWM) is its
//! own; it first times the forward alone on a graph of the same form (so the step's graph time
//! splits into forward and backward), then builds the training graph and times a warm-up and the
//! median of 3 steps, with the stages: host preparation (neighbours, basis), the graph run
//! (forward + backward), host gradient assembly, and Adam + writing the weights back.

use std::process::Command;
use std::time::Instant;

use rand::{rngs::StdRng, SeedableRng};
use se3_core::train::{Adam, Optimizer, Param};
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::differentiable::{Differentiable, Objective};
use se3_models::se3_transformer::net::DifferentiableSe3Transformer;
use se3_models::se3_transformer::{Se3TransformerForward, Se3TransformerNet};

use super::bench_pytorch::{TorchSource, HOW_TO_GET_TORCH};
use super::bench_se3t::{bench_config, peak_mib, random_inputs, random_weights, status_mib};

/// The cases of `bench_pytorch_train.py`: name, degrees, nodes.
const CASES: &[(&str, usize, usize)] = &[
    ("se3t_deg2_n128", 2, 128),
    ("se3t_deg2_n512", 2, 512),
    ("se3t_deg3_n128", 3, 128),
];

/// Timed steps after the warm-up.
const REPS: usize = 3;

/// Runs every case in a child process and prints the table next to PyTorch's step.
pub fn run(
    case: Option<&str>,
    torch: &TorchSource,
    only: Option<&str>,
) -> Result<(), super::CliError> {
    if let Some(name) = case {
        let c = CASES
            .iter()
            .find(|c| c.0 == name)
            .ok_or_else(|| format!("unknown case `{name}`"))?;
        return run_case(c.1, c.2);
    }
    let cases: Vec<&(&str, usize, usize)> = match only {
        None => CASES.iter().collect(),
        Some(list) => list
            .split(',')
            .map(|n| {
                CASES
                    .iter()
                    .find(|c| c.0 == n.trim())
                    .ok_or_else(|| format!("unknown case `{n}`"))
            })
            .collect::<Result<_, _>>()?,
    };
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for c in cases {
        eprintln!("{} ...", c.0);
        let out = Command::new(&exe)
            .args(["bench", "train", "--case", c.0])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "case {} failed: {}",
                c.0,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{} (PyTorch) ...", c.0);
        let t = torch.measure_train(c.0)?;
        rows.push((c.0, text, t));
    }
    println!(
        "SE3Transformer training step (forward, sum of mean(out^2), backward, Adam): dim 32, \
         heads 4, dim_head 16, depth 2, 16 neighbours, batch 1, return_type 0; se3 median of \
         {REPS} steps"
    );
    println!(
        "{:<16} {:>10} {:>11} {:>9} {:>12} {:>11} {:>9}",
        "case", "se3 (s)", "torch (s)", "speedup", "se3 peak MiB", "torch MiB", "mem frac"
    );
    for (name, text, t) in &rows {
        let step = field(text, "step_s")?;
        let peak = field(text, "peak_mib")?;
        match t {
            Some(t) => println!(
                "{name:<16} {step:>10.4} {:>11.4} {:>8.2}x {peak:>12.1} {:>11.1} {:>9.3}",
                t.median_s,
                t.median_s / step,
                t.peak_mib,
                peak / t.peak_mib
            ),
            None => println!(
                "{name:<16} {step:>10.4} {:>11} {:>9} {peak:>12.1} {:>11} {:>9}",
                "-", "-", "-", "-"
            ),
        }
    }
    if rows.iter().all(|r| r.2.is_none()) {
        println!("{HOW_TO_GET_TORCH}");
    }
    println!("\nwhere the time of a step goes (seconds; forward = the same graph form without its backward):");
    for (name, text, _) in &rows {
        let lines: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("stage "))
            .map(str::to_string)
            .collect();
        println!("  {name:<16} {}", lines.join(", "));
    }
    println!("\nmemory (MiB): peak = VmHWM of the case's process; graph = resident weights + most intermediates alive at once in a step:");
    for (name, text, _) in &rows {
        println!(
            "  {name:<16} peak {:.1}, after build {:.1}, graph weights {:.1}, intermediates {:.1}",
            field(text, "peak_mib")?,
            field(text, "build_rss_mib")?,
            field(text, "weights_mib")?,
            field(text, "intermediates_mib")?
        );
    }
    println!("targets: speedup >= 10x, mem frac <= 0.2");
    Ok(())
}

/// The number after `key` on a line of a child's output.
fn field(text: &str, key: &str) -> Result<f64, super::CliError> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .ok_or_else(|| format!("the case printed no `{key}`"))?
        .parse::<f64>()
        .map_err(|e| format!("`{key}`: {e}").into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run_case(num_degrees: usize, nodes: usize) -> Result<(), super::CliError> {
    let mut rng = StdRng::seed_from_u64(0);
    let cfg = bench_config(num_degrees)?;
    let sd = random_weights(&cfg, &mut rng)?;
    let inputs = random_inputs(nodes, 32, &mut rng)?;
    let fwd = Se3TransformerForward::from_literals(&serde_json::json!({"return_type": 0}))?;
    let net = Se3TransformerNet::from_config(&cfg, &sd)?;
    // the forward alone (the same layers without the backward)
    let mut targets = StateDict::new();
    let forward_s = {
        let mut f = net.compile()?;
        // targets zero: the loss of bench_pytorch_train.py
        for (k, t) in f.forward_inputs(&inputs, &fwd)?.iter() {
            let len = t.data.len();
            targets.insert(
                format!("target.{k}"),
                Tensor::new(t.shape.clone(), vec![0.0; len])?,
            );
        }
        let mut times = Vec::new();
        for _ in 0..REPS {
            let t = Instant::now();
            f.forward_inputs(&inputs, &fwd)?;
            times.push(t.elapsed().as_secs_f64());
        }
        median(times)
    };
    let mut m =
        DifferentiableSe3Transformer::new(&net, fwd, &sd, Objective::MeanSquaredError, false)?;
    // the model holds the weights from here on
    drop(sd);
    drop(net);
    println!("build_rss_mib {}", status_mib("VmRSS:")?);
    let names: Vec<String> = m.parameters().iter().map(|p| p.name.clone()).collect();
    let mut adam = Adam::new(1e-3);
    let mut steps = Vec::new();
    let mut stages: Vec<Vec<(&'static str, f64)>> = Vec::new();
    for rep in 0..=REPS {
        let t = Instant::now();
        let grads = m.gradients(&inputs, &targets)?.grads;
        let ta = Instant::now();
        // Adam parameter by parameter (its moments are per parameter: the same update as one
        // call on all of them), each value updated in a copy moved back into the model, so the
        // step holds no second copy of every parameter or gradient (torch updates in place)
        for k in &names {
            let g: Vec<f32> = grads
                .get(&format!("param.{k}"))
                .map(|t| t.data.iter().map(|&v| v as f32).collect())
                .unwrap_or_default();
            let mut v = m
                .parameters()
                .get(k)
                .map(|p| p.value.clone())
                .unwrap_or_default();
            adam.step(&mut [Param {
                name: k,
                value: &mut v,
                grad: &g,
            }])?;
            m.set_parameter(k, v)?;
        }
        drop(grads);
        let adam_s = ta.elapsed().as_secs_f64();
        if rep > 0 {
            steps.push(t.elapsed().as_secs_f64());
            let mut st = m.last_timings().to_vec();
            st.push(("adam + weights back", adam_s));
            stages.push(st);
        }
    }
    println!("step_s {}", median(steps));
    if std::env::var_os("SE3_PROFILE").is_some() {
        print_profile(&mut m, &inputs, &targets)?;
    }
    let stage_median = |name: &str| {
        median(
            stages
                .iter()
                .map(|s| s.iter().filter(|t| t.0 == name).map(|t| t.1).sum())
                .collect(),
        )
    };
    let graph = stage_median("graph: forward + backward");
    println!(
        "stage host neighbours+inputs {:.4}",
        stage_median("host: neighbours + inputs")
    );
    println!("stage graph+host forward alone {:.4}", forward_s);
    println!("stage graph forward+backward {:.4}", graph);
    println!(
        "stage host outputs+gradients {:.4}",
        stage_median("host: outputs + gradients")
    );
    println!(
        "stage adam+weights-back {:.4}",
        stage_median("adam + weights back")
    );
    let mem = m.session().memory_stats();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!("weights_mib {}", mib(mem.resident));
    println!("intermediates_mib {}", mib(mem.peak_intermediates));
    println!("peak_mib {}", peak_mib()?);
    Ok(())
}

/// One more step with every operator of the training graph timed: the heaviest operator kinds
/// and (kind, input shapes) groups, on stderr (`SE3_PROFILE`).
fn print_profile(
    m: &mut DifferentiableSe3Transformer,
    inputs: &se3_models::inputs::ModelInputs,
    targets: &StateDict,
) -> Result<(), super::CliError> {
    m.instrument();
    se3_core::exec::profile::reset();
    m.gradients(inputs, targets)?;
    let recs = se3_core::exec::profile::records();
    let total: f64 = recs.iter().map(|r| r.seconds).sum();
    eprintln!("profile: {} operator calls, {total:.4} s", recs.len());
    for (k, t, c) in se3_core::exec::profile::by_kind(&recs).iter().take(25) {
        eprintln!("{t:.4} {c:5} {k}");
    }
    let shapes = se3_core::exec::profile::by_kind_and_shapes(&recs);
    for (k, t, c) in shapes.iter().take(40) {
        eprintln!("{t:.4} {c:4} {k}");
    }
    for (name, t) in se3_core::exec::profile::details() {
        eprintln!("detail {name} {t:.4}");
    }
    Ok(())
}
