//! The state of an optimizer as named float64 buffers, for checkpoints that resume exactly.
//!
//! Names follow `torch.optim`'s per-parameter state: `exp_avg.<param>` and `exp_avg_sq.<param>`
//! (Adam, AdamW: first and second moments), `step.<param>` (a one-element buffer holding the
//! step count `t`), `momentum_buffer.<param>` (SGD with momentum). Values are the optimizer's
//! own float64 state, so saving and loading them (as float64) loses nothing.

use std::collections::BTreeMap;

use crate::Error;

/// An optimizer's state: which optimizer, and its named float64 buffers.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptimizerState {
    /// The optimizer's name (`sgd`, `adam`, `adamw`): state of one cannot be loaded into another.
    pub kind: String,
    /// Buffers by name, as in the module documentation.
    pub buffers: BTreeMap<String, Vec<f64>>,
}

impl OptimizerState {
    /// An empty state for optimizer `kind`.
    pub fn new(kind: &str) -> OptimizerState {
        OptimizerState {
            kind: kind.to_string(),
            buffers: BTreeMap::new(),
        }
    }

    /// The buffer `prefix.param`, if present.
    pub fn buffer(&self, prefix: &str, param: &str) -> Option<&Vec<f64>> {
        self.buffers.get(&format!("{prefix}.{param}"))
    }

    /// `Ok` if this state was saved by optimizer `kind`.
    ///
    /// # Errors
    /// `OptimizerStateMismatch` naming both optimizers otherwise.
    pub fn expect_kind(&self, kind: &'static str) -> Result<(), Error> {
        if self.kind != kind {
            return Err(Error::OptimizerStateMismatch {
                expected: kind,
                found: self.kind.clone(),
            });
        }
        Ok(())
    }

    /// The parameter names that have a buffer `prefix.<param>`.
    pub fn params_with(&self, prefix: &str) -> Vec<String> {
        let p = format!("{prefix}.");
        self.buffers
            .keys()
            .filter_map(|k| k.strip_prefix(p.as_str()).map(str::to_string))
            .collect()
    }
}
