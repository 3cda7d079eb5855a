//! `se3 bench scale`: time and peak memory of neighbour graphs and of the SE(3)-Transformer on
//! large clouds (10^3 ... 10^5 points).
//!
//! Cases, each in a child process of this binary (`--case <kind>:<points>`) so its peak resident
//! set (VmHWM) is its own:
//! - `knn`: the 16 nearest neighbours of every point (se3-core `ops::neighbors`, exact, grid
//!   search), points uniform at unit density (a cube of side n^(1/3));
//! - `radius`: up to 32 neighbours within radius 1.5 at the same density (about 14 expected);
//! - `se3t`: one blocked forward (`NetSession::forward_blocked`, blocks of
//!   [`BLOCK_NODES`] centres with their neighbourhoods) of the SE(3)-Transformer of
//!   `se3 bench se3-transformer` (dim 32, heads 4, dim_head 16, depth 2, 2 degrees, 16
//!   neighbours, batch 1, random weights) on the same unit-density cloud, after a warm-up forward
//!   on 2,000 points, next to its memory estimate made before the forward
//!   (`NetSession::estimate_blocked_memory`, what `se3 infer --estimate
//!   --block-nodes` prints).
//!
//! The SE(3)-Transformer's neighbours are selected by the grid search (about O(n k)); per-edge
//! data exists for one block at a time, so its peak is the largest block's run plus O(n) node
//! data. The largest cloud that fits a memory budget is extrapolated from the two largest measured
//! SE(3)-Transformer sizes, peak = a + b n, and printed as such.

use std::process::Command;
use std::time::Instant;

use luminal::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use se3_core::exec::{InputKind, Session};
use se3_core::ops;
use se3_models::se3_transformer::{Se3TransformerForward, Se3TransformerNet};

use super::bench_se3t::{bench_config, random_inputs, random_weights};

/// Memory budget of the "largest cloud that fits" line, GiB (the machine's memory).
const BUDGET_GIB: f64 = 24.0;

/// Centre nodes per block of the SE(3)-Transformer's blocked forward.
pub const BLOCK_NODES: usize = 8192;

/// What one case measured.
struct Measured {
    seconds: f64,
    peak_mib: f64,
    edges: usize,
    /// The SE(3)-Transformer's estimate made before the forward (`se3 infer --estimate`).
    estimate_mib: Option<f64>,
    /// Most nodes of one block run (centres and neighbourhood), SE(3)-Transformer only.
    block_nodes: Option<usize>,
}

/// Runs every case up to `max_points` in a child process and prints the table; `case` runs one
/// case (`kind:points`) in this process.
pub fn run(case: Option<&str>, max_points: usize) -> Result<(), super::CliError> {
    if let Some(c) = case {
        let (kind, n) = c
            .split_once(':')
            .ok_or_else(|| format!("case `{c}` is not kind:points"))?;
        return run_case(kind, n.parse()?);
    }
    let exe = std::env::current_exe()?;
    println!(
        "{:<8} {:>9} {:>10} {:>12} {:>14} {:>10} {:>12}",
        "case", "points", "time (s)", "peak MiB", "estimate MiB", "edges", "block nodes"
    );
    let mut se3t: Vec<(usize, f64)> = Vec::new();
    for kind in ["knn", "radius", "se3t"] {
        for n in [1_000usize, 10_000, 100_000] {
            if n > max_points {
                continue;
            }
            let out = Command::new(&exe)
                .args(["bench", "scale", "--case", &format!("{kind}:{n}")])
                .output()?;
            if !out.status.success() {
                println!(
                    "{kind:<8} {n:>9} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                continue;
            }
            let m = parse(&String::from_utf8_lossy(&out.stdout))?;
            let estimate = m
                .estimate_mib
                .map_or_else(|| "-".to_string(), |e| format!("{e:.1}"));
            let block = m
                .block_nodes
                .map_or_else(|| "-".to_string(), |b| b.to_string());
            println!(
                "{kind:<8} {n:>9} {:>10.3} {:>12.1} {estimate:>14} {:>10} {block:>12}",
                m.seconds, m.peak_mib, m.edges
            );
            if kind == "se3t" {
                se3t.push((n, m.peak_mib));
            }
        }
    }
    if let [.., (n1, p1), (n2, p2)] = se3t[..] {
        let slope = (p2 - p1) / (n2 - n1) as f64;
        let fits = (BUDGET_GIB * 1024.0 - (p2 - slope * n2 as f64)) / slope.max(1e-9);
        println!(
            "se3t memory (blocked, {BLOCK_NODES} centres a block): {:.2} KiB per point from {n1} \
             to {n2} points (16 neighbours); extrapolated largest cloud in {BUDGET_GIB} GiB: about \
             {:.2e} points (a linear fit of the two measured peaks, not a measurement)",
            slope * 1024.0,
            fits
        );
    }
    Ok(())
}

fn parse(text: &str) -> Result<Measured, super::CliError> {
    let field = |name: &str| -> Result<f64, super::CliError> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("child printed no `{name}`"))?;
        Ok(line[name.len()..].trim().parse()?)
    };
    Ok(Measured {
        seconds: field("seconds")?,
        peak_mib: field("peak_mib")?,
        edges: field("edges")? as usize,
        estimate_mib: field("estimate_mib").ok(),
        block_nodes: field("block_nodes").ok().map(|b| b as usize),
    })
}

/// Points uniform in a cube of side n^(1/3) (unit density).
fn cloud(n: usize, r: &mut StdRng) -> Vec<f32> {
    let side = (n as f64).cbrt() as f32;
    (0..n * 3).map(|_| r.gen_range(0.0..side)).collect()
}

fn run_case(kind: &str, n: usize) -> Result<(), super::CliError> {
    let mut r = StdRng::seed_from_u64(0);
    let (seconds, edges) = match kind {
        "knn" => neighbours::<16>(n, None, &mut r)?,
        "radius" => neighbours::<32>(n, Some(1.5), &mut r)?,
        "se3t" => se3t(n, &mut r)?,
        other => return Err(format!("unknown case kind `{other}`").into()),
    };
    println!("seconds {seconds}");
    println!("edges {edges}");
    println!("peak_mib {}", super::bench_se3t::peak_mib()?);
    Ok(())
}

/// One timed run of the neighbour op (after a warm-up); returns seconds and valid edges.
fn neighbours<const K: usize>(
    n: usize,
    radius: Option<f32>,
    r: &mut StdRng,
) -> Result<(f64, usize), super::CliError> {
    let x = cloud(n, r);
    let mut s = Session::new();
    let c = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
    let spec = ops::NeighborSpec {
        radius,
        exclude_self: true,
    };
    let nb = ops::neighbors::<_, K>(c, None, spec);
    s.output("valid", nb.valid);
    s.compile();
    s.set("x", x.clone(), &[n, 3])?;
    s.run()?;
    s.set("x", x, &[n, 3])?;
    let t = Instant::now();
    s.run()?;
    let seconds = t.elapsed().as_secs_f64();
    let edges = s.get("valid")?.data.iter().filter(|&&v| v > 0.5).count();
    Ok((seconds, edges))
}

/// Model inputs on [`cloud`]: features N(0,1)-like of width `dim`, no mask.
fn cloud_inputs(
    n: usize,
    dim: usize,
    r: &mut StdRng,
) -> Result<se3_models::inputs::ModelInputs, super::CliError> {
    let mut inputs = random_inputs(n, dim, r)?;
    inputs.coors.data = cloud(n, r).into_iter().map(f64::from).collect();
    Ok(inputs)
}

/// One timed blocked forward of the benchmark SE(3)-Transformer (after a warm-up on 2,000
/// points), with the estimate of `se3 infer --estimate --block-nodes` printed first.
fn se3t(n: usize, r: &mut StdRng) -> Result<(f64, usize), super::CliError> {
    let cfg = bench_config(2)?;
    let sd = random_weights(&cfg, r)?;
    let fwd = Se3TransformerForward::from_literals(&serde_json::json!({"return_type": 0}))?;
    let mut model = Se3TransformerNet::from_config(&cfg, &sd)?.compile()?;
    drop(sd);
    let warm = cloud_inputs(n.min(2000), 32, r)?;
    model.forward_blocked(&warm, &fwd, BLOCK_NODES)?;
    drop(warm);
    let inputs = cloud_inputs(n, 32, r)?;
    let (estimate, plan) = model.estimate_blocked_memory(&inputs, BLOCK_NODES)?;
    println!("estimate_mib {}", estimate.total(1) as f64 / 1048576.0);
    println!("block_nodes {}", plan.max_nodes);
    let t = Instant::now();
    // progress on stderr (the parent reads stdout): a run too long to finish still says how far
    // it got, with its time and peak so far
    let mut report = |s: &se3_models::se3_transformer::BlockStats| {
        eprintln!(
            "block {} done: {} nodes run so far, {:.1} s, peak {:.0} MiB",
            s.blocks,
            s.total_nodes,
            t.elapsed().as_secs_f64(),
            super::bench_se3t::peak_mib().unwrap_or(f64::NAN)
        );
    };
    model.forward_blocked_with_progress(&inputs, &fwd, BLOCK_NODES, &mut report)?;
    Ok((t.elapsed().as_secs_f64(), n * 16))
}
