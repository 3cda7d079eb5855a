//! PyTorch state dicts stored as safetensors: load, save, and check against a model's key list.
//!
//! Tensors keep their PyTorch key names (`conv_in.kernel_unary.(0,0).rp.net.0.weight`) and are held in
//! float64 whatever their stored dtype (f16, bf16, f32, f64 are accepted; integer and bool tensors are
//! not weights and give `Error::WrongDtype`).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::Error;

/// A dense row-major float64 tensor with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Extent of every axis, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values, `shape.iter().product()` of them.
    pub data: Vec<f64>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// A tensor from a shape and row-major data.
    ///
    /// # Errors
    /// `WrongShape` (with key `<data>`) if the data length is not the product of the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f64>) -> Result<Self, Error> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::WrongShape {
                key: "<data>".into(),
                expected: shape,
                found: vec![data.len()],
            });
        }
        Ok(Self { shape, data })
    }
}

/// Storage dtype used when saving a state dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// float32 (what PyTorch checkpoints of se3-transformer-pytorch use).
    F32,
    /// float64.
    F64,
}

/// A named collection of float tensors: a PyTorch `state_dict()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    tensors: BTreeMap<String, Tensor>,
}

fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

/// Reads any float safetensors view into f64 values.
pub(crate) fn view_to_f64(key: &str, view: &TensorView<'_>) -> Result<Vec<f64>, Error> {
    se3_core::exec::safetensors::float_values(view, |v| v).ok_or_else(|| Error::WrongDtype {
        key: key.to_string(),
        expected: "a float dtype (F16, BF16, F32, F64)",
        found: dtype_name(view.dtype()),
    })
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

impl StateDict {
    /// Random weights for `keys` in unit tests: `U(-0.5, 0.5)`, with LayerNorm gains
    /// (`net.1.weight`, `net.4.weight` of the radial networks) and scales at `1 + 0.2 U(-0.5,
    /// 0.5)`, so that deep random stacks stay well scaled.
    #[cfg(test)]
    pub(crate) fn random_near_one(
        keys: impl IntoIterator<Item = (String, Vec<usize>)>,
        r: &mut impl rand::Rng,
    ) -> Result<Self, Error> {
        let mut sd = StateDict::new();
        for (k, shape) in keys {
            let near_one =
                k.contains("net.1.weight") || k.contains("net.4.weight") || k.contains("scale");
            let data = (0..shape.iter().product())
                .map(|_| {
                    let v: f64 = r.gen_range(-0.5..0.5);
                    if near_one {
                        1.0 + 0.2 * v
                    } else {
                        v
                    }
                })
                .collect();
            sd.insert(k, Tensor::new(shape, data)?);
        }
        Ok(sd)
    }

    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads every tensor of a safetensors file.
    ///
    /// # Errors
    /// `Io` if the file cannot be read, `Safetensors` if it is not a safetensors file (the crate
    /// checks every shape and offset against the file length before a tensor is read),
    /// `Core(InvalidTensorName)` for an empty, overlong or control-character name, `WrongDtype` for a
    /// tensor that is not f16/bf16/f32/f64.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Safetensors { source, .. } => Error::Safetensors {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses a safetensors buffer.
    ///
    /// # Errors
    /// As [`StateDict::load`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let st = SafeTensors::deserialize(bytes).map_err(|source| Error::Safetensors {
            path: "<memory>".into(),
            source,
        })?;
        for name in st.names() {
            se3_core::exec::safetensors::check_tensor_name(name)?;
        }
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = view_to_f64(&name, &view)?;
            tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(Self { tensors })
    }

    /// Serialises to safetensors bytes with every tensor stored as `dtype`.
    ///
    /// # Errors
    /// `Safetensors` if serialisation fails.
    pub fn to_bytes(&self, dtype: SaveDtype) -> Result<Vec<u8>, Error> {
        let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> =
            Vec::with_capacity(self.tensors.len());
        for (k, t) in &self.tensors {
            let bytes: Vec<u8> = match dtype {
                SaveDtype::F64 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                SaveDtype::F32 => t
                    .data
                    .iter()
                    .flat_map(|v| (*v as f32).to_le_bytes())
                    .collect(),
                SaveDtype::F16 => t
                    .data
                    .iter()
                    .flat_map(|v| half::f16::from_f64(*v).to_le_bytes())
                    .collect(),
                SaveDtype::Bf16 => t
                    .data
                    .iter()
                    .flat_map(|v| half::bf16::from_f64(*v).to_le_bytes())
                    .collect(),
            };
            buffers.push((k.clone(), t.shape.clone(), bytes));
        }
        let st_dtype = match dtype {
            SaveDtype::F64 => Dtype::F64,
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::F16 => Dtype::F16,
            SaveDtype::Bf16 => Dtype::BF16,
        };
        let mut views = Vec::with_capacity(buffers.len());
        for (k, shape, bytes) in &buffers {
            let view = TensorView::new(st_dtype, shape.clone(), bytes).map_err(|source| {
                Error::Safetensors {
                    path: k.clone(),
                    source,
                }
            })?;
            views.push((k.clone(), view));
        }
        safetensors::tensor::serialize(views, &None).map_err(|source| Error::Safetensors {
            path: "<memory>".into(),
            source,
        })
    }

    /// Writes the state dict to a safetensors file with every tensor stored as `dtype`.
    ///
    /// # Errors
    /// `Safetensors` if serialisation fails, `Io` if the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>, dtype: SaveDtype) -> Result<(), Error> {
        let path = path.as_ref();
        let bytes = self.to_bytes(dtype)?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The tensor stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Stores a tensor under `key`, replacing any previous one.
    pub fn insert(&mut self, key: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(key.into(), tensor);
    }

    /// Removes and returns the tensor stored under `key`.
    pub fn remove(&mut self, key: &str) -> Option<Tensor> {
        self.tensors.remove(key)
    }

    /// Key names in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// (key, tensor) pairs in sorted key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Checks the state dict against a model's expected keys and shapes.
    ///
    /// # Errors
    /// The first problem found, in this order: `MissingKey` (naming the expected shape), `WrongShape`,
    /// `UnexpectedKey`.
    pub fn check_keys(&self, expected: &[(String, Vec<usize>)]) -> Result<(), Error> {
        for (key, shape) in expected {
            match self.tensors.get(key) {
                None => {
                    return Err(Error::MissingKey {
                        key: key.clone(),
                        expected: shape.clone(),
                    })
                }
                Some(t) if &t.shape != shape => {
                    return Err(Error::WrongShape {
                        key: key.clone(),
                        expected: shape.clone(),
                        found: t.shape.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        let known: std::collections::BTreeSet<&str> =
            expected.iter().map(|(k, _)| k.as_str()).collect();
        if let Some((k, t)) = self
            .tensors
            .iter()
            .find(|(k, _)| !known.contains(k.as_str()))
        {
            return Err(Error::UnexpectedKey {
                key: k.clone(),
                shape: t.shape.clone(),
            });
        }
        Ok(())
    }
}

/// The entry `found` for tensor `key` if its shape (`shape_of`) is `expected`: `MissingKey` when
/// the source has none, `WrongShape` when its stored shape differs (the checks every
/// [`WeightSource`] makes).
fn check_entry<T>(
    key: &str,
    expected: &[usize],
    found: Option<T>,
    shape_of: impl Fn(&T) -> &[usize],
) -> Result<T, Error> {
    let entry = found.ok_or_else(|| Error::MissingKey {
        key: key.to_string(),
        expected: expected.to_vec(),
    })?;
    let stored = shape_of(&entry);
    if stored != expected {
        return Err(Error::WrongShape {
            key: key.to_string(),
            expected: expected.to_vec(),
            found: stored.to_vec(),
        });
    }
    Ok(entry)
}

/// Where a model being built takes its float64 parameters from: a state dict in memory
/// ([`StateDict`] through the crate's loader), a safetensors file read one tensor at a time
/// ([`SafetensorsFile`]), a generator of your own, or a recorder of the keys and shapes the
/// model needs.
pub trait WeightSource {
    /// The tensor `key`, which must have `shape`.
    ///
    /// # Errors
    /// `MissingKey` when the source has no `key`, `WrongShape` when its shape differs; read errors.
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, Error>;
}

/// A safetensors file read one tensor at a time: the header is parsed when the file is opened,
/// each tensor's bytes are read from the file when the model asks for it (f16, bf16, f32 or f64,
/// widened to f64), so building a model never holds the whole checkpoint. [`SafetensorsFile::
/// finish`] reports a key the model did not take.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: String,
    file: std::fs::File,
    /// Offset of the data section (after the 8-byte length and the header).
    data_start: u64,
    entries: BTreeMap<String, safetensors::tensor::TensorInfo>,
    used: std::collections::BTreeSet<String>,
}

impl SafetensorsFile {
    /// Opens `path` and parses its header.
    ///
    /// # Errors
    /// `Io` if the file cannot be read; `Safetensors` for a header that is not a safetensors
    /// header (`HeaderTooSmall`, `HeaderTooLarge`, `InvalidHeader`, `InvalidHeaderDeserialization`)
    /// or a tensor whose offsets do not match its dtype and shape or leave the file
    /// (`InvalidOffset`); `Core(InvalidTensorName)` for an empty, overlong or control-character
    /// name.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        use std::io::Read;
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io = |source| Error::Io {
            path: shown.clone(),
            source,
        };
        let bad = |source| Error::Safetensors {
            path: shown.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        if file_len < 8 {
            return Err(bad(safetensors::SafeTensorError::HeaderTooSmall));
        }
        file.read_exact(&mut len).map_err(io)?;
        let n = u64::from_le_bytes(len);
        // the crate's own bound on headers (100 MB)
        if n > 100_000_000 {
            return Err(bad(safetensors::SafeTensorError::HeaderTooLarge));
        }
        if n + 8 > file_len {
            return Err(bad(safetensors::SafeTensorError::InvalidHeaderLength));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(io)?;
        let text = std::str::from_utf8(&header)
            .map_err(|_| bad(safetensors::SafeTensorError::InvalidHeader))?;
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|_| bad(safetensors::SafeTensorError::InvalidHeaderDeserialization))?;
        let data_len = file_len - 8 - n;
        let mut entries = BTreeMap::new();
        for (name, value) in map {
            if name == "__metadata__" {
                continue;
            }
            se3_core::exec::safetensors::check_tensor_name(&name)?;
            let info: safetensors::tensor::TensorInfo = serde_json::from_value(value)
                .map_err(|_| bad(safetensors::SafeTensorError::InvalidHeaderDeserialization))?;
            let (start, end) = info.data_offsets;
            let bytes = info
                .shape
                .iter()
                .try_fold(info.dtype.size(), |a, &d| a.checked_mul(d));
            if start > end || end as u64 > data_len || bytes != Some(end - start) {
                return Err(bad(safetensors::SafeTensorError::InvalidOffset(name)));
            }
            entries.insert(name, info);
        }
        Ok(Self {
            path: shown,
            file,
            data_start: 8 + n,
            entries,
            used: Default::default(),
        })
    }

    /// The names of the file's tensors.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The stored shape of tensor `key`.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|i| i.shape.as_slice())
    }

    /// `UnexpectedKey` for the first tensor of the file the model never took.
    ///
    /// # Errors
    /// As said.
    pub fn finish(&self) -> Result<(), Error> {
        match self.entries.iter().find(|(k, _)| !self.used.contains(*k)) {
            Some((k, info)) => Err(Error::UnexpectedKey {
                key: k.clone(),
                shape: info.shape.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl WeightSource for SafetensorsFile {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, Error> {
        use std::io::{Read, Seek, SeekFrom};
        let info = check_entry(key, shape, self.entries.get(key), |i| &i.shape)?;
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let (start, end) = info.data_offsets;
        let mut bytes = vec![0u8; end - start];
        self.file
            .seek(SeekFrom::Start(self.data_start + start as u64))
            .map_err(io)?;
        self.file.read_exact(&mut bytes).map_err(io)?;
        let view = TensorView::new(info.dtype, info.shape.clone(), &bytes).map_err(|source| {
            Error::Safetensors {
                path: self.path.clone(),
                source,
            }
        })?;
        let data = view_to_f64(key, &view)?;
        self.used.insert(key.to_string());
        Ok(Tensor {
            shape: info.shape.clone(),
            data,
        })
    }
}

/// The core error of a failed read of `key`: missing keys and wrong shapes as themselves,
/// dtypes as `UnsupportedDtype`, anything else (I/O, a broken file) as `InvalidSafetensors`.
fn core_error(e: Error) -> se3_core::Error {
    match e {
        Error::MissingKey { key, expected } => se3_core::Error::MissingKey { key, expected },
        Error::WrongShape {
            key,
            expected,
            found,
        } => se3_core::Error::WrongShape {
            key,
            expected,
            found,
        },
        Error::WrongDtype { key, found, .. } => {
            se3_core::Error::UnsupportedDtype { key, dtype: found }
        }
        Error::Core(c) => c,
        other => se3_core::Error::InvalidSafetensors {
            reason: other.to_string(),
        },
    }
}

/// se3-core's layers read a streamed file one tensor at a time, as float32.
impl se3_core::layers::ParamSource for SafetensorsFile {
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, se3_core::Error> {
        let t = WeightSource::take(self, key, shape).map_err(core_error)?;
        Ok(t.data.iter().map(|&v| v as f32).collect())
    }
}

impl crate::se3_transformer::net::NetSource for SafetensorsFile {
    fn shape_of(&self, key: &str) -> Option<Vec<usize>> {
        self.shape(key).map(<[usize]>::to_vec)
    }

    fn take_f64(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f64>, se3_core::Error> {
        Ok(WeightSource::take(self, key, shape)
            .map_err(core_error)?
            .data)
    }
}

impl crate::se3_transformer::net::NetSource for KeyRecorder {
    fn shape_of(&self, _key: &str) -> Option<Vec<usize>> {
        None
    }

    fn take_f64(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f64>, se3_core::Error> {
        self.keys.push((key.to_string(), shape.to_vec()));
        Ok(vec![0.0; shape.iter().product()])
    }
}

/// Records the keys and shapes a model asks for and hands out zeros: a model's key list
/// (`expected_keys`), for the float64 loaders ([`WeightSource`]) and the graph layers
/// ([`se3_core::layers::ParamSource`]) alike.
#[derive(Debug, Default)]
pub(crate) struct KeyRecorder {
    pub(crate) keys: Vec<(String, Vec<usize>)>,
}

impl WeightSource for KeyRecorder {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, Error> {
        self.keys.push((key.to_string(), shape.to_vec()));
        Ok(Tensor::zeros(shape))
    }
}

impl se3_core::layers::ParamSource for KeyRecorder {
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, se3_core::Error> {
        self.keys.push((key.to_string(), shape.to_vec()));
        Ok(vec![0.0; shape.iter().product()])
    }
}

/// Reads the parameters of a model from a state dict, remembering which keys were read so that
/// unused keys can be reported ([`StateDictSource::finish`]): float64 tensors for the
/// checkpoint parser of the float64 oracle ([`WeightSource`]), float32 values for se3-core's
/// layers ([`ParamSource`](se3_core::layers::ParamSource)). A borrowed dict hands out copies;
/// an owned one ([`StateDictSource::owned`]) moves its tensors out, so a model being built
/// never holds a second copy of the weights.
#[derive(Debug)]
pub struct StateDictSource<'a> {
    dict: Dict<'a>,
    used: std::collections::BTreeSet<String>,
}

#[derive(Debug)]
enum Dict<'a> {
    Borrowed(&'a StateDict),
    Owned(StateDict),
}

impl<'a> StateDictSource<'a> {
    /// A source reading `dict`.
    pub fn new(dict: &'a StateDict) -> Self {
        StateDictSource {
            dict: Dict::Borrowed(dict),
            used: std::collections::BTreeSet::new(),
        }
    }

    /// A source that moves the tensors out of `dict` (each key can be read once).
    pub fn owned(dict: StateDict) -> StateDictSource<'static> {
        StateDictSource {
            dict: Dict::Owned(dict),
            used: std::collections::BTreeSet::new(),
        }
    }

    fn dict(&self) -> &StateDict {
        match &self.dict {
            Dict::Borrowed(d) => d,
            Dict::Owned(d) => d,
        }
    }

    /// The shape of `key` in the dict, if it holds it (not marked as read).
    pub fn shape_of(&self, key: &str) -> Option<Vec<usize>> {
        self.dict().get(key).map(|t| t.shape.clone())
    }

    /// `UnexpectedKey` for the first key of the dict that was never read.
    ///
    /// # Errors
    /// As above.
    pub fn finish(self) -> Result<(), Error> {
        if let Some((k, t)) = self.dict().iter().find(|(k, _)| !self.used.contains(*k)) {
            return Err(Error::UnexpectedKey {
                key: k.to_string(),
                shape: t.shape.clone(),
            });
        }
        Ok(())
    }

    /// The values of `key` at full precision (buffers such as rotary frequencies that are
    /// not f32 parameters), marked as read.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`.
    pub fn take_f64(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f64>, se3_core::Error> {
        Ok(self.read(key, shape)?.data)
    }

    /// `MissingKey` / `WrongShape` unless the dict holds `key` with `shape`; marks it read.
    fn check(&mut self, key: &str, shape: &[usize]) -> Result<(), se3_core::Error> {
        match self.dict().get(key).map(|t| t.shape.as_slice()) {
            None => Err(se3_core::Error::MissingKey {
                key: key.to_string(),
                expected: shape.to_vec(),
            }),
            Some(found) if found != shape => Err(se3_core::Error::WrongShape {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: found.to_vec(),
            }),
            Some(_) => {
                self.used.insert(key.to_string());
                Ok(())
            }
        }
    }

    /// Tensor `key` of `shape` (moved out of an owned dict, copied from a borrowed one), marked
    /// as read.
    fn read(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, se3_core::Error> {
        self.check(key, shape)?;
        match &mut self.dict {
            Dict::Borrowed(d) => d.get(key).cloned(),
            Dict::Owned(d) => d.remove(key),
        }
        .ok_or_else(|| se3_core::Error::MissingKey {
            key: key.to_string(),
            expected: shape.to_vec(),
        })
    }
}

impl WeightSource for StateDictSource<'_> {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Tensor, Error> {
        self.read(key, shape).map_err(|e| match e {
            se3_core::Error::MissingKey { key, expected } => Error::MissingKey { key, expected },
            se3_core::Error::WrongShape {
                key,
                expected,
                found,
            } => Error::WrongShape {
                key,
                expected,
                found,
            },
            other => Error::Core(other),
        })
    }
}

impl se3_core::layers::ParamSource for StateDictSource<'_> {
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, se3_core::Error> {
        let f32s = |t: &Tensor| -> Vec<f32> { t.data.iter().map(|&v| v as f32).collect() };
        if let Dict::Borrowed(d) = self.dict {
            // a borrowed dict is read in place (no float64 copy on the way)
            self.check(key, shape)?;
            return d
                .get(key)
                .map(f32s)
                .ok_or_else(|| se3_core::Error::MissingKey {
                    key: key.to_string(),
                    expected: shape.to_vec(),
                });
        }
        Ok(f32s(&self.read(key, shape)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dict_round_trips_through_safetensors() -> Result<(), Error> {
        let mut sd = StateDict::new();
        sd.insert(
            "a.weight",
            Tensor::new(vec![2, 3], vec![1.0, -2.5, 3.25, 0.0, 1e-3, 7.0])?,
        );
        sd.insert("b", Tensor::new(vec![1], vec![0.1])?);
        let back = StateDict::from_bytes(&sd.to_bytes(SaveDtype::F64)?)?;
        assert_eq!(back, sd);
        let back32 = StateDict::from_bytes(&sd.to_bytes(SaveDtype::F32)?)?;
        for (k, t) in sd.iter() {
            let u = back32.get(k).ok_or(Error::MissingKey {
                key: k.into(),
                expected: t.shape.clone(),
            })?;
            assert_eq!(u.shape, t.shape);
            for (x, y) in t.data.iter().zip(&u.data) {
                assert!((x - y).abs() <= 1e-7 * x.abs().max(1.0));
            }
        }
        let back16 = StateDict::from_bytes(&sd.to_bytes(SaveDtype::Bf16)?)?;
        assert_eq!(back16.get("a.weight").map(|t| t.data[1]), Some(-2.5));
        let backh = StateDict::from_bytes(&sd.to_bytes(SaveDtype::F16)?)?;
        assert_eq!(backh.get("a.weight").map(|t| t.data[2]), Some(3.25));
        Ok(())
    }
}
