//! Time of one training step of the N-body EGNN (forward, backward and the Adam update):
//!
//! ```text
//! cargo run --release -p se3-models --example nbody_step_time -- [--batch B] [--steps N]
//! ```
//!
//! Simulates `B` trajectories (seed 1), builds the paper's model (4 layers, 64 hidden), runs
//! one step to compile the graph, then `N` timed steps on the same batch; prints the median
//! and the fastest step in milliseconds and the time per 3000-sample epoch they imply.

use std::time::Instant;

use rand::SeedableRng;
use se3_models::physics::dataset::Sample;
use se3_models::physics::egnn_nbody::{NBodyEgnn, NBodyEgnnConfig};
use se3_models::physics::nbody::NBodyConfig;

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let (mut batch, mut steps) = (100usize, 10usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--batch" => batch = value()?.parse()?,
            "--steps" => steps = value()?.parse::<usize>()?.max(1),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let cfg = NBodyConfig {
        train: batch,
        val: 0,
        test: 0,
        ..NBodyConfig::default()
    };
    let (file, _) = cfg.generate(1, || {})?;
    let train = &file.split("train").ok_or("no train split")?.samples;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut model = NBodyEgnn::new(NBodyEgnnConfig::default(), &mut rng);
    let samples: Vec<&Sample> = train.iter().collect();
    let start = Instant::now();
    model.train_step(&samples)?;
    println!(
        "first step (builds and compiles the graph): {:.0} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut ms: Vec<f64> = (0..steps)
        .map(|_| {
            let t = Instant::now();
            model
                .train_step(&samples)
                .map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let epoch = 3000usize.div_ceil(batch) as f64;
    println!(
        "batch {batch} ({} nodes): median {median:.1} ms, fastest {:.1} ms per step over {steps} \
         steps; a 3000-sample epoch {:.1} s (median)",
        batch * 5,
        ms[0],
        median * epoch / 1e3
    );
    Ok(())
}
