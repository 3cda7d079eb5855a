//! `se3 bench equiformer`: forward time and peak memory of the compiled Equiformer
//! ([`CompiledEquiformer`]: float32 luminal graph) at the sizes of the PyTorch benchmark
//! (`bench_pytorch.py`: dim (32, 16) or (32, 16, 8), num_degrees 2 or 3, heads 4, dim_head 16,
//! depth 2, 16 neighbours, L2-distance attention, `reduce_dim_out=False`, 512 nodes, batch 1,
//! random weights, feats N(0, 1), coordinates 3 N(0, 1), all-true mask).
//!
//! Each case runs in a child process of this binary (`--case <name>`), so its peak resident set
//! (VmHWM) is its own; the child runs one warm-up, the median of 3 forwards (and their CPU time)
//! and one more forward with every operator timed (`se3_core::exec::profile`), printed by operator
//! kind next to the host stages (neighbour selection with edge frames, setting the inputs);
//! with `SE3_PROFILE=1` the child (`--case`) also lists the heaviest operators by input shape.
//! PyTorch is not run here: give its figures (`bench_pytorch.py` run in the same session) with
//! `--torch case=seconds:MiB,...` to get the ratios.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use rand::{rngs::StdRng, Rng, SeedableRng};
use se3_core::basis::{equiformer_zbasis, QjPrecision};
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::equiformer::{CompiledEquiformer, Equiformer, EquiformerConfig, EquiformerForward};

use super::bench_se3t::{cpu_seconds, peak_mib, random_inputs, status_mib};

/// A benchmark size.
struct Case {
    name: &'static str,
    num_degrees: usize,
    nodes: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "equiformer_deg2_n512",
        num_degrees: 2,
        nodes: 512,
    },
    Case {
        name: "equiformer_deg3_n512",
        num_degrees: 3,
        nodes: 512,
    },
];

/// Timed forwards after the warm-up.
const REPS: usize = 3;

/// The benchmark config of `bench_pytorch.py` at `num_degrees` (2 or 3).
pub fn bench_config(num_degrees: usize) -> Result<EquiformerConfig, super::CliError> {
    let dim: Vec<usize> = [32, 16, 8].into_iter().take(num_degrees).collect();
    let kwargs = serde_json::json!({
        "dim": dim, "num_degrees": num_degrees, "heads": 4, "dim_head": 16, "depth": 2,
        "num_neighbors": 16, "reduce_dim_out": false
    });
    Ok(EquiformerConfig::from_kwargs(&kwargs)?)
}

/// Random weights for every key of `cfg`: the z-basis buffers `basis:(i,o)` computed (as the
/// library's, f32-rounded `Q_J`), norm scales near 1, everything else
/// U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in the last axis.
pub fn random_weights(
    cfg: &EquiformerConfig,
    rng: &mut StdRng,
) -> Result<StateDict, super::CliError> {
    let mut sd = StateDict::new();
    for (key, shape) in Equiformer::expected_keys(cfg)? {
        let len: usize = shape.iter().product();
        let data: Vec<f64> = if let Some(pair) = key.strip_prefix("basis:(") {
            let mut it = pair.trim_end_matches(')').split(',');
            let mut degree = || -> Result<usize, super::CliError> {
                Ok(it.next().ok_or("basis key without degree")?.parse()?)
            };
            let (a, b) = (degree()?, degree()?);
            let z = equiformer_zbasis(a, b, QjPrecision::RoundedF32)?;
            let m = z.nrows();
            (0..m * m).map(|i| z[(i / m, i % m)]).collect()
        } else if key.contains("transforms") || key.ends_with("gamma") {
            (0..len)
                .map(|_| 1.0 + 0.2 * rng.gen_range(-1.0..1.0))
                .collect()
        } else {
            let b = 1.0 / (shape.last().copied().unwrap_or(1).max(1) as f64).sqrt();
            (0..len).map(|_| rng.gen_range(-b..b)).collect()
        };
        sd.insert(key, Tensor::new(shape, data)?);
    }
    Ok(sd)
}

/// PyTorch figures `case=seconds:MiB,...` (from `bench_pytorch.py` in the same session).
fn parse_torch(spec: Option<&str>) -> Result<BTreeMap<String, (f64, f64)>, super::CliError> {
    let mut out = BTreeMap::new();
    for item in spec.unwrap_or("").split(',').filter(|s| !s.is_empty()) {
        let (name, vals) = item
            .split_once('=')
            .ok_or_else(|| format!("bad --torch item `{item}` (want case=seconds:MiB)"))?;
        let (s, mib) = vals
            .split_once(':')
            .ok_or_else(|| format!("bad --torch item `{item}` (want case=seconds:MiB)"))?;
        out.insert(name.to_string(), (s.parse()?, mib.parse()?));
    }
    Ok(out)
}

/// Runs every case in a child process and prints the table; `case` runs one case in this process.
pub fn run(case: Option<&str>, torch: Option<&str>) -> Result<(), super::CliError> {
    if let Some(name) = case {
        let c = CASES
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("unknown case `{name}`"))?;
        return run_case(c);
    }
    let torch = parse_torch(torch)?;
    let exe = std::env::current_exe()?;
    println!(
        "Equiformer heads 4, dim_head 16, depth 2, 16 neighbours, L2 attention, 512 nodes, batch 1"
    );
    println!(
        "{:<22} {:>9} {:>16} {:>8} {:>10} {:>10} {:>8} {:>10} {:>9}",
        "case",
        "se3 (s)",
        "se3 min-max",
        "cpu (s)",
        "se3 MiB",
        "torch (s)",
        "speedup",
        "torch MiB",
        "mem frac"
    );
    let mut profiles = Vec::new();
    for c in CASES {
        let out = Command::new(&exe)
            .args(["bench", "equiformer", "--case", c.name])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "case {} failed: {}",
                c.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |key: &str| -> Vec<f64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(str::to_string))
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let (time, cpu, peak) = (value("time "), value("cpu_s "), value("peak_mib "));
        let (med, lo, hi) = match time[..] {
            [a, b, c] => (a, b, c),
            _ => return Err(format!("case {}: no time line", c.name).into()),
        };
        let cpu = cpu.first().copied().unwrap_or(f64::NAN);
        let peak = peak.first().copied().unwrap_or(f64::NAN);
        let (ts, tm) = torch.get(c.name).copied().unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{:<22} {:>9.4} {:>7.3}-{:<8.3} {:>8.3} {:>10.1} {:>10.4} {:>7.2}x {:>10.1} {:>9.3}",
            c.name,
            med,
            lo,
            hi,
            cpu,
            peak,
            ts,
            ts / med,
            tm,
            peak / tm
        );
        let stages: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("stage "))
            .map(str::to_string)
            .collect();
        let memory = text
            .lines()
            .find_map(|l| l.strip_prefix("memory "))
            .unwrap_or("")
            .to_string();
        profiles.push((c.name, memory, stages));
    }
    println!("\nwhere the memory (graph, MiB) and time (one instrumented forward, s) go:");
    for (name, memory, stages) in profiles {
        println!("  {name}: {memory}");
        println!("  {name}: {}", stages.join(", "));
    }
    println!("targets: speedup >= 3x, mem frac <= 0.2");
    Ok(())
}

fn run_case(c: &Case) -> Result<(), super::CliError> {
    let mut rng = StdRng::seed_from_u64(0);
    let cfg = bench_config(c.num_degrees)?;
    let sd = random_weights(&cfg, &mut rng)?;
    let inputs = random_inputs(c.nodes, 32, &mut rng)?;
    let fwd = EquiformerForward::from_literals(&serde_json::json!({}))?;
    let mut model = CompiledEquiformer::new(Equiformer::from_state_dict(&cfg, &sd)?, fwd);
    drop(sd);
    model.forward(&inputs)?;
    println!("build_rss_mib {}", status_mib("VmRSS:")?);
    let mut times = Vec::new();
    let cpu0 = cpu_seconds();
    for _ in 0..REPS {
        let t = Instant::now();
        model.forward(&inputs)?;
        times.push(t.elapsed().as_secs_f64());
    }
    if let (Some(a), Some(b)) = (cpu0, cpu_seconds()) {
        println!("cpu_s {}", (b - a) / REPS as f64);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "time {} {} {}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    println!("peak_mib {}", peak_mib()?);
    let mem = model.memory_stats();
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!(
        "memory weights {:.1} intermediates {:.1} pooled {:.1}",
        mib(mem.resident),
        mib(mem.peak_intermediates),
        mib(mem.pooled_at_peak)
    );
    // one more forward with every operator timed: seconds by operator kind and host stage
    model.instrument();
    se3_core::exec::profile::reset();
    model.forward(&inputs)?;
    let recs = se3_core::exec::profile::records();
    let mut kinds: BTreeMap<String, f64> = BTreeMap::new();
    let mut by_shape: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for r in &recs {
        *kinds.entry(r.kind.to_string()).or_default() += r.seconds;
        let e = by_shape
            .entry(format!("{} {:?}", r.kind, r.shapes))
            .or_default();
        e.0 += r.seconds;
        e.1 += 1;
    }
    if std::env::var_os("SE3_PROFILE").is_some() {
        // the heaviest operators with their input shapes, on stderr
        let mut heavy: Vec<_> = by_shape.into_iter().collect();
        heavy.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        for (k, (t, n)) in heavy.iter().take(25) {
            eprintln!("{t:.4} {n:4} {k}");
        }
    }
    let mut kinds: Vec<(String, f64)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (stage, t) in model.last_timings() {
        if !stage.starts_with("graph") {
            println!("stage {stage} {t:.4}");
        }
    }
    for (kind, t) in kinds.iter().take(12) {
        println!("stage {kind} {t:.4}");
    }
    Ok(())
}
