//! Gradient parity: se3's backward pass (float32) against PyTorch autograd in float64
//! (`gradients.safetensors`: loss `L = Σ_out <out, cotangent.out>`, `param.<key>` for every
//! weight, `input.<name>` for the float inputs it stores). Errors are per tensor: the largest
//! absolute difference over the tensor's largest magnitude.

mod common;
use common::*;

use se3_models::checkpoint::StateDict;
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::tfn::graph::TfnGraph;
use se3_models::tfn::TfnStackConfig;
use se3_models::Error;

#[test]
fn tfn_stack_gradients_match_torch_autograd() -> Result<(), Error> {
    let d = dir("tfn_stack");
    let file = ModelFile::load(d.join("config.json"))?;
    let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
    let sd = StateDict::load(d.join("weights.safetensors"))?;
    let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    let reference = StateDict::load(d.join("gradients.safetensors"))?;
    let mut s = TfnGraph::from_state_dict(&cfg, &sd)?.compile_with_gradients()?;
    let got = s.gradients(&inputs, &reference)?;
    let mut worst = (0.0f64, String::new());
    let mut checked = 0;
    for (k, want) in reference.iter() {
        if !(k.starts_with("param.") || k.starts_with("input.")) {
            continue;
        }
        let g = got.get(k).ok_or(Error::MissingKey {
            key: k.to_string(),
            expected: want.shape.clone(),
        })?;
        assert_eq!(g.data.len(), want.data.len(), "{k}: size");
        // relative to the tensor's largest magnitude, as the forward parity tests
        let (e, i) = rel_error_at(&g.data, &want.data);
        if e > worst.0 {
            worst = (
                e,
                format!("{k}[{i}] got {} want {}", g.data[i], want.data[i]),
            );
        }
        checked += 1;
    }
    println!(
        "tfn_stack: {checked} gradients, worst relative error {:.3e} ({})",
        worst.0, worst.1
    );
    assert!(checked > 10, "only {checked} gradients compared");
    assert!(
        worst.0 < 1e-4,
        "tfn_stack gradient off: {:.3e} at {}",
        worst.0,
        worst.1
    );
    Ok(())
}
