//! Physics data sets in memory and their safetensors file format (`se3-physics-v1`).
//!
//! # File format
//! One safetensors file holds one or more named splits (`train`, `val`, `test`, ...). For a split
//! `s` with `b` samples padded to `n` nodes (the largest graph of the split):
//!
//! | key                    | dtype | shape       | meaning                                         |
//! |------------------------|-------|-------------|-------------------------------------------------|
//! | `s.positions`          | F32   | `[b, n, 3]` | input coordinates (required)                    |
//! | `s.mask`               | U8    | `[b, n]`    | 1 for a real node, 0 for padding (required)     |
//! | `s.velocities`         | F32   | `[b, n, 3]` | input velocities (type-1 feature), optional     |
//! | `s.features`           | F32   | `[b, n, f]` | invariant node features (charges), optional     |
//! | `s.target_positions`   | F32   | `[b, n, 3]` | coordinates to predict, optional                |
//! | `s.energy`             | F32   | `[b]`       | potential energy of the input positions, opt.   |
//! | `s.forces`             | F32   | `[b, n, 3]` | −∂E/∂x at the input positions, optional         |
//!
//! Padded entries are zero. The header metadata holds `format` = `se3-physics-v1`, `kind`
//! (`nbody`, `dynamics`, `lj`), `seed`, `splits` (comma-separated, in order) and `config` (the
//! generator's parameters as JSON). Units are the simulator's reduced units (unit masses,
//! k_B = 1). A reader takes the masked nodes of each sample in order, so a split may mix sizes.

use std::collections::HashMap;
use std::path::Path;

use nalgebra::Vector3;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::checkpoint::view_to_f64;
use crate::Error;

/// The format tag in the safetensors metadata.
pub const FORMAT: &str = "se3-physics-v1";

/// Which generator made a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetKind {
    /// The charged N-body benchmark ([`super::nbody`]).
    NBody,
    /// Particle dynamics in blocks of steps ([`super::dynamics`]).
    Dynamics,
    /// Lennard-Jones clusters with energies and forces ([`super::lj_clusters`]).
    LennardJones,
}

impl DatasetKind {
    /// The name in the file metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::NBody => "nbody",
            DatasetKind::Dynamics => "dynamics",
            DatasetKind::LennardJones => "lj",
        }
    }

    /// Parses [`DatasetKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "nbody" => Some(DatasetKind::NBody),
            "dynamics" => Some(DatasetKind::Dynamics),
            "lj" => Some(DatasetKind::LennardJones),
            _ => None,
        }
    }
}

/// One graph of a data set: a point cloud with its inputs and targets.
///
/// Optional parts are empty vectors (or `None`) when the data set does not have them; within a
/// split every sample has the same parts.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Sample {
    /// Input coordinates x_i.
    pub positions: Vec<Vector3<f64>>,
    /// Input velocities v_i (empty if absent).
    pub velocities: Vec<Vector3<f64>>,
    /// Invariant node features, `positions.len() × feature_dim`, row-major (empty if absent).
    pub features: Vec<f64>,
    /// Coordinates to predict (empty if absent).
    pub target_positions: Vec<Vector3<f64>>,
    /// Potential energy of `positions`.
    pub energy: Option<f64>,
    /// Forces −∂E/∂x_i at `positions` (empty if absent).
    pub forces: Vec<Vector3<f64>>,
}

impl Sample {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// One split: samples of one kind with `feature_dim` invariant features per node.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub feature_dim: usize,
    pub samples: Vec<Sample>,
}

/// A data set file: its splits in order, the generator kind, seed and configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetFile {
    pub kind: DatasetKind,
    pub seed: u64,
    /// The generator's parameters as JSON (informational).
    pub config: String,
    pub splits: Vec<(String, Dataset)>,
}

impl DatasetFile {
    /// The split named `name`.
    pub fn split(&self, name: &str) -> Option<&Dataset> {
        self.splits.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    /// Serialises to safetensors bytes in the `se3-physics-v1` format.
    ///
    /// # Errors
    /// `WrongShape` if a sample's optional part is present in some samples and absent in others,
    /// or has another length than its positions; `InvalidParameter` for an empty or dotted split
    /// name; `Safetensors` if serialisation fails.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut tensors: Vec<EncodedTensor> = Vec::new();
        for (name, data) in &self.splits {
            if name.is_empty() || name.contains('.') || name.contains(',') {
                return Err(Error::InvalidParameter {
                    name: "split",
                    expected: "a non-empty split name without '.' or ','",
                    found: name.clone(),
                });
            }
            encode_split(name, data, &mut tensors)?;
        }
        let mut metadata = HashMap::new();
        metadata.insert("format".to_string(), FORMAT.to_string());
        metadata.insert("kind".to_string(), self.kind.name().to_string());
        metadata.insert("seed".to_string(), self.seed.to_string());
        metadata.insert("config".to_string(), self.config.clone());
        let names: Vec<&str> = self.splits.iter().map(|(n, _)| n.as_str()).collect();
        metadata.insert("splits".to_string(), names.join(","));
        let mut views = Vec::with_capacity(tensors.len());
        for (key, dtype, shape, bytes) in &tensors {
            let view = TensorView::new(*dtype, shape.clone(), bytes).map_err(|source| {
                Error::Safetensors {
                    path: key.clone(),
                    source,
                }
            })?;
            views.push((key.clone(), view));
        }
        safetensors::tensor::serialize(views, &Some(metadata)).map_err(|source| {
            Error::Safetensors {
                path: "<memory>".into(),
                source,
            }
        })
    }

    /// Writes the data set to `path`.
    ///
    /// # Errors
    /// As [`DatasetFile::to_bytes`]; `Io` if the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads a data set file.
    ///
    /// # Errors
    /// `Io`, `Safetensors`, `DatasetFormat` for a file without the format tag, and the errors of
    /// [`DatasetFile::from_bytes`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses safetensors bytes; `origin` names the source in errors.
    ///
    /// # Errors
    /// `Safetensors` if not a safetensors buffer; `DatasetFormat` without the `se3-physics-v1`
    /// tag or with an unknown kind; `MissingKey` for a split without `positions` or `mask`;
    /// `WrongShape` if the tensors of a split disagree in samples or nodes; `WrongDtype` for a
    /// non-float tensor (or a mask that is not U8).
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, Error> {
        let safetensors_error = |source| Error::Safetensors {
            path: origin.to_string(),
            source,
        };
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(safetensors_error)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let format = meta.get("format").cloned();
        if format.as_deref() != Some(FORMAT) {
            return Err(Error::DatasetFormat {
                path: origin.to_string(),
                found: format,
            });
        }
        let kind_name = meta.get("kind").cloned();
        let kind = kind_name
            .as_deref()
            .and_then(DatasetKind::from_name)
            .ok_or_else(|| Error::DatasetFormat {
                path: origin.to_string(),
                found: Some(format!("{FORMAT} with kind {kind_name:?}")),
            })?;
        let seed = meta.get("seed").and_then(|s| s.parse().ok()).unwrap_or(0);
        let config = meta.get("config").cloned().unwrap_or_default();
        let st = SafeTensors::deserialize(bytes).map_err(safetensors_error)?;
        let mut splits = Vec::new();
        for name in meta
            .get("splits")
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
        {
            if name.is_empty() {
                continue;
            }
            splits.push((name.to_string(), decode_split(&st, name)?));
        }
        Ok(DatasetFile {
            kind,
            seed,
            config,
            splits,
        })
    }
}

/// A tensor read back: its shape and its values as f64.
type ShapedValues = (Vec<usize>, Vec<f64>);

/// A tensor ready to serialise: key, dtype, shape, little-endian bytes.
type EncodedTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(values: impl Iterator<Item = f64>) -> Vec<u8> {
    values.flat_map(|v| (v as f32).to_le_bytes()).collect()
}

/// Checks that an optional per-node part is absent everywhere or present with `width` values per
/// node everywhere; returns whether it is present.
fn uniform_part(
    split: &str,
    field: &str,
    lengths: impl Iterator<Item = (usize, usize)>,
    width: usize,
) -> Result<bool, Error> {
    let mut present = None;
    for (i, (len, nodes)) in lengths.enumerate() {
        let here = len > 0;
        let first = *present.get_or_insert(here);
        if here != first || (here && len != nodes * width) {
            return Err(Error::WrongShape {
                key: format!("{split}.{field} (sample {i})"),
                expected: if first { vec![nodes, width] } else { vec![0] },
                found: if width == 1 {
                    vec![len]
                } else {
                    vec![len / width.max(1), width]
                },
            });
        }
    }
    Ok(present.unwrap_or(false))
}

fn encode_split(name: &str, data: &Dataset, out: &mut Vec<EncodedTensor>) -> Result<(), Error> {
    let b = data.samples.len();
    let n = data.samples.iter().map(Sample::len).max().unwrap_or(0);
    let f = data.feature_dim;
    let nodes = |s: &Sample| s.len();
    let has_vel = uniform_part(
        name,
        "velocities",
        data.samples.iter().map(|s| (s.velocities.len(), nodes(s))),
        1,
    )?;
    let has_target = uniform_part(
        name,
        "target_positions",
        data.samples
            .iter()
            .map(|s| (s.target_positions.len(), nodes(s))),
        1,
    )?;
    let has_forces = uniform_part(
        name,
        "forces",
        data.samples.iter().map(|s| (s.forces.len(), nodes(s))),
        1,
    )?;
    let has_features = f > 0
        && uniform_part(
            name,
            "features",
            data.samples.iter().map(|s| (s.features.len(), nodes(s))),
            f,
        )?;
    if f == 0 {
        if let Some((i, s)) = data
            .samples
            .iter()
            .enumerate()
            .find(|(_, s)| !s.features.is_empty())
        {
            return Err(Error::WrongShape {
                key: format!("{name}.features (sample {i})"),
                expected: vec![0],
                found: vec![s.features.len()],
            });
        }
    }
    let energies: Vec<Option<f64>> = data.samples.iter().map(|s| s.energy).collect();
    let has_energy = energies.first().is_some_and(Option::is_some);
    if let Some(i) = energies.iter().position(|e| e.is_some() != has_energy) {
        return Err(Error::WrongShape {
            key: format!("{name}.energy (sample {i})"),
            expected: vec![usize::from(has_energy)],
            found: vec![usize::from(!has_energy)],
        });
    }
    let padded = |get: &dyn Fn(&Sample) -> &[Vector3<f64>]| {
        f32_bytes(data.samples.iter().flat_map(|s| {
            let v = get(s);
            (0..n).flat_map(move |i| {
                let p = v.get(i).copied().unwrap_or_else(Vector3::zeros);
                [p.x, p.y, p.z]
            })
        }))
    };
    let key = |field: &str| format!("{name}.{field}");
    out.push((
        key("positions"),
        Dtype::F32,
        vec![b, n, 3],
        padded(&|s| &s.positions),
    ));
    let mask: Vec<u8> = data
        .samples
        .iter()
        .flat_map(|s| (0..n).map(move |i| u8::from(i < s.len())))
        .collect();
    out.push((key("mask"), Dtype::U8, vec![b, n], mask));
    if has_vel {
        out.push((
            key("velocities"),
            Dtype::F32,
            vec![b, n, 3],
            padded(&|s| &s.velocities),
        ));
    }
    if has_features {
        let bytes = f32_bytes(
            data.samples
                .iter()
                .flat_map(|s| (0..n * f).map(move |k| s.features.get(k).copied().unwrap_or(0.0))),
        );
        out.push((key("features"), Dtype::F32, vec![b, n, f], bytes));
    }
    if has_target {
        out.push((
            key("target_positions"),
            Dtype::F32,
            vec![b, n, 3],
            padded(&|s| &s.target_positions),
        ));
    }
    if has_energy {
        out.push((
            key("energy"),
            Dtype::F32,
            vec![b],
            f32_bytes(energies.iter().map(|e| e.unwrap_or(0.0))),
        ));
    }
    if has_forces {
        out.push((
            key("forces"),
            Dtype::F32,
            vec![b, n, 3],
            padded(&|s| &s.forces),
        ));
    }
    Ok(())
}

/// A split's tensor `field` as f64 values with its shape, if present.
fn read_field(
    st: &SafeTensors<'_>,
    split: &str,
    field: &str,
) -> Result<Option<ShapedValues>, Error> {
    let key = format!("{split}.{field}");
    match st.tensor(&key) {
        Ok(view) => Ok(Some((view.shape().to_vec(), view_to_f64(&key, &view)?))),
        Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
        Err(source) => Err(Error::Safetensors { path: key, source }),
    }
}

fn check_shape(split: &str, field: &str, found: &[usize], expected: &[usize]) -> Result<(), Error> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::WrongShape {
            key: format!("{split}.{field}"),
            expected: expected.to_vec(),
            found: found.to_vec(),
        })
    }
}

fn vectors(values: &[f64], sample: usize, n: usize, mask: &[bool]) -> Vec<Vector3<f64>> {
    (0..n)
        .filter(|&i| mask[i])
        .map(|i| {
            let o = (sample * n + i) * 3;
            Vector3::new(values[o], values[o + 1], values[o + 2])
        })
        .collect()
}

fn decode_split(st: &SafeTensors<'_>, name: &str) -> Result<Dataset, Error> {
    let (pos_shape, positions) =
        read_field(st, name, "positions")?.ok_or_else(|| Error::MissingKey {
            key: format!("{name}.positions"),
            expected: vec![0, 0, 3],
        })?;
    if pos_shape.len() != 3 || pos_shape[2] != 3 {
        return Err(Error::WrongShape {
            key: format!("{name}.positions"),
            expected: vec![
                pos_shape.first().copied().unwrap_or(0),
                pos_shape.get(1).copied().unwrap_or(0),
                3,
            ],
            found: pos_shape,
        });
    }
    let (b, n) = (pos_shape[0], pos_shape[1]);
    let mask_key = format!("{name}.mask");
    let mask_view = st.tensor(&mask_key).map_err(|_| Error::MissingKey {
        key: mask_key.clone(),
        expected: vec![b, n],
    })?;
    if mask_view.dtype() != Dtype::U8 {
        return Err(Error::WrongDtype {
            key: mask_key,
            expected: "U8",
            found: format!("{:?}", mask_view.dtype()),
        });
    }
    check_shape(name, "mask", mask_view.shape(), &[b, n])?;
    let mask: Vec<bool> = mask_view.data().iter().map(|&m| m != 0).collect();
    let optional_vectors = |field: &str| -> Result<Option<Vec<f64>>, Error> {
        match read_field(st, name, field)? {
            Some((shape, values)) => {
                check_shape(name, field, &shape, &[b, n, 3])?;
                Ok(Some(values))
            }
            None => Ok(None),
        }
    };
    let velocities = optional_vectors("velocities")?;
    let targets = optional_vectors("target_positions")?;
    let forces = optional_vectors("forces")?;
    let features = read_field(st, name, "features")?;
    let feature_dim = match &features {
        Some((shape, _)) => {
            let f = shape.get(2).copied().unwrap_or(0);
            check_shape(name, "features", shape, &[b, n, f])?;
            f
        }
        None => 0,
    };
    let energy = match read_field(st, name, "energy")? {
        Some((shape, values)) => {
            check_shape(name, "energy", &shape, &[b])?;
            Some(values)
        }
        None => None,
    };
    let mut samples = Vec::with_capacity(b);
    for s in 0..b {
        let m = &mask[s * n..(s + 1) * n];
        let feats = features
            .as_ref()
            .map(|(_, v)| {
                (0..n)
                    .filter(|&i| m[i])
                    .flat_map(|i| {
                        v[(s * n + i) * feature_dim..(s * n + i + 1) * feature_dim].to_vec()
                    })
                    .collect()
            })
            .unwrap_or_default();
        let vecs =
            |v: &Option<Vec<f64>>| v.as_ref().map(|v| vectors(v, s, n, m)).unwrap_or_default();
        samples.push(Sample {
            positions: vectors(&positions, s, n, m),
            velocities: vecs(&velocities),
            features: feats,
            target_positions: vecs(&targets),
            energy: energy.as_ref().map(|e| e[s]),
            forces: vecs(&forces),
        });
    }
    Ok(Dataset {
        feature_dim,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, with_energy: bool) -> Sample {
        let v = |k: f64| {
            (0..n)
                .map(|i| Vector3::new(i as f64, k, -0.5 * i as f64))
                .collect::<Vec<_>>()
        };
        Sample {
            positions: v(1.0),
            velocities: v(2.0),
            features: (0..n)
                .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
            target_positions: v(3.0),
            energy: with_energy.then_some(-1.5 * n as f64),
            forces: v(4.0),
        }
    }

    #[test]
    fn ragged_splits_round_trip() -> Result<(), Error> {
        let file = DatasetFile {
            kind: DatasetKind::LennardJones,
            seed: 7,
            config: "{\"atoms\": [3, 5]}".into(),
            splits: vec![
                (
                    "train".into(),
                    Dataset {
                        feature_dim: 1,
                        samples: vec![sample(3, true), sample(5, true)],
                    },
                ),
                (
                    "test".into(),
                    Dataset {
                        feature_dim: 1,
                        samples: vec![sample(4, true)],
                    },
                ),
            ],
        };
        let back = DatasetFile::from_bytes(&file.to_bytes()?, "<memory>")?;
        // every value above is exact in f32
        assert_eq!(back, file);
        Ok(())
    }

    #[test]
    fn part_present_in_some_samples_only_is_a_shape_error() {
        let mut odd = sample(3, true);
        odd.velocities.clear();
        let file = DatasetFile {
            kind: DatasetKind::NBody,
            seed: 1,
            config: String::new(),
            splits: vec![(
                "train".into(),
                Dataset {
                    feature_dim: 1,
                    samples: vec![sample(3, true), odd],
                },
            )],
        };
        assert!(matches!(file.to_bytes(), Err(Error::WrongShape { .. })));
        let mut short = sample(3, true);
        short.forces.pop();
        let file = DatasetFile {
            splits: vec![(
                "train".into(),
                Dataset {
                    feature_dim: 1,
                    samples: vec![short],
                },
            )],
            ..file
        };
        assert!(matches!(file.to_bytes(), Err(Error::WrongShape { .. })));
        let mut no_energy = sample(3, false);
        no_energy.energy = None;
        let file = DatasetFile {
            splits: vec![(
                "train".into(),
                Dataset {
                    feature_dim: 1,
                    samples: vec![sample(3, true), no_energy],
                },
            )],
            ..file
        };
        assert!(matches!(file.to_bytes(), Err(Error::WrongShape { .. })));
    }

    #[test]
    fn reader_rejects_disagreeing_shapes_and_foreign_files() -> Result<(), Error> {
        let pos = vec![0u8; 2 * 3 * 3 * 4];
        let mask = vec![1u8; 2 * 3];
        let vel = vec![0u8; 2 * 4 * 3 * 4];
        let views = vec![
            (
                "train.positions".to_string(),
                TensorView::new(Dtype::F32, vec![2, 3, 3], &pos).map_err(|source| {
                    Error::Safetensors {
                        path: String::new(),
                        source,
                    }
                })?,
            ),
            (
                "train.mask".to_string(),
                TensorView::new(Dtype::U8, vec![2, 3], &mask).map_err(|source| {
                    Error::Safetensors {
                        path: String::new(),
                        source,
                    }
                })?,
            ),
            (
                "train.velocities".to_string(),
                TensorView::new(Dtype::F32, vec![2, 4, 3], &vel).map_err(|source| {
                    Error::Safetensors {
                        path: String::new(),
                        source,
                    }
                })?,
            ),
        ];
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("kind".to_string(), "nbody".to_string());
        meta.insert("splits".to_string(), "train".to_string());
        let bytes =
            safetensors::tensor::serialize(views.clone(), &Some(meta)).map_err(|source| {
                Error::Safetensors {
                    path: String::new(),
                    source,
                }
            })?;
        let err = DatasetFile::from_bytes(&bytes, "bad");
        assert!(
            matches!(&err, Err(Error::WrongShape { key, .. }) if key == "train.velocities"),
            "{err:?}"
        );
        let foreign =
            safetensors::tensor::serialize(views, &None).map_err(|source| Error::Safetensors {
                path: String::new(),
                source,
            })?;
        assert!(matches!(
            DatasetFile::from_bytes(&foreign, "foreign"),
            Err(Error::DatasetFormat { .. })
        ));
        Ok(())
    }
}
