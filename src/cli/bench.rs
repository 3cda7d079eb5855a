//! `se3 bench <target>`: dispatch to the benchmark of each part of the library.

use clap::Subcommand;

/// What to benchmark.
#[derive(Subcommand, Clone, Debug)]
pub enum BenchTarget {
    /// Spherical harmonics and kernel bases (throughput).
    Math,
    /// The luminal execution engine: elementwise, matmul, gather/scatter, kNN, overhead.
    Engine,
    /// The graph layers: Conv (0:32, 1:16, 2:8) on 512 nodes x 16 neighbours.
    Layers,
    /// The SE(3)-Transformer at the sizes of the PyTorch baseline: time, peak memory, and
    /// ratios to PyTorch measured in the same session (with `--python` or `SE3_REFENV`).
    Se3Transformer {
        /// Run only this case, in this process (used by the benchmark's child processes).
        #[arg(long, hide = true)]
        case: Option<String>,
        /// Python of the reference environment, to measure PyTorch in this session (default:
        /// env `SE3_REFENV`, the python or the venv directory).
        #[arg(long)]
        python: Option<std::path::PathBuf>,
        /// Directory of `bench_pytorch.py` (default: `shared/reference` beside the repo).
        #[arg(long)]
        reference_dir: Option<std::path::PathBuf>,
        /// Only these cases (comma-separated, e.g. `se3t_deg2_n128,se3t_deg3_n128`).
        #[arg(long)]
        only: Option<String>,
    },
    /// The model zoo at the sizes of `bench_pytorch.py`, next to PyTorch run in the same session.
    Zoo {
        /// Run only this case, in this process (used by the benchmark's child processes).
        #[arg(long, hide = true)]
        case: Option<String>,
        /// Only these cases (comma-separated `bench_pytorch.py` names).
        #[arg(long)]
        only: Option<String>,
        /// Python of the reference environment (`../shared/reference/setup_refenv.sh`) for the
        /// PyTorch column; default: env `SE3_REFENV` (venv dir or python), else no PyTorch column.
        #[arg(long)]
        python: Option<std::path::PathBuf>,
        /// Directory of `bench_pytorch.py` (default: `shared/reference` beside the repo).
        #[arg(long)]
        reference_dir: Option<std::path::PathBuf>,
    },
    /// One training step (forward, MSE loss, backward, Adam) of the SE(3)-Transformer at the
    /// sizes of `bench_pytorch_train.py`, next to PyTorch's step measured in the same session.
    Train {
        /// Run only this case, in this process (used by the benchmark's child processes).
        #[arg(long, hide = true)]
        case: Option<String>,
        /// Python of the reference environment (default: env `SE3_REFENV`).
        #[arg(long)]
        python: Option<std::path::PathBuf>,
        /// Directory of `bench_pytorch_train.py` (default: `shared/reference` beside the repo).
        #[arg(long)]
        reference_dir: Option<std::path::PathBuf>,
        /// Only these cases (comma-separated, e.g. `se3t_deg2_n128`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Neighbour graphs (kNN, radius) and the SE(3)-Transformer at 10^3 ... 10^5 points: time and
    /// peak memory, each case in its own process.
    Scale {
        /// Skip sizes above this many points.
        #[arg(long, default_value_t = 100_000)]
        max_points: usize,
        /// Run only this case (`kind:points`), in this process (used by the child processes).
        #[arg(long, hide = true)]
        case: Option<String>,
    },
    /// Equiformer (deg 2 and 3, 512 nodes) as bench_pytorch.py: time, peak memory, ratios.
    Equiformer {
        /// Run only this case, in this process (used by the benchmark's child processes).
        #[arg(long, hide = true)]
        case: Option<String>,
        /// PyTorch figures from bench_pytorch.py in the same session: `case=seconds:MiB,...`.
        #[arg(long)]
        torch: Option<String>,
    },
}

/// Runs one benchmark and prints its table.
pub fn run(target: BenchTarget) -> Result<(), super::CliError> {
    match target {
        BenchTarget::Math => super::bench_math::run(),
        BenchTarget::Engine => super::bench_engine::run(),
        BenchTarget::Layers => super::bench_layers::run(),
        BenchTarget::Se3Transformer {
            case,
            python,
            reference_dir,
            only,
        } => super::bench_se3t::run(
            case.as_deref(),
            &super::bench_pytorch::TorchSource::from_args(python, reference_dir),
            only.as_deref(),
        ),
        BenchTarget::Zoo {
            case,
            only,
            python,
            reference_dir,
        } => super::bench_zoo::run(
            case.as_deref(),
            only.as_deref(),
            &super::bench_pytorch::TorchSource::from_args(python, reference_dir),
        ),
        BenchTarget::Train {
            case,
            python,
            reference_dir,
            only,
        } => super::bench_train::run(
            case.as_deref(),
            &super::bench_pytorch::TorchSource::from_args(python, reference_dir),
            only.as_deref(),
        ),
        BenchTarget::Scale { max_points, case } => {
            super::bench_scale::run(case.as_deref(), max_points)
        }
        BenchTarget::Equiformer { case, torch } => {
            super::bench_equiformer::run(case.as_deref(), torch.as_deref())
        }
    }
}
