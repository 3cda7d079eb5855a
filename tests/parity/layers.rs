//! Parity of the graph layers with se3-transformer-pytorch: the reference TFN stack
//! (`models/tfn_stack`: ConvSE3 + NormSE3, float64 outputs) run through the luminal graph
//! built from `ConvLayer` and `NormLayer` (float32), to float32 precision.

use se3::models::checkpoint::StateDict;
use se3::models::inputs::ModelInputs;
use se3::models::model_file::ModelFile;
use se3::models::tfn::graph::TfnGraph;
use se3::models::tfn::TfnStackConfig;
use se3::testing::{check_close, TOL_F32};

use super::reference::{reference_path, TestResult};

#[test]
fn graph_tfn_stack_matches_the_reference_outputs_to_f32_precision() -> TestResult {
    let dir = reference_path("models/tfn_stack");
    let file = ModelFile::load(dir.join("config.json"))?;
    let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
    let sd = StateDict::load(dir.join("weights.safetensors"))?;
    let inp = ModelInputs::load(dir.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    let want = StateDict::load(dir.join("outputs.safetensors"))?;
    let got = TfnGraph::from_state_dict(&cfg, &sd)?
        .compile()?
        .forward(&inp)?;
    let mut n = 0;
    for (key, t) in got.iter() {
        let r = want
            .get(&format!("{key}_f64"))
            .ok_or_else(|| format!("models/tfn_stack/outputs.safetensors: no `{key}_f64`"))?;
        assert_eq!(t.shape, r.shape, "{key}");
        let err = check_close(
            &format!("models/tfn_stack/outputs.safetensors `{key}_f64` (graph, f32)"),
            &t.data,
            &r.data,
            TOL_F32,
        )?;
        println!("tfn_stack {key}: max rel err {err:.2e}");
        n += 1;
    }
    assert_eq!(n, 2, "type0 and type1");
    Ok(())
}
