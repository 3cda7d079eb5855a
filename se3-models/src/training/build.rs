//! The trainable model of a config file, through the dispatch of
//! [`crate::differentiable::differentiable_from_files`] (every model family with gradients).

use super::init::fresh_weights;
use super::model::DifferentiableModel;
use crate::checkpoint::StateDict;
use crate::differentiable::{differentiable_from_files, Objective};
use crate::model_file::ModelFile;
use crate::tfn::{TfnStack, TfnStackConfig};
use crate::Error;

/// The trainable model of `file` with weights `weights`, or, without them, fresh weights
/// (seeded, see [`fresh_weights`]) for a model whose parameter keys are known from its
/// config (the TFN stack).
///
/// # Errors
/// `NotCompiled` for a model family without gradients yet; `MissingInput` for fresh weights
/// of another family; config and weight errors.
pub fn trainable_from_parts(
    file: &ModelFile,
    weights: Option<&StateDict>,
    seed: u64,
) -> Result<DifferentiableModel, Error> {
    let fresh;
    let sd = match weights {
        Some(w) => w,
        None if file.is_tfn_stack() => {
            let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
            fresh = fresh_weights(&TfnStack::expected_keys(&cfg)?, seed)?;
            &fresh
        }
        None => {
            return Err(Error::MissingInput {
                name: "--weights (fresh weights are drawn for the TFN stack only)",
            })
        }
    };
    let inner = differentiable_from_files(file, sd, Objective::MeanSquaredError)?;
    DifferentiableModel::new(inner, file)
}
