//! Module checkpoints: safetensors files of the parameters by state-dict name, with the
//! layers' fibers as metadata `se3.fibers` so a checkpoint says what it holds.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{LayerEntry, Module};
use crate::exec::{read_safetensors, F32Tensor};
use crate::Error;

/// The metadata key of the fibers.
const FIBERS_KEY: &str = "se3.fibers";

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn invalid(e: safetensors::SafeTensorError) -> Error {
    Error::InvalidSafetensors {
        reason: e.to_string(),
    }
}

/// The fibers as JSON: `{"<path>": {"layer": "<kind>", "in": "<spec>", "out": "<spec>"}}`.
fn fibers_json(layers: &[LayerEntry]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = layers
        .iter()
        .map(|e| {
            (
                e.path.clone(),
                serde_json::json!({
                    "layer": e.kind,
                    "in": e.fiber_in.to_string(),
                    "out": e.fiber_out.to_string(),
                }),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

/// Writes `module`'s parameters and fibers to `path`.
pub(super) fn save<M: Module>(module: &M, path: &Path) -> Result<(), Error> {
    let params = module.parameters();
    let bytes: Vec<Vec<u8>> = params
        .iter()
        .map(|(_, p)| p.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = params
        .iter()
        .zip(&bytes)
        .map(|((k, p), b)| TensorView::new(Dtype::F32, p.shape.clone(), b).map(|v| (k.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let meta = HashMap::from([(FIBERS_KEY.to_string(), fibers_json(&module.layers()))]);
    let out = safetensors::serialize(views, &Some(meta)).map_err(invalid)?;
    std::fs::write(path, out).map_err(|e| io(path, e))
}

/// The `layer`, `in`, `out` strings of one metadata entry.
fn entry_strings(v: &serde_json::Value) -> Option<(&str, &str, &str)> {
    Some((
        v.get("layer")?.as_str()?,
        v.get("in")?.as_str()?,
        v.get("out")?.as_str()?,
    ))
}

/// Checks every layer of `module` against the fibers the checkpoint lists for its path.
fn check_fibers(layers: &[LayerEntry], json: &str) -> Result<(), Error> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| Error::CheckpointMetadata {
            reason: e.to_string(),
        })?;
    let map = value.as_object().ok_or(Error::CheckpointMetadata {
        reason: "not a JSON object".into(),
    })?;
    for e in layers {
        let Some(v) = map.get(&e.path) else {
            continue;
        };
        let (kind, fin, fout) = entry_strings(v).ok_or_else(|| Error::CheckpointMetadata {
            reason: format!("entry `{}` lacks `layer`, `in` or `out`", e.path),
        })?;
        let (want_in, want_out) = (e.fiber_in.to_string(), e.fiber_out.to_string());
        if kind != e.kind || fin != want_in || fout != want_out {
            return Err(Error::CheckpointFibers {
                field: e.path.clone(),
                layer: e.kind.to_string(),
                expected: format!("{want_in} -> {want_out}"),
                found: if kind == e.kind {
                    format!("{fin} -> {fout}")
                } else {
                    format!("{fin} -> {fout} ({kind})")
                },
            });
        }
    }
    Ok(())
}

/// Loads `path` into `module` (fibers checked if the file lists them).
pub(super) fn load<M: Module>(module: &mut M, path: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    if let Some(json) = meta.metadata().as_ref().and_then(|m| m.get(FIBERS_KEY)) {
        check_fibers(&module.layers(), json)?;
    }
    let mut src: HashMap<String, F32Tensor> = read_safetensors(&bytes)?.into_iter().collect();
    module.load_params(&mut src)
}
