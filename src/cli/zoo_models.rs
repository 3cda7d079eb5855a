//! The model sections of `se3` (no subcommand): every reference model of the zoo that se3 runs,
//! loaded from its PyTorch checkpoint (`tests/reference/models/<name>/`), run on its built-in
//! inputs, and checked two ways: parity with the PyTorch library's float64 outputs, and
//! equivariance under a fresh random rotation and translation of the coordinates
//! (degree-0 outputs invariant, degree-1 outputs rotating as `f -> f R^T`).

use std::path::{Path, PathBuf};

use nalgebra::{DVector, Matrix3, Rotation3, Vector3};
use rand::rngs::StdRng;
use rand::Rng;
use se3_core::so3::wigner_d;
use se3_models::checkpoint::StateDict;
use se3_models::inputs::{ModelInputs, NodeFeats};
use se3_models::model_file::ModelFile;
use se3_models::zoo::{CompiledModel, Model};

/// The libraries whose reference models the zoo runs.
const ZOO_LIBRARIES: &[&str] = &[
    "se3-transformer-pytorch",
    "egnn-pytorch",
    "VN-transformer",
    "equiformer-pytorch",
];

/// Where the built-in checkpoints and inputs live.
fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/models")
}

/// A model of the zoo ready to run: the compiled graph where one exists, else the oracle.
enum Runner {
    Compiled(Box<CompiledModel>),
    Oracle(Box<Model>),
}

impl Runner {
    fn engine(&self) -> &'static str {
        match self {
            Runner::Compiled(_) => "graph f32",
            Runner::Oracle(_) => "oracle f64",
        }
    }

    fn forward(&mut self, inputs: &ModelInputs) -> Result<StateDict, super::CliError> {
        Ok(match self {
            Runner::Compiled(graph) => graph.forward(inputs)?,
            Runner::Oracle(model) => model.forward(inputs)?,
        })
    }
}

fn load(dir: &Path) -> Result<(Runner, ModelFile), super::CliError> {
    let file = ModelFile::load(dir.join("config.json"))?;
    let weights = StateDict::load(dir.join("weights.safetensors"))?;
    let runner = match CompiledModel::from_parts(&file, &weights) {
        Ok(g) => Runner::Compiled(Box::new(g)),
        Err(se3_models::Error::NotCompiled { .. }) => {
            Runner::Oracle(Box::new(Model::from_parts(&file, &weights)?))
        }
        Err(e) => return Err(e.into()),
    };
    Ok((runner, file))
}

/// Largest |a - b| over the largest |b|.
fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f64::max)
}

fn random_rotation(rng: &mut StdRng) -> Rotation3<f64> {
    let axis = Vector3::new(
        rng.gen_range(-1.0..1.0),
        rng.gen_range(-1.0..1.0),
        rng.gen_range(-1.0..1.0f64),
    );
    let axis = nalgebra::Unit::new_normalize(axis + Vector3::new(1e-3, 0.0, 0.0));
    Rotation3::from_axis_angle(&axis, rng.gen_range(0.0..std::f64::consts::PI))
}

/// `rows R^T` on every trailing 3-vector of `data`.
fn rotate_rows(data: &mut [f64], r: &Matrix3<f64>) {
    for row in data.chunks_exact_mut(3) {
        let v = r * Vector3::new(row[0], row[1], row[2]);
        row.copy_from_slice(v.as_slice());
    }
}

/// Equivariance error of one model: outputs on rotated + translated coordinates against the
/// rotated outputs (degree 1) or the same outputs (degree 0).
fn equivariance_error(
    runner: &mut Runner,
    inputs: &ModelInputs,
    plain: &StateDict,
    file: &ModelFile,
    rng: &mut StdRng,
) -> Result<Option<f64>, super::CliError> {
    let r = random_rotation(rng).into_inner();
    let mut t = Vector3::new(rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0), 1.5);
    // A VN-Transformer promises translations only with translation_equivariance/_invariant.
    let vn_translates = ["translation_equivariance", "translation_invariant"]
        .iter()
        .any(|k| file.constructor_kwargs.get(k) == Some(&serde_json::Value::Bool(true)));
    if file.is_vn_transformer() && !vn_translates {
        t = Vector3::zeros();
    }
    let mut moved = inputs.clone();
    for row in moved.coors.data.chunks_exact_mut(3) {
        let v = r * Vector3::new(row[0], row[1], row[2]) + t;
        row.copy_from_slice(v.as_slice());
    }
    // Input features of degree l >= 1 rotate too: f -> f D^l(R)^T over their last axis.
    if let NodeFeats::Degrees(per_degree) = &mut moved.feats {
        let rot = Rotation3::from_matrix_unchecked(r);
        for (&l, feats) in per_degree.iter_mut().filter(|(l, _)| **l > 0) {
            let d = wigner_d(l, &rot)?;
            for row in feats.data.chunks_exact_mut(2 * l + 1) {
                let v = &d * DVector::from_column_slice(row);
                row.copy_from_slice(v.as_slice());
            }
        }
    }
    let out = runner.forward(&moved)?;
    let mut worst = 0.0f64;
    let mut checked = 0;
    for (name, want) in plain.iter() {
        let Some(spec) = file.outputs.get(name) else {
            continue;
        };
        let mut want = want.data.clone();
        let translates = spec.transforms_as.contains("rotates and translates");
        if spec.is_vector() || translates {
            rotate_rows(&mut want, &r);
            if translates {
                for row in want.chunks_exact_mut(3) {
                    row.iter_mut().zip(t.iter()).for_each(|(w, s)| *w += s);
                }
            }
        } else if !spec.is_invariant() {
            continue;
        }
        let got = out.get(name).ok_or("output missing after rotation")?;
        worst = worst.max(rel_err(&got.data, &want));
        checked += 1;
    }
    Ok((checked > 0).then_some(worst))
}

/// The zoo's model table: one row per reference model se3 runs.
pub fn models(rng: &mut StdRng) -> Result<(), super::CliError> {
    let mut names: Vec<_> = std::fs::read_dir(models_dir())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!("PyTorch checkpoints from tests/reference/models, run on their built-in inputs");
    println!(
        "{:<26} {:<11} {:>16} {:>16}",
        "model", "engine", "vs torch f64", "equivariance"
    );
    let mut skipped = Vec::new();
    for name in names {
        let dir = models_dir().join(&name);
        let file = ModelFile::load(dir.join("config.json"))?;
        if !ZOO_LIBRARIES.contains(&file.library.name.as_str()) {
            skipped.push(name);
            continue;
        }
        let (mut runner, file) = load(&dir)?;
        let inputs =
            ModelInputs::load(dir.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
        let out = runner.forward(&inputs)?;
        let reference = StateDict::load(dir.join("outputs.safetensors"))?;
        let mut parity = 0.0f64;
        for (key, want) in reference.iter() {
            if let Some(base) = key.strip_suffix("_f64") {
                let got = out
                    .get(base)
                    .ok_or("model did not produce a reference output")?;
                parity = parity.max(rel_err(&got.data, &want.data));
            }
        }
        let equi = equivariance_error(&mut runner, &inputs, &out, &file, rng)?;
        let equi = equi.map_or("-".to_string(), |e| format!("{e:.2e}"));
        println!(
            "{:<26} {:<11} {:>16.2e} {:>16}",
            name,
            runner.engine(),
            parity,
            equi
        );
    }
    if !skipped.is_empty() {
        println!("not in se3 yet: {}", skipped.join(", "));
    }
    println!("(se3t_rotary_nullkv is not equivariant in PyTorch either: its degree-1 null keys do not rotate)");
    Ok(())
}
