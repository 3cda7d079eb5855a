//! Parity of the float64 oracles with the reference outputs of se3-transformer-pytorch.

mod common;
use common::*;

use std::path::PathBuf;

use se3_models::checkpoint::StateDict;
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::tfn::{TfnStack, TfnStackConfig};
use se3_models::Error;

fn compare(name: &str, out: &StateDict) -> Result<(f64, f64), Error> {
    let folder = name.split(' ').next().unwrap_or(name);
    let want = StateDict::load(dir(folder).join("outputs.safetensors"))?;
    let (mut e64, mut e32) = (0.0f64, 0.0f64);
    for (k, t) in want.iter() {
        let (base, tol) = if let Some(b) = k.strip_suffix("_f64") {
            (b, 1e-12)
        } else if let Some(b) = k.strip_suffix("_f32") {
            (b, 1e-5)
        } else {
            continue;
        };
        let got = out.get(base).ok_or(Error::MissingKey {
            key: format!("{name}: output {base}"),
            expected: t.shape.clone(),
        })?;
        assert_eq!(got.shape, t.shape, "{name}: output {base} shape");
        let (e, idx) = rel_error_at(&got.data, &t.data);
        println!("{name} {k}: max rel err {e:.3e} at {idx}");
        assert!(
            e <= tol,
            "{name}: {k} max relative error {e:.3e} at flat index {idx} (got {}, want {})",
            got.data[idx],
            t.data[idx]
        );
        if k.ends_with("_f64") {
            e64 = e64.max(e);
        } else {
            e32 = e32.max(e);
        }
    }
    Ok((e64, e32))
}

#[test]
fn tfn_stack_matches_reference() -> Result<(), Error> {
    let file = ModelFile::load(dir("tfn_stack").join("config.json"))?;
    let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
    let sd = StateDict::load(dir("tfn_stack").join("weights.safetensors"))?;
    let model = TfnStack::from_state_dict(&cfg, &sd)?;
    let inputs = ModelInputs::load(
        dir("tfn_stack").join("inputs.safetensors"),
        &file.forward_kwargs.tensors,
    )?;
    let out = model.forward(&inputs)?;
    compare("tfn_stack", &out)?;
    Ok(())
}

fn run_se3t(name: &str) -> Result<(f64, f64), Error> {
    use se3_models::se3_transformer::{
        Se3TransformerConfig, Se3TransformerForward, Se3TransformerOracle,
    };
    let file = ModelFile::load(dir(name).join("config.json"))?;
    let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
    let sd = StateDict::load(dir(name).join("weights.safetensors"))?;
    sd.check_keys(&Se3TransformerOracle::expected_keys(&cfg)?)?;
    let mut model = Se3TransformerOracle::from_state_dict(&cfg, &sd)?;
    let inputs = ModelInputs::load(
        dir(name).join("inputs.safetensors"),
        &file.forward_kwargs.tensors,
    )?;
    let out = model.forward(&inputs, &fwd)?;
    let errs = compare(name, &out)?;
    // the reassociated contraction (radial last layer moved from edges to nodes) gives the same outputs
    model.set_contraction(se3_models::se3_transformer::Contraction::Reassociated);
    let fast = model.forward(&inputs, &fwd)?;
    compare(&format!("{name} (reassociated)"), &fast)?;
    Ok(errs)
}

macro_rules! se3t_parity {
    ($($test:ident => $name:literal),* $(,)?) => {$(
        #[test]
        fn $test() -> Result<(), Error> {
            run_se3t($name)?;
            Ok(())
        }
    )*};
}

se3t_parity! {
    se3t_basic_matches_reference => "se3t_basic",
    se3t_causal_matches_reference => "se3t_causal",
    se3t_convs_gated_pooled_matches_reference => "se3t_convs_gated_pooled",
    se3t_deg4_radius_matches_reference => "se3t_deg4_radius",
    se3t_edge_tokens_matches_reference => "se3t_edge_tokens",
    se3t_egnn_matches_reference => "se3t_egnn",
    se3t_fourier_edges_matches_reference => "se3t_fourier_edges",
    se3t_global_feats_matches_reference => "se3t_global_feats",
    se3t_input_degrees2_matches_reference => "se3t_input_degrees2",
    se3t_linear_proj_keys_matches_reference => "se3t_linear_proj_keys",
    se3t_neighbor_mask_matches_reference => "se3t_neighbor_mask",
    se3t_one_headed_kv_matches_reference => "se3t_one_headed_kv",
    se3t_reversible_matches_reference => "se3t_reversible",
    se3t_rotary_nullkv_matches_reference => "se3t_rotary_nullkv",
    se3t_sparse_adj_matches_reference => "se3t_sparse_adj",
    se3t_tie_kv_matches_reference => "se3t_tie_kv",
    se3t_tokens_out2_matches_reference => "se3t_tokens_out2",
    se3t_type1_reduce_matches_reference => "se3t_type1_reduce",
}

#[test]
fn zoo_infer_runs_every_supported_reference_model() -> Result<(), Error> {
    for name in ["se3t_global_feats", "tfn_stack"] {
        let d = dir(name);
        let out = se3_models::zoo::infer(
            d.join("config.json"),
            d.join("weights.safetensors"),
            d.join("inputs.safetensors"),
        )?;
        compare(name, &out)?;
    }
    Ok(())
}

/// Configs outside tests/reference, generated on a machine whose LAPACK gives other Q_J signs: they
/// match once the oracle uses that machine's sign table.
#[test]
fn extra_references_match_with_their_own_qj_signs() -> Result<(), Error> {
    use se3_models::se3_transformer::basis::QjSigns;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/extra_reference");
    let signs = QjSigns::load(root.join("qj_signs.json"))?;
    assert_ne!(signs, QjSigns::reference());
    let mut count = 0;
    for name in [
        "u_egnn_ff_fourier",
        "u_reversible_tied_rotdist_edges",
        "u_rotary_pos_onehead_causal_global",
    ] {
        let d = root.join(name);
        let (mut model, file) =
            se3_models::zoo::Model::load(d.join("config.json"), d.join("weights.safetensors"))?;
        model.set_qj_signs(&signs)?;
        let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
        let out = model.forward(&inputs)?;
        let want = StateDict::load(d.join("outputs.safetensors"))?;
        for (k, t) in want.iter() {
            let (base, tol) = match k.strip_suffix("_f64") {
                Some(b) => (b, 1e-12),
                None => (k.trim_end_matches("_f32"), 1e-5),
            };
            let got = out.get(base).ok_or(Error::MissingKey {
                key: format!("{name}: output {base}"),
                expected: t.shape.clone(),
            })?;
            assert_eq!(got.shape, t.shape, "{name}: {k}");
            let (e, idx) = rel_error_at(&got.data, &t.data);
            assert!(
                e <= tol,
                "{name}: {k} max relative error {e:.3e} at flat index {idx}"
            );
            count += 1;
        }
    }
    assert!(count >= 6);
    Ok(())
}
