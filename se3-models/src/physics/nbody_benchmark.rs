//! The charged N-body benchmark run (EGNN paper protocol): one training loop for every
//! [`NBodyModel`] (se3's EGNN, TFN and SE(3)-Transformer), behind `examples/nbody.rs`, and its
//! outputs (CSV log, SVG curves, Markdown table).
//!
//! Each epoch shuffles the training split (seeded), takes one Adam step per batch on the
//! position MSE, and every `eval_every` epochs (and the last) records the train MSE (mean of
//! the epoch's step losses, weighted by batch size), the validation and test MSE, the relative
//! equivariance error of [`NBodyModel::equivariance_error`] on one validation batch, and the
//! training seconds of the epoch. The reported result is the test MSE at the epoch of lowest
//! validation MSE. With a cosine schedule the learning rate of epoch `e` (from 1) is
//! `lr_min + (lr - lr_min)(1 + cos(π (e - 1) / epochs)) / 2`, `lr_min = cosine_to · lr`.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use se3_core::train::LrSchedule;

use super::dataset::{DatasetFile, Sample};
use super::egnn_nbody::{NBodyEgnn, NBodyEgnnConfig};
use super::nbody_model::NBodyModel;
use super::report::{line_chart_svg, Series};
use crate::Error;

/// Settings of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NBodyRunOptions {
    /// Epochs of training.
    pub epochs: usize,
    /// Seed of the weights, the shuffling and the equivariance probes.
    pub seed: u64,
    /// Adam's (base) learning rate.
    pub lr: f64,
    /// Cosine decay of the learning rate over the epochs down to this fraction of `lr`
    /// (`None`: constant).
    pub cosine_to: Option<f64>,
    /// Samples per step.
    pub batch: usize,
    /// Evaluate every this many epochs (and after the last).
    pub eval_every: usize,
}

impl Default for NBodyRunOptions {
    /// The paper's settings: Adam lr 5e-4, batch 100, constant rate.
    fn default() -> Self {
        NBodyRunOptions {
            epochs: 100,
            seed: 1,
            lr: 5e-4,
            cosine_to: None,
            batch: 100,
            eval_every: 5,
        }
    }
}

/// One evaluated epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRow {
    pub epoch: usize,
    pub train_mse: f64,
    pub val_mse: f64,
    pub test_mse: f64,
    /// Relative equivariance error (a rotation, for E(3) models or a reflection, and a
    /// translation).
    pub equivariance: f64,
    /// Wall seconds of the epoch's training steps.
    pub seconds: f64,
}

/// The evaluated epochs of a run, with the model's name and published number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NBodyRun {
    /// [`NBodyModel::label`] of the trained model.
    pub model: String,
    /// [`NBodyModel::published_test_mse`] of its kind.
    pub published: Option<(&'static str, f64)>,
    pub rows: Vec<EpochRow>,
}

const CSV_HEADER: &str = "epoch,train_mse,val_mse,test_mse,equivariance_error,epoch_seconds";

impl NBodyRun {
    /// The row of lowest validation MSE.
    pub fn best(&self) -> Option<EpochRow> {
        self.rows
            .iter()
            .min_by(|x, y| x.val_mse.total_cmp(&y.val_mse))
            .copied()
    }

    /// The log as CSV (header and one line per evaluated epoch).
    pub fn csv(&self) -> String {
        let mut s = format!("{CSV_HEADER}\n");
        for r in &self.rows {
            s.push_str(&format!(
                "{},{:.6e},{:.6e},{:.6e},{:.3e},{:.3}\n",
                r.epoch, r.train_mse, r.val_mse, r.test_mse, r.equivariance, r.seconds
            ));
        }
        s
    }

    /// The curves (train / val / test MSE and equivariance error per epoch, log scale).
    pub fn svg(&self, title: &str) -> String {
        let curve = |f: fn(&EpochRow) -> f64| -> Vec<(f64, f64)> {
            self.rows.iter().map(|r| (r.epoch as f64, f(r))).collect()
        };
        line_chart_svg(
            title,
            "epoch",
            "MSE / relative error",
            &[
                Series {
                    name: "train MSE".into(),
                    colour: "#1f77b4",
                    points: curve(|r| r.train_mse),
                },
                Series {
                    name: "val MSE".into(),
                    colour: "#ff7f0e",
                    points: curve(|r| r.val_mse),
                },
                Series {
                    name: "test MSE".into(),
                    colour: "#2ca02c",
                    points: curve(|r| r.test_mse),
                },
                Series {
                    name: "equivariance".into(),
                    colour: "#d62728",
                    points: curve(|r| r.equivariance),
                },
            ],
        )
    }

    /// The result table (Markdown): the row at the best validation epoch, the largest
    /// equivariance error and the mean training seconds per epoch, beside the paper's number
    /// for the model's kind.
    pub fn markdown(&self, opts: &NBodyRunOptions) -> String {
        let head = "| model | epochs | best val epoch | train MSE | val MSE | test MSE | max equivariance error | s / epoch (train) |\n\
                    |---|---|---|---|---|---|---|---|\n";
        let schedule = match opts.cosine_to {
            Some(f) => format!("cosine to {f} lr"),
            None => "constant".into(),
        };
        let mut s = head.to_string();
        if let (Some(best), Some(last)) = (self.best(), self.rows.last()) {
            let n = self.rows.len() as f64;
            let mean_time = self.rows.iter().map(|r| r.seconds).sum::<f64>() / n;
            let max_equi = self.rows.iter().map(|r| r.equivariance).fold(0.0, f64::max);
            s.push_str(&format!(
                "| {} (Adam lr {}, {schedule}, batch {}, seed {}) | {} | {} | {:.5} | {:.5} | {:.5} | {:.1e} | {:.2} |\n",
                self.model,
                opts.lr,
                opts.batch,
                opts.seed,
                last.epoch,
                best.epoch,
                best.train_mse,
                best.val_mse,
                best.test_mse,
                max_equi,
                mean_time
            ));
        }
        if let Some((name, mse)) = self.published {
            s.push_str(&format!(
                "| {name}, EGNN paper (published) | | | | | {mse} | | |\n"
            ));
        }
        s
    }
}

fn split<'a>(data: &'a DatasetFile, name: &'static str) -> Result<&'a [Sample], Error> {
    data.split(name)
        .map(|d| d.samples.as_slice())
        .ok_or(Error::InvalidParameter {
            name: "data set",
            expected: "train, val and test splits",
            found: format!("no {name} split"),
        })
}

/// Trains a fresh [`NBodyEgnn`] of size `config` on `data`'s train split with `opts` (weights,
/// shuffling and probes from one generator seeded by `opts.seed`), as [`train_nbody`].
///
/// # Errors
/// As [`train_nbody`].
pub fn train_nbody_egnn(
    data: &DatasetFile,
    config: NBodyEgnnConfig,
    opts: &NBodyRunOptions,
    on_step: impl FnMut(usize, f64),
    on_eval: impl FnMut(&NBodyRun) -> Result<(), Error>,
) -> Result<NBodyRun, Error> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut model = NBodyEgnn::new(config, &mut rng).with_learning_rate(opts.lr);
    train_nbody(&mut model, data, opts, &mut rng, on_step, on_eval)
}

/// Trains `model` on `data`'s train split with `opts` (module doc), shuffling and drawing the
/// equivariance probes from `rng`; `on_step(epoch, loss)` after every step, `on_eval(run so
/// far)` after every evaluation.
///
/// # Errors
/// `InvalidParameter` for a data set without its splits or with samples the model cannot take
/// (no velocities, charges or targets; empty splits); the model's session and optimizer errors.
pub fn train_nbody<M: NBodyModel>(
    model: &mut M,
    data: &DatasetFile,
    opts: &NBodyRunOptions,
    rng: &mut impl Rng,
    mut on_step: impl FnMut(usize, f64),
    mut on_eval: impl FnMut(&NBodyRun) -> Result<(), Error>,
) -> Result<NBodyRun, Error> {
    let (train, val, test) = (
        split(data, "train")?,
        split(data, "val")?,
        split(data, "test")?,
    );
    if train.is_empty() || val.is_empty() || test.is_empty() {
        return Err(Error::InvalidParameter {
            name: "data set",
            expected: "non-empty train, val and test splits",
            found: format!("{} / {} / {}", train.len(), val.len(), test.len()),
        });
    }
    let batch = opts.batch.max(1);
    let mut run = NBodyRun {
        model: model.label(),
        published: model.published_test_mse(),
        rows: Vec::new(),
    };
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 1..=opts.epochs {
        let lr = match opts.cosine_to {
            Some(frac) => LrSchedule::Cosine {
                t_max: opts.epochs,
                eta_min: opts.lr * frac,
            }
            .lr(opts.lr, epoch - 1),
            None => opts.lr,
        };
        model.set_learning_rate(lr);
        let start = Instant::now();
        order.shuffle(rng);
        let (mut sum, mut count) = (0.0, 0usize);
        for chunk in order.chunks(batch) {
            let samples: Vec<&Sample> = chunk.iter().map(|&i| &train[i]).collect();
            let loss = model.train_step(&samples)?;
            sum += loss * samples.len() as f64;
            count += samples.len();
            on_step(epoch, loss);
        }
        let seconds = start.elapsed().as_secs_f64();
        if epoch % opts.eval_every.max(1) != 0 && epoch != opts.epochs {
            continue;
        }
        let probe: Vec<&Sample> = val.iter().take(batch).collect();
        run.rows.push(EpochRow {
            epoch,
            train_mse: sum / count.max(1) as f64,
            val_mse: model.mse(val, batch)?,
            test_mse: model.mse(test, batch)?,
            equivariance: model.equivariance_error(&probe, rng)?,
            seconds,
        });
        on_eval(&run)?;
    }
    Ok(run)
}
