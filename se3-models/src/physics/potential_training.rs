//! Training a [`LearnedPotential`] on energies and forces (Adam, shuffled mini-batches of
//! clusters, cosine learning-rate decay), its errors on held-out clusters, and molecular
//! dynamics with the learned forces.

use nalgebra::Vector3;
use rand::rngs::StdRng;
use rand::SeedableRng;
use se3_core::train::{Adam, Optimizer, Param};

use super::batch::epoch_batches;
use super::dataset::{DatasetFile, Sample};
use super::integrator::ParticleState;
use super::learned_potential::{energy_normalization, LearnedPotential, PotentialConfig};
use super::md::{run_md, MdReport};
use super::metrics::{mean_equivariance_error, Prediction};
use crate::Error;

/// Validation clusters the per-epoch equivariance metric moves (the first ones of `val`).
const EQUIVARIANCE_CLUSTERS: usize = 8;

/// How a potential is trained.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PotentialTraining {
    pub model: PotentialConfig,
    pub epochs: usize,
    /// Clusters per batch.
    pub batch_size: usize,
    /// Peak learning rate; decays as `lr (1 + cos(π t / T)) / 2` to 2% of it.
    pub lr: f64,
    pub seed: u64,
}

impl Default for PotentialTraining {
    fn default() -> Self {
        PotentialTraining {
            model: PotentialConfig::default(),
            epochs: 60,
            batch_size: 8,
            lr: 3e-3,
            seed: 0,
        }
    }
}

/// Errors of a potential on a set of clusters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PotentialErrors {
    /// Mean |E − E*| / n over clusters (energy per atom, ε).
    pub energy_mae_per_atom: f64,
    /// Root mean square of (E − E*) / n.
    pub energy_rmse_per_atom: f64,
    /// Mean |F − F*| over force components (ε/σ).
    pub force_mae: f64,
    /// Root mean square force component error.
    pub force_rmse: f64,
    /// Mean |F*| over force components (the scale the force errors compare with).
    pub force_scale: f64,
    pub clusters: usize,
}

/// One epoch of training.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub lr: f64,
    /// Mean over the epoch's batches of the loss and its parts (before each update).
    pub train_loss: f64,
    pub train_energy_mse: f64,
    pub train_force_mse: f64,
    /// Errors on the validation split after the epoch.
    pub val: PotentialErrors,
    /// Mean and largest relative equivariance error of the energy and forces on the first
    /// validation clusters, each under a fresh random rotation and translation
    /// ([`mean_equivariance_error`]: |E(Rx + t) − E(x)| / |E(x)| and
    /// |F(Rx + t) − R F(x)| / |F(x)|, the larger of the two).
    pub val_equivariance_mean: f64,
    pub val_equivariance_max: f64,
    pub seconds: f64,
}

/// [`mean_equivariance_error`] of `model`'s energy and forces on `samples`, with rotations and
/// translations (std 1) drawn from `rng`.
///
/// # Errors
/// Model errors; `EmptyGraph` for no samples.
pub fn potential_equivariance_error(
    model: &mut LearnedPotential,
    samples: &[Sample],
    rng: &mut StdRng,
) -> Result<(f64, f64), Error> {
    let mut predict = |s: &Sample| -> Result<Prediction, Error> {
        let (energy, forces) = model
            .predict(&[s])?
            .into_iter()
            .next()
            .ok_or(Error::EmptyGraph { batch: 1, nodes: 0 })?;
        Ok(Prediction {
            positions: Vec::new(),
            vectors: forces,
            energy: Some(energy),
        })
    };
    mean_equivariance_error(&mut predict, samples, 1.0, rng)
}

/// The errors of `model` on `samples` (which need energies and forces), in batches of
/// `batch_size` clusters.
///
/// # Errors
/// `EmptyGraph` for no samples; `MissingInput` for samples without energy or forces; model
/// errors.
pub fn evaluate(
    model: &mut LearnedPotential,
    samples: &[Sample],
    batch_size: usize,
) -> Result<PotentialErrors, Error> {
    if samples.is_empty() {
        return Err(Error::EmptyGraph { batch: 0, nodes: 0 });
    }
    let (mut e_abs, mut e_sq, mut f_abs, mut f_sq, mut f_ref, mut comps) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0usize);
    for chunk in samples.chunks(batch_size.max(1)) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        for (s, (e, f)) in chunk.iter().zip(model.predict(&refs)?) {
            let want = s.energy.ok_or(Error::MissingInput { name: "energy" })?;
            if s.forces.len() != f.len() {
                return Err(Error::MissingInput { name: "forces" });
            }
            let d = (e - want) / s.len() as f64;
            e_abs += d.abs();
            e_sq += d * d;
            for (got, want) in f.iter().zip(&s.forces) {
                for c in 0..3 {
                    let d = got[c] - want[c];
                    f_abs += d.abs();
                    f_sq += d * d;
                    f_ref += want[c].abs();
                }
                comps += 3;
            }
        }
    }
    let g = samples.len() as f64;
    let c = comps.max(1) as f64;
    Ok(PotentialErrors {
        energy_mae_per_atom: e_abs / g,
        energy_rmse_per_atom: (e_sq / g).sqrt(),
        force_mae: f_abs / c,
        force_rmse: (f_sq / c).sqrt(),
        force_scale: f_ref / c,
        clusters: samples.len(),
    })
}

/// Trains a potential on the `train` split of `data` (energies and forces), reporting each
/// epoch to `on_epoch` (with the `val` split's errors) and each batch to `on_batch`.
///
/// # Errors
/// `InvalidParameter` for zero epochs or batch size, or a data set without `train`/`val`
/// splits; model and optimizer errors (a non-finite loss or gradient).
pub fn train_potential(
    cfg: &PotentialTraining,
    data: &DatasetFile,
    mut on_batch: impl FnMut(usize, f64),
    mut on_epoch: impl FnMut(&EpochRecord),
) -> Result<(LearnedPotential, Vec<EpochRecord>), Error> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(Error::InvalidParameter {
            name: "epochs/batch_size",
            expected: "at least 1 each",
            found: format!("{} / {}", cfg.epochs, cfg.batch_size),
        });
    }
    let split = |name: &'static str| {
        data.split(name)
            .filter(|d| !d.samples.is_empty())
            .ok_or(Error::InvalidParameter {
                name: "data set split",
                expected: "non-empty `train` and `val` splits",
                found: format!("no samples in `{name}`"),
            })
    };
    let (train, val) = (split("train")?, split("val")?);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (shift, scale) = energy_normalization(&train.samples);
    let mut model = LearnedPotential::new(cfg.model.clone(), shift, scale, &mut rng)?;
    let mut adam = Adam::new(cfg.lr);
    let names: Vec<String> = model.parameters().iter().map(|p| p.name.clone()).collect();
    let mut records = Vec::with_capacity(cfg.epochs);
    let total_steps = cfg.epochs * train.samples.len().div_ceil(cfg.batch_size);
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        let start = std::time::Instant::now();
        let batches = epoch_batches(train.samples.len(), cfg.batch_size, Some(&mut rng))?;
        let (mut loss, mut e_mse, mut f_mse) = (0.0, 0.0, 0.0);
        let mut lr = cfg.lr;
        for batch in &batches {
            let t = step as f64 / total_steps.max(1) as f64;
            lr = cfg.lr * (0.02 + 0.98 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()));
            adam.set_lr(lr);
            let samples: Vec<&Sample> = batch.iter().map(|&i| &train.samples[i]).collect();
            let (l, grads) = model.loss_and_gradients(&samples)?;
            if !l.loss.is_finite() {
                return Err(Error::InvalidParameter {
                    name: "training loss",
                    expected: "finite",
                    found: format!("{} at epoch {epoch}, step {step}", l.loss),
                });
            }
            loss += l.loss;
            e_mse += l.energy_mse;
            f_mse += l.force_mse;
            let mut values: Vec<Vec<f32>> =
                model.parameters().iter().map(|p| p.value.clone()).collect();
            let mut params: Vec<Param<'_>> = names
                .iter()
                .zip(values.iter_mut())
                .zip(&grads)
                .map(|((n, v), g)| Param {
                    name: n,
                    value: v,
                    grad: g,
                })
                .collect();
            adam.step(&mut params)?;
            model.set_parameters(values)?;
            step += 1;
            on_batch(step, l.loss);
        }
        let b = batches.len().max(1) as f64;
        // its own generator, so the metric does not change the training's draws
        let mut probe_rng = StdRng::seed_from_u64(cfg.seed ^ (0x5EED_0000 + epoch as u64));
        let probe = &val.samples[..val.samples.len().min(EQUIVARIANCE_CLUSTERS)];
        let (eq_mean, eq_max) = potential_equivariance_error(&mut model, probe, &mut probe_rng)?;
        let record = EpochRecord {
            epoch,
            lr,
            train_loss: loss / b,
            train_energy_mse: e_mse / b,
            train_force_mse: f_mse / b,
            val: evaluate(&mut model, &val.samples, cfg.batch_size)?,
            val_equivariance_mean: eq_mean,
            val_equivariance_max: eq_max,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&record);
        records.push(record);
    }
    Ok((model, records))
}

/// Velocity-Verlet MD of one cluster under the learned forces, from `start`'s positions and
/// velocities: `steps` steps of `dt`, energies recorded every `record_every` steps.
///
/// # Errors
/// As [`run_md`]; `MissingInput` (`velocities`) if `start` has none.
pub fn md_with_potential(
    model: &mut LearnedPotential,
    start: &Sample,
    dt: f64,
    steps: usize,
    record_every: usize,
) -> Result<MdReport, Error> {
    if start.velocities.len() != start.positions.len() {
        return Err(Error::MissingInput { name: "velocities" });
    }
    let state = ParticleState {
        positions: start.positions.clone(),
        velocities: start.velocities.clone(),
    };
    let mut field = |x: &[Vector3<f64>]| -> Result<(f64, Vec<Vector3<f64>>), Error> {
        let sample = Sample {
            positions: x.to_vec(),
            velocities: Vec::new(),
            features: Vec::new(),
            target_positions: Vec::new(),
            energy: None,
            forces: Vec::new(),
        };
        let mut out = model.predict(&[&sample])?;
        out.pop().ok_or(Error::EmptyGraph { batch: 0, nodes: 0 })
    };
    run_md(&mut field, state, dt, steps, record_every)
}
