//! `se3 data nbody|dynamics|lj --seed N --out FILE`: generate a physics data set
//! (`se3-physics-v1` safetensors, see `se3_models::physics::dataset`) with a progress bar, and
//! print its sizes and, for the position tasks, the gradient-free baselines on its test split.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use se3_models::physics::baselines::{fit_horizon, Baseline};
use se3_models::physics::dataset::DatasetFile;
use se3_models::physics::dynamics::DynamicsConfig;
use se3_models::physics::lj_clusters::LjClusterConfig;
use se3_models::physics::nbody::NBodyConfig;

/// Which data set to generate.
#[derive(Subcommand, Clone, Debug)]
pub enum DataTarget {
    /// The charged N-body benchmark (EGNN protocol: 5 particles, frame 30 -> 40, 3000/2000/2000).
    Nbody(DataArgs),
    /// Particle dynamics with all-pairs springs in blocks of 10 steps (iterative SE(3)-Transformer).
    Dynamics(DataArgs),
    /// Lennard-Jones clusters of 10-38 atoms at T = 0.1, 0.2, 0.3 with energies and forces.
    Lj(DataArgs),
    /// A small `se3 train` set: charged points, targets the charge-weighted mean distance
    /// (type0) and offset (type1) to the other points.
    Neighbours(NeighboursArgs),
}

/// Options of the `se3 train` toy set.
#[derive(Args, Clone, Debug)]
pub struct NeighboursArgs {
    /// Random seed; the same seed gives the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Training samples.
    #[arg(long, default_value_t = 64)]
    pub train: usize,
    /// Validation samples.
    #[arg(long, default_value_t = 16)]
    pub val: usize,
    /// Points per sample.
    #[arg(long, default_value_t = 8)]
    pub nodes: usize,
}

/// Options shared by every data set.
#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Random seed; the same seed gives the same file.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Training trajectories (default: the protocol's).
    #[arg(long)]
    pub train: Option<usize>,
    /// Validation trajectories (default: the protocol's).
    #[arg(long)]
    pub val: Option<usize>,
    /// Test trajectories (default: the protocol's).
    #[arg(long)]
    pub test: Option<usize>,
    /// nbody only: NRI's numerics (force components clipped to 0.1/dt, fixed steps, no energy
    /// check), for comparison with published numbers.
    #[arg(long)]
    pub nri_clipping: bool,
}

fn progress_bar(total: usize) -> Result<ProgressBar, super::CliError> {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trajectories ({eta})",
    )?);
    Ok(bar)
}

fn sizes(args: &DataArgs, defaults: (usize, usize, usize)) -> (usize, usize, usize) {
    (
        args.train.unwrap_or(defaults.0),
        args.val.unwrap_or(defaults.1),
        args.test.unwrap_or(defaults.2),
    )
}

fn summary(file: &DatasetFile, args: &DataArgs) {
    let parts: Vec<String> = file
        .splits
        .iter()
        .map(|(name, d)| format!("{name} {}", d.samples.len()))
        .collect();
    println!(
        "wrote {} ({} seed {}): samples {}",
        args.out.display(),
        file.kind.name(),
        file.seed,
        parts.join(", ")
    );
}

fn print_baselines(file: &DatasetFile, horizon: f64) -> Result<(), super::CliError> {
    if let Some(test) = file.split("test").filter(|d| !d.samples.is_empty()) {
        let still = Baseline::Static.mse(test)?;
        let linear = Baseline::ConstantVelocity { horizon }.mse(test)?;
        println!("test MSE, static positions (x̂ = x):           {still:.6}");
        println!("test MSE, constant velocity (x̂ = x + {horizon} v): {linear:.6}");
        if let Some(train) = file.split("train").filter(|d| !d.samples.is_empty()) {
            let fitted = fit_horizon(train)?;
            let mse = Baseline::ConstantVelocity { horizon: fitted }.mse(test)?;
            println!(
                "test MSE, constant velocity with T fitted on train (T = {fitted:.4}): {mse:.6}"
            );
        }
    }
    Ok(())
}

/// Generates the chosen data set and writes it.
pub fn run(target: DataTarget) -> Result<(), super::CliError> {
    let start = std::time::Instant::now();
    match target {
        DataTarget::Nbody(args) => {
            let mut config = if args.nri_clipping {
                NBodyConfig::nri_compatible()
            } else {
                NBodyConfig::default()
            };
            (config.train, config.val, config.test) =
                sizes(&args, (config.train, config.val, config.test));
            let bar = progress_bar(config.train + config.val + config.test)?;
            let (file, redraws) = config.generate(args.seed, || bar.inc(1))?;
            bar.finish_and_clear();
            file.save(&args.out)?;
            summary(&file, &args);
            println!(
                "redrawn trajectories (energy error above {}): {redraws}",
                config.max_energy_error
            );
            let horizon = (config.target_frame - config.input_frame) as f64
                * config.sample_every as f64
                * config.dt;
            print_baselines(&file, horizon)?;
        }
        DataTarget::Dynamics(args) => {
            let mut config = DynamicsConfig::default();
            (config.train, config.val, config.test) =
                sizes(&args, (config.train, config.val, config.test));
            let bar = progress_bar(config.train + config.val + config.test)?;
            let file = config.generate(args.seed, || bar.inc(1))?;
            bar.finish_and_clear();
            file.save(&args.out)?;
            summary(&file, &args);
            print_baselines(&file, config.block_steps as f64 * config.dt)?;
        }
        DataTarget::Neighbours(args) => {
            let set = se3_models::training::dataset::weighted_neighbours(
                args.seed, args.train, args.val, args.nodes,
            )?;
            set.save(&args.out)?;
            println!(
                "wrote {} (weighted neighbours, seed {}): {} train, {} val samples of {} points",
                args.out.display(),
                args.seed,
                args.train,
                args.val,
                args.nodes
            );
        }
        DataTarget::Lj(args) => {
            let mut config = LjClusterConfig::default();
            (config.train, config.val, config.test) =
                sizes(&args, (config.train, config.val, config.test));
            let bar = progress_bar(config.train + config.val + config.test)?;
            let file = config.generate(args.seed, || bar.inc(1))?;
            bar.finish_and_clear();
            file.save(&args.out)?;
            summary(&file, &args);
        }
    }
    println!("time: {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
