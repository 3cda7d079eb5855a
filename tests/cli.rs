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

/// Copies `inputs.safetensors` of a reference folder with `coors[0, 0, 0]` set to NaN.
fn inputs_with_nan_coordinate(dir: &Path, out: &Path) -> TestResult {
    let bytes = std::fs::read(dir.join("inputs.safetensors"))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let mut data = view.data().to_vec();
        if name == "coors" {
            assert_eq!(view.dtype(), Dtype::F32);
            data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        owned.push((name, view.dtype(), view.shape().to_vec(), data));
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, &None, out)?;
    Ok(())
}

fn assert_one_line_failure(run: &std::process::Output, needle: &str) {
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "expected failure, got success");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "message lacks `{needle}`: {err}");
}

#[test]
fn infer_rejects_nan_coordinates_with_one_line() -> TestResult {
    let dir = reference("se3t_basic");
    let bad = scratch("nan_coors.safetensors")?;
    inputs_with_nan_coordinate(&dir, &bad)?;
    let run = infer(&dir, &bad, &scratch("nan_out.safetensors")?)?;
    assert_one_line_failure(&run, "non-finite");
    Ok(())
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
fn infer_says_other_libraries_are_not_supported_yet() -> TestResult {
    let dir = reference("egnn_net_edges");
    let run = infer(
        &dir,
        &dir.join("inputs.safetensors"),
        &scratch("egnn.safetensors")?,
    )?;
    assert_one_line_failure(&run, "not supported yet");
    Ok(())
}
