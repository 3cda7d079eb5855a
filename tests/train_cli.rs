//! `se3 grad` against PyTorch autograd (tfn_stack `gradients.safetensors`), and `se3 train`
//! end to end: log, curves and checkpoint written, and a run stopped after 2 epochs and resumed
//! to 3 ends with the weights of an uninterrupted 3-epoch run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use se3_models::checkpoint::StateDict;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn scratch(name: &str) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("train_cli");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(name))
}

fn se3(args: &[&std::ffi::OsStr]) -> Result<Output, Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_se3"))
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "se3 {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(out)
}

#[test]
fn grad_reproduces_torch_gradients_of_tfn_stack() -> TestResult {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/models/tfn_stack");
    let reference = dir.join("gradients.safetensors");
    let out = scratch("tfn_stack_grads.safetensors")?;
    se3(&[
        "grad".as_ref(),
        "--config".as_ref(),
        dir.join("config.json").as_os_str(),
        "--weights".as_ref(),
        dir.join("weights.safetensors").as_os_str(),
        "--inputs".as_ref(),
        dir.join("inputs.safetensors").as_os_str(),
        "--cotangent".as_ref(),
        reference.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ])?;
    let got = StateDict::load(&out)?;
    let want = StateDict::load(&reference)?;
    let (mut worst, mut compared) = (0.0f64, 0);
    for (k, w) in want.iter() {
        if !(k.starts_with("param.") || k.starts_with("input.")) {
            continue;
        }
        let g = got.get(k).ok_or_else(|| format!("`{k}` missing"))?;
        assert_eq!(g.shape, w.shape, "{k}");
        let scale = w.data.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-30);
        let err = g
            .data
            .iter()
            .zip(&w.data)
            .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()))
            / scale;
        worst = worst.max(err);
        compared += 1;
    }
    println!("se3 grad tfn_stack: {compared} tensors, worst relative error {worst:.2e}");
    assert!(compared > 10, "only {compared} tensors compared");
    assert!(worst < 1e-4, "worst relative error {worst}");
    Ok(())
}

fn train(config: &Path, data: &Path, out: &Path, epochs: &str, resume: bool) -> TestResult {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "train".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--epochs".as_ref(),
        epochs.as_ref(),
        "--batch-size".as_ref(),
        "3".as_ref(),
        "--lr".as_ref(),
        "1e-2".as_ref(),
        "--optimizer".as_ref(),
        "adamw".as_ref(),
        "--weight-decay".as_ref(),
        "0.01".as_ref(),
        "--seed".as_ref(),
        "7".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    if resume {
        args.push("--resume".as_ref());
    }
    se3(&args)?;
    Ok(())
}

#[test]
fn train_writes_log_curves_checkpoint_and_resumes_exactly() -> TestResult {
    let config = scratch("tiny_tfn.json")?;
    std::fs::write(
        &config,
        r#"{"class": "TFNStack", "library": {"name": "se3-transformer-pytorch", "version": "0.9.0"},
            "constructor_kwargs": {"fibers": [{"0": 1}, {"0": 1, "1": 1}]}}"#,
    )?;
    let data = scratch("neighbours.safetensors")?;
    se3(&[
        "data".as_ref(),
        "neighbours".as_ref(),
        "--seed".as_ref(),
        "3".as_ref(),
        "--train".as_ref(),
        "7".as_ref(),
        "--val".as_ref(),
        "3".as_ref(),
        "--nodes".as_ref(),
        "5".as_ref(),
        "--out".as_ref(),
        data.as_os_str(),
    ])?;
    let (straight, stopped) = (scratch("straight")?, scratch("stopped")?);
    for d in [&straight, &stopped] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
    }
    train(&config, &data, &straight, "3", false)?;
    train(&config, &data, &stopped, "2", false)?;
    train(&config, &data, &stopped, "3", true)?;

    let log = std::fs::read_to_string(stopped.join("log.csv"))?;
    assert_eq!(log.lines().count(), 4, "header + 3 epochs:\n{log}");
    assert!(log.starts_with("epoch,steps,lr,train_loss,val_loss,equivariance_error"));
    for svg in ["loss.svg", "equivariance.svg"] {
        let text = std::fs::read_to_string(stopped.join(svg))?;
        assert!(
            text.starts_with("<svg") && text.contains("polyline"),
            "{svg}"
        );
    }
    let a = StateDict::load(straight.join("checkpoint/weights.safetensors"))?;
    let b = StateDict::load(stopped.join("checkpoint/weights.safetensors"))?;
    assert_eq!(a.len(), b.len());
    for (k, t) in a.iter() {
        let u = b
            .get(k)
            .ok_or_else(|| format!("`{k}` missing after resume"))?;
        assert_eq!(t.data, u.data, "{k}: resumed weights differ");
    }
    let opt = StateDict::load(stopped.join("checkpoint/optimizer.safetensors"))?;
    assert!(opt.keys().any(|k| k.starts_with("exp_avg_sq.")));
    Ok(())
}
