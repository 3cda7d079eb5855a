//! Training se3 models on data set files: the data set format ([`dataset`]), what a model must
//! offer to be trained ([`model`]), the training loop ([`trainer`]: shuffled mini-batches, one
//! optimizer step of [`se3_core::train`] each, validation loss and equivariance error per
//! epoch) and checkpoints that resume exactly ([`checkpoint`]). `se3 train` drives it.

pub mod build;
pub mod checkpoint;
pub mod dataset;
pub mod init;
pub mod model;
pub mod trainer;

pub use checkpoint::TrainingCheckpoint;
pub use dataset::{Batch, Split, TrainingSet};
pub use model::{DifferentiableModel, LossAndGradients, OutputTransform, TrainableModel};
pub use trainer::{EpochRecord, OptimizerKind, StepReport, TrainOptions, TrainProgress, Trainer};
