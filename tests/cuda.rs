//! The CUDA tooling's paths that run without a GPU: `se3 doctor`'s report and
//! `scripts/gpu-check`'s no-GPU exit.

use std::path::Path;
use std::process::Command;

#[test]
fn doctor_reports_cpu_kernels_and_cuda_state() -> Result<(), Box<dyn std::error::Error>> {
    let out = Command::new(env!("CARGO_BIN_EXE_se3"))
        .arg("doctor")
        .output()?;
    assert!(out.status.success(), "se3 doctor failed: {out:?}");
    let text = String::from_utf8(out.stdout)?;
    println!("{text}");
    let isa = se3_core::device::cpu_instruction_set();
    assert!(text.contains(&format!("kernels use {isa}")), "{text}");
    if cfg!(feature = "cuda") {
        assert!(text.contains("cuda feature: compiled"), "{text}");
        assert!(text.contains("cuda driver: "), "{text}");
        assert!(text.contains("nvrtc: "), "{text}");
        assert!(
            text.contains("devices: none") || text.contains("device 0: "),
            "{text}"
        );
    } else {
        assert!(text.contains("cuda feature: not compiled"), "{text}");
        assert!(!text.contains("device 0:"), "{text}");
    }
    Ok(())
}

#[test]
fn gpu_check_without_a_gpu_says_so_and_exits_0() -> Result<(), Box<dyn std::error::Error>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check");
    let out = Command::new("bash")
        .arg(&script)
        .env("SE3_NVIDIA_SMI", "/nonexistent/nvidia-smi")
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    assert!(
        out.status.success(),
        "gpu-check failed without a GPU: {text}"
    );
    assert!(text.contains("no NVIDIA GPU"), "{text}");
    assert!(text.contains("nothing was run on a GPU"), "{text}");
    assert!(!text.contains("cargo build"), "{text}");
    Ok(())
}

#[test]
fn reference_model_asked_onto_cuda_without_a_device_is_a_typed_error(
) -> Result<(), Box<dyn std::error::Error>> {
    use se3_models::checkpoint::StateDict;
    use se3_models::model_file::ModelFile;
    use se3_models::zoo::CompiledModel;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/models/egnn_net_edges");
    let file = ModelFile::load(dir.join("config.json"))?;
    let weights = StateDict::load(dir.join("weights.safetensors"))?;
    let mut model = CompiledModel::from_parts(&file, &weights)?;
    let cuda = cfg!(feature = "cuda");
    match (model.set_device(se3_core::Device::CUDA0), cuda) {
        (Err(se3_models::Error::Core(se3_core::Error::CudaNotCompiled)), false) => {}
        (Err(se3_models::Error::Core(se3_core::Error::CudaUnavailable { missing })), true) => {
            println!("cuda unavailable: {missing:?}");
        }
        (Ok(()), true) => {
            println!("skip: a CUDA device opened (scripts/gpu-check runs the models there)");
            return Ok(());
        }
        (other, _) => {
            return Err(format!("set_device answered {other:?} (cuda feature: {cuda})").into())
        }
    }
    // the model still runs on the CPU after the refusal
    let inputs = se3_models::inputs::ModelInputs::load(
        dir.join("inputs.safetensors"),
        &file.forward_kwargs.tensors,
    )?;
    let out = model.forward(&inputs)?;
    assert!(out.keys().count() > 0);
    Ok(())
}
