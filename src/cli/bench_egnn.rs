//! `se3 bench egnn`: forward time of the compiled `EGNN_Network` (egnn-pytorch 0.2.8 semantics)
//! at the sizes of the PyTorch baseline (`tests/reference/BASELINE.md`): dim 32, depth 2,
//! m_dim 16, batch 1, 512 random points, with 16 nearest neighbours and with all pairs. Prints the
//! first run (graph compilation included), the median of `SE3_BENCH_REPS` runs (default 5; a run
//! covers the host's neighbour selection, setting inputs, running each layer's graph and reading
//! the outputs), and the ratio to the baseline's median (override with `SE3_EGNN_MS` /
//! `SE3_EGNN_DENSE_MS`, measured on the same machine for a fair ratio). With `SE3_EGNN_PROFILE`
//! set, one more run is timed per operator and the largest costs are printed.

use std::time::Instant;

use rand::{rngs::StdRng, Rng, SeedableRng};
use se3_models::checkpoint::Tensor;
use se3_models::egnn::{CompiledEgnn, Egnn, EgnnKind, EgnnNetworkConfig};
use se3_models::inputs::{ModelInputs, NodeFeats};

type Result<T> = std::result::Result<T, super::CliError>;

const NODES: usize = 512;
/// BASELINE.md `egnn_network_n512` and `egnn_network_dense_n512`, median seconds x 1000.
const EGNN_MS: f64 = 13.6;
const EGNN_DENSE_MS: f64 = 477.3;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn case(name: &str, neighbours: usize, torch_ms: f64, rng: &mut StdRng) -> Result<()> {
    let kwargs = serde_json::json!({
        "depth": 2, "dim": 32, "m_dim": 16, "num_nearest_neighbors": neighbours
    });
    let kind = EgnnKind::Network(EgnnNetworkConfig::from_kwargs(&kwargs)?);
    let mut model = CompiledEgnn::new(Egnn::random(kind, rng)?);
    let profile = std::env::var_os("SE3_EGNN_PROFILE").is_some();
    model.set_profiling(profile);
    let inputs = ModelInputs {
        feats: NodeFeats::Dense(Tensor::new(
            vec![1, NODES, 32],
            (0..NODES * 32).map(|_| rng.gen_range(-1.0..1.0)).collect(),
        )?),
        coors: Tensor::new(
            vec![1, NODES, 3],
            (0..NODES * 3).map(|_| rng.gen_range(-4.0..4.0)).collect(),
        )?,
        mask: None,
        adj_mat: None,
        edges: None,
        neighbor_mask: None,
        global_feats: None,
    };
    let t0 = Instant::now();
    model.forward(&inputs)?;
    let first = t0.elapsed().as_secs_f64() * 1e3;
    let reps = std::env::var("SE3_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize)
        .max(1);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        model.forward(&inputs)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    if profile {
        se3_core::exec::profile::reset();
        let t = Instant::now();
        model.forward(&inputs)?;
        let total = t.elapsed().as_secs_f64() * 1e3;
        let recs = se3_core::exec::profile::records();
        let mut by: Vec<_> = se3_core::exec::profile::by_kind(&recs);
        by.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("  one profiled run: {total:.1} ms; by operator kind, then the slowest calls:");
        for (k, sec, n) in by.iter().take(12) {
            println!("  {k:<40} {:>9.2} ms  x{n}", sec * 1e3);
        }
        let mut r2 = recs.clone();
        r2.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        for r in r2.iter().take(10) {
            println!(
                "  {:<30} {:>9.2} ms {:?}",
                r.kind,
                r.seconds * 1e3,
                r.shapes
            );
        }
    }
    let median = times[times.len() / 2];
    println!(
        "{name:<22} {first:>12.1} {median:>12.2} {:>10.2} {torch_ms:>12.1} {:>8.2}",
        times[0],
        median / torch_ms
    );
    Ok(())
}

/// Runs both cases and prints the table.
pub fn run() -> Result<()> {
    let mut rng = StdRng::seed_from_u64(7);
    println!("EGNN_Network dim 32, depth 2, m_dim 16, batch 1, {NODES} nodes (float32 graphs)");
    println!(
        "{:<22} {:>12} {:>12} {:>10} {:>12} {:>8}",
        "case", "first ms", "median ms", "min ms", "torch ms", "ratio"
    );
    case("knn16_n512", 16, env_f64("SE3_EGNN_MS", EGNN_MS), &mut rng)?;
    case(
        "all_pairs_n512",
        0,
        env_f64("SE3_EGNN_DENSE_MS", EGNN_DENSE_MS),
        &mut rng,
    )?;
    Ok(())
}
