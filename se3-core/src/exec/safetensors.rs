//! Loading weights from safetensors into a [`Session`]'s resident weights, and reading or
//! writing safetensors tensors as f32.
//!
//! Every weight of the session is looked up by its name; dtypes f32, f16, bf16 and f64 become
//! f32 (f64 rounds to nearest); shapes are checked against the weight's declared shape; each
//! failure is a typed error naming the key. Keys the session does not use are reported, not
//! rejected (checkpoints often carry buffers a model does not read).

use std::path::Path;

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use super::Session;
use crate::Error;

/// Longest tensor name accepted (bytes); PyTorch keys are well under 200.
pub const MAX_TENSOR_NAME_BYTES: usize = 1024;

/// Checks a tensor name read from a file: non-empty, at most [`MAX_TENSOR_NAME_BYTES`] bytes, no
/// control characters. Names are only ever keys (matched against a model's names, printed in
/// errors), never paths: a name like `../x` is an ordinary, unknown key.
///
/// # Errors
/// `InvalidTensorName` with the name escaped (and cut to 64 characters).
pub fn check_tensor_name(name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_TENSOR_NAME_BYTES {
        Some("it is longer than 1024 bytes")
    } else if name.chars().any(char::is_control) {
        Some("it holds a control character")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::InvalidTensorName {
            name: name.chars().take(64).flat_map(char::escape_debug).collect(),
            problem,
        }),
    }
}

/// Parses a safetensors buffer and checks every tensor name ([`check_tensor_name`]).
///
/// The safetensors crate checks the header against the buffer before any tensor is read: the
/// header length (at most 100 MB and inside the buffer), each tensor's offsets (contiguous, in
/// order, ending exactly at the end of the buffer) and its byte length against the
/// overflow-checked product of its shape times the dtype size. So every tensor read afterwards is
/// backed by bytes of the file.
///
/// # Errors
/// `InvalidSafetensors`, `InvalidTensorName`.
pub fn parse_safetensors(bytes: &[u8]) -> Result<SafeTensors<'_>, Error> {
    let st = SafeTensors::deserialize(bytes).map_err(invalid)?;
    for name in st.names() {
        check_tensor_name(name)?;
    }
    Ok(st)
}

/// What a load did: the weights set, and the file's keys that no weight used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    pub unused: Vec<String>,
}

/// A tensor read as f32: shape and row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn invalid(e: safetensors::SafeTensorError) -> Error {
    Error::InvalidSafetensors {
        reason: e.to_string(),
    }
}

/// The values of a float tensor (little-endian f64, f32, f16 or bf16), each widened exactly
/// to f64 and passed through `to`; `None` for any other dtype. The one decoder of stored
/// floats: [`tensor_to_f32`] here, and the float64 state dicts of `se3-models`.
pub fn float_values<T>(view: &TensorView<'_>, to: impl Fn(f64) -> T) -> Option<Vec<T>> {
    let bytes = view.data();
    Some(match view.dtype() {
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| {
                to(f64::from_le_bytes([
                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
                ]))
            })
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| to(f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| to(half::f16::from_le_bytes([b[0], b[1]]).to_f64()))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| to(half::bf16::from_le_bytes([b[0], b[1]]).to_f64()))
            .collect(),
        _ => return None,
    })
}

/// Converts one safetensors tensor to f32 (f64 rounds to nearest).
///
/// # Errors
/// `UnsupportedDtype` for dtypes other than f32, f16, bf16, f64.
pub fn tensor_to_f32(key: &str, view: &TensorView<'_>) -> Result<F32Tensor, Error> {
    let data = float_values(view, |v| v as f32).ok_or_else(|| Error::UnsupportedDtype {
        key: key.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })?;
    Ok(F32Tensor {
        shape: view.shape().to_vec(),
        data,
    })
}

/// Reads every tensor of a safetensors buffer as f32, sorted by name.
///
/// # Errors
/// `InvalidSafetensors`, `InvalidTensorName`, `UnsupportedDtype`.
pub fn read_safetensors(bytes: &[u8]) -> Result<Vec<(String, F32Tensor)>, Error> {
    let st = parse_safetensors(bytes)?;
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    names
        .into_iter()
        .map(|k| {
            let v = st.tensor(&k).map_err(invalid)?;
            let t = tensor_to_f32(&k, &v)?;
            Ok((k, t))
        })
        .collect()
}

/// Writes f32 tensors as a safetensors buffer (little-endian f32).
///
/// # Errors
/// `InvalidSafetensors` if a shape does not match its data length.
pub fn write_safetensors(tensors: &[(String, F32Tensor)]) -> Result<Vec<u8>, Error> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, t), b)| TensorView::new(Dtype::F32, t.shape.clone(), b).map(|v| (k.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    safetensors::serialize(views, &None).map_err(invalid)
}

impl Session {
    /// Sets every weight of the session from a safetensors buffer (see the module rules).
    ///
    /// # Errors
    /// `InvalidSafetensors`, `InvalidTensorName`, `MissingKey`, `WrongShape`, `UnsupportedDtype`,
    /// `NonFiniteWeight`
    /// — each naming the key.
    pub fn load_safetensors_bytes(&mut self, bytes: &[u8]) -> Result<LoadReport, Error> {
        let st = parse_safetensors(bytes)?;
        let mut loaded = Vec::new();
        for (name, dims) in self.weights() {
            let view = st.tensor(&name).map_err(|_| Error::MissingKey {
                key: name.clone(),
                expected: dims.iter().map(|d| d.unwrap_or(0)).collect(),
            })?;
            let found = view.shape().to_vec();
            let ok = found.len() == dims.len()
                && dims
                    .iter()
                    .zip(&found)
                    .all(|(d, f)| d.map(|d| d == *f).unwrap_or(true));
            if !ok {
                return Err(Error::WrongShape {
                    key: name,
                    expected: dims.iter().map(|d| d.unwrap_or(0)).collect(),
                    found,
                });
            }
            let t = tensor_to_f32(&name, &view)?;
            if let Some((index, &value)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFiniteWeight {
                    key: name,
                    index,
                    value,
                });
            }
            self.set_weight(&name, t.data, &t.shape)?;
            loaded.push(name);
        }
        let mut unused: Vec<String> = st
            .names()
            .into_iter()
            .filter(|k| !loaded.contains(k))
            .cloned()
            .collect();
        unused.sort();
        Ok(LoadReport { loaded, unused })
    }

    /// Sets every per-run input of the session from a safetensors buffer (each input by its
    /// name, converted to f32, checked as [`Session::set`] checks it); returns the file's keys
    /// that are not inputs.
    ///
    /// # Errors
    /// `InvalidSafetensors`, `InvalidTensorName`, `UnsupportedDtype`, `MissingInput` (an input absent from the
    /// file), and the errors of [`Session::set`].
    pub fn set_inputs_safetensors_bytes(&mut self, bytes: &[u8]) -> Result<Vec<String>, Error> {
        let st = parse_safetensors(bytes)?;
        let names = self.input_names();
        for name in &names {
            let view = st
                .tensor(name)
                .map_err(|_| Error::MissingInput { name: name.clone() })?;
            let t = tensor_to_f32(name, &view)?;
            self.set(name, t.data, &t.shape)?;
        }
        let mut unused: Vec<String> = st
            .names()
            .into_iter()
            .filter(|k| !names.contains(k))
            .cloned()
            .collect();
        unused.sort();
        Ok(unused)
    }

    /// [`Session::load_safetensors_bytes`] on a file.
    ///
    /// # Errors
    /// `Io` if the file cannot be read, then as [`Session::load_safetensors_bytes`].
    pub fn load_safetensors(&mut self, path: &Path) -> Result<LoadReport, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        self.load_safetensors_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use safetensors::{tensor::TensorView, Dtype};

    use super::{read_safetensors, write_safetensors, F32Tensor};
    use crate::exec::tests::{rand_vec, rng};
    use crate::exec::{InputKind, Session};
    use crate::Error;

    fn file(entries: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, TensorView)> = entries
            .iter()
            .map(|(k, d, s, b)| {
                (
                    k.to_string(),
                    TensorView::new(*d, s.clone(), b).expect("valid test tensor"),
                )
            })
            .collect();
        safetensors::serialize(views, &None).expect("serialize")
    }

    fn session() -> Session {
        let mut s = Session::new();
        let x = s.input::<(Dyn<'n'>, Const<2>)>("x", InputKind::Values);
        let w = s.weight::<(Const<2>, Const<3>)>("layer.w");
        let b = s.weight::<(Const<3>,)>("layer.b");
        s.output("y", x.matmul(w) + b.expand::<(Dyn<'n'>, Const<3>), _>());
        s
    }

    #[test]
    fn weights_load_from_every_float_dtype_and_stay_resident() -> Result<(), Error> {
        let mut r = rng();
        let w = rand_vec(&mut r, 6);
        let b = rand_vec(&mut r, 3);
        type Encode = Box<dyn Fn(&[f32]) -> Vec<u8>>;
        let cases: Vec<(Dtype, Encode, f32)> = vec![
            (
                Dtype::F32,
                Box::new(|v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                0.0,
            ),
            (
                Dtype::F64,
                Box::new(|v: &[f32]| v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect()),
                0.0,
            ),
            (
                Dtype::F16,
                Box::new(|v: &[f32]| {
                    v.iter()
                        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                        .collect()
                }),
                1e-3,
            ),
            (
                Dtype::BF16,
                Box::new(|v: &[f32]| {
                    v.iter()
                        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                        .collect()
                }),
                1e-2,
            ),
        ];
        for (dtype, enc, tol) in cases {
            let bytes = file(&[
                ("layer.w", dtype, vec![2, 3], enc(&w)),
                ("layer.b", dtype, vec![3], enc(&b)),
                ("extra", dtype, vec![1], enc(&[1.0])),
            ]);
            let mut s = session();
            let rep = s.load_safetensors_bytes(&bytes)?;
            assert_eq!(rep.unused, vec!["extra".to_string()]);
            for _ in 0..2 {
                s.set("x", vec![1.0, 0.0], &[1, 2])?;
                s.run()?;
                let y = s.get("y")?.data;
                for j in 0..3 {
                    assert!(
                        (y[j] - (w[j] + b[j])).abs() <= tol * 4.0,
                        "{dtype:?}: {y:?}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn bad_checkpoints_give_errors_naming_the_key() {
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let missing = file(&[("layer.w", Dtype::F32, vec![2, 3], f(&[0.0; 6]))]);
        let r = session().load_safetensors_bytes(&missing);
        assert!(matches!(r, Err(Error::MissingKey { ref key, .. }) if key == "layer.b"));
        let shape = file(&[
            ("layer.w", Dtype::F32, vec![3, 2], f(&[0.0; 6])),
            ("layer.b", Dtype::F32, vec![3], f(&[0.0; 3])),
        ]);
        let r = session().load_safetensors_bytes(&shape);
        assert!(matches!(r, Err(Error::WrongShape { ref key, .. }) if key == "layer.w"));
        let ints = file(&[
            ("layer.w", Dtype::I32, vec![2, 3], vec![0; 24]),
            ("layer.b", Dtype::F32, vec![3], f(&[0.0; 3])),
        ]);
        let r = session().load_safetensors_bytes(&ints);
        assert!(matches!(r, Err(Error::UnsupportedDtype { ref key, .. }) if key == "layer.w"));
        let nan = file(&[
            (
                "layer.w",
                Dtype::F32,
                vec![2, 3],
                f(&[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]),
            ),
            ("layer.b", Dtype::F32, vec![3], f(&[0.0; 3])),
        ]);
        let r = session().load_safetensors_bytes(&nan);
        assert!(matches!(r, Err(Error::NonFiniteWeight { index: 1, .. })));
        assert!(matches!(
            session().load_safetensors_bytes(b"garbage"),
            Err(Error::InvalidSafetensors { .. })
        ));
        let mut s = session();
        s.set("x", vec![0.0; 2], &[1, 2]).ok();
        assert!(matches!(s.run(), Err(Error::MissingInput { .. })));
    }

    #[test]
    fn inputs_load_from_safetensors_by_name_with_the_same_checks() -> Result<(), Error> {
        let f64s = |v: &[f64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut s = session();
        s.set_weight("layer.w", vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0], &[2, 3])?;
        s.set_weight("layer.b", vec![0.0; 3], &[3])?;
        let ok = file(&[
            ("x", Dtype::F64, vec![1, 2], f64s(&[3.0, 4.0])),
            ("note", Dtype::F64, vec![1], f64s(&[0.0])),
        ]);
        assert_eq!(
            s.set_inputs_safetensors_bytes(&ok)?,
            vec!["note".to_string()]
        );
        s.run()?;
        assert_eq!(s.get("y")?.data, vec![3.0, 4.0, 0.0]);
        let missing = file(&[("note", Dtype::F64, vec![1], f64s(&[0.0]))]);
        assert!(matches!(
            s.set_inputs_safetensors_bytes(&missing),
            Err(Error::MissingInput { .. })
        ));
        let wrong = file(&[("x", Dtype::F64, vec![1, 3], f64s(&[0.0; 3]))]);
        assert!(matches!(
            s.set_inputs_safetensors_bytes(&wrong),
            Err(Error::AxisMismatch { .. })
        ));
        Ok(())
    }

    #[test]
    fn write_then_read_round_trips() -> Result<(), Error> {
        let mut r = rng();
        let t = vec![
            (
                "a".to_string(),
                F32Tensor {
                    shape: vec![2, 2],
                    data: rand_vec(&mut r, 4),
                },
            ),
            (
                "b".to_string(),
                F32Tensor {
                    shape: vec![3],
                    data: rand_vec(&mut r, 3),
                },
            ),
        ];
        assert_eq!(read_safetensors(&write_safetensors(&t)?)?, t);
        Ok(())
    }
}
