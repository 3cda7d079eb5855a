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
    /// The SE(3)-Transformer at the sizes of the PyTorch baseline: time, peak memory, ratios.
    Se3Transformer {
        /// Run only this case, in this process (used by the benchmark's child processes).
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
        BenchTarget::Se3Transformer { case } => super::bench_se3t::run(case.as_deref()),
        BenchTarget::Equiformer { case, torch } => {
            super::bench_equiformer::run(case.as_deref(), torch.as_deref())
        }
    }
}
