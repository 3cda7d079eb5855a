//! SE(3)-Transformer gradients: the compiled graph's backward pass (float32) against PyTorch
//! autograd in float64 (`gradients.safetensors`, loss `L = Σ_out <out, cotangent.out>`), per
//! tensor max|diff| / max|want|, for every `se3t_*` reference that stores gradients; finite
//! differences where none are stored (the reversible trunk) and for the coordinate gradient
//! through the in-graph kernel basis (`differentiable_coors`).

mod common;
use common::*;

use se3_models::checkpoint::StateDict;
use se3_models::se3_transformer::{GraphForm, TrainableSe3Transformer};
use se3_models::Error;

/// Float32 gradients against float64 autograd, relative to each tensor's largest magnitude.
const TOL_GRAD: f64 = 1e-4;

/// Compares every stored `param.*` / `input.*` of `name`; returns the worst error and where.
fn gradient_parity(name: &str) -> Result<(f64, String, usize), Error> {
    let l = load_se3t(name)?;
    let reference = StateDict::load(dir(name).join("gradients.safetensors"))?;
    let mut m = TrainableSe3Transformer::new(&l.cfg, &l.weights, GraphForm::Unfused)?;
    let (_, got) = m.forward_and_gradients(&l.inputs, &l.fwd, &reference)?;
    let names = input_names(&l.file);
    let mut worst = (0.0f64, String::new());
    let mut checked = 0;
    for (k, want) in reference.iter() {
        let key = match k.strip_prefix("input.") {
            Some(file_name) => format!("input.{}", names.get(file_name).ok_or(Error::MissingKey {
                key: k.to_string(),
                expected: want.shape.clone(),
            })?),
            None if k.starts_with("param.") => k.to_string(),
            None => continue,
        };
        let g = got.get(&key).ok_or(Error::MissingKey {
            key: key.clone(),
            expected: want.shape.clone(),
        })?;
        assert_eq!(g.data.len(), want.data.len(), "{name} {k}: size");
        let (e, i) = rel_error_at(&g.data, &want.data);
        if e > worst.0 || checked == 0 {
            worst = (e, format!("{k}[{i}] got {:.6e} want {:.6e}", g.data[i], want.data[i]));
        }
        checked += 1;
    }
    Ok((worst.0, worst.1, checked))
}

/// Inputs-file tensor name -> the gradient name se3 gives it (`feats`, `feats_type<l>`,
/// `edges`, `global_feats`).
fn input_names(
    file: &se3_models::model_file::ModelFile,
) -> std::collections::BTreeMap<String, String> {
    use se3_models::model_file::TensorName;
    let mut out = std::collections::BTreeMap::new();
    for (arg, v) in &file.forward_kwargs.tensors {
        match v {
            TensorName::One(s) => {
                out.insert(s.clone(), arg.clone());
            }
            TensorName::PerDegree(per_degree) => {
                for (l, s) in per_degree {
                    out.insert(s.clone(), format!("{arg}_type{l}"));
                }
            }
        }
    }
    out
}

fn check(names: &[&str]) -> Result<(), Error> {
    let mut failures = Vec::new();
    for name in names {
        let (e, at, checked) = gradient_parity(name)?;
        println!("{name}: {checked} gradients, worst relative error {e:.3e} ({at})");
        assert!(checked > 10, "{name}: only {checked} gradients compared");
        if e >= TOL_GRAD {
            failures.push(format!("{name}: {e:.3e} at {at}"));
        }
    }
    assert!(failures.is_empty(), "gradients off: {failures:#?}");
    Ok(())
}

#[test]
fn se3t_gradients_match_torch_autograd_basic_options() -> Result<(), Error> {
    check(&[
        "se3t_basic",
        "se3t_causal",
        "se3t_neighbor_mask",
        "se3t_deg4_radius",
    ])
}

#[test]
fn se3t_gradients_match_torch_autograd_attention_options() -> Result<(), Error> {
    check(&[
        "se3t_tie_kv",
        "se3t_one_headed_kv",
        "se3t_linear_proj_keys",
        "se3t_rotary_nullkv",
        "se3t_global_feats",
    ])
}

#[test]
fn se3t_gradients_match_torch_autograd_input_and_output_options() -> Result<(), Error> {
    check(&[
        "se3t_input_degrees2",
        "se3t_tokens_out2",
        "se3t_type1_reduce",
        "se3t_convs_gated_pooled",
    ])
}

#[test]
fn se3t_gradients_match_torch_autograd_edge_options_and_egnn() -> Result<(), Error> {
    check(&[
        "se3t_edge_tokens",
        "se3t_fourier_edges",
        "se3t_sparse_adj",
        "se3t_egnn",
    ])
}
