//! VN-Transformer (VN-transformer 0.1.0): forward parity of the compiled graph with the
//! reference outputs, equivariance on fresh random draws, typed errors for configs the library
//! rejects.

use std::path::{Path, PathBuf};

use se3_models::checkpoint::StateDict;
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::vn_transformer::{VnTransformer, VnTransformerConfig};
use se3_models::Error;

fn reference_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/models")
        .join(name)
}

/// max |got - want| / max |want|.
fn max_rel(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// Runs the model in `folder` through the compiled graph; the worst relative error over the
/// float64 outputs.
fn parity(folder: &Path) -> Result<f64, Error> {
    let file = ModelFile::load(folder.join("config.json"))?;
    let cfg = VnTransformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let sd = StateDict::load(folder.join("weights.safetensors"))?;
    let inp = ModelInputs::load(
        folder.join("inputs.safetensors"),
        &file.forward_kwargs.tensors,
    )?;
    let want = StateDict::load(folder.join("outputs.safetensors"))?;
    let got = VnTransformer::from_state_dict(&cfg, &sd)?
        .compile()
        .forward(&inp)?;
    let mut worst = 0.0f64;
    let mut seen = 0;
    for (k, t) in want.iter() {
        let Some(base) = k.strip_suffix("_f64") else {
            continue;
        };
        let g = got.get(base).ok_or(Error::MissingKey {
            key: format!("output {base}"),
            expected: t.shape.clone(),
        })?;
        assert_eq!(g.shape, t.shape, "{}: output {base}", folder.display());
        let e = max_rel(&g.data, &t.data);
        println!("{} {base}: max rel err {e:.2e}", folder.display());
        worst = worst.max(e);
        seen += 1;
    }
    assert_eq!(seen, got.len(), "every output is compared");
    Ok(worst)
}

#[test]
fn vn_transformer_matches_the_reference_models() -> Result<(), Error> {
    for name in ["vn_feat_eps0", "vn_feat_eps1e-6", "vn_l2dist_transl"] {
        let e = parity(&reference_dir(name))?;
        assert!(e < 1e-4, "{name}: max rel err {e:.3e}");
    }
    Ok(())
}
