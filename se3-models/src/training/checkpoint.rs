//! Training checkpoints that resume exactly: a folder with
//!
//! | file                    | content                                                          |
//! |-------------------------|------------------------------------------------------------------|
//! | `weights.safetensors`   | the parameters (float32) under their PyTorch keys                |
//! | `config.json`           | the model's config (class, library, constructor kwargs: fibers)  |
//! | `optimizer.safetensors` | the optimizer state (float64): `exp_avg.<key>`, `exp_avg_sq.<key>`, `step.<key>` or `momentum_buffer.<key>` |
//! | `state.json`            | optimizer kind, training options, epochs and steps done, history |
//!
//! `weights.safetensors` + `config.json` load in `se3 infer` as any checkpoint. A folder is
//! written next to its final place and renamed over it only when complete and finite, so a
//! failing step never leaves a checkpoint with NaN weights or half a checkpoint.

use std::path::{Path, PathBuf};

use se3_core::train::OptimizerState;
use serde::{Deserialize, Serialize};

use super::model::TrainableModel;
use super::trainer::{TrainOptions, TrainProgress, Trainer};
use crate::checkpoint::{SaveDtype, StateDict, Tensor};
use crate::Error;

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StateFile {
    optimizer: String,
    options: TrainOptions,
    progress: TrainProgress,
}

/// A training checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingCheckpoint {
    /// The model's `config.json` as JSON.
    pub config: serde_json::Value,
    /// Parameters under their PyTorch keys.
    pub weights: StateDict,
    pub optimizer: OptimizerState,
    pub options: TrainOptions,
    pub progress: TrainProgress,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn json_error(path: &Path) -> impl FnOnce(serde_json::Error) -> Error + '_ {
    move |source| Error::ConfigParse {
        path: path.display().to_string(),
        source,
    }
}

impl TrainingCheckpoint {
    /// The checkpoint of `trainer` now, for a model made from `config`.
    ///
    /// # Errors
    /// `NonFinite` if a parameter is NaN or infinite.
    pub fn of<M: TrainableModel>(
        trainer: &Trainer<M>,
        config: &serde_json::Value,
    ) -> Result<TrainingCheckpoint, Error> {
        Ok(TrainingCheckpoint {
            config: config.clone(),
            weights: trainer.weights()?,
            optimizer: trainer.optimizer.state(),
            options: trainer.options.clone(),
            progress: trainer.progress.clone(),
        })
    }

    /// Writes the checkpoint to the folder `dir` (replacing one that is there), atomically.
    ///
    /// # Errors
    /// `NonFinite` if a weight or optimizer buffer is not finite (nothing is written); `Io`,
    /// `Safetensors`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), Error> {
        let dir = dir.as_ref();
        for (_, t) in self.weights.iter() {
            if let Some(index) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    name: "checkpoint weights",
                    index,
                });
            }
        }
        let mut opt = StateDict::new();
        for (k, b) in &self.optimizer.buffers {
            if let Some(index) = b.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    name: "checkpoint optimizer state",
                    index,
                });
            }
            opt.insert(k.clone(), Tensor::new(vec![b.len()], b.clone())?);
        }
        let partial: PathBuf = dir.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(io_error(&partial))?;
        }
        std::fs::create_dir_all(&partial).map_err(io_error(&partial))?;
        self.weights
            .save(partial.join("weights.safetensors"), SaveDtype::F32)?;
        opt.save(partial.join("optimizer.safetensors"), SaveDtype::F64)?;
        let config = partial.join("config.json");
        let text = serde_json::to_string_pretty(&self.config).map_err(json_error(&config))?;
        std::fs::write(&config, text).map_err(io_error(&config))?;
        let state = partial.join("state.json");
        let text = serde_json::to_string_pretty(&StateFile {
            optimizer: self.optimizer.kind.clone(),
            options: self.options.clone(),
            progress: self.progress.clone(),
        })
        .map_err(json_error(&state))?;
        std::fs::write(&state, text).map_err(io_error(&state))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io_error(dir))?;
        }
        std::fs::rename(&partial, dir).map_err(io_error(dir))?;
        Ok(())
    }

    /// Reads a checkpoint folder written by [`TrainingCheckpoint::save`].
    ///
    /// # Errors
    /// `Io`, `Safetensors`, `ConfigParse` for a file that is missing or malformed.
    pub fn load(dir: impl AsRef<Path>) -> Result<TrainingCheckpoint, Error> {
        let dir = dir.as_ref();
        let weights = StateDict::load(dir.join("weights.safetensors"))?;
        let opt = StateDict::load(dir.join("optimizer.safetensors"))?;
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let config = serde_json::from_str(&text).map_err(json_error(&config_path))?;
        let state_path = dir.join("state.json");
        let text = std::fs::read_to_string(&state_path).map_err(io_error(&state_path))?;
        let state: StateFile = serde_json::from_str(&text).map_err(json_error(&state_path))?;
        let mut optimizer = OptimizerState::new(&state.optimizer);
        for (k, t) in opt.iter() {
            optimizer.buffers.insert(k.to_string(), t.data.clone());
        }
        Ok(TrainingCheckpoint {
            config,
            weights,
            optimizer,
            options: state.options,
            progress: state.progress,
        })
    }

    /// Puts the checkpoint's parameters, optimizer state and progress into `trainer`.
    ///
    /// # Errors
    /// `MissingKey`/`WrongShape` if the weights do not fit the model;
    /// `Core(OptimizerStateMismatch)` if the optimizer differs from the checkpoint's.
    pub fn restore<M: TrainableModel>(&self, trainer: &mut Trainer<M>) -> Result<(), Error> {
        for (key, shape, _) in trainer.model.parameters() {
            let t = self.weights.get(&key).ok_or(Error::MissingKey {
                key: key.clone(),
                expected: shape.clone(),
            })?;
            if t.shape != shape {
                return Err(Error::WrongShape {
                    key,
                    expected: shape,
                    found: t.shape.clone(),
                });
            }
            let v: Vec<f32> = t.data.iter().map(|&x| x as f32).collect();
            trainer.model.set_parameter(&key, &v)?;
        }
        trainer.optimizer.load_state(&self.optimizer)?;
        trainer.progress = self.progress.clone();
        Ok(())
    }
}
