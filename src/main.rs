//! The `se3` command-line program: the model zoo on built-in data (no subcommand),
//! benchmarks (`se3 bench ...`) and inference on checkpoints (`se3 infer ...`).

mod cli;

use clap::{Parser, Subcommand};

/// se3: SE(3)/E(3)-equivariant networks on point clouds.
#[derive(Parser)]
#[command(name = "se3", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the model zoo on built-in data and print what each model does (the default).
    Zoo,
    /// Benchmarks that print a table of timings and ratios.
    Bench {
        #[command(subcommand)]
        what: cli::bench::BenchTarget,
    },
    /// Run a model from its config + weights on an inputs file and write its outputs.
    Infer(cli::infer::InferArgs),
    /// Gradients of Σ_out <out, cotangent.out> for every parameter and float input.
    Grad(cli::grad::GradArgs),
    /// Train a model on a data set file (progress bar, log, curves, checkpoints, --resume).
    Train(cli::train::TrainArgs),
    /// Print what this build and machine offer (CPU kernels, CUDA libraries and devices).
    Doctor,
    /// Generate a physics data set (safetensors): nbody, dynamics or lj.
    Data {
        #[command(subcommand)]
        what: cli::data::DataTarget,
    },
}

fn main() -> std::process::ExitCode {
    // freed large graph buffers leave the resident set at once (every command runs graphs)
    se3_core::exec::pool::pin_mmap_threshold();
    let args = Args::parse();
    let result = match args.command.unwrap_or(Command::Zoo) {
        Command::Zoo => cli::zoo::run(),
        Command::Bench { what } => cli::bench::run(what),
        Command::Infer(args) => cli::infer::run(&args),
        Command::Doctor => cli::doctor::run(),
        Command::Grad(args) => cli::grad::run(&args),
        Command::Train(args) => cli::train::run(&args),
        Command::Data { what } => cli::data::run(what),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
