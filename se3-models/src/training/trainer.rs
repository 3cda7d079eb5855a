//! The training loop: epochs of shuffled mini-batches, one optimizer step each, then the
//! validation loss and the equivariance error of the epoch.
//!
//! Everything random (the order of the samples, the rotation of the equivariance check) is drawn
//! from a generator seeded by `(seed, epoch)`, so an interrupted run that resumes from a
//! checkpoint draws what the uninterrupted run draws.

use nalgebra::{Matrix3, Rotation3, UnitQuaternion};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use se3_core::train::{clip_grad_norm, Adam, AdamW, LrSchedule, Optimizer, Param, Sgd};
use serde::{Deserialize, Serialize};

use super::dataset::{Batch, Split, TrainingSet};
use super::model::{OutputTransform, TrainableModel};
use crate::checkpoint::{StateDict, Tensor};
use crate::Error;

/// Which optimizer updates the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    AdamW,
}

/// The options of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// Epochs in all (a resumed run continues up to this count).
    pub epochs: usize,
    /// Samples per optimizer step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Base learning rate (the schedule scales it per epoch).
    pub lr: f64,
    pub optimizer: OptimizerKind,
    /// SGD momentum (ignored by Adam and AdamW).
    pub momentum: f64,
    /// Weight decay (L2 in the gradient for SGD and Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// Learning rate of epoch `t` (from 0) as a function of the base rate.
    #[serde(with = "schedule_serde")]
    pub schedule: LrSchedule,
    /// Clip the gradients to this global norm before each step.
    pub clip_norm: Option<f64>,
    /// Parameters whose key starts with one of these stay unchanged.
    pub freeze: Vec<String>,
    /// Seed of the sample order and of the equivariance check's rotations.
    pub seed: u64,
}

impl TrainOptions {
    /// A fresh optimizer of these options.
    pub fn optimizer(&self) -> Box<dyn Optimizer> {
        let mut opt: Box<dyn Optimizer> = match self.optimizer {
            OptimizerKind::Sgd => {
                let mut s = Sgd::new(self.lr);
                s.momentum = self.momentum;
                s.weight_decay = self.weight_decay;
                Box::new(s)
            }
            OptimizerKind::Adam => Box::new(Adam::new(self.lr).weight_decay(self.weight_decay)),
            OptimizerKind::AdamW => Box::new(AdamW::new(self.lr).weight_decay(self.weight_decay)),
        };
        for p in &self.freeze {
            opt.freeze(p);
        }
        opt
    }
}

/// [`LrSchedule`] as JSON: `{"kind": "cosine", "t_max": 10, "eta_min": 0.0}` and so on.
mod schedule_serde {
    use se3_core::train::LrSchedule;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "lowercase")]
    enum Repr {
        Constant,
        Warmup {
            start_factor: f64,
            total_iters: usize,
        },
        Cosine {
            t_max: usize,
            eta_min: f64,
        },
        Step {
            step_size: usize,
            gamma: f64,
        },
    }

    pub fn serialize<S: Serializer>(s: &LrSchedule, ser: S) -> Result<S::Ok, S::Error> {
        match *s {
            LrSchedule::Constant => Repr::Constant,
            LrSchedule::LinearWarmup {
                start_factor,
                total_iters,
            } => Repr::Warmup {
                start_factor,
                total_iters,
            },
            LrSchedule::Cosine { t_max, eta_min } => Repr::Cosine { t_max, eta_min },
            LrSchedule::Step { step_size, gamma } => Repr::Step { step_size, gamma },
        }
        .serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<LrSchedule, D::Error> {
        Ok(match Repr::deserialize(de)? {
            Repr::Constant => LrSchedule::Constant,
            Repr::Warmup {
                start_factor,
                total_iters,
            } => LrSchedule::LinearWarmup {
                start_factor,
                total_iters,
            },
            Repr::Cosine { t_max, eta_min } => LrSchedule::Cosine { t_max, eta_min },
            Repr::Step { step_size, gamma } => LrSchedule::Step { step_size, gamma },
        })
    }
}

/// What one finished epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The epoch, counted from 1.
    pub epoch: usize,
    /// Optimizer steps taken so far (all epochs).
    pub steps: usize,
    /// The learning rate of the epoch.
    pub lr: f64,
    /// Mean over the epoch's steps of the loss before each step.
    pub train_loss: f64,
    /// The loss on the whole `val` split after the epoch (none without one).
    pub val_loss: Option<f64>,
    /// `max |f(R x + t) - R·f(x)| / max |R·f(x)|` over the outputs, on the first batch of the
    /// `val` split (else `train`), for a fresh random rotation `R` and translation `t`.
    pub equivariance_error: f64,
    /// Wall time of the epoch's steps, seconds.
    pub seconds: f64,
}

/// Where training stands: epochs and steps done, and the record of every epoch.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TrainProgress {
    pub epochs_done: usize,
    pub steps_done: usize,
    pub history: Vec<EpochRecord>,
}

/// One optimizer step, as reported to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub epoch: usize,
    pub step: usize,
    pub loss: f64,
}

/// A model, its optimizer and the progress of training.
pub struct Trainer<M: TrainableModel> {
    pub model: M,
    pub optimizer: Box<dyn Optimizer>,
    pub options: TrainOptions,
    pub progress: TrainProgress,
}

impl<M: TrainableModel> std::fmt::Debug for Trainer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("options", &self.options)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

/// A rotation uniform on SO(3) (Shoemake's unit quaternion from three uniforms).
fn random_rotation(rng: &mut impl Rng) -> Rotation3<f64> {
    let (u1, u2, u3): (f64, f64, f64) = (rng.gen(), rng.gen(), rng.gen());
    let tau = std::f64::consts::TAU;
    let (a, b) = ((1.0 - u1).sqrt(), u1.sqrt());
    let q = nalgebra::Quaternion::new(
        b * (tau * u3).cos(),
        a * (tau * u2).sin(),
        a * (tau * u2).cos(),
        b * (tau * u3).sin(),
    );
    UnitQuaternion::from_quaternion(q).to_rotation_matrix()
}

fn dims(d: &[usize]) -> String {
    d.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies `f -> f M^T` to every row of length `M.ncols()` of `t`, plus `shift` per row.
fn transform_rows(t: &Tensor, m: &nalgebra::DMatrix<f64>, shift: Option<&[f64; 3]>) -> Tensor {
    let w = m.ncols();
    let mut out = t.clone();
    for (row, src) in out.data.chunks_exact_mut(w).zip(t.data.chunks_exact(w)) {
        for (i, o) in row.iter_mut().enumerate() {
            *o = (0..w).map(|j| m[(i, j)] * src[j]).sum::<f64>() + shift.map_or(0.0, |s| s[i]);
        }
    }
    out
}

impl<M: TrainableModel> Trainer<M> {
    /// A trainer at epoch 0 with a fresh optimizer.
    pub fn new(model: M, options: TrainOptions) -> Trainer<M> {
        let optimizer = options.optimizer();
        Trainer {
            model,
            optimizer,
            options,
            progress: TrainProgress::default(),
        }
    }

    /// The generator of epoch `epoch` (from 0); `stream` separates independent draws.
    fn rng(&self, epoch: usize, stream: u64) -> rand::rngs::StdRng {
        let mix = self
            .options
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(((epoch as u64) << 8) | stream);
        rand::rngs::StdRng::seed_from_u64(mix)
    }

    /// Runs the epochs left (up to `options.epochs`), calling `on_step` after every step and
    /// `on_epoch` after every epoch (e.g. to write a log and a checkpoint).
    ///
    /// # Errors
    /// As [`Trainer::train_epoch`]; errors of `on_epoch`.
    pub fn train(
        &mut self,
        data: &TrainingSet,
        on_step: &mut dyn FnMut(StepReport),
        on_epoch: &mut dyn FnMut(&Trainer<M>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.check_data(data)?;
        while self.progress.epochs_done < self.options.epochs {
            self.train_epoch(data, on_step)?;
            on_epoch(self)?;
        }
        Ok(())
    }

    /// Checks the data set against the model by running it on the first training sample
    /// (no parameter changes): an error about the inputs or targets is reported as the data
    /// set tensor it comes from.
    ///
    /// # Errors
    /// `DatasetShape` naming `train.feats` / `train.coors` / `train.target.<out>` (its shape and
    /// what the model expects), `MissingKey` `train.target.<out>` for an output without a
    /// target; other model errors as they are.
    pub fn check_data(&mut self, data: &TrainingSet) -> Result<(), Error> {
        let probe = data.train.batch(&[0])?;
        let found = |t: &str| -> Vec<usize> {
            match t {
                "feats" => data.train.feats.shape.clone(),
                "coors" => data.train.coors.shape.clone(),
                other => data
                    .train
                    .targets
                    .get(other.trim_start_matches("target."))
                    .map(|t| t.shape.clone())
                    .unwrap_or_default(),
            }
        };
        let run = self.model.loss_and_gradients(&probe.inputs, &probe.targets);
        let outputs = match run {
            Ok(e) => e.outputs,
            Err(Error::InputShape { name, expected, .. }) => {
                return Err(Error::DatasetShape {
                    tensor: format!("train.{name}"),
                    expected: format!("{expected} per batch of the model"),
                    found: found(name),
                })
            }
            Err(Error::MissingKey { key, expected }) if key.starts_with("target.") => {
                return Err(Error::MissingKey {
                    key: format!("train.{key}"),
                    expected,
                })
            }
            Err(Error::WrongShape { key, expected, .. }) if key.starts_with("target.") => {
                return Err(Error::DatasetShape {
                    expected: format!("[samples, {}] (the model's output)", dims(&expected[1..])),
                    found: found(&key),
                    tensor: format!("train.{key}"),
                })
            }
            Err(e) => return Err(e),
        };
        if let Some(extra) = data
            .train
            .targets
            .keys()
            .find(|k| outputs.get(k.as_str()).is_none())
        {
            return Err(Error::DatasetShape {
                tensor: format!("train.target.{extra}"),
                expected: format!(
                    "no such tensor: the model's outputs are {:?}",
                    outputs.keys().collect::<Vec<_>>()
                ),
                found: found(extra),
            });
        }
        Ok(())
    }

    /// One epoch: shuffled batches of the `train` split, one step each, then the validation
    /// loss and the equivariance error. Appends the epoch's record to the progress.
    ///
    /// # Errors
    /// `EmptyBatch`, `NonFiniteLoss`, `NonFiniteGradient` (naming the step and the tensor; no
    /// parameter is changed by the failing step), model errors.
    pub fn train_epoch(
        &mut self,
        data: &TrainingSet,
        on_step: &mut dyn FnMut(StepReport),
    ) -> Result<EpochRecord, Error> {
        let epoch = self.progress.epochs_done;
        let lr = self.options.schedule.lr(self.options.lr, epoch);
        self.optimizer.set_lr(lr);
        let mut order: Vec<usize> = (0..data.train.len()).collect();
        order.shuffle(&mut self.rng(epoch, 0));
        let start = std::time::Instant::now();
        let batch_size = self.options.batch_size.max(1);
        let (mut sum, mut count) = (0.0, 0usize);
        if order.is_empty() {
            return Err(Error::EmptyBatch {
                epoch: epoch + 1,
                step: self.progress.steps_done + 1,
                split: "train",
            });
        }
        for rows in order.chunks(batch_size) {
            let loss = self.step(&data.train, rows, epoch + 1)?;
            sum += loss;
            count += 1;
            on_step(StepReport {
                epoch: epoch + 1,
                step: self.progress.steps_done,
                loss,
            });
        }
        let seconds = start.elapsed().as_secs_f64();
        let val_loss = match &data.val {
            Some(v) if !v.is_empty() => Some(self.loss_on(v)?),
            _ => None,
        };
        let check = data
            .val
            .as_ref()
            .filter(|v| !v.is_empty())
            .unwrap_or(&data.train);
        let rows: Vec<usize> = (0..check.len().min(batch_size)).collect();
        let mut rng = self.rng(epoch, 1);
        let equivariance_error = self.equivariance_error(&check.batch(&rows)?, &mut rng)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            steps: self.progress.steps_done,
            lr,
            train_loss: sum / count as f64,
            val_loss,
            equivariance_error,
            seconds,
        };
        self.progress.epochs_done += 1;
        self.progress.history.push(record.clone());
        Ok(record)
    }

    /// One optimizer step on the samples `rows` of `split`; returns the loss before the step.
    ///
    /// # Errors
    /// `EmptyBatch` without a real node; `NonFiniteLoss`; `NonFiniteGradient` naming the
    /// `param.<key>` tensor; model errors. Parameters change only when the step succeeds.
    pub fn step(&mut self, split: &Split, rows: &[usize], epoch: usize) -> Result<f64, Error> {
        let step = self.progress.steps_done + 1;
        if rows.is_empty() || split.real_nodes(rows) == 0 {
            return Err(Error::EmptyBatch {
                epoch,
                step,
                split: "train",
            });
        }
        let batch = split.batch(rows)?;
        let eval = self
            .model
            .loss_and_gradients(&batch.inputs, &batch.targets)?;
        if !eval.loss.is_finite() {
            return Err(Error::NonFiniteLoss {
                epoch,
                step,
                value: eval.loss,
            });
        }
        let mut params = self.model.parameters();
        let mut grads: Vec<Vec<f32>> = Vec::with_capacity(params.len());
        for (key, shape, _) in &params {
            let name = format!("param.{key}");
            let g = eval.gradients.get(&name).ok_or(Error::MissingKey {
                key: name.clone(),
                expected: shape.clone(),
            })?;
            if let Some((index, &value)) = g.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFiniteGradient {
                    epoch,
                    step,
                    tensor: name,
                    index,
                    value,
                });
            }
            grads.push(g.data.iter().map(|&v| v as f32).collect());
        }
        if let Some(max_norm) = self.options.clip_norm {
            let mut views: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
            clip_grad_norm(&mut views, max_norm);
        }
        let mut views: Vec<Param<'_>> = params
            .iter_mut()
            .zip(&grads)
            .map(|((k, _, v), g)| Param {
                name: k,
                value: v,
                grad: g,
            })
            .collect();
        self.optimizer.step(&mut views)?;
        for (key, _, v) in &params {
            self.model.set_parameter(key, v)?;
        }
        self.progress.steps_done = step;
        Ok(eval.loss)
    }

    /// The loss on every sample of `split`, in batches, weighted by batch size.
    ///
    /// # Errors
    /// Model errors; `NonFiniteLoss` (step 0) if it is not finite.
    pub fn loss_on(&mut self, split: &Split) -> Result<f64, Error> {
        let all: Vec<usize> = (0..split.len()).collect();
        let (mut sum, mut n) = (0.0, 0usize);
        for rows in all.chunks(self.options.batch_size.max(1)) {
            let batch = split.batch(rows)?;
            let loss = self
                .model
                .loss_and_gradients(&batch.inputs, &batch.targets)?
                .loss;
            sum += loss * rows.len() as f64;
            n += rows.len();
        }
        Ok(sum / n.max(1) as f64)
    }

    /// `max |f(R x + t) - R·f(x)| / max |R·f(x)|` over the outputs, `R` and `t` drawn from `rng`.
    ///
    /// # Errors
    /// Model errors; `Core` for a degree without a Wigner matrix.
    pub fn equivariance_error(&mut self, batch: &Batch, rng: &mut impl Rng) -> Result<f64, Error> {
        let inputs = &batch.inputs;
        let rot = random_rotation(rng);
        let shift = [
            rng.gen_range(-1.0..1.0),
            rng.gen_range(-1.0..1.0),
            rng.gen_range(-1.0..1.0),
        ];
        let m: Matrix3<f64> = *rot.matrix();
        let r = nalgebra::DMatrix::from_iterator(3, 3, m.iter().copied());
        let mut moved = inputs.clone();
        moved.coors = transform_rows(&inputs.coors, &r, Some(&shift));
        let base = self
            .model
            .loss_and_gradients(inputs, &batch.targets)?
            .outputs;
        let after = self
            .model
            .loss_and_gradients(&moved, &batch.targets)?
            .outputs;
        let mut worst = 0.0f64;
        for (name, t) in base.iter() {
            let want = match self.model.output_transform(name) {
                Some(OutputTransform::Degree(0)) | None => t.clone(),
                Some(OutputTransform::Degree(l)) => {
                    let d = se3_core::so3::wigner_d(l, &rot)?;
                    transform_rows(t, &d, None)
                }
                Some(OutputTransform::Position) => transform_rows(t, &r, Some(&shift)),
            };
            let got = after.get(name).ok_or(Error::MissingKey {
                key: name.to_string(),
                expected: t.shape.clone(),
            })?;
            let scale = want.data.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let diff = got
                .data
                .iter()
                .zip(&want.data)
                .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
            worst = worst.max(diff / scale.max(1e-12));
        }
        Ok(worst)
    }

    /// The parameters as a state dict under their PyTorch keys.
    ///
    /// # Errors
    /// `NonFinite` if a value is NaN or infinite (such weights are never written).
    pub fn weights(&self) -> Result<StateDict, Error> {
        let mut sd = StateDict::new();
        for (key, shape, v) in self.model.parameters() {
            if let Some(index) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    name: "parameter",
                    index,
                });
            }
            sd.insert(
                key,
                Tensor::new(shape, v.iter().map(|&x| f64::from(x)).collect())?,
            );
        }
        Ok(sd)
    }
}
