//! Long runs: one compiled model (a one-conv TFN stack, 0:2 -> 0:2,1:1, random weights) runs
//! 10,000 forwards on clouds of random size (2 ..= 10 nodes, batch 1 or 2). Resident memory
//! (VmRSS) after the run stays within [`GROWTH_BOUND`] of what it was after a warm-up, and a fixed
//! probe cloud gives bit-identical outputs before, during and after the run.

use rand::{Rng, SeedableRng};
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::inputs::{BoolTensor, ModelInputs, NodeFeats};
use se3_models::tfn::graph::{TfnGraph, TfnSession};
use se3_models::tfn::{TfnStack, TfnStackConfig};
use se3_models::Error;

/// Forwards of the soak.
const RUNS: usize = 10_000;
/// Most resident bytes the run may add after the warm-up: the engine's buffer pool keeps at most
/// 96 MiB (`se3_core::exec::pool`), a tiny model's buffers are far below its 64 KiB pooling size,
/// so any steady growth (a leak of a few hundred bytes a run) shows long before this.
const GROWTH_BOUND: u64 = 8 << 20;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn vm_rss_bytes() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS line in /proc/self/status")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn model(r: &mut impl Rng) -> Result<TfnSession, Error> {
    let cfg = TfnStackConfig::from_kwargs(&serde_json::json!({
        "fibers": [{"0": 2}, {"0": 2, "1": 1}]
    }))?;
    let mut sd = StateDict::new();
    for (k, shape) in TfnStack::expected_keys(&cfg)? {
        let n: usize = shape.iter().product();
        let centre = if shape.len() == 1 && (k.ends_with("weight") || k.ends_with("scale")) {
            1.0
        } else {
            0.0
        };
        let data = (0..n).map(|_| centre + r.gen_range(-0.3..0.3)).collect();
        sd.insert(k, Tensor::new(shape, data)?);
    }
    TfnGraph::from_state_dict(&cfg, &sd)?.compile()
}

fn cloud(r: &mut impl Rng, b: usize, n: usize) -> ModelInputs {
    let mut vals = |len: usize| -> Vec<f64> { (0..len).map(|_| r.gen_range(-1.5..1.5)).collect() };
    ModelInputs {
        feats: NodeFeats::Dense(Tensor {
            shape: vec![b, n, 2],
            data: vals(b * n * 2),
        }),
        coors: Tensor {
            shape: vec![b, n, 3],
            data: vals(b * n * 3),
        },
        mask: Some(BoolTensor {
            shape: vec![b, n],
            data: (0..b * n).map(|i| i % n != n - 1 || n < 3).collect(),
        }),
        adj_mat: None,
        edges: None,
        neighbor_mask: None,
        global_feats: None,
    }
}

#[test]
fn ten_thousand_forwards_keep_memory_flat_and_results_identical() -> TestResult {
    se3_core::exec::pool::pin_mmap_threshold();
    let seed = se3_core::testing::seed();
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut session = model(&mut r)?;
    let probe = cloud(&mut r, 2, 9);
    let reference = session.forward(&probe)?;
    let check_probe = |session: &mut TfnSession, when: usize| -> TestResult {
        let again = session.forward(&probe)?;
        assert!(
            again == reference,
            "probe outputs changed after {when} forwards (SE3_SEED={seed})"
        );
        Ok(())
    };
    let mut random_forward = |session: &mut TfnSession| -> Result<(), Error> {
        let (b, n) = (r.gen_range(1..=2), r.gen_range(2..=10));
        let out = session.forward(&cloud(&mut r, b, n))?;
        assert!(out
            .iter()
            .all(|(_, t)| t.data.iter().all(|v| v.is_finite())));
        Ok(())
    };
    for _ in 0..500 {
        random_forward(&mut session)?;
    }
    let warm = vm_rss_bytes()?;
    for i in 0..RUNS {
        random_forward(&mut session)?;
        if i % 2000 == 1999 {
            check_probe(&mut session, i + 1)?;
        }
    }
    let end = vm_rss_bytes()?;
    eprintln!(
        "soak: {RUNS} forwards, VmRSS after warm-up {:.1} MiB, after the run {:.1} MiB",
        warm as f64 / 1048576.0,
        end as f64 / 1048576.0
    );
    assert!(
        end <= warm + GROWTH_BOUND,
        "resident memory grew from {warm} to {end} bytes over {RUNS} forwards (SE3_SEED={seed})"
    );
    Ok(())
}
