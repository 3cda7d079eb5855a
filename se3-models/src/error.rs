//! The error type of se3-models: checkpoints, configs and model inputs.

/// Errors of se3-models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the math, layers or execution engine.
    #[error(transparent)]
    Core(#[from] se3_core::Error),
    /// A checkpoint lacks a tensor the model needs.
    #[error("checkpoint has no tensor `{key}` (expected shape {expected:?})")]
    MissingKey { key: String, expected: Vec<usize> },
    /// A checkpoint tensor has the wrong shape.
    #[error("tensor `{key}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}
