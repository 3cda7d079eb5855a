//! Shared helpers of the se3-models integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use nalgebra::Matrix3;
use rand::{Rng, SeedableRng};
#[allow(unused_imports)]
pub use se3_core::testing::{rel_error, rel_error_at};
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::inputs::{BoolTensor, EdgeInput, ModelInputs};
use se3_models::model_file::ModelFile;
use se3_models::se3_transformer::{
    Se3TransformerConfig, Se3TransformerForward, Se3TransformerOracle,
};
use se3_models::Error;

pub fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/reference/models")
        .join(name)
}

/// Every reference model folder made from se3-transformer-pytorch (se3t_* and tfn_stack).
pub fn se3t_reference_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir(""))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("se3t_"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub struct Loaded {
    pub file: ModelFile,
    pub cfg: Se3TransformerConfig,
    pub fwd: Se3TransformerForward,
    pub weights: StateDict,
    pub inputs: ModelInputs,
}

pub fn load_se3t(name: &str) -> Result<Loaded, Error> {
    load_se3t_from(&dir(name))
}

/// [`load_se3t`] of a model folder anywhere (config, weights and inputs files).
pub fn load_se3t_from(d: &std::path::Path) -> Result<Loaded, Error> {
    let file = ModelFile::load(d.join("config.json"))?;
    let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
    let weights = StateDict::load(d.join("weights.safetensors"))?;
    let inputs = ModelInputs::load(d.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
    Ok(Loaded {
        file,
        cfg,
        fwd,
        weights,
        inputs,
    })
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Random weights for every key the config needs: U(-1, 1) / sqrt(last axis), LayerNorm-like vectors
/// around 1 for `.weight` of rank 1.
pub fn random_weights(cfg: &Se3TransformerConfig, r: &mut impl Rng) -> Result<StateDict, Error> {
    let mut sd = StateDict::new();
    for (k, shape) in Se3TransformerOracle::expected_keys(cfg)? {
        let fan = (*shape.last().unwrap_or(&1)).max(1) as f64;
        let n: usize = shape.iter().product();
        let data: Vec<f64> = if k.ends_with("inv_freq") {
            let d = 2 * n;
            (0..n)
                .map(|i| 1.0 / 10000f64.powf((2 * i) as f64 / d as f64))
                .collect()
        } else if shape.len() == 1 && k.ends_with(".weight") {
            (0..n).map(|_| 1.0 + 0.2 * r.gen_range(-1.0..1.0)).collect()
        } else {
            (0..n)
                .map(|_| r.gen_range(-1.0..1.0) / fan.sqrt())
                .collect()
        };
        sd.insert(k, Tensor::new(shape, data)?);
    }
    Ok(sd)
}

/// A Haar-random rotation matrix.
pub fn random_rotation(r: &mut impl Rng) -> Matrix3<f64> {
    se3_core::testing::random_rotation(r).into_inner()
}

/// Rotates every trailing 3-vector of `t` by `rot` (rows times R^T), then adds `shift`.
pub fn rotate_rows(t: &Tensor, rot: &Matrix3<f64>, shift: [f64; 3]) -> Tensor {
    let mut out = t.clone();
    for (o, v) in out.data.chunks_mut(3).zip(t.data.chunks(3)) {
        for a in 0..3 {
            o[a] = (0..3).map(|b| rot[(a, b)] * v[b]).sum::<f64>() + shift[a];
        }
    }
    out
}

/// A tensor of `shape` drawn from U(-1, 1).
pub fn dense(r: &mut impl Rng, shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    Tensor {
        shape,
        data: (0..n).map(|_| r.gen_range(-1.0..1.0)).collect(),
    }
}

/// Adds the inputs `cfg` asks for besides features and coordinates: a chain adjacency (node i
/// bonded to i + 1) for sparse neighbours or adjacency degrees, random edge tokens or edge
/// features, two random global nodes.
pub fn add_optional_inputs(
    cfg: &Se3TransformerConfig,
    inp: &mut ModelInputs,
    r: &mut impl Rng,
    b: usize,
    n: usize,
) {
    if cfg.attend_sparse_neighbors || cfg.num_adj_degrees.is_some() {
        let mut adj = vec![false; n * n];
        for i in 0..n - 1 {
            adj[i * n + i + 1] = true;
            adj[(i + 1) * n + i] = true;
        }
        inp.adj_mat = Some(BoolTensor {
            shape: vec![n, n],
            data: adj,
        });
    }
    if let Some(t) = cfg.num_edge_tokens {
        inp.edges = Some(EdgeInput::Tokens {
            shape: vec![b, n, n],
            ids: (0..b * n * n).map(|_| r.gen_range(0..t as i64)).collect(),
        });
    } else if let Some(e) = cfg.edge_dim {
        inp.edges = Some(EdgeInput::Dense(dense(r, vec![b, n, n, e])));
    }
    if let Some(g) = cfg.global_feats_dim {
        inp.global_feats = Some(dense(r, vec![b, 2, g]));
    }
}

/// `Σ_out mean((out - target.out)²)` and its cotangents `2 (out - target) / len`.
pub fn mse(out: &StateDict, targets: &StateDict) -> Result<(f64, StateDict), Error> {
    let mut loss = 0.0;
    let mut cot = StateDict::new();
    for (k, t) in targets.iter() {
        let Some(name) = k.strip_prefix("target.") else {
            continue;
        };
        let o = out.get(name).ok_or(Error::MissingKey {
            key: name.to_string(),
            expected: t.shape.clone(),
        })?;
        let n = t.data.len() as f64;
        loss += o
            .data
            .iter()
            .zip(&t.data)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / n;
        let c = o
            .data
            .iter()
            .zip(&t.data)
            .map(|(a, b)| 2.0 * (a - b) / n)
            .collect();
        cot.insert(
            format!("cotangent.{name}"),
            Tensor::new(t.shape.clone(), c)?,
        );
    }
    Ok((loss, cot))
}

/// The case folders of a random-configuration gradient sweep: the subfolders of `$env` (when
/// set) or of `default` (relative to this crate) that hold a `gradients.safetensors`, sorted;
/// asserts there are at least `min` of them, so a sweep never passes by finding nothing.
pub fn gradient_case_dirs(env: &str, default: &str, min: usize) -> Result<Vec<PathBuf>, Error> {
    let root = match std::env::var(env) {
        Ok(d) => PathBuf::from(d),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default),
    };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| Error::Io {
            path: root.display().to_string(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("gradients.safetensors").exists())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= min,
        "only {} cases with gradients",
        cases.len()
    );
    Ok(cases)
}

/// The SE(3)-Transformer of `cfg` with `weights`, compiled (its se3-core layers as one graph).
pub fn net_session(
    cfg: &Se3TransformerConfig,
    weights: &StateDict,
) -> Result<se3_models::se3_transformer::NetSession, Error> {
    se3_models::se3_transformer::Se3TransformerNet::from_config(cfg, weights)?.into_session()
}

/// Every SE(3)-Transformer reference folder.
pub const SE3T_REFERENCES: [&str; 18] = [
    "se3t_basic",
    "se3t_causal",
    "se3t_convs_gated_pooled",
    "se3t_deg4_radius",
    "se3t_edge_tokens",
    "se3t_egnn",
    "se3t_fourier_edges",
    "se3t_global_feats",
    "se3t_input_degrees2",
    "se3t_linear_proj_keys",
    "se3t_neighbor_mask",
    "se3t_one_headed_kv",
    "se3t_reversible",
    "se3t_rotary_nullkv",
    "se3t_sparse_adj",
    "se3t_tie_kv",
    "se3t_tokens_out2",
    "se3t_type1_reduce",
];
