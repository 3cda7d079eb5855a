//! The `se3` program end to end: `se3 infer` on reference folders (outputs against the
//! reference float64 outputs) and on bad input (non-zero exit, one-line message).

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use se3_models::checkpoint::StateDict;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/models")
        .join(name)
}

fn scratch(name: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

fn infer(dir: &Path, inputs: &Path, output: &Path) -> Result<std::process::Output, std::io::Error> {
    Command::new(env!("CARGO_BIN_EXE_se3"))
        .arg("infer")
        .arg("--config")
        .arg(dir.join("config.json"))
        .arg("--weights")
        .arg(dir.join("weights.safetensors"))
        .arg("--inputs")
        .arg(inputs)
        .arg("--output")
        .arg(output)
        .output()
}

/// Runs `se3 infer` on a reference folder and compares every `<name>_f64` reference output with
/// the written `<name>`; returns the max relative error (max |diff| / max |ref| per output).
fn infer_matches_reference(name: &str) -> TestResult {
    let dir = reference(name);
    let out_path = scratch(&format!("{name}.safetensors"))?;
    let run = infer(&dir, &dir.join("inputs.safetensors"), &out_path)?;
    assert!(
        run.status.success(),
        "se3 infer failed on {name}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = StateDict::load(&out_path)?;
    let want = StateDict::load(dir.join("outputs.safetensors"))?;
    let mut compared = 0;
    for (key, w) in want.iter() {
        let Some(base) = key.strip_suffix("_f64") else {
            continue;
        };
        let g = got
            .get(base)
            .ok_or_else(|| format!("{name}: output `{base}` missing"))?;
        assert_eq!(g.shape, w.shape, "{name}: shape of `{base}`");
        let scale = w.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
        let (mut worst, mut at) = (0.0f64, 0);
        for (i, (a, b)) in g.data.iter().zip(&w.data).enumerate() {
            let e = (a - b).abs() / scale;
            if e > worst {
                (worst, at) = (e, i);
            }
        }
        println!("{name}/{base}: max rel error {worst:.2e} at {at}");
        assert!(
            worst < se3_core::testing::TOL_F32,
            "{name}/{base}: max rel error {worst:.2e} at flat index {at}"
        );
        compared += 1;
    }
    assert!(compared > 0, "{name}: no `_f64` reference outputs");
    Ok(())
}

#[test]
fn infer_reproduces_se3t_basic_outputs() -> TestResult {
    infer_matches_reference("se3t_basic")
}

#[test]
fn infer_reproduces_se3t_type1_outputs() -> TestResult {
    infer_matches_reference("se3t_type1_reduce")
}

#[test]
fn infer_reproduces_se3t_egnn_outputs() -> TestResult {
    infer_matches_reference("se3t_egnn")
}

#[test]
fn infer_reproduces_tfn_stack_outputs() -> TestResult {
    infer_matches_reference("tfn_stack")
}

#[test]
fn infer_reproduces_the_vn_transformer_references() -> TestResult {
    for name in ["vn_feat_eps0", "vn_feat_eps1e-6", "vn_l2dist_transl"] {
        infer_matches_reference(name)?;
    }
    Ok(())
}

#[test]
fn infer_reproduces_equiformer_outputs() -> TestResult {
    infer_matches_reference("equi_tokens_edges_sparse")?;
    infer_matches_reference("equi_mlp")
}

fn assert_one_line_failure(run: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "expected failure, got success");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "message lacks `{needle}`: {err}");
}

/// `se3 infer` on the inputs of `se3t_basic` passed through `edit` ([`rewrite_inputs`]) fails
/// with one line that contains `needle`.
fn infer_rejects_edited_inputs(
    tag: &str,
    needle: &str,
    edit: impl Fn(RawTensor) -> Option<RawTensor>,
) -> TestResult {
    let dir = reference("se3t_basic");
    let bad = scratch(&format!("{tag}.safetensors"))?;
    rewrite_inputs(&dir, &bad, edit)?;
    let run = infer(&dir, &bad, &scratch(&format!("{tag}_out.safetensors"))?)?;
    assert_one_line_failure(&run, needle);
    Ok(())
}

#[test]
fn infer_rejects_nan_coordinates_with_one_line() -> TestResult {
    // coors[0, 0, 0] = NaN (float32)
    infer_rejects_edited_inputs("nan_coors", "non-finite", |(name, d, s, mut b)| {
        if name == "coors" {
            assert_eq!(d, Dtype::F32);
            b[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        Some((name, d, s, b))
    })
}

#[test]
fn infer_rejects_missing_weights_file_with_one_line() -> TestResult {
    let dir = reference("se3t_basic");
    let run = Command::new(env!("CARGO_BIN_EXE_se3"))
        .args(["infer", "--config"])
        .arg(dir.join("config.json"))
        .arg("--weights")
        .arg(dir.join("no_such_weights.safetensors"))
        .arg("--inputs")
        .arg(dir.join("inputs.safetensors"))
        .arg("--output")
        .arg(scratch("never.safetensors")?)
        .output()?;
    assert_one_line_failure(&run, "no_such_weights");
    Ok(())
}

#[test]
fn infer_reproduces_egnn_layer_outputs() -> TestResult {
    infer_matches_reference("egnn_layer_coors_only")
}

#[test]
fn infer_reproduces_egnn_network_outputs() -> TestResult {
    infer_matches_reference("egnn_net_adj_global")
}

#[test]
fn infer_says_other_libraries_are_not_supported_yet() -> TestResult {
    // A reference folder whose config names a library se3 does not have.
    let dir = reference("egnn_net_edges");
    let fake = scratch("unknown_library")?;
    std::fs::create_dir_all(&fake)?;
    let config = std::fs::read_to_string(dir.join("config.json"))?
        .replace("\"egnn-pytorch\"", "\"no-such-library\"");
    std::fs::write(fake.join("config.json"), config)?;
    std::fs::copy(
        dir.join("weights.safetensors"),
        fake.join("weights.safetensors"),
    )?;
    let run = infer(
        &fake,
        &dir.join("inputs.safetensors"),
        &scratch("unknown_library.safetensors")?,
    )?;
    assert_one_line_failure(&run, "not supported yet");
    Ok(())
}

fn extra(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("se3-models/tests/data/extra_reference")
        .join(name)
}

/// One tensor of an inputs file: name, dtype, shape, little-endian bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Copies the inputs of `dir` to `out`, passing every tensor through `edit` (None drops it).
fn rewrite_inputs(
    dir: &Path,
    out: &Path,
    edit: impl Fn(RawTensor) -> Option<RawTensor>,
) -> TestResult {
    let bytes = std::fs::read(dir.join("inputs.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let owned: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, v)| edit((name, v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let views = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, &None, out)?;
    Ok(())
}

/// Keeps the first `keep` nodes of every (b, n, ...) input (and of both node axes of (b, n, n, ...)).
fn first_nodes(t: RawTensor, n: usize, keep: usize) -> RawTensor {
    let (name, dtype, shape, data) = t;
    if shape.len() < 2 || shape[1] != n {
        return (name, dtype, shape, data);
    }
    let pair = shape.len() >= 3 && shape[2] == n;
    let inner: usize = shape[if pair { 3 } else { 2 }..].iter().product();
    let item = data.len() / shape.iter().product::<usize>().max(1);
    let mut out = Vec::new();
    for bi in 0..shape[0] {
        for i in 0..keep {
            if pair {
                for j in 0..keep {
                    let at = ((bi * n + i) * n + j) * inner * item;
                    out.extend_from_slice(&data[at..at + inner * item]);
                }
            } else {
                let at = (bi * n + i) * inner * item;
                out.extend_from_slice(&data[at..at + inner * item]);
            }
        }
    }
    let mut s = shape.clone();
    s[1] = keep;
    if pair {
        s[2] = keep;
    }
    (name, dtype, s, out)
}

#[test]
fn infer_rejects_a_graph_of_one_node_with_one_line() -> TestResult {
    infer_rejects_edited_inputs("one_node", "empty", |t| Some(first_nodes(t, 12, 1)))
}

#[test]
fn infer_rejects_a_mask_of_the_wrong_length_with_one_line() -> TestResult {
    infer_rejects_edited_inputs("short_mask", "mask", |t| {
        Some(if t.0 == "mask" {
            first_nodes(t, 12, 11)
        } else {
            t
        })
    })
}

#[test]
fn infer_rejects_a_misnamed_input_with_one_line() -> TestResult {
    infer_rejects_edited_inputs("misnamed", "coors", |(name, d, s, b)| {
        let name = if name == "coors" {
            "coords".into()
        } else {
            name
        };
        Some((name, d, s, b))
    })
}

#[test]
fn infer_rejects_features_of_the_wrong_width_with_one_line() -> TestResult {
    // keep 7 of the 8 channels of feats (b, n, 8), float32
    infer_rejects_edited_inputs("narrow_feats", "feats", |(name, d, s, b)| {
        if name != "feats" {
            return Some((name, d, s, b));
        }
        let rows: Vec<u8> = b.chunks(8 * 4).flat_map(|r| r[..7 * 4].to_vec()).collect();
        Some((name, d, vec![s[0], s[1], 7], rows))
    })
}

#[test]
fn infer_rejects_coordinates_of_the_wrong_shape_with_one_line() -> TestResult {
    // (b, n, 3) -> (b, n, 2): drop z
    infer_rejects_edited_inputs("coors_2d", "coors", |(name, d, s, b)| {
        if name != "coors" {
            return Some((name, d, s, b));
        }
        let xy: Vec<u8> = b.chunks(3 * 4).flat_map(|p| p[..2 * 4].to_vec()).collect();
        Some((name, d, vec![s[0], s[1], 2], xy))
    })
}

/// A generated config (tests/data/extra_reference/general) whose PyTorch ran on a LAPACK with other
/// Q_J signs: `se3 infer --qj-signs` matches its outputs, on the graph and on the oracle.
#[test]
fn infer_with_the_machines_qj_signs_reproduces_a_generated_config() -> TestResult {
    let dir = extra("general/g_egnn_both_reduce_edges");
    let signs = extra("qj_signs.json");
    let want = StateDict::load(dir.join("outputs.safetensors"))?;
    for engine in ["graph", "oracle"] {
        let out_path = scratch(&format!("qj_{engine}.safetensors"))?;
        let run = Command::new(env!("CARGO_BIN_EXE_se3"))
            .arg("infer")
            .arg("--config")
            .arg(dir.join("config.json"))
            .arg("--weights")
            .arg(dir.join("weights.safetensors"))
            .arg("--inputs")
            .arg(dir.join("inputs.safetensors"))
            .arg("--output")
            .arg(&out_path)
            .args(["--engine", engine, "--dtype", "f64", "--qj-signs"])
            .arg(&signs)
            .output()?;
        assert!(
            run.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let got = StateDict::load(&out_path)?;
        let mut compared = 0;
        for (key, w) in want.iter() {
            let Some(base) = key.strip_suffix("_f64") else {
                continue;
            };
            let g = got
                .get(base)
                .ok_or_else(|| format!("output `{base}` missing"))?;
            assert_eq!(g.shape, w.shape, "{engine}: shape of `{base}`");
            let (e, at) = se3_core::testing::rel_error_at(&g.data, &w.data);
            println!("{engine}/{base}: max rel error {e:.2e}");
            assert!(e < 1e-5, "{engine}/{base}: max rel error {e:.2e} at {at}");
            compared += 1;
        }
        assert_eq!(compared, 3);
    }
    Ok(())
}

/// With more bonds than `max_sparse_neighbors` the bonds kept are drawn at random (as the library
/// does): `--sparse-seed` makes the draw reproducible, and other seeds draw other bonds.
#[test]
fn infer_sparse_seed_makes_bond_subsampling_reproducible() -> TestResult {
    let dir = extra("general/g_sparse_cap_eq_plus_knn");
    let inputs = scratch("star8.safetensors")?;
    // node 0 bonded to all 8 others (max_sparse_neighbors is 3)
    rewrite_inputs(&dir, &inputs, |(name, d, s, mut b)| {
        if name == "adj_mat" {
            let n = s[s.len() - 1];
            for j in 1..n {
                b[j] = 1;
                b[j * n] = 1;
            }
        }
        Some((name, d, s, b))
    })?;
    let run = |seed: u64, tag: &str| -> Result<StateDict, Box<dyn std::error::Error>> {
        let out = scratch(&format!("star8_{tag}.safetensors"))?;
        let r = Command::new(env!("CARGO_BIN_EXE_se3"))
            .arg("infer")
            .arg("--config")
            .arg(dir.join("config.json"))
            .arg("--weights")
            .arg(dir.join("weights.safetensors"))
            .arg("--inputs")
            .arg(&inputs)
            .arg("--output")
            .arg(&out)
            .args(["--qj-signs"])
            .arg(extra("qj_signs.json"))
            .args(["--sparse-seed", &seed.to_string()])
            .output()?;
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        Ok(StateDict::load(&out)?)
    };
    let a = run(1, "a")?;
    let again = run(1, "again")?;
    assert_eq!(
        a.get("out").map(|t| &t.data),
        again.get("out").map(|t| &t.data)
    );
    let mut differs = false;
    for seed in 2..6 {
        let other = run(seed, &format!("s{seed}"))?;
        differs |= a.get("out").map(|t| &t.data) != other.get("out").map(|t| &t.data);
    }
    assert!(differs, "every seed drew the same bonds");
    Ok(())
}

/// `se3 data <set>` writes a loadable `se3-physics-v1` file with the requested split sizes for
/// each generator (tiny sizes: this checks the pipeline, not the physics), and an unwritable
/// output is a one-line failure.
#[test]
fn data_writes_each_physics_set() -> TestResult {
    for (set, per_trajectory) in [("nbody", 1), ("dynamics", 10), ("lj", 10)] {
        let out = scratch(&format!("{set}.safetensors"))?;
        let run = Command::new(env!("CARGO_BIN_EXE_se3"))
            .args([
                "data", set, "--seed", "5", "--train", "2", "--val", "1", "--test", "1", "--out",
            ])
            .arg(&out)
            .output()?;
        assert!(
            run.status.success(),
            "se3 data {set}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let file = se3_models::physics::dataset::DatasetFile::load(&out)?;
        assert_eq!(file.kind.name(), set);
        assert_eq!(file.seed, 5);
        let sizes: Vec<usize> = file.splits.iter().map(|(_, d)| d.samples.len()).collect();
        let k = per_trajectory;
        assert_eq!(sizes, vec![2 * k, k, k], "se3 data {set}");
    }
    let run = Command::new(env!("CARGO_BIN_EXE_se3"))
        .args([
            "data", "dynamics", "--train", "1", "--val", "0", "--test", "0", "--out",
        ])
        .arg(scratch("no/such/dir/x.safetensors")?)
        .output()?;
    assert_one_line_failure(&run, "no/such/dir");
    Ok(())
}
