//! The compiled (luminal graph, float32) SE(3)-Transformer against the reference float64 outputs
//! of se3-transformer-pytorch, one test per reference config (every one compiles).

mod common;
use common::*;

use se3_models::checkpoint::StateDict;
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::se3_transformer::{
    Se3Transformer, Se3TransformerConfig, Se3TransformerForward, Se3TransformerOracle,
};
use se3_models::Error;

/// Float32 parity bound (relative to the largest reference magnitude of each output).
const TOL: f64 = 1e-5;

/// Runs the compiled model on a reference folder; returns the max relative error over the `_f64`
/// outputs, or None when the config has an option that is not compiled.
fn run_compiled(name: &str) -> Result<Option<f64>, Error> {
    let file = ModelFile::load(dir(name).join("config.json"))?;
    let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
    let sd = StateDict::load(dir(name).join("weights.safetensors"))?;
    let model = Se3TransformerOracle::from_state_dict(&cfg, &sd)?;
    let mut compiled = match Se3Transformer::new(&model) {
        Err(Error::NotCompiled { option }) => {
            println!("{name}: not compiled ({option})");
            return Ok(None);
        }
        r => r?,
    };
    let inputs = ModelInputs::load(
        dir(name).join("inputs.safetensors"),
        &file.forward_kwargs.tensors,
    )?;
    let out = compiled.forward(&inputs, &fwd)?;
    let want = StateDict::load(dir(name).join("outputs.safetensors"))?;
    let mut worst = 0.0f64;
    for (k, t) in want.iter() {
        let Some(base) = k.strip_suffix("_f64") else {
            continue;
        };
        let got = out.get(base).ok_or(Error::MissingKey {
            key: format!("{name}: output {base}"),
            expected: t.shape.clone(),
        })?;
        assert_eq!(got.shape, t.shape, "{name}: output {base} shape");
        let (e, idx) = rel_error_at(&got.data, &t.data);
        println!("{name} {base}: compiled max rel err {e:.3e} at {idx}");
        assert!(
            e <= TOL,
            "{name}: {base} max relative error {e:.3e} at flat index {idx} (got {}, want {})",
            got.data[idx],
            t.data[idx]
        );
        worst = worst.max(e);
    }
    Ok(Some(worst))
}

macro_rules! compiled_parity {
    ($($test:ident => $name:literal, compiled: $c:literal),* $(,)?) => {$(
        #[test]
        fn $test() -> Result<(), Error> {
            let r = run_compiled($name)?;
            assert_eq!(r.is_some(), $c, "{}: compiled = {}", $name, r.is_some());
            Ok(())
        }
    )*};
}

compiled_parity! {
    compiled_se3t_basic_matches_reference => "se3t_basic", compiled: true,
    compiled_se3t_causal_matches_reference => "se3t_causal", compiled: true,
    compiled_se3t_convs_gated_pooled_matches_reference => "se3t_convs_gated_pooled", compiled: true,
    compiled_se3t_deg4_radius_matches_reference => "se3t_deg4_radius", compiled: true,
    compiled_se3t_edge_tokens_matches_reference => "se3t_edge_tokens", compiled: true,
    compiled_se3t_egnn_matches_reference => "se3t_egnn", compiled: true,
    compiled_se3t_fourier_edges_matches_reference => "se3t_fourier_edges", compiled: true,
    compiled_se3t_global_feats_matches_reference => "se3t_global_feats", compiled: true,
    compiled_se3t_input_degrees2_matches_reference => "se3t_input_degrees2", compiled: true,
    compiled_se3t_linear_proj_keys_matches_reference => "se3t_linear_proj_keys", compiled: true,
    compiled_se3t_neighbor_mask_matches_reference => "se3t_neighbor_mask", compiled: true,
    compiled_se3t_one_headed_kv_matches_reference => "se3t_one_headed_kv", compiled: true,
    compiled_se3t_reversible_matches_reference => "se3t_reversible", compiled: true,
    compiled_se3t_rotary_nullkv_matches_reference => "se3t_rotary_nullkv", compiled: true,
    compiled_se3t_sparse_adj_matches_reference => "se3t_sparse_adj", compiled: true,
    compiled_se3t_tie_kv_matches_reference => "se3t_tie_kv", compiled: true,
    compiled_se3t_tokens_out2_matches_reference => "se3t_tokens_out2", compiled: true,
    compiled_se3t_type1_reduce_matches_reference => "se3t_type1_reduce", compiled: true,
}

/// A checkpoint read from its file one tensor at a time (`Se3Transformer::from_safetensors`, the
/// radial networks' last layers converted to float32 as they are read) compiles to the same graph
/// as the float64 oracle it is otherwise built from: the same outputs, on configs with tied,
/// one-headed and linear-projected keys, the EGNN trunk and four degrees.
#[test]
fn streamed_checkpoint_gives_the_outputs_of_the_loaded_one() -> Result<(), Error> {
    for name in [
        "se3t_basic",
        "se3t_tie_kv",
        "se3t_one_headed_kv",
        "se3t_linear_proj_keys",
        "se3t_egnn",
        "se3t_deg4_radius",
        "se3t_reversible",
    ] {
        let l = load_se3t(name)?;
        let want =
            Se3Transformer::new(&Se3TransformerOracle::from_state_dict(&l.cfg, &l.weights)?)?
                .forward(&l.inputs, &l.fwd)?;
        let mut streamed =
            Se3Transformer::from_safetensors(&l.cfg, dir(name).join("weights.safetensors"))?;
        let got = streamed.forward(&l.inputs, &l.fwd)?;
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, w) in want.iter() {
            let g = got.get(k).ok_or(Error::MissingKey {
                key: format!("{name}: {k}"),
                expected: w.shape.clone(),
            })?;
            let (e, idx) = rel_error_at(&g.data, &w.data);
            println!("{name} {k}: streamed vs loaded max rel err {e:.3e}");
            assert!(e <= 1e-6, "{name} {k}: {e:.3e} at {idx}");
        }
    }
    Ok(())
}
