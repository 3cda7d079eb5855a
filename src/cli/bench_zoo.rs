//! `se3 bench zoo`: forward time and peak memory of the model zoo at the sizes of
//! `bench_pytorch.py` (the reference benchmark beside the repository, `../shared/reference/`),
//! next to the PyTorch libraries measured in the same session.
//!
//! Each case runs in a child process of this binary (`--case <name>`), so its peak resident set
//! (VmHWM of /proc/self/status) is its own. The child builds the model from random weights
//! (U(-1/sqrt(fan_in), 1/sqrt(fan_in))) and random inputs, runs one warm-up forward and reports
//! the median, min and max of [`REPS`] timed forwards (`SE3_BENCH_REPS` with `--case` for more)
//! and its CPU time per forward;
//! `SE3_PROFILE=1` (with `--case`) also lists the heaviest operators of an instrumented forward.
//!
//! The PyTorch column comes from running `bench_pytorch.py --only <case>` with the python of the
//! reference environment (`--python PATH`, or the environment variable `SE3_REFENV`: the venv
//! directory or its python), built by `../shared/reference/setup_refenv.sh`. Without it the
//! table has the se3 column only and says how to get the other. The PyTorch peak is that
//! script's `ru_maxrss` (the whole python process, libraries included), as se3's is the whole
//! child process.
//!
//! A case is one entry of [`CASES`]: its `bench_pytorch.py` name, a description and the
//! function that builds the model and returns one forward as a closure. Another model needs
//! only its function and its entry.

use std::process::Command;
use std::time::Instant;

use rand::{rngs::StdRng, SeedableRng};
use se3_models::egnn::{CompiledEgnn, Egnn, EgnnKind, EgnnNetworkConfig};
use se3_models::equiformer::{CompiledEquiformer, Equiformer, EquiformerForward};
use se3_models::vn_transformer::{VnTransformer, VnTransformerConfig};

use super::bench_pytorch::TorchSource;
use super::bench_se3t::{cpu_seconds, peak_mib, random_inputs, uniform_weights};
use super::CliError;

/// Timed forwards after the warm-up (as `bench_pytorch.py`'s default).
pub const REPS: usize = 5;

/// One forward of a built model.
type Forward = Box<dyn FnMut() -> Result<(), CliError>>;

/// A benchmark case: the name `bench_pytorch.py --only` takes, what it runs, how se3 builds it.
struct ZooCase {
    name: &'static str,
    config: &'static str,
    build: fn() -> Result<Forward, CliError>,
}

/// The cases, in table order.
const CASES: &[ZooCase] = &[
    ZooCase {
        name: "equiformer_deg2_n512",
        config: "Equiformer dim (32, 16), heads 4, dim_head 16, depth 2, 16 neighbours, n 512",
        build: equiformer_deg2_n512,
    },
    ZooCase {
        name: "equiformer_deg3_n512",
        config: "Equiformer dim (32, 16, 8), heads 4, dim_head 16, depth 2, 16 neighbours, n 512",
        build: equiformer_deg3_n512,
    },
    ZooCase {
        name: "egnn_network_n512",
        config: "EGNN_Network dim 32, depth 2, m_dim 16, 16 nearest neighbours, n 512",
        build: egnn_network_n512,
    },
    ZooCase {
        name: "egnn_network_dense_n512",
        config: "EGNN_Network dim 32, depth 2, m_dim 16, all pairs, n 512",
        build: egnn_network_dense_n512,
    },
    ZooCase {
        name: "vn_transformer_n512",
        config:
            "VNTransformer dim 32, depth 2, heads 4, dim_head 16, dim_feat 8, n 512, full attention",
        build: vn_transformer_n512,
    },
];

/// Equiformer as `bench_pytorch.py` at `num_degrees` (2 or 3): `Equiformer(dim, num_degrees,
/// heads=4, dim_head=16, depth=2, num_neighbors=16, reduce_dim_out=False)`, features
/// `(1, 512, 32)`, coordinates `(1, 512, 3)`, all-true mask.
fn equiformer_n512(num_degrees: usize) -> Result<Forward, CliError> {
    let mut rng = StdRng::seed_from_u64(0);
    let cfg = super::bench_equiformer::bench_config(num_degrees)?;
    let sd = super::bench_equiformer::random_weights(&cfg, &mut rng)?;
    let inputs = random_inputs(512, 32, &mut rng)?;
    let fwd = EquiformerForward::from_literals(&serde_json::json!({}))?;
    let mut model = CompiledEquiformer::new(Equiformer::from_state_dict(&cfg, &sd)?, fwd);
    drop(sd);
    if std::env::var_os("SE3_PROFILE").is_some() {
        model.instrument();
    }
    Ok(Box::new(move || {
        model.forward(&inputs)?;
        Ok(())
    }))
}

fn equiformer_deg2_n512() -> Result<Forward, CliError> {
    equiformer_n512(2)
}

fn equiformer_deg3_n512() -> Result<Forward, CliError> {
    equiformer_n512(3)
}

/// EGNN_Network as `bench_pytorch.py`: `EGNN_Network(dim=32, depth=2, m_dim=16,
/// num_nearest_neighbors=k)` (k = 0: all pairs), features `(1, 512, 32)`, coordinates
/// `(1, 512, 3)`, no mask.
fn egnn_network_n512_k(neighbours: usize) -> Result<Forward, CliError> {
    let mut rng = StdRng::seed_from_u64(0);
    let kwargs = serde_json::json!({
        "depth": 2, "dim": 32, "m_dim": 16, "num_nearest_neighbors": neighbours
    });
    let kind = EgnnKind::Network(EgnnNetworkConfig::from_kwargs(&kwargs)?);
    let mut model = CompiledEgnn::new(Egnn::random(kind, &mut rng)?);
    model.set_profiling(std::env::var_os("SE3_PROFILE").is_some());
    let mut inputs = random_inputs(512, 32, &mut rng)?;
    inputs.mask = None;
    Ok(Box::new(move || {
        model.forward(&inputs)?;
        Ok(())
    }))
}

fn egnn_network_n512() -> Result<Forward, CliError> {
    egnn_network_n512_k(16)
}

fn egnn_network_dense_n512() -> Result<Forward, CliError> {
    egnn_network_n512_k(0)
}

/// VN-Transformer as `bench_pytorch.py`: `VNTransformer(dim=32, depth=2, dim_head=16, heads=4,
/// dim_feat=8)`, coordinates `(1, 512, 3)` and features `(1, 512, 8)`, no mask.
fn vn_transformer_n512() -> Result<Forward, CliError> {
    let n = 512;
    let cfg = VnTransformerConfig::from_kwargs(&serde_json::json!({
        "dim": 32, "depth": 2, "dim_head": 16, "heads": 4, "dim_feat": 8
    }))?;
    let mut rng = StdRng::seed_from_u64(0);
    let sd = uniform_weights(VnTransformer::expected_keys(&cfg)?, &mut rng)?;
    let mut inputs = random_inputs(n, 8, &mut rng)?;
    inputs.mask = None;
    let mut model = VnTransformer::from_state_dict(&cfg, &sd)?.compile();
    drop(sd);
    if std::env::var_os("SE3_PROFILE").is_some() {
        model.instrument();
    }
    Ok(Box::new(move || {
        model.forward(&inputs)?;
        Ok(())
    }))
}

/// What one side measured for a case.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    median_s: f64,
    min_s: f64,
    max_s: f64,
    peak_mib: f64,
    /// CPU time (all threads) per forward, se3 only.
    cpu_s: f64,
}

/// Runs every case (or those of `only`) in child processes and prints the Markdown table;
/// `case` runs one case in this process. `python` (else `SE3_REFENV`) gives the PyTorch column,
/// `script` the path of `bench_pytorch.py` (default: `../shared/reference/` beside the repo).
pub fn run(case: Option<&str>, only: Option<&str>, torch: &TorchSource) -> Result<(), CliError> {
    if let Some(name) = case {
        return run_case(find(name)?);
    }
    let wanted: Vec<&ZooCase> = match only {
        Some(list) => list.split(',').map(find).collect::<Result<_, _>>()?,
        None => CASES.iter().collect(),
    };
    if let Some(py) = &torch.python {
        eprintln!(
            "PyTorch column: {} {}",
            py.display(),
            torch.script()?.display()
        );
    }
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    for c in wanted {
        eprintln!("se3 {} ...", c.name);
        let out = Command::new(&exe)
            .args(["bench", "zoo", "--case", c.name])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "case {} failed: {}",
                c.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        let ours = parse_child(&String::from_utf8_lossy(&out.stdout))?;
        if torch.python.is_some() {
            eprintln!("PyTorch {} ...", c.name);
        }
        let theirs = torch.measure(c.name)?.map(|f| Measured {
            median_s: f.median_s,
            min_s: f.min_s,
            max_s: f.max_s,
            peak_mib: f.peak_mib,
            cpu_s: f64::NAN,
        });
        rows.push((c, ours, theirs));
    }
    print_table(&rows);
    if torch.python.is_none() {
        println!(
            "\nno PyTorch column: build the reference environment with \
             `../shared/reference/setup_refenv.sh` and run `se3 bench zoo --python \
             /tmp/se3-refenv/bin/python` (or set SE3_REFENV)"
        );
    }
    Ok(())
}

fn find(name: &str) -> Result<&'static ZooCase, CliError> {
    CASES.iter().find(|c| c.name == name).ok_or_else(|| {
        let names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
        format!("unknown case `{name}` (cases: {})", names.join(", ")).into()
    })
}

fn print_table(rows: &[(&ZooCase, Measured, Option<Measured>)]) {
    println!(
        "| case | se3 median (s) | se3 min-max (s) | se3 CPU (s) | PyTorch median (s) | speedup | se3 peak (MiB) | PyTorch peak (MiB) | memory ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (c, o, t) in rows {
        let (tt, speed, tm, frac) = match t {
            Some(t) => (
                format!("{:.4}", t.median_s),
                format!("{:.1}x", t.median_s / o.median_s),
                format!("{:.1}", t.peak_mib),
                format!("{:.3}", o.peak_mib / t.peak_mib),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {:.4} | {:.4}-{:.4} | {:.3} | {tt} | {speed} | {:.1} | {tm} | {frac} |",
            c.name, o.median_s, o.min_s, o.max_s, o.cpu_s, o.peak_mib
        );
    }
    println!();
    for (c, _, _) in rows {
        println!("- {}: {}", c.name, c.config);
    }
    println!(
        "- time: median of {REPS} forwards after one warm-up, both sides; peak: VmHWM of the se3 \
         child process, ru_maxrss of the python process; memory ratio = se3 / PyTorch; se3 CPU: \
         CPU time of all threads per forward (on a loaded machine the wall time is at least \
         CPU / threads)"
    );
    println!("- targets (issue #13): speedup >= 3x, memory ratio <= 0.2");
}

/// Builds the case, times its forwards and prints `time <median> <min> <max>`, `cpu_s` and
/// `peak_mib` lines for the parent.
fn run_case(c: &ZooCase) -> Result<(), CliError> {
    let mut forward = (c.build)()?;
    forward()?;
    // `SE3_BENCH_REPS` times more forwards (for profilers and steadier medians)
    let reps = std::env::var("SE3_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&r| r > 0)
        .unwrap_or(REPS);
    let cpu0 = cpu_seconds();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        forward()?;
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
    println!("peak_mib {}", peak_mib()?);
    if std::env::var_os("SE3_PROFILE").is_some() {
        // the heaviest operators of one more forward, on stderr
        se3_core::exec::profile::reset();
        forward()?;
        let recs = se3_core::exec::profile::records();
        let mut by_shape: Vec<(String, f64, usize)> = Vec::new();
        for r in &recs {
            let key = format!("{} {:?}", r.kind, r.shapes);
            match by_shape.iter_mut().find(|a| a.0 == key) {
                Some(a) => (a.1, a.2) = (a.1 + r.seconds, a.2 + 1),
                None => by_shape.push((key, r.seconds, 1)),
            }
        }
        by_shape.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = recs.iter().map(|r| r.seconds).sum();
        eprintln!("{total:.4} s in {} operator calls", recs.len());
        for (k, t, n) in by_shape.iter().take(30) {
            eprintln!("{t:.4} {n:4} {k}");
        }
    }
    Ok(())
}

fn parse_child(text: &str) -> Result<Measured, CliError> {
    let mut m = Measured::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["time", a, b, c] => {
                (m.median_s, m.min_s, m.max_s) = (a.parse()?, b.parse()?, c.parse()?)
            }
            ["peak_mib", v] => m.peak_mib = v.parse()?,
            ["cpu_s", v] => m.cpu_s = v.parse()?,
            _ => {}
        }
    }
    if m.median_s <= 0.0 || m.peak_mib <= 0.0 {
        return Err(format!("case output without time/peak lines: `{text}`").into());
    }
    Ok(m)
}
