//! Every reference model of `tests/reference/models/` compiled, moved to CUDA device 0
//! (`CompiledModel::set_device`, weights uploaded once and kept there) and run on its built-in
//! inputs: its outputs against the CPU backend's and against the PyTorch library's float64
//! outputs, then the SE(3)-Transformer forward at the benchmark sizes (`se3 bench
//! se3-transformer`'s configs) on both, with a table of times. Runs with `--features cuda`
//! (`scripts/gpu-check`); without a device it prints a skip line, or fails when
//! `SE3_REQUIRE_GPU` is set. Nothing here has run on a GPU yet.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3::testing::TOL_F32;
use se3_core::Device;
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::inputs::{BoolTensor, ModelInputs, NodeFeats};
use se3_models::model_file::ModelFile;
use se3_models::se3_transformer::{
    NetSession, Se3TransformerConfig, Se3TransformerForward, Se3TransformerNet,
    Se3TransformerOracle,
};
use se3_models::zoo::CompiledModel;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Whether device 0 opens; prints why not (or fails under `SE3_REQUIRE_GPU`).
fn device_or_skip() -> bool {
    match se3_core::exec::Session::on(Device::CUDA0) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("SE3_REQUIRE_GPU").is_none(),
                "SE3_REQUIRE_GPU is set but CUDA device 0 does not open: {e}"
            );
            println!("skip: no CUDA device ({e}); nothing was run on a GPU");
            false
        }
    }
}

/// Largest |a - b| over the largest |b|.
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f64::max)
}

/// The largest error of `got` against `want` over the keys of `want` (names without `_f64`).
fn outputs_err(got: &StateDict, want: &StateDict, strip: bool) -> Res<f64> {
    let mut err = 0.0f64;
    for (key, w) in want.iter() {
        let base = if strip {
            match key.strip_suffix("_f64") {
                Some(b) => b,
                None => continue,
            }
        } else {
            key
        };
        let g = got.get(base).ok_or(format!("no output `{base}`"))?;
        if g.data.len() != w.data.len() {
            return Err(format!(
                "output `{base}` has {} values, want {}",
                g.data.len(),
                w.data.len()
            )
            .into());
        }
        err = err.max(rel_err(&g.data, &w.data));
    }
    Ok(err)
}

fn seconds(f: impl FnOnce() -> Res<()>) -> Res<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

#[test]
fn every_reference_model_on_the_device_matches_cpu_and_pytorch() -> Res<()> {
    if !device_or_skip() {
        return Ok(());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/models");
    let mut names: Vec<String> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!(
        "{:<26} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "model", "gpu vs cpu", "gpu vs torch", "cpu s", "gpu 1st s", "gpu s"
    );
    let mut failures = Vec::new();
    for name in names {
        let dir = root.join(&name);
        let file = ModelFile::load(dir.join("config.json"))?;
        let weights = StateDict::load(dir.join("weights.safetensors"))?;
        let mut cpu = match CompiledModel::from_parts(&file, &weights) {
            Ok(m) => m,
            Err(e) => {
                println!("{name:<26} not compiled ({e}): runs on the host only");
                continue;
            }
        };
        let mut gpu = CompiledModel::from_parts(&file, &weights)?;
        gpu.set_device(Device::CUDA0)?;
        let inputs =
            ModelInputs::load(dir.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
        let reference = StateDict::load(dir.join("outputs.safetensors"))?;
        let mut want = StateDict::new();
        let t_cpu = seconds(|| {
            want = cpu.forward(&inputs)?;
            Ok(())
        })?;
        let mut got = StateDict::new();
        // the first run uploads the weights and compiles the kernels with NVRTC
        let t_first = seconds(|| {
            got = gpu.forward(&inputs)?;
            Ok(())
        })?;
        let t_gpu = seconds(|| {
            got = gpu.forward(&inputs)?;
            Ok(())
        })?;
        let vs_cpu = outputs_err(&got, &want, false)?;
        let vs_torch = outputs_err(&got, &reference, true)?;
        let torch_cpu = outputs_err(&want, &reference, true)?;
        println!(
            "{name:<26} {vs_cpu:>12.2e} {vs_torch:>12.2e} {t_cpu:>10.4} {t_first:>10.4} {t_gpu:>10.4}"
        );
        // the device may differ from the CPU by float32 rounding of another summation order;
        // against PyTorch it must hold what the CPU graph holds, within the float32 tolerance
        if vs_cpu > 1e-4 || vs_torch > torch_cpu.max(TOL_F32) * 10.0 {
            failures.push(format!(
                "{name}: gpu vs cpu {vs_cpu:e}, gpu vs torch {vs_torch:e} (cpu vs torch {torch_cpu:e})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Random inputs as `se3 bench se3-transformer` draws them.
fn bench_inputs(n: usize, dim: usize, rng: &mut StdRng) -> Res<ModelInputs> {
    let mut normal = || -> f64 {
        let u: f64 = rng.gen_range(1e-12..1.0);
        let v: f64 = rng.gen_range(0.0..1.0);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let feats = (0..n * dim).map(|_| normal()).collect();
    let coors = (0..n * 3).map(|_| 3.0 * normal()).collect();
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

#[test]
fn se3_transformer_forward_at_the_benchmark_sizes_on_the_device() -> Res<()> {
    if !device_or_skip() {
        return Ok(());
    }
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>12}",
        "case", "cpu s", "gpu s", "speed-up", "gpu vs cpu"
    );
    for (case, num_degrees, n) in [
        ("se3t_deg2_n128", 2, 128),
        ("se3t_deg2_n512", 2, 512),
        ("se3t_deg3_n128", 3, 128),
    ] {
        let mut rng = StdRng::seed_from_u64(0);
        let cfg = Se3TransformerConfig::from_kwargs(&serde_json::json!({
            "dim": 32, "heads": 4, "dim_head": 16, "depth": 2,
            "num_degrees": num_degrees, "num_neighbors": 16
        }))?;
        let mut weights = StateDict::new();
        for (key, shape) in Se3TransformerOracle::expected_keys(&cfg)? {
            let b = 1.0 / (shape.last().copied().unwrap_or(1).max(1) as f64).sqrt();
            let data = (0..shape.iter().product())
                .map(|_| rng.gen_range(-b..b))
                .collect();
            weights.insert(key, Tensor::new(shape, data)?);
        }
        let inputs = bench_inputs(n, 32, &mut rng)?;
        let fwd = Se3TransformerForward::from_literals(&serde_json::json!({"return_type": 0}))?;
        let mut cpu = Se3TransformerNet::from_config(&cfg, &weights)?.into_session()?;
        let mut gpu = Se3TransformerNet::from_config(&cfg, &weights)?.into_session()?;
        gpu.session().set_device(Device::CUDA0)?;
        let want = cpu.forward_inputs(&inputs, &fwd)?;
        let mut got = gpu.forward_inputs(&inputs, &fwd)?;
        let median = |m: &mut NetSession, out: &mut StateDict| -> Res<f64> {
            let mut t = Vec::new();
            for _ in 0..3 {
                let s = Instant::now();
                *out = m.forward_inputs(&inputs, &fwd)?;
                t.push(s.elapsed().as_secs_f64());
            }
            t.sort_by(f64::total_cmp);
            Ok(t[1])
        };
        let mut cpu_out = want.clone();
        let t_cpu = median(&mut cpu, &mut cpu_out)?;
        let t_gpu = median(&mut gpu, &mut got)?;
        let err = outputs_err(&got, &want, false)?;
        println!(
            "{case:<16} {t_cpu:>10.4} {t_gpu:>10.4} {:>10.2} {err:>12.2e}",
            t_cpu / t_gpu
        );
        assert!(err < 1e-4, "{case}: gpu vs cpu {err:e}");
    }
    Ok(())
}

/// One training step of a [`Differentiable`] model: forward and backward with the mean
/// squared error against `targets`, then Adam (lr 1e-3) on every parameter, written back.
fn training_step(
    d: &mut dyn se3_models::differentiable::Differentiable,
    adam: &mut se3_core::train::Adam,
    inputs: &ModelInputs,
    targets: &StateDict,
) -> Res<se3_models::differentiable::Gradients> {
    use se3_core::train::{Optimizer, Param};
    let g = d.gradients(inputs, targets)?;
    let mut values: Vec<(String, Vec<f32>, Vec<f32>)> = Vec::new();
    for p in d.parameters().iter() {
        let grad = g
            .grads
            .get(&format!("param.{}", p.name))
            .map(|t| t.data.iter().map(|&v| v as f32).collect())
            .unwrap_or_else(|| vec![0.0; p.value.len()]);
        values.push((p.name.clone(), p.value.clone(), grad));
    }
    let mut ps: Vec<Param<'_>> = values
        .iter_mut()
        .map(|(name, value, grad)| Param { name, value, grad })
        .collect();
    adam.step(&mut ps)?;
    for (name, value, _) in values {
        d.set_parameter(&name, value)?;
    }
    Ok(g)
}

#[test]
fn se3_transformer_training_step_on_the_device() -> Res<()> {
    use se3_models::differentiable::{Differentiable, Objective};
    use se3_models::se3_transformer::net::DifferentiableSe3Transformer;
    if !device_or_skip() {
        return Ok(());
    }
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>12} {:>12}",
        "training step", "cpu s", "gpu s", "speed-up", "loss rel", "grads rel"
    );
    for (case, num_degrees, n) in [("se3t_deg2_n128", 2, 128)] {
        let mut rng = StdRng::seed_from_u64(0);
        let cfg = Se3TransformerConfig::from_kwargs(&serde_json::json!({
            "dim": 32, "heads": 4, "dim_head": 16, "depth": 2,
            "num_degrees": num_degrees, "num_neighbors": 16
        }))?;
        let mut weights = StateDict::new();
        for (key, shape) in Se3TransformerOracle::expected_keys(&cfg)? {
            let b = 1.0 / (shape.last().copied().unwrap_or(1).max(1) as f64).sqrt();
            let data = (0..shape.iter().product())
                .map(|_| rng.gen_range(-b..b))
                .collect();
            weights.insert(key, Tensor::new(shape, data)?);
        }
        let inputs = bench_inputs(n, 32, &mut rng)?;
        let fwd = Se3TransformerForward::from_literals(&serde_json::json!({"return_type": 0}))?;
        let mut targets = StateDict::new();
        let out = Se3TransformerNet::from_config(&cfg, &weights)?
            .into_session()?
            .forward_inputs(&inputs, &fwd)?;
        for (k, t) in out.iter() {
            let data = (0..t.data.len())
                .map(|_| rng.gen_range(-1.0..1.0))
                .collect();
            targets.insert(format!("target.{k}"), Tensor::new(t.shape.clone(), data)?);
        }
        let net = Se3TransformerNet::from_config(&cfg, &weights)?;
        let build = || {
            DifferentiableSe3Transformer::new(
                &net,
                fwd.clone(),
                &weights,
                Objective::MeanSquaredError,
                false,
            )
        };
        let (mut cpu, mut gpu) = (build()?, build()?);
        gpu.set_device(Device::CUDA0)?;
        let (mut adam_cpu, mut adam_gpu) = (
            se3_core::train::Adam::new(1e-3),
            se3_core::train::Adam::new(1e-3),
        );
        let (mut t_cpu, mut t_gpu) = (Vec::new(), Vec::new());
        let (mut loss_err, mut grad_err) = (0.0f64, 0.0f64);
        // step 0 uploads the weights and compiles the kernels; then 3 timed steps, the same
        // updates on both (the parameters stay in step up to float32 rounding)
        for step in 0..4 {
            let s = Instant::now();
            let want = training_step(&mut cpu, &mut adam_cpu, &inputs, &targets)?;
            let tc = s.elapsed().as_secs_f64();
            let s = Instant::now();
            let got = training_step(&mut gpu, &mut adam_gpu, &inputs, &targets)?;
            let tg = s.elapsed().as_secs_f64();
            if step > 0 {
                t_cpu.push(tc);
                t_gpu.push(tg);
            }
            loss_err = loss_err.max((got.loss - want.loss).abs() / want.loss.abs().max(1e-30));
            grad_err = grad_err.max(outputs_err(&got.grads, &want.grads, false)?);
        }
        t_cpu.sort_by(f64::total_cmp);
        t_gpu.sort_by(f64::total_cmp);
        println!(
            "{case:<16} {:>10.4} {:>10.4} {:>10.2} {loss_err:>12.2e} {grad_err:>12.2e}",
            t_cpu[1],
            t_gpu[1],
            t_cpu[1] / t_gpu[1]
        );
        assert!(
            loss_err < 1e-4 && grad_err < 1e-3,
            "{case}: gpu vs cpu loss {loss_err:e}, gradients {grad_err:e}"
        );
    }
    Ok(())
}
