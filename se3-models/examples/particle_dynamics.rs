//! Particle dynamics with the iterative SE(3)-Transformer (issue #15 §1): trains the three
//! variants of `se3_models::physics::iterative_se3t` (gradient through every block's kernel
//! basis, iterations with the basis cut from the gradient, one pass of the same depth) on the
//! `dynamics` set (10 particles, all-pairs springs, blocks of 10 velocity-Verlet steps) with Adam
//! on the position MSE, and reports train/test MSE per epoch.
//!
//! ```text
//! cargo run --release -p se3-models --example particle_dynamics -- [--epochs N] [--seed S]
//!     [--train N] [--test N] [--batch B] [--lr LR] [--variant NAME]... [--out DIR]
//!     [--minutes M] [--until HH:MM] [--train-eval N] [--equivariance N] [--eval-batch B]
//!     [--report]
//! ```
//!
//! Trains on the first `--train` samples of the train split and evaluates on the first `--test`
//! of the test split (every sample by default). Writes `DIR/particle_dynamics_<variant>.csv`
//! (per epoch: train loss (mean over the epoch's steps), train MSE (on the first `--train-eval`
//! training samples) and test MSE after the epoch, the mean and largest relative equivariance
//! error of the predictions on the first `--equivariance` test samples, each under a fresh
//! random rotation and translation, the seconds of the epoch's training steps and of its
//! evaluation); then, from every variant's CSV in `DIR`, `DIR/particle_dynamics.svg` (the MSE
//! curves), `DIR/particle_dynamics_equivariance.svg` and `DIR/particle_dynamics.md` (the
//! table). `--report` only writes the SVGs and table; `--minutes` stops a variant after the
//! epoch that passes that wall time, `--until` (UTC) before an epoch that would end after
//! that time at the mean epoch time so far. The table and plots compare the variants at the
//! same number of epochs, the fewest any variant's CSV has (a variant run further keeps its
//! later epochs in its CSV).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use se3_models::physics::baselines::Baseline;
use se3_models::physics::dynamics::DynamicsConfig;
use se3_models::physics::iterative_se3t::{
    IterativeConfig, IterativeSe3Transformer, IterativeVariant,
};
use se3_models::physics::metrics::{batched_equivariance_error, mean_position_mse};
use se3_models::physics::report::{line_chart_svg, Series};
use se3_models::se3_transformer::Se3TransformerNet;

type Failure = Box<dyn std::error::Error>;

struct Args {
    epochs: usize,
    seed: u64,
    train: Option<usize>,
    test: Option<usize>,
    batch: usize,
    eval_batch: usize,
    lr: f64,
    variants: Vec<IterativeVariant>,
    out: PathBuf,
    minutes: f64,
    until: Option<u64>,
    report: bool,
    train_eval: usize,
    equivariance: usize,
}

fn args() -> Result<Args, Failure> {
    let mut a = Args {
        epochs: 10,
        seed: 0,
        train: None,
        test: None,
        batch: 10,
        eval_batch: 50,
        lr: 3e-3,
        variants: Vec::new(),
        out: PathBuf::from("target/particle_dynamics"),
        minutes: f64::INFINITY,
        until: None,
        report: false,
        train_eval: usize::MAX,
        equivariance: 100,
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
            "--eval-batch" => a.eval_batch = value()?.parse()?,
            "--lr" => a.lr = value()?.parse()?,
            "--out" => a.out = PathBuf::from(value()?),
            "--minutes" => a.minutes = value()?.parse()?,
            "--report" => a.report = true,
            "--until" => a.until = Some(utc_deadline(&value()?)?),
            "--train-eval" => a.train_eval = value()?.parse()?,
            "--equivariance" => a.equivariance = value()?.parse()?,
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

/// The next time `HH:MM` UTC (today, or tomorrow if passed), seconds since the Unix epoch.
fn utc_deadline(hh_mm: &str) -> Result<u64, Failure> {
    let (h, m) = hh_mm.split_once(':').ok_or("--until takes HH:MM")?;
    let (h, m): (u64, u64) = (h.parse()?, m.parse()?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let day = now - now % 86_400;
    let mut at = day + h * 3600 + m * 60;
    if at <= now {
        at += 86_400;
    }
    Ok(at)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

const HEADER: &str =
    "epoch,train_loss,train_mse,test_mse,equivariance_mean,equivariance_max,seconds,eval_seconds";

/// One CSV row (the columns of [`HEADER`]).
#[derive(Debug, Clone, Copy)]
struct Row {
    epoch: usize,
    train_loss: f64,
    train_mse: f64,
    test_mse: f64,
    equivariance_mean: f64,
    equivariance_max: f64,
    seconds: f64,
    eval_seconds: f64,
}

fn csv_path(out: &Path, v: IterativeVariant) -> PathBuf {
    out.join(format!("particle_dynamics_{}.csv", v.name()))
}

fn read_csv(path: &Path) -> Result<Vec<Row>, Failure> {
    let text = std::fs::read_to_string(path)?;
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 8 {
            return Err(format!("{}: bad row `{line}`", path.display()).into());
        }
        rows.push(Row {
            epoch: f[0].parse()?,
            train_loss: f[1].parse()?,
            train_mse: f[2].parse()?,
            test_mse: f[3].parse()?,
            equivariance_mean: f[4].parse()?,
            equivariance_max: f[5].parse()?,
            seconds: f[6].parse()?,
            eval_seconds: f[7].parse()?,
        });
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
    let mut equiv_series = Vec::new();
    let mut table = String::from(
        "| model | parameters | epochs | s/epoch (training) | s/epoch (evaluation) | train loss (epoch mean) | train MSE (after) | test MSE (after) | best test MSE | test / constant velocity | max equivariance error |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut all = Vec::new();
    for v in IterativeVariant::ALL {
        let path = csv_path(out, v);
        if path.exists() {
            all.push((v, read_csv(&path)?));
        }
    }
    // equal epochs: the fewest any variant has
    let common = all.iter().map(|(_, r)| r.len()).min().unwrap_or(0);
    for (k, (v, rows)) in all.into_iter().enumerate() {
        let rows = &rows[..common];
        let Some(last) = rows.last() else { continue };
        series.push(Series {
            name: format!("{} train", v.name()),
            colour: colours[k],
            points: rows.iter().map(|r| (r.epoch as f64, r.train_mse)).collect(),
        });
        series.push(Series {
            name: format!("{} test", v.name()),
            colour: colours[k],
            points: rows.iter().map(|r| (r.epoch as f64, r.test_mse)).collect(),
        });
        equiv_series.push(Series {
            name: format!("{} mean", v.name()),
            colour: colours[k],
            points: rows
                .iter()
                .map(|r| (r.epoch as f64, r.equivariance_mean))
                .collect(),
        });
        equiv_series.push(Series {
            name: format!("{} max", v.name()),
            colour: colours[k],
            points: rows
                .iter()
                .map(|r| (r.epoch as f64, r.equivariance_max))
                .collect(),
        });
        let best = rows
            .iter()
            .map(|r| r.test_mse)
            .fold(f64::INFINITY, f64::min);
        let worst_equiv = rows.iter().map(|r| r.equivariance_max).fold(0.0, f64::max);
        let epochs = rows.len() as f64;
        let per_epoch = rows.iter().map(|r| r.seconds).sum::<f64>() / epochs;
        let eval_epoch = rows.iter().map(|r| r.eval_seconds).sum::<f64>() / epochs;
        let count = params
            .iter()
            .find(|(p, _)| *p == v)
            .map_or("".to_string(), |(_, c)| c.to_string());
        let _ = writeln!(
            table,
            "| {} | {count} | {} | {per_epoch:.0} | {eval_epoch:.0} | {:.3e} | {:.3e} | {:.3e} | {best:.3e} | {:.4} | {worst_equiv:.1e} |",
            v.name(),
            last.epoch,
            last.train_loss,
            last.train_mse,
            last.test_mse,
            last.test_mse / baseline
        );
    }
    let _ = writeln!(
        table,
        "| constant velocity x + 0.1 v (no training) | 0 | | | | | | {baseline:.3e} | | 1.00 | |"
    );
    let _ = writeln!(
        table,
        "\nLoss: position MSE (1/3n) Σ_i |x̂_i − y_i|², averaged over samples. Seed {}, batch {}, Adam lr {}; all variants at {common} epochs. Train MSE after each epoch on the first {} training samples. Equivariance: relative error of the predictions under a fresh random rotation and translation per sample (float32) on the first {} test samples, largest over them and the epochs.",
        a.seed, a.batch, a.lr, if a.train_eval == usize::MAX { "all".to_string() } else { a.train_eval.to_string() }, a.equivariance
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
    std::fs::write(
        out.join("particle_dynamics_equivariance.svg"),
        line_chart_svg(
            "equivariance error of the predictions (float32)",
            "epoch",
            "relative error",
            &equiv_series,
        ),
    )?;
    std::fs::write(out.join("particle_dynamics.md"), &table)?;
    println!("{table}");
    Ok(())
}

/// A line above the progress bar, or on stderr when the bar is hidden (stderr not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
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
        let keys = Se3TransformerNet::expected_keys(&config.block_config(v)?)?;
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
            let mut motion_rng = rand::rngs::StdRng::seed_from_u64(a.seed.wrapping_add(1));
            let mut csv = format!("{HEADER}\n");
            let start = Instant::now();
            let train_eval = &train[..a.train_eval.min(train.len())];
            let mut epoch_seconds = Vec::new();
            let equiv_samples = &test[..a.equivariance.min(test.len())];
            let steps_per_epoch = train.len().div_ceil(a.batch.max(1));
            let bar = ProgressBar::new((a.epochs * steps_per_epoch) as u64);
            bar.set_style(ProgressStyle::with_template(&format!(
                "{} {{bar:30}} {{pos}}/{{len}} steps ({{eta}}) {{msg}}",
                v.name()
            ))?);
            for epoch in 1..=a.epochs {
                if let (Some(until), false) = (a.until, epoch_seconds.is_empty()) {
                    let mean = epoch_seconds.iter().sum::<f64>() / epoch_seconds.len() as f64;
                    if unix_now() + mean > until as f64 {
                        say(
                            &bar,
                            format!("{}: stopped after {} epochs (--until)", v.name(), epoch - 1),
                        );
                        break;
                    }
                }
                let t = Instant::now();
                let loss = model.train_epoch_reporting(train, a.batch, &mut rng, |_, l| {
                    bar.inc(1);
                    bar.set_message(format!("epoch {epoch} loss {l:.3e}"));
                })?;
                let seconds = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let train_mse = model.mse(train_eval, a.eval_batch)?;
                let test_pred = model.predict_samples(test, a.eval_batch)?;
                let test_mse = mean_position_mse(&test_pred, test)?;
                // each sample under its own fresh rotation and translation ~ N(0, 4 I)
                let (equiv_mean, equiv_max) = if equiv_samples.is_empty() {
                    (f64::NAN, f64::NAN)
                } else {
                    batched_equivariance_error(
                        &mut |s| model.predict_samples(s, a.eval_batch),
                        equiv_samples,
                        &test_pred[..equiv_samples.len()],
                        2.0,
                        &mut motion_rng,
                    )?
                };
                let eval_seconds = t.elapsed().as_secs_f64();
                epoch_seconds.push(seconds + eval_seconds);
                say(&bar, format!(
                    "{} epoch {epoch}: loss {loss:.4e} train {train_mse:.4e} test {test_mse:.4e} ({:.3}x constant velocity) equivariance {equiv_mean:.1e} (max {equiv_max:.1e}) {seconds:.0} s + eval {eval_seconds:.0} s",
                    v.name(),
                    test_mse / baseline
                ));
                let _ = writeln!(
                    csv,
                    "{epoch},{loss},{train_mse},{test_mse},{equiv_mean},{equiv_max},{seconds},{eval_seconds}"
                );
                std::fs::write(csv_path(&a.out, v), &csv)?;
                if start.elapsed().as_secs_f64() > 60.0 * a.minutes {
                    say(
                        &bar,
                        format!("{}: stopped after {epoch} epochs (--minutes)", v.name()),
                    );
                    break;
                }
            }
            bar.finish_and_clear();
        }
    }
    report(&a.out, baseline, &a, &params)?;
    println!("written to {}", a.out.display());
    Ok(())
}
