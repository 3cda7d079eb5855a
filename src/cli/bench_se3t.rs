//! `se3 bench se3-transformer`: forward time and peak memory of the SE(3)-Transformer
//! ([`Se3TransformerNet`]: se3-core's layers as one float32 luminal graph) at the sizes of the
//! PyTorch baseline (BASELINE.md: dim 32, heads 4, dim_head 16, depth 2, 16 neighbours, batch 1,
//! random weights and inputs), next to se3-transformer-pytorch's figures as ratios, measured in
//! the same session by `bench_pytorch.py` (`super::bench_pytorch`; none without a python).
//! It also gives the GFLOP/s of the fused contraction kernels (flops counted from their shapes,
//! [`contraction_flops`]) next to `matrixmultiply::sgemm`'s on a large square in the same process.
//!
//! Each case runs in a child process of this binary (`--case <name>`), so its peak resident set
//! (VmHWM of /proc/self/status) is its own: reported after building + compiling the graph and after
//! the forwards, with where it goes (resident after the build, graph weights, the most
//! intermediates alive at once in a forward, idle pooled buffers: se3-core `exec::MemoryStats`).
//! The weights are drawn as the layers ask for them and moved into the graph
//! ([`Se3TransformerNet::into_session`]); the `se3` program (so the child too)
//! pins glibc's mmap threshold (`exec::pool::pin_mmap_threshold`) so freed large buffers leave
//! the resident set.
//! The child runs one warm-up and then the median of 3 forwards (and their CPU time), and times
//! one more forward per operator (`se3_core::exec::profile`) to say where the time goes: host
//! preparation (neighbours, kernel basis), radial networks, gathers + `Kx`, the fused
//! contractions, attention and node operations. `SE3_PROFILE=1` also lists the heaviest operators.

use std::process::Command;
use std::time::Instant;

use super::bench_pytorch::{TorchSource, HOW_TO_GET_TORCH};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{rngs::StdRng, Rng, SeedableRng};
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::inputs::{BoolTensor, ModelInputs, NodeFeats};
use se3_models::se3_transformer::net::NetSource;
use se3_models::se3_transformer::{
    Se3TransformerConfig, Se3TransformerForward, Se3TransformerNet, Se3TransformerOptions,
};

/// A benchmark size (PyTorch's figures are measured in the same session: [`TorchSource`]).
struct Case {
    name: &'static str,
    num_degrees: usize,
    nodes: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "se3t_deg2_n128",
        num_degrees: 2,
        nodes: 128,
    },
    Case {
        name: "se3t_deg2_n512",
        num_degrees: 2,
        nodes: 512,
    },
    Case {
        name: "se3t_deg3_n128",
        num_degrees: 3,
        nodes: 128,
    },
];

/// Timed forwards after the warm-up (env `SE3_BENCH_REPS` overrides it for a case run alone,
/// `--case`, e.g. to compare CPU seconds of two builds on a loaded machine).
const REPS: usize = 3;

/// [`REPS`], or `SE3_BENCH_REPS` when set to a positive number.
fn reps() -> usize {
    std::env::var("SE3_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(REPS)
}

/// What a child reports for one case.
#[derive(Debug, Default)]
struct Measured {
    median_s: f64,
    min_s: f64,
    max_s: f64,
    peak_mib: f64,
    build_peak_mib: f64,
    /// The forwards' own peak (VmHWM reset after the build), when the kernel allows it.
    forward_peak_mib: Option<f64>,
    cpu_s: f64,
    /// Resident after the build (weights, graph, host model, program).
    build_rss_mib: f64,
    weights_mib: f64,
    intermediates_mib: f64,
    pooled_mib: f64,
    stages: Vec<(String, f64)>,
    /// Fused contraction kernels of the instrumented forward: kind, flops, seconds.
    kernels: Vec<(String, f64, f64)>,
    /// `matrixmultiply::sgemm` on a large square in the same child, GFLOP/s.
    sgemm_gflops: f64,
}

/// Runs every case in a child process and prints the table, with PyTorch from `torch` (each
/// case right after ours, in the same session; no PyTorch column without a python) and only the
/// cases named in `only` (comma-separated; all when `None`); `case` runs one case in this
/// process.
pub fn run(
    case: Option<&str>,
    torch: &TorchSource,
    only: Option<&str>,
) -> Result<(), super::CliError> {
    if let Some(name) = case {
        let c = CASES
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("unknown case `{name}`"))?;
        return run_case(c);
    }
    let cases: Vec<&Case> = match only {
        None => CASES.iter().collect(),
        Some(list) => list
            .split(',')
            .map(|n| {
                CASES
                    .iter()
                    .find(|c| c.name == n.trim())
                    .ok_or_else(|| format!("unknown case `{n}`"))
            })
            .collect::<Result<_, _>>()?,
    };
    if torch.python.is_some() {
        torch.script()?;
    }
    let exe = std::env::current_exe()?;
    let bar = ProgressBar::new(cases.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
    )?);
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut rows = Vec::new();
    for c in cases {
        bar.set_message(c.name);
        let out = Command::new(&exe)
            .args(["bench", "se3-transformer", "--case", c.name])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "case {} failed: {}",
                c.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        let m = parse(&String::from_utf8_lossy(&out.stdout))?;
        bar.set_message(format!("{} (PyTorch)", c.name));
        let t = torch.measure(c.name)?;
        rows.push((c, m, t));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let torch_info = rows
        .iter()
        .find_map(|r| r.2.as_ref())
        .map(|t| {
            format!(
                "PyTorch measured in this session: torch {}, {} threads, median of {}",
                t.torch, t.threads, t.reps
            )
        })
        .unwrap_or_else(|| "no PyTorch figures".to_string());
    println!(
        "SE3Transformer dim 32, heads 4, dim_head 16, depth 2, 16 neighbours, batch 1, return_type 0 \
         ({torch_info}; se3 median of {REPS})"
    );
    println!(
        "{:<16} {:>10} {:>16} {:>9} {:>11} {:>9} {:>12} {:>11} {:>9} {:>16} {:>16} {:>9}",
        "case",
        "se3 (s)",
        "se3 min-max",
        "cpu (s)",
        "torch (s)",
        "speedup",
        "se3 peak MiB",
        "torch MiB",
        "mem frac",
        "contract GF/s",
        "radial GF/s",
        "sgemm"
    );
    for (c, m, t) in &rows {
        // the kernels' rates and their share of sgemm's, measured in the case's own process
        let rate = |kind: &str| -> String {
            m.kernels
                .iter()
                .find(|k| k.0 == kind)
                .map(|(_, f, s)| {
                    let g = f / s.max(1e-12) / 1e9;
                    format!("{g:.0} ({:.0}%)", 100.0 * g / m.sgemm_gflops.max(1e-12))
                })
                .unwrap_or_else(|| "-".to_string())
        };
        let kernels = format!(
            " {:>16} {:>16} {:>9.0}",
            rate("EdgeContract"),
            rate("RadialHidden"),
            m.sgemm_gflops
        );
        let ours = format!(
            "{:<16} {:>10.4} {:>7.3}-{:<8.3} {:>9.3}",
            c.name, m.median_s, m.min_s, m.max_s, m.cpu_s
        );
        match t {
            Some(t) => println!(
                "{ours} {:>11.4} {:>8.1}x {:>12.1} {:>11.1} {:>9.3}{kernels}",
                t.median_s,
                t.median_s / m.median_s,
                m.peak_mib,
                t.peak_mib,
                m.peak_mib / t.peak_mib
            ),
            None => println!(
                "{ours} {:>11} {:>9} {:>12.1} {:>11} {:>9}{kernels}",
                "-", "-", m.peak_mib, "-", "-"
            ),
        }
    }
    if rows.iter().all(|r| r.2.is_none()) {
        println!("{HOW_TO_GET_TORCH}");
    }
    println!(
        "\nwhere the memory goes (MiB): build peak = while loading + compiling (weights drawn as \
         the model reads them, radial last layers kept in f32 only); after build = resident before any forward (f32 weights, compiled \
         graph, host model, program); weights = resident graph weights; intermediates = most \
         tensors alive at once in a forward (memory-aware order); pooled = idle pooled buffers \
         then; forward peak = the forwards' own peak resident set; peak = the larger of the two"
    );
    println!(
        "  {:<16} {:>10} {:>11} {:>9} {:>13} {:>7} {:>12} {:>10}",
        "case",
        "build peak",
        "after build",
        "weights",
        "intermediates",
        "pooled",
        "forward peak",
        "peak"
    );
    for (c, m, _) in &rows {
        println!(
            "  {:<16} {:>10.1} {:>11.1} {:>9.1} {:>13.1} {:>7.1} {:>12} {:>10.1}",
            c.name,
            m.build_peak_mib,
            m.build_rss_mib,
            m.weights_mib,
            m.intermediates_mib,
            m.pooled_mib,
            m.forward_peak_mib
                .map_or_else(|| "-".to_string(), |v| format!("{v:.1}")),
            m.peak_mib
        );
    }
    println!("\nwhere the time goes (one instrumented forward, seconds):");
    for (c, m, _) in &rows {
        let total: f64 = m.stages.iter().map(|s| s.1).sum();
        let parts: Vec<String> = m
            .stages
            .iter()
            .map(|(k, v)| format!("{k} {v:.4} ({:.0}%)", 100.0 * v / total.max(1e-12)))
            .collect();
        println!("  {:<16} {}", c.name, parts.join(", "));
    }
    println!(
        "\nfused contraction kernels (one instrumented forward; flops counted from shapes, a \
         multiply-add = 2) next to matrixmultiply::sgemm {SGEMM_SIZE}^3 in the same process:"
    );
    for (c, m, _) in &rows {
        let parts: Vec<String> = m
            .kernels
            .iter()
            .map(|(k, f, t)| {
                let g = f / t.max(1e-12) / 1e9;
                format!(
                    "{k} {:.2} GFLOP in {t:.4} s = {g:.1} GFLOP/s ({:.0}% of sgemm)",
                    f / 1e9,
                    100.0 * g / m.sgemm_gflops.max(1e-12)
                )
            })
            .collect();
        println!(
            "  {:<16} sgemm {:.1} GFLOP/s; {}",
            c.name,
            m.sgemm_gflops,
            parts.join("; ")
        );
    }
    println!(
        "cpu (s): CPU time (all threads) per forward; on a loaded machine the wall time of a \
         forward is at least cpu / threads. contract / radial GF/s: the fused edge contractions \
         (EdgeContract) and radial hidden layers (RadialHidden) in one instrumented forward, with \
         their share of sgemm (GFLOP/s of matrixmultiply::sgemm {SGEMM_SIZE}^3, all cores, in \
         the same process)"
    );
    println!("targets: speedup >= 20x, mem frac <= 0.1");
    Ok(())
}

fn parse(text: &str) -> Result<Measured, super::CliError> {
    let mut m = Measured::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("time"), Some(v)) => {
                let vals: Vec<f64> = std::iter::once(v)
                    .chain(it)
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                if vals.len() != 3 {
                    return Err(format!("bad time line `{line}`").into());
                }
                (m.median_s, m.min_s, m.max_s) = (vals[0], vals[1], vals[2]);
            }
            (Some("peak_mib"), Some(v)) => m.peak_mib = v.parse()?,
            (Some("cpu_s"), Some(v)) => m.cpu_s = v.parse()?,
            (Some("build_peak_mib"), Some(v)) => m.build_peak_mib = v.parse()?,
            (Some("forward_peak_mib"), Some(v)) => m.forward_peak_mib = Some(v.parse()?),
            (Some("build_rss_mib"), Some(v)) => m.build_rss_mib = v.parse()?,
            (Some("mem_weights_mib"), Some(v)) => m.weights_mib = v.parse()?,
            (Some("mem_intermediates_mib"), Some(v)) => m.intermediates_mib = v.parse()?,
            (Some("mem_pooled_mib"), Some(v)) => m.pooled_mib = v.parse()?,
            (Some("sgemm_gflops"), Some(v)) => m.sgemm_gflops = v.parse()?,
            (Some("kernel"), Some(k)) => {
                let flops = it.next().ok_or("kernel line without flops")?.parse()?;
                let secs = it.next().ok_or("kernel line without seconds")?.parse()?;
                m.kernels.push((k.to_string(), flops, secs));
            }
            (Some("stage"), Some(k)) => {
                let v = it.next().ok_or("stage line without value")?.parse()?;
                m.stages.push((k.to_string(), v));
            }
            _ => {}
        }
    }
    Ok(m)
}

/// Where one forward's time goes: host preparation (neighbour selection and kernel basis), the
/// radial networks' hidden layers (`RadialHidden`), the fused edge contractions (`EdgeContract`)
/// split into their gathers + `Kx = basis . x_j` and the rest (products with the radial hidden
/// values, last radial layer, neighbour sums and query logits) by the kernel's own thread-time
/// shares, and everything else on the graph (attention softmax, linear layers, norms, copies).
fn stages(
    recs: &[se3_core::exec::profile::Record],
    host: &[(&'static str, f64)],
) -> Vec<(&'static str, f64)> {
    let kind = |k: &str| -> f64 { recs.iter().filter(|r| r.kind == k).map(|r| r.seconds).sum() };
    let total: f64 = recs.iter().map(|r| r.seconds).sum();
    let (radial, contract) = (
        kind("RadialHidden"),
        kind("EdgeContract") + kind("ArrangedEdgeContract"),
    );
    let details = se3_core::exec::profile::details();
    let part = |name: &str| {
        details
            .iter()
            .find(|d| d.0 == name)
            .map(|d| d.1)
            .unwrap_or(0.0)
    };
    let share = part("edge_contract.gather_kx") / part("edge_contract.all").max(1e-12);
    let prep = host
        .iter()
        .filter(|h| !h.0.starts_with("graph"))
        .map(|h| h.1)
        .sum();
    vec![
        ("host:neighbours+basis", prep),
        ("radial-network", radial),
        ("gathers+Kx", contract * share),
        (
            "contractions(last-layer,sums,logits)",
            contract * (1.0 - share),
        ),
        ("attention+node-ops", total - radial - contract),
    ]
}

/// Side of the square `sgemm` that measures the machine's GEMM rate.
pub const SGEMM_SIZE: usize = 1024;

/// GFLOP/s of `matrixmultiply::sgemm` on `SGEMM_SIZE` squares (its own threads: the physical
/// cores, or `MATMUL_NUM_THREADS`), the best of 3 after a warm-up.
pub fn sgemm_gflops() -> f64 {
    let n = SGEMM_SIZE;
    let a: Vec<f32> = (0..n * n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i % 13) as f32 - 6.0) / 6.0).collect();
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for rep in 0..4 {
        let t = Instant::now();
        // SAFETY: a, b, c are n x n row-major buffers of this length.
        unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                n as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        std::hint::black_box(&c);
        if rep > 0 {
            best = best.min(t.elapsed().as_secs_f64());
        }
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Floating-point operations (a multiply-add = 2) of one call of a fused contraction kernel,
/// from its input shapes; `None` for other operators or unexpected shapes.
///
/// - `RadialHidden` (`x [e, n_in]`, `w0 [P, n_in, hd]`): the two layers' GEMMs,
///   `2 P e hd (n_in + hd)` (LayerNorm and GELU not counted).
/// - `EdgeContract` (`x [n, c_in, mi]`, `basis [e, mo, mi, nf]`, `w [cf hd, H cnt]`,
///   `b [cf, H cnt]`, one input per head): `Kx` `2 e mo nf c_in mi`, plus per head
///   `2 mo cf (hd + 1) (e + n cnt)` (the products with the hidden values or the query-folded
///   weights, the last layer and its bias), plus `2 e hd` per head for the logits' final dots
///   (logits when the per-head input is `q [n, cnt, mo]`, sums for `a [n, k]`).
/// - `RadialEdgeConv` (`x [M, c_in mi]`, `basis [e, mi, nf mo]`, `h [e, hd]`): its `Kx` and
///   per-edge sums `2 e nf mo c_in (mi + hd)` (the per-node last layer needs `mo`, which the
///   shapes do not give, and is not counted).
pub fn contraction_flops(r: &se3_core::exec::profile::Record) -> Option<f64> {
    let s = &r.shapes;
    let dim = |i: usize, j: usize| s.get(i).and_then(|d| d.get(j)).map(|&v| v as f64);
    match r.kind.as_str() {
        "RadialHidden" => {
            let (e, n_in) = (dim(0, 0)?, dim(0, 1)?);
            let (p, hd) = (dim(1, 0)?, dim(1, 2)?);
            Some(2.0 * p * e * hd * (n_in + hd))
        }
        "EdgeContract" | "ArrangedEdgeContract" => {
            let (n, c_in, mi) = (dim(0, 0)?, dim(0, 1)?, dim(0, 2)?);
            let (e, mo, nf) = (dim(2, 0)?, dim(2, 1)?, dim(2, 3)?);
            let logits = s.get(6).is_some_and(|q| q.len() == 3);
            // the last layer's rows (f, c, h), columns and bias rows (f, c): `w [rows, cols]`,
            // `b [cf, cols]`, or in the arranged kernel's order (sums `w [H, rows, cnt]`,
            // logits `w^T [cols, rows + 16]`, `b^T [cols, cf]`)
            let (whd, cols, cf) = match (r.kind.as_str(), logits) {
                ("EdgeContract", _) => (dim(4, 0)?, dim(4, 1)?, dim(5, 0)?),
                (_, false) => (dim(4, 1)?, dim(4, 0)? * dim(4, 2)?, dim(5, 0)?),
                (_, true) => (dim(4, 1)? - 16.0, dim(4, 0)?, dim(5, 1)?),
            };
            let heads = s.len().checked_sub(6).filter(|&h| h > 0)? as f64;
            let hd = whd / cf.max(1.0);
            let cnt = cols / heads;
            let kx = 2.0 * e * mo * nf * c_in * mi;
            let per_head = 2.0 * mo * cf * (hd + 1.0) * (e + n * cnt)
                + if logits { 2.0 * e * hd } else { 0.0 };
            Some(kx + heads * per_head)
        }
        "RadialEdgeConv" => {
            let (cmi, e, mi, nfmo) = (dim(0, 1)?, dim(1, 0)?, dim(1, 1)?, dim(1, 2)?);
            let hd = dim(2, 1)?;
            let c_in = cmi / mi.max(1.0);
            Some(2.0 * e * nfmo * c_in * (mi + hd))
        }
        _ => None,
    }
}

/// CPU time (user + system, all threads) of this process so far, seconds (clock ticks of
/// /proc/self/stat, 100 Hz).
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (u, s): (f64, f64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((u + s) / 100.0)
}

/// Peak resident set of this process (VmHWM), MiB.
pub(crate) fn peak_mib() -> Result<f64, super::CliError> {
    status_mib("VmHWM:")
}

/// A memory figure of /proc/self/status (`VmHWM:` peak, `VmRSS:` now), MiB.
pub(crate) fn status_mib(field: &str) -> Result<f64, super::CliError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    let kib: f64 = line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

/// The benchmark config (BASELINE.md) at `num_degrees`.
pub fn bench_config(num_degrees: usize) -> Result<Se3TransformerConfig, super::CliError> {
    let kwargs = serde_json::json!({
        "dim": 32, "heads": 4, "dim_head": 16, "depth": 2,
        "num_degrees": num_degrees, "num_neighbors": 16
    });
    Ok(Se3TransformerConfig::from_kwargs(&kwargs)?)
}

/// Random weights for every key of `cfg`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in the last axis.
pub fn random_weights(
    cfg: &Se3TransformerConfig,
    rng: &mut StdRng,
) -> Result<StateDict, super::CliError> {
    uniform_weights(Se3TransformerNet::expected_keys(cfg)?, rng)
}

/// A state dict with `keys`, each entry U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in its last axis.
pub fn uniform_weights(
    keys: Vec<(String, Vec<usize>)>,
    rng: &mut StdRng,
) -> Result<StateDict, super::CliError> {
    let mut sd = StateDict::new();
    for (key, shape) in keys {
        sd.insert(key, uniform_tensor(&shape, rng)?);
    }
    Ok(sd)
}

/// One tensor of `shape`, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in its last axis.
fn uniform_tensor(shape: &[usize], rng: &mut StdRng) -> Result<Tensor, se3_models::Error> {
    let fan = shape.last().copied().unwrap_or(1).max(1) as f64;
    let b = 1.0 / fan.sqrt();
    let len = shape.iter().product();
    let data = (0..len).map(|_| rng.gen_range(-b..b)).collect();
    Tensor::new(shape.to_vec(), data)
}

/// Random inputs as the PyTorch benchmark draws them: feats N(0,1)-like, coordinates 3 x N(0,1)-like.
pub fn random_inputs(
    n: usize,
    dim: usize,
    rng: &mut StdRng,
) -> Result<ModelInputs, super::CliError> {
    let normal = |rng: &mut StdRng| -> f64 {
        // Box-Muller
        let u: f64 = rng.gen_range(1e-12..1.0);
        let v: f64 = rng.gen_range(0.0..1.0);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let feats = (0..n * dim).map(|_| normal(rng)).collect();
    let coors = (0..n * 3).map(|_| 3.0 * normal(rng)).collect();
    Ok(ModelInputs {
        feats: NodeFeats::Dense(Tensor::new(vec![1, n, dim], feats)?),
        coors: Tensor::new(vec![1, n, 3], coors)?,
        mask: Some(BoolTensor {
            shape: vec![1, n],
            data: vec![true; n],
        }),
        adj_mat: None,
        edges: None,
        neighbor_mask: None,
        global_feats: None,
    })
}

/// Weights drawn as the layers ask for them (each entry as [`uniform_weights`] draws it): a
/// checkpoint that is never held whole.
struct RandomWeights<'r> {
    rng: &'r mut StdRng,
}

impl se3_core::layers::ParamSource for RandomWeights<'_> {
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, se3_core::Error> {
        let t = uniform_tensor(shape, self.rng).map_err(|_| se3_core::Error::WrongShape {
            key: key.to_string(),
            expected: shape.to_vec(),
            found: shape.to_vec(),
        })?;
        Ok(t.data.iter().map(|&v| v as f32).collect())
    }
}

impl NetSource for RandomWeights<'_> {
    fn shape_of(&self, _key: &str) -> Option<Vec<usize>> {
        None
    }

    fn take_f64(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f64>, se3_core::Error> {
        if key.ends_with("inv_freq") {
            // the library's frequencies, not random values
            let d = 2 * shape.iter().product::<usize>();
            return Ok((0..d / 2)
                .map(|i| 1.0 / 10000f64.powf((2 * i) as f64 / d as f64))
                .collect());
        }
        Ok(uniform_tensor(shape, self.rng)
            .map_err(|_| se3_core::Error::MissingKey {
                key: key.to_string(),
                expected: shape.to_vec(),
            })?
            .data)
    }
}

fn run_case(c: &Case) -> Result<(), super::CliError> {
    let mut rng = StdRng::seed_from_u64(0);
    let cfg = bench_config(c.num_degrees)?;
    // weights drawn as the layers ask for them and moved into the graph (PyTorch too never
    // holds them in float64)
    let (options, fibers) = Se3TransformerOptions::from_config(&cfg)?;
    let net = Se3TransformerNet::load_from(&mut RandomWeights { rng: &mut rng }, fibers, options)?;
    let mut model = net.into_session()?;
    let inputs = random_inputs(c.nodes, 32, &mut rng)?;
    let fwd = Se3TransformerForward::from_literals(&serde_json::json!({"return_type": 0}))?;
    let build_peak = peak_mib()?;
    println!("build_peak_mib {build_peak}");
    println!("build_rss_mib {}", status_mib("VmRSS:")?);
    // the forwards' own peak: VmHWM restarts from the resident set (Linux `clear_refs` 5)
    let forward_peak_measurable = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    model.forward_inputs(&inputs, &fwd)?;
    let mut times = Vec::new();
    let cpu0 = cpu_seconds();
    let reps = reps();
    for _ in 0..reps {
        let t = Instant::now();
        model.forward_inputs(&inputs, &fwd)?;
        times.push(t.elapsed().as_secs_f64());
    }
    if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
        println!("cpu_s {}", (b - a) / reps as f64);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "time {} {} {}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    // one more forward with every operator timed: the stages
    model
        .session()
        .compile_with(se3_core::exec::profile::Instrument);
    se3_core::exec::profile::reset();
    let t = Instant::now();
    model.forward_inputs(&inputs, &fwd)?;
    let whole = t.elapsed().as_secs_f64();
    // the forwards' peak, read before the sgemm measurement below allocates its matrices
    let forward_peak = peak_mib()?;
    let recs = se3_core::exec::profile::records();
    for kind in ["EdgeContract", "RadialHidden", "RadialEdgeConv"] {
        // the arranged contraction (an inference session's) reports as the contraction
        let of_kind: Vec<_> = recs
            .iter()
            .filter(|r| {
                r.kind == kind || (kind == "EdgeContract" && r.kind == "ArrangedEdgeContract")
            })
            .collect();
        if !of_kind.is_empty() {
            let flops: f64 = of_kind.iter().filter_map(|r| contraction_flops(r)).sum();
            let secs: f64 = of_kind.iter().map(|r| r.seconds).sum();
            println!("kernel {kind} {flops} {secs}");
        }
    }
    println!("sgemm_gflops {}", sgemm_gflops());
    // the host's share: what the instrumented forward spent outside the graph's operators
    let graph: f64 = recs.iter().map(|r| r.seconds).sum();
    let host = [("host", (whole - graph).max(0.0))];
    for (stage, t) in stages(&recs, &host) {
        println!("stage {stage} {t}");
    }
    if std::env::var_os("SE3_PROFILE").is_some() {
        // the heaviest operators with their input shapes, on stderr
        let shapes = se3_core::exec::profile::by_kind_and_shapes(&recs);
        for (k, t, c) in shapes.iter().take(30) {
            eprintln!("{t:.4} {c:4} {k}");
        }
    }
    let mem = model.session().memory_stats();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!("mem_weights_mib {}", mib(mem.resident));
    println!("mem_intermediates_mib {}", mib(mem.peak_intermediates));
    println!("mem_pooled_mib {}", mib(mem.pooled_at_peak));
    if forward_peak_measurable {
        println!("forward_peak_mib {forward_peak}");
    }
    println!("peak_mib {}", forward_peak.max(build_peak));
    Ok(())
}
