//! Subcommands of the `se3` program, one file each.

pub mod bench;
pub mod bench_engine;
pub mod bench_equiformer;
pub mod bench_layers;
pub mod bench_math;
pub mod bench_pytorch;
pub mod bench_scale;
pub mod bench_se3t;
pub mod bench_train;
pub mod bench_zoo;
pub mod data;
pub mod doctor;
pub mod grad;
pub mod infer;
pub mod train;
pub mod train_plot;
pub mod zoo;
pub mod zoo_models;

/// Any error a subcommand reports: printed as one line, exit code 1.
pub type CliError = Box<dyn std::error::Error>;
