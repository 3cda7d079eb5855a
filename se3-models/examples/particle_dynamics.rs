//! Particle dynamics with the iterative SE(3)-Transformer (issue #15 §1): trains the three
//! variants of `se3_models::physics::iterative_se3t` (gradient through every block's kernel
//! basis, iterations with the basis cut from the gradient, one pass of the same depth) on the
//! `dynamics` set (10 particles, all-pairs springs, blocks of 10 velocity-Verlet steps) with Adam
//! on the position MSE, and reports train/test MSE per epoch.
//!
//! ```text
//! cargo run --release -p se3-models --example particle_dynamics -- [--epochs N] [--seed S]
//!     [--train N] [--test N] [--batch B] [--lr LR] [--variant NAME]... [--out DIR]
//!     [--minutes M] [--train-eval N] [--report]
//! ```
//!
//! Trains on the first `--train` samples of the train split and evaluates on the first `--test`
//! of the test split (every sample by default). Writes `DIR/<variant>.csv` (epoch, train loss
//! (mean over the epoch's steps), train MSE (on the first `--train-eval` training samples) and
//! test MSE after the epoch, seconds); then, from
//! every variant's CSV in `DIR`, `DIR/particle_dynamics.svg` (the curves) and
//! `DIR/particle_dynamics.md` (the table). `--report` only writes the SVG and table;
//! `--minutes` stops a variant after the epoch that passes that wall time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use se3_models::physics::baselines::Baseline;
use se3_models::physics::dynamics::DynamicsConfig;
use se3_models::physics::iterative_se3t::{
    IterativeConfig, IterativeSe3Transformer, IterativeVariant,
};
use se3_models::physics::report::{line_chart_svg, Series};
use se3_models::se3_transformer::Se3Transformer;

type Failure = Box<dyn std::error::Error>;

struct Args {
    epochs: usize,
    seed: u64,
    train: Option<usize>,
    test: Option<usize>,
    batch: usize,
    lr: f64,
    variants: Vec<IterativeVariant>,
    out: PathBuf,
    minutes: f64,
    report: bool,
    train_eval: usize,
}

fn args() -> Result<Args, Failure> {
    let mut a = Args {
        epochs: 10,
        seed: 0,
        train: None,
        test: None,
        batch: 10,
        lr: 3e-3,
        variants: Vec::new(),
        out: PathBuf::from("target/particle_dynamics"),
        minutes: f64::INFINITY,
        report: false,
        train_eval: usize::MAX,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            "--train" => a.train = Some(value()?.parse()?),
            "--test" => a.test = Some(value()?.parse()?),
            "--batch" => a.batch = value()?.parse()?,
            "--lr" => a.lr = value()?.parse()?,
            "--out" => a.out = PathBuf::from(value()?),
            "--minutes" => a.minutes = value()?.parse()?,
            "--report" => a.report = true,
            "--train-eval" => a.train_eval = value()?.parse()?,
            "--variant" => {
                let name = value()?;
                let v = IterativeVariant::ALL
                    .into_iter()
                    .find(|v| v.name() == name)
                    .ok_or(format!("unknown variant `{name}`"))?;
                a.variants.push(v);
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    if a.variants.is_empty() {
        a.variants = IterativeVariant::ALL.to_vec();
    }
    Ok(a)
}

const HEADER: &str = "epoch,train_loss,train_mse,test_mse,seconds";

/// One CSV row: epoch, train loss, train MSE, test MSE, seconds.
type Row = (usize, f64, f64, f64, f64);

fn read_csv(path: &Path) -> Result<Vec<Row>, Failure> {
    let text = std::fs::read_to_string(path)?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 5 {
            return Err(format!("{}: bad row `{line}`", path.display()).into());
        }
        rows.push((
            f[0].parse()?,
            f[1].parse()?,
            f[2].parse()?,
            f[3].parse()?,
            f[4].parse()?,
        ));
    }
    Ok(rows)
}

fn report(
    out: &Path,
    baseline: f64,
    a: &Args,
    params: &[(IterativeVariant, usize)],
) -> Result<(), Failure> {
    let colours = ["#1f77b4", "#d62728", "#2ca02c"];
    let mut series = Vec::new();
    let mut table = String::from(
        "| model | parameters | epochs | s/epoch (training) | train loss (epoch mean) | train MSE (after) | test MSE (after) | best test MSE | test / constant velocity |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (k, v) in IterativeVariant::ALL.into_iter().enumerate() {
        let path = out.join(format!("{}.csv", v.name()));
        if !path.exists() {
            continue;
        }
        let rows = read_csv(&path)?;
        let Some(last) = rows.last() else { continue };
        series.push(Series {
            name: format!("{} train", v.name()),
            colour: colours[k],
            points: rows.iter().map(|r| (r.0 as f64, r.2)).collect(),
        });
        series.push(Series {
            name: format!("{} test", v.name()),
            colour: colours[k],
            points: rows.iter().map(|r| (r.0 as f64, r.3)).collect(),
        });
        let best = rows.iter().map(|r| r.3).fold(f64::INFINITY, f64::min);
        let per_epoch = rows.iter().map(|r| r.4).sum::<f64>() / rows.len() as f64;
        let count = params
            .iter()
            .find(|(p, _)| *p == v)
            .map_or("".to_string(), |(_, c)| c.to_string());
        let _ = writeln!(
            table,
            "| {} | {count} | {} | {per_epoch:.0} | {:.3e} | {:.3e} | {:.3e} | {best:.3e} | {:.2} |",
            v.name(),
            last.0,
            last.1,
            last.2,
            last.3,
            last.3 / baseline
        );
    }
    let _ = writeln!(
        table,
        "| constant velocity x + 0.1 v (no training) | 0 | | | | | {baseline:.3e} | | 1.00 |"
    );
    let _ = writeln!(
        table,
        "\nLoss: position MSE (1/3n) Σ_i |x̂_i − y_i|², averaged over samples. Seed {}, batch {}, Adam lr {}.",
        a.seed, a.batch, a.lr
    );
    std::fs::write(
        out.join("particle_dynamics.svg"),
        line_chart_svg(
            "iterative SE(3)-Transformer on dynamics",
            "epoch",
            "position MSE",
            &series,
        ),
    )?;
    std::fs::write(out.join("particle_dynamics.md"), &table)?;
    println!("{table}");
    Ok(())
}

fn main() -> Result<(), Failure> {
    let a = args()?;
    std::fs::create_dir_all(&a.out)?;
    let data = DynamicsConfig::default().generate(a.seed, || {})?;
    let train_all = &data.split("train").ok_or("no train split")?.samples;
    let test_all = &data.split("test").ok_or("no test split")?.samples;
    let train = &train_all[..a.train.unwrap_or(train_all.len()).min(train_all.len())];
    let test = &test_all[..a.test.unwrap_or(test_all.len()).min(test_all.len())];
    let dt = DynamicsConfig::default().dt * DynamicsConfig::default().block_steps as f64;
    let test_set = se3_models::physics::dataset::Dataset {
        feature_dim: 0,
        samples: test.to_vec(),
    };
    let baseline = Baseline::ConstantVelocity { horizon: dt }.mse(&test_set)?;
    let config = IterativeConfig::default();
    let mut params = Vec::new();
    for v in IterativeVariant::ALL {
        let keys = Se3Transformer::expected_keys(&config.block_config(v)?)?;
        let per_block: usize = keys.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        params.push((v, per_block * config.stages(v)));
    }
    if !a.report {
        for &v in &a.variants {
            let mut model = IterativeSe3Transformer::new(v, config, a.seed, a.lr)?;
            eprintln!(
                "{}: {} parameters, {} train / {} test samples",
                v.name(),
                model.parameter_count(),
                train.len(),
                test.len()
            );
            let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
            let mut csv = format!("{HEADER}\n");
            let start = Instant::now();
            for epoch in 1..=a.epochs {
                let t = Instant::now();
                let loss = model.train_epoch(train, a.batch, &mut rng)?;
                let seconds = t.elapsed().as_secs_f64();
                // the train MSE after the epoch on a fixed subset (`--train-eval`), to save time
                let train_mse = model.mse(&train[..a.train_eval.min(train.len())], a.batch)?;
                let test_mse = model.mse(test, a.batch)?;
                eprintln!(
                    "{} epoch {epoch}: loss {loss:.4e} train {train_mse:.4e} test {test_mse:.4e} ({:.2}x constant velocity) {seconds:.0} s",
                    v.name(),
                    test_mse / baseline
                );
                let _ = writeln!(csv, "{epoch},{loss},{train_mse},{test_mse},{seconds}");
                std::fs::write(a.out.join(format!("{}.csv", v.name())), &csv)?;
                if start.elapsed().as_secs_f64() > 60.0 * a.minutes {
                    eprintln!("{}: stopped after {epoch} epochs (--minutes)", v.name());
                    break;
                }
            }
        }
    }
    report(&a.out, baseline, &a, &params)?;
    println!("written to {}", a.out.display());
    Ok(())
}
