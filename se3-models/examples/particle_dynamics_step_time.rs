//! Time of one training step of each variant of the iterative SE(3)-Transformer on the
//! `dynamics` set, split by stage:
//!
//! ```text
//! cargo run --release -p se3-models --example particle_dynamics_step_time -- [--batch B]
//!     [--steps N] [--variant NAME]... [--profile]
//! ```
//!
//! Builds each model (timed: graph build and compile), runs one step to warm up, then `N`
//! timed steps on the first `B` training samples of `se3 data dynamics --seed 0`; prints the
//! median of each stage (forward pass, backward pass, their host / graph / read-back split,
//! Adam, weight write-back) in milliseconds, and the time of a forward-only prediction. With
//! `--profile`, one more step with every operator of the training graphs timed: the heaviest
//! operator kinds and (kind, input shapes) groups.

use std::time::Instant;

use se3_models::physics::dataset::Sample;
use se3_models::physics::dynamics::DynamicsConfig;
use se3_models::physics::iterative_se3t::{
    DynamicsBatch, IterativeConfig, IterativeSe3Transformer, IterativeVariant, StepTimings,
};

type Failure = Box<dyn std::error::Error>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Failure> {
    let (mut batch, mut steps) = (10usize, 5usize);
    let mut variants = Vec::new();
    let mut profile = false;
    let config = IterativeConfig::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--batch" => batch = value()?.parse()?,
            "--profile" => profile = true,
            "--steps" => steps = value()?.parse::<usize>()?.max(1),
            "--variant" => {
                let name = value()?;
                variants.push(
                    IterativeVariant::ALL
                        .into_iter()
                        .find(|v| v.name() == name)
                        .ok_or(format!("unknown variant `{name}`"))?,
                );
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if variants.is_empty() {
        variants = IterativeVariant::ALL.to_vec();
    }
    let data = DynamicsConfig::default().generate(0, || {})?;
    let train = &data.split("train").ok_or("no train split")?.samples;
    let refs: Vec<&Sample> = train.iter().take(batch).collect();
    let b = DynamicsBatch::new(&refs)?;
    for v in variants {
        let t = Instant::now();
        let mut model = IterativeSe3Transformer::new(v, config, 0, 1e-3)?;
        let build = t.elapsed().as_secs_f64();
        let t = Instant::now();
        model.train_step(&b)?;
        let first = t.elapsed().as_secs_f64();
        let mut total = Vec::new();
        let mut stages: Vec<StepTimings> = Vec::new();
        let mut predict = Vec::new();
        for _ in 0..steps {
            let t = Instant::now();
            model.train_step(&b)?;
            total.push(t.elapsed().as_secs_f64());
            stages.push(model.last_step_timings());
            let t = Instant::now();
            model.predict(&b)?;
            predict.push(t.elapsed().as_secs_f64());
        }
        let ms = |f: fn(&StepTimings) -> f64| median(stages.iter().map(f).collect()) * 1e3;
        println!(
            "{} ({} parameters, batch {batch} of {} nodes): build {build:.1} s, first step {first:.2} s",
            v.name(),
            model.parameter_count(),
            b.nodes
        );
        println!(
            "  step median {:.0} ms: forward {:.0}, backward {:.0} (of both: host graph {:.0}, graph runs {:.0}, read-back {:.0}), adam {:.0}, write-back {:.0}; predict {:.0} ms",
            median(total) * 1e3,
            ms(|s| s.forward),
            ms(|s| s.backward),
            ms(|s| s.host_graph),
            ms(|s| s.graph_run),
            ms(|s| s.host_gradients),
            ms(|s| s.adam),
            ms(|s| s.write_back),
            median(predict) * 1e3,
        );
        if profile {
            model.instrument();
            model.train_step(&b)?;
            se3_core::exec::profile::reset();
            model.train_step(&b)?;
            let recs = se3_core::exec::profile::records();
            let total: f64 = recs.iter().map(|r| r.seconds).sum();
            println!("  profile: {} operator calls, {total:.3} s", recs.len());
            for (k, t, c) in se3_core::exec::profile::by_kind(&recs).iter().take(15) {
                println!("    {t:.4} s {c:5} {k}");
            }
            let shapes = se3_core::exec::profile::by_kind_and_shapes(&recs);
            for (k, t, c) in shapes.iter().take(20) {
                println!("    {t:.4} s {c:4} {k}");
            }
        }
    }
    Ok(())
}
