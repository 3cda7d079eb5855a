//! Reading reference tensors from `tests/reference/` (safetensors, f64/f32/i64/bool as f64).

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

/// Any failure of a parity test.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// One tensor, upcast to f64, with its stored dtype.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub dtype: Dtype,
    pub data: Vec<f64>,
}

/// The path of a file under `tests/reference/`.
pub fn reference_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("reference")
        .join(rel)
}

/// All tensors of a reference safetensors file, by name.
pub fn load(rel: &str) -> TestResult<BTreeMap<String, Tensor>> {
    let path = reference_path(rel);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f64> = match view.dtype() {
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)
                .collect(),
            Dtype::I64 => raw
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
                .collect(),
            Dtype::BOOL | Dtype::U8 => raw.iter().map(|&b| b as f64).collect(),
            other => {
                return Err(format!("{rel}: tensor {name} has unsupported dtype {other:?}").into())
            }
        };
        out.insert(
            name.clone(),
            Tensor {
                shape: view.shape().to_vec(),
                dtype: view.dtype(),
                data,
            },
        );
    }
    Ok(out)
}

/// A tensor that must exist.
pub fn get<'a>(file: &'a BTreeMap<String, Tensor>, rel: &str, key: &str) -> TestResult<&'a Tensor> {
    file.get(key)
        .ok_or_else(|| format!("{rel} has no tensor `{key}`").into())
}

/// Rows of a (n, 3) tensor.
pub fn rows3(t: &Tensor) -> Vec<[f64; 3]> {
    t.data.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect()
}

/// The tolerance for a stored tensor: `TOL_F32` for float32 data, else the exact tolerance.
pub fn tol_for(t: &Tensor, exact: f64) -> f64 {
    if t.dtype == Dtype::F32 {
        se3_core::testing::TOL_F32
    } else {
        exact
    }
}
