//! The trainable model of a config file: which model families `se3 train` can optimise.

use super::init::fresh_weights;
use super::model::TrainableModel;
use crate::checkpoint::StateDict;
use crate::model_file::ModelFile;
use crate::tfn::trainable::TrainableTfn;
use crate::tfn::{TfnStack, TfnStackConfig};
use crate::Error;

/// The model families se3 can train, as named in errors.
pub const TRAINABLE: &str = "the TFN stack (ConvSE3 + NormSE3)";

/// The trainable model of `file` with weights `weights`, or fresh weights (seeded, see
/// [`fresh_weights`]) without them.
///
/// # Errors
/// `InvalidConfig` for a model family that cannot be trained yet; config and weight errors.
pub fn trainable_from_parts(
    file: &ModelFile,
    weights: Option<&StateDict>,
    seed: u64,
) -> Result<Box<dyn TrainableModel>, Error> {
    if file.is_tfn_stack() {
        let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
        let fresh;
        let sd = match weights {
            Some(w) => w,
            None => {
                fresh = fresh_weights(&TfnStack::expected_keys(&cfg)?, seed)?;
                &fresh
            }
        };
        return Ok(Box::new(TrainableTfn::new(&cfg, sd)?));
    }
    Err(Error::InvalidConfig {
        field: "class",
        expected: TRAINABLE,
        found: format!("{} ({})", file.class, file.library.name),
    })
}
