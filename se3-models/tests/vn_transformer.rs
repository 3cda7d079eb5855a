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
        let torch_f32 = want
            .get(&format!("{base}_f32"))
            .map_or(f64::NAN, |w| max_rel(&w.data, &t.data));
        println!(
            "{} {base}: max rel err {e:.2e} (torch float32: {torch_f32:.2e})",
            folder.display()
        );
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

/// The generated cases: `SE3_VN_EXTRA_DIR` (a full local run of `generate.py`) or the committed
/// ones.
fn extra_dir() -> PathBuf {
    std::env::var_os("SE3_VN_EXTRA_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/extra_reference/vn_transformer/cases")
        },
        PathBuf::from,
    )
}

#[test]
fn vn_transformer_matches_random_configs_of_every_option() -> Result<(), Error> {
    let dir = extra_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("config.json").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "generated cases in {}", dir.display());
    let mut worst = (0.0f64, String::new());
    let mut failed = Vec::new();
    for case in &cases {
        let e = parity(case)?;
        if e > worst.0 {
            worst = (e, case.display().to_string());
        }
        if e >= 1e-4 {
            failed.push(format!("{}: {e:.2e}", case.display()));
        }
    }
    println!("{} cases, worst max rel err {:.2e} ({})", cases.len(), worst.0, worst.1);
    assert!(failed.is_empty(), "max rel err >= 1e-4: {failed:?}");
    Ok(())
}

#[test]
fn configs_the_library_rejects_are_typed_errors() -> Result<(), Error> {
    let path = extra_dir().join("rejected.json");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|source| Error::ConfigParse {
            path: path.display().to_string(),
            source,
        })?;
    assert!(!list.is_empty());
    for entry in &list {
        let kw = &entry["constructor_kwargs"];
        let err = VnTransformerConfig::from_kwargs(kw);
        println!("{kw} -> {err:?} (torch: {})", entry["torch_error"]);
        assert!(
            matches!(
                err,
                Err(Error::InvalidConfig { .. }
                    | Error::UnknownKwarg { .. }
                    | Error::ConfigParse { .. })
            ),
            "{kw}: {err:?}"
        );
    }
    // and what se3 cannot take although the library does
    let three_d = serde_json::json!({"dim": 4, "depth": 1, "dim_coor": 2});
    assert!(matches!(
        VnTransformerConfig::from_kwargs(&three_d),
        Err(Error::InvalidConfig { field: "dim_coor", .. })
    ));
    Ok(())
}
