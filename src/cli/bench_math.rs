//! `se3 bench math`: throughput of the spherical harmonics (l <= 3 on 1,000,000 random
//! vectors) and of the se3-transformer kernel basis (all pairs of degrees up to 3 on 100,000
//! edges), with the ratio against e3nn's time from `tests/reference/BASELINE.md`.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3_core::basis::{KernelBasis, QjPrecision};
use se3_core::so3::spherical_harmonics::{
    spherical_harmonics_batch_f32, spherical_harmonics_batch_f32_into,
    spherical_harmonics_batch_into,
};
use se3_core::so3::{sh_len, Convention, Normalization};

/// e3nn 0.6 `o3.spherical_harmonics([0,1,2,3], x, normalize=True, normalization='component')` on
/// 1e6 float32 vectors, 2 threads (tests/reference/BASELINE.md, case `e3nn_sh_lmax3_1e6`).
pub const E3NN_SH_LMAX3_1E6_SECONDS: f64 = 0.0813;

/// Number of vectors of the harmonics benchmark.
pub const SH_VECTORS: usize = 1_000_000;
/// Number of edges of the kernel-basis benchmark.
pub const BASIS_EDGES: usize = 100_000;
/// Timed repetitions per case (after one warm-up); the median is reported.
const RUNS: usize = 7;

/// One benchmark row.
struct Row {
    case: &'static str,
    items: usize,
    median: Duration,
    min: Duration,
    baseline: Option<f64>,
}

fn time_runs(
    name: &str,
    mut f: impl FnMut() -> Result<(), super::CliError>,
) -> Result<(Duration, Duration), super::CliError> {
    let bar = ProgressBar::new(RUNS as u64 + 1);
    bar.set_style(
        ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    bar.set_message(name.to_string());
    f()?; // warm-up
    bar.inc(1);
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
        bar.inc(1);
    }
    bar.finish_and_clear();
    times.sort();
    Ok((times[RUNS / 2], times[0]))
}

fn random_vectors(rng: &mut StdRng, n: usize) -> Vec<[f32; 3]> {
    (0..n)
        .map(|_| {
            [
                rng.gen_range(-1.0f32..1.0),
                rng.gen_range(-1.0f32..1.0),
                rng.gen_range(-1.0f32..1.0),
            ]
        })
        .collect()
}

/// Runs the benchmark and prints its table.
pub fn run() -> Result<(), super::CliError> {
    let mut rng = StdRng::seed_from_u64(0);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut rows = Vec::new();

    let vs32 = random_vectors(&mut rng, SH_VECTORS);
    let (median, min) = time_runs("SH l<=3, f32 out", || {
        let y =
            spherical_harmonics_batch_f32(3, &vs32, Convention::E3nn, Normalization::Component)?;
        std::hint::black_box(&y);
        Ok(())
    })?;
    rows.push(Row {
        case: "SH l<=3, 1e6 vectors, f32 (alloc)",
        items: SH_VECTORS,
        median,
        min,
        baseline: Some(E3NN_SH_LMAX3_1E6_SECONDS),
    });

    let mut out32 = vec![0.0f32; SH_VECTORS * sh_len(3)];
    let (median, min) = time_runs("SH l<=3, f32 into buffer", || {
        spherical_harmonics_batch_f32_into(
            3,
            &vs32,
            Convention::E3nn,
            Normalization::Component,
            &mut out32,
        )?;
        std::hint::black_box(&out32);
        Ok(())
    })?;
    rows.push(Row {
        case: "SH l<=3, 1e6 vectors, f32 (reused)",
        items: SH_VECTORS,
        median,
        min,
        baseline: Some(E3NN_SH_LMAX3_1E6_SECONDS),
    });

    let vs64: Vec<[f64; 3]> = vs32
        .iter()
        .map(|v| [v[0] as f64, v[1] as f64, v[2] as f64])
        .collect();
    let mut out64 = vec![0.0f64; SH_VECTORS * sh_len(3)];
    let (median, min) = time_runs("SH l<=3, f64 into buffer", || {
        spherical_harmonics_batch_into(
            3,
            &vs64,
            Convention::E3nn,
            Normalization::Component,
            &mut out64,
        )?;
        std::hint::black_box(&out64);
        Ok(())
    })?;
    rows.push(Row {
        case: "SH l<=3, 1e6 vectors, f64 (reused)",
        items: SH_VECTORS,
        median,
        min,
        baseline: Some(E3NN_SH_LMAX3_1E6_SECONDS),
    });

    // Kernel basis: all 16 pairs up to degree 3 (1092 values per edge), streamed through a
    // reused buffer of 10,000 edges so that the 1e5-edge run needs 44 MB instead of 437 MB.
    let kb = KernelBasis::new(3, QjPrecision::RoundedF32)?;
    let edges = random_vectors(&mut rng, BASIS_EDGES);
    const CHUNK: usize = 10_000;
    let mut buf = kb.allocate::<f32>(CHUNK);
    let (median, min) = time_runs("kernel basis deg<=3, f32", || {
        for chunk in edges.chunks(CHUNK) {
            if chunk.len() != buf.edges {
                buf = kb.allocate::<f32>(chunk.len());
            }
            kb.compute_into(chunk, &mut buf)?;
            std::hint::black_box(&buf);
        }
        Ok(())
    })?;
    rows.push(Row {
        case: "kernel basis (d_in,d_out)<=3, 1e5 edges",
        items: BASIS_EDGES,
        median,
        min,
        baseline: None,
    });

    println!("se3 bench math ({threads} rayon threads; median of {RUNS} runs after a warm-up)");
    println!(
        "{:<42} {:>10} {:>10} {:>12} {:>22}",
        "case", "median s", "min s", "items/s", "e3nn 0.081s / median"
    );
    for r in &rows {
        let s = r.median.as_secs_f64();
        let ratio = r
            .baseline
            .map(|b| format!("{:.2}x", b / s))
            .unwrap_or_else(|| "-".to_string());
        println!(
            "{:<42} {:>10.4} {:>10.4} {:>12.3e} {:>22}",
            r.case,
            s,
            r.min.as_secs_f64(),
            r.items as f64 / s,
            ratio
        );
    }
    println!(
        "alloc = fresh output buffer per call (as e3nn); reused = caller's buffer (as a compiled graph)"
    );
    println!(
        "kernel basis: {} values per edge ({} pairs), f32, streamed through a {CHUNK}-edge buffer",
        kb.values_per_edge(),
        (kb.max_degree() + 1).pow(2)
    );
    println!(
        "the machine is shared: compare ratios, re-run when idle (tests/reference/BASELINE.md)"
    );
    Ok(())
}
