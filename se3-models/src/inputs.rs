//! Model inputs read from an `inputs.safetensors` named as in tests/reference/CONVENTIONS.md 2.5.
//!
//! `feats` (b, n, d) float, or (b, n) int64 tokens, or one (b, n, d, 2l+1) tensor per degree;
//! `coors` (b, n, 3); `mask` (b, n) bool; `adj_mat` (n, n) or (b, n, n) bool; `edges` (b, n, n) int64
//! or (b, n, n, edge_dim) float; `neighbor_mask` (b, n, n) bool; `global_feats` (b, m, g) float.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::checkpoint::{read_file, view_to_f64, Tensor};
use crate::model_file::TensorName;
use crate::Error;

/// Node features.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeFeats {
    /// Type-0 features (b, n, d).
    Dense(Tensor),
    /// Token indices (b, n).
    Tokens { shape: Vec<usize>, ids: Vec<i64> },
    /// Degree -> (b, n, d, 2l+1).
    Degrees(BTreeMap<usize, Tensor>),
}

/// Edge inputs.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeInput {
    /// Edge-type indices (b, n, n).
    Tokens { shape: Vec<usize>, ids: Vec<i64> },
    /// Continuous edge features (b, n, n, edge_dim).
    Dense(Tensor),
}

/// A boolean tensor with its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoolTensor {
    /// Extents.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<bool>,
}

/// All forward inputs of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInputs {
    /// Node features.
    pub feats: NodeFeats,
    /// Coordinates (b, n, 3).
    pub coors: Tensor,
    /// Node mask (b, n).
    pub mask: Option<BoolTensor>,
    /// Adjacency (n, n) or (b, n, n).
    pub adj_mat: Option<BoolTensor>,
    /// Edge types or features.
    pub edges: Option<EdgeInput>,
    /// Candidate-neighbour mask (b, n, n).
    pub neighbor_mask: Option<BoolTensor>,
    /// Global features (b, m, g).
    pub global_feats: Option<Tensor>,
}

fn view_i64(key: &str, v: &TensorView<'_>) -> Result<Vec<i64>, Error> {
    let b = v.data();
    match v.dtype() {
        Dtype::I64 => Ok(b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()),
        Dtype::I32 => Ok(b
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect()),
        other => Err(Error::WrongDtype {
            key: key.into(),
            expected: "I64 or I32 indices",
            found: format!("{other:?}"),
        }),
    }
}

fn view_bool(key: &str, v: &TensorView<'_>) -> Result<BoolTensor, Error> {
    match v.dtype() {
        Dtype::BOOL | Dtype::U8 => Ok(BoolTensor {
            shape: v.shape().to_vec(),
            data: v.data().iter().map(|&x| x != 0).collect(),
        }),
        other => Err(Error::WrongDtype {
            key: key.into(),
            expected: "BOOL",
            found: format!("{other:?}"),
        }),
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

fn float(key: &str, v: &TensorView<'_>) -> Result<Tensor, Error> {
    Ok(Tensor {
        shape: v.shape().to_vec(),
        data: view_to_f64(key, v)?,
    })
}

fn shape_err(name: &'static str, expected: String, found: &[usize]) -> Error {
    Error::InputShape {
        name,
        expected,
        found: found.to_vec(),
    }
}

impl ModelInputs {
    /// Reads the inputs from a safetensors file; `names` maps forward parameters to tensor names
    /// (`forward_kwargs.tensors` of a config; an empty map means every tensor is named as its parameter),
    /// then validates them ([`ModelInputs::validate`]).
    ///
    /// # Errors
    /// `Io`, `Safetensors`, `WrongDtype`, `MissingInput` (no `feats`/`coors`), and the errors of
    /// [`ModelInputs::validate`].
    pub fn load(
        path: impl AsRef<Path>,
        names: &BTreeMap<String, TensorName>,
    ) -> Result<Self, Error> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        Self::from_bytes(&bytes, names, &path.display().to_string())
    }

    /// [`ModelInputs::load`] on the bytes of a safetensors file (`origin` names it in errors).
    ///
    /// # Errors
    /// As [`ModelInputs::load`], plus `Core(InvalidTensorName)` for an empty, overlong or
    /// control-character tensor name.
    pub fn from_bytes(
        bytes: &[u8],
        names: &BTreeMap<String, TensorName>,
        origin: &str,
    ) -> Result<Self, Error> {
        let st = SafeTensors::deserialize(bytes).map_err(|source| Error::Safetensors {
            path: origin.to_string(),
            source,
        })?;
        for name in st.names() {
            se3_core::exec::safetensors::check_tensor_name(name)?;
        }
        let name_of = |param: &str| -> Option<TensorName> {
            match names.get(param) {
                Some(n) => Some(n.clone()),
                None if names.is_empty() => Some(TensorName::One(param.to_string())),
                None => None,
            }
        };
        let get = |name: &str| st.tensor(name).ok();
        let single = |param: &'static str| -> Option<(String, TensorView<'_>)> {
            match name_of(param) {
                Some(TensorName::One(n)) => get(&n).map(|v| (n, v)),
                _ => None,
            }
        };
        let (cn, cv) = single("coors").ok_or(Error::MissingInput { name: "coors" })?;
        let coors = float(&cn, &cv)?;
        // equiformer-pytorch names the node features `inputs`.
        let feats = match name_of("feats").or_else(|| names.get("inputs").cloned()) {
            Some(TensorName::PerDegree(map)) => {
                let mut out = BTreeMap::new();
                for (deg, tname) in map {
                    let l: usize = deg
                        .parse()
                        .map_err(|_| Error::MissingInput { name: "feats" })?;
                    let v = get(&tname).ok_or(Error::MissingInput { name: "feats" })?;
                    out.insert(l, float(&tname, &v)?);
                }
                NodeFeats::Degrees(out)
            }
            Some(TensorName::One(n)) => {
                let v = get(&n).ok_or(Error::MissingInput { name: "feats" })?;
                if is_float(v.dtype()) {
                    NodeFeats::Dense(float(&n, &v)?)
                } else {
                    NodeFeats::Tokens {
                        shape: v.shape().to_vec(),
                        ids: view_i64(&n, &v)?,
                    }
                }
            }
            // A config that passes no `feats` (VN-Transformer on coordinates only): zero-width
            // dense features, which models that need features reject by width.
            None if !names.is_empty() => {
                let b = coors.shape.first().copied().unwrap_or(0);
                let n = coors.shape.get(1).copied().unwrap_or(0);
                NodeFeats::Dense(Tensor::zeros(&[b, n, 0]))
            }
            None => return Err(Error::MissingInput { name: "feats" }),
        };
        let mask = single("mask").map(|(n, v)| view_bool(&n, &v)).transpose()?;
        let adj_mat = single("adj_mat")
            .map(|(n, v)| view_bool(&n, &v))
            .transpose()?;
        let neighbor_mask = single("neighbor_mask")
            .map(|(n, v)| view_bool(&n, &v))
            .transpose()?;
        let global_feats = single("global_feats")
            .map(|(n, v)| float(&n, &v))
            .transpose()?;
        let edges = match single("edges") {
            Some((n, v)) if is_float(v.dtype()) => Some(EdgeInput::Dense(float(&n, &v)?)),
            Some((n, v)) => Some(EdgeInput::Tokens {
                shape: v.shape().to_vec(),
                ids: view_i64(&n, &v)?,
            }),
            None => None,
        };
        let inputs = Self {
            feats,
            coors,
            mask,
            adj_mat,
            edges,
            neighbor_mask,
            global_feats,
        };
        inputs.validate()?;
        Ok(inputs)
    }

    /// Batch size.
    pub fn batch(&self) -> usize {
        self.coors.shape.first().copied().unwrap_or(0)
    }

    /// Nodes per graph.
    pub fn nodes(&self) -> usize {
        self.coors.shape.get(1).copied().unwrap_or(0)
    }

    /// Checks shapes against each other and values for NaN/inf.
    ///
    /// # Errors
    /// `InputShape` (naming the input and the expected shape), `EmptyGraph` for b = 0 or n = 0,
    /// `NonFinite` for NaN/inf coordinates or features.
    pub fn validate(&self) -> Result<(), Error> {
        let c = &self.coors.shape;
        if c.len() != 3 || c[2] != 3 {
            return Err(shape_err("coors", "(b, n, 3)".into(), c));
        }
        let (b, n) = (c[0], c[1]);
        if b == 0 || n == 0 {
            return Err(Error::EmptyGraph { batch: b, nodes: n });
        }
        if let Some(i) = self.coors.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                name: "coors",
                index: i,
            });
        }
        match &self.feats {
            NodeFeats::Dense(t) => {
                if t.shape.len() != 3 || t.shape[0] != b || t.shape[1] != n {
                    return Err(shape_err("feats", format!("({b}, {n}, dim)"), &t.shape));
                }
                if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                    return Err(Error::NonFinite {
                        name: "feats",
                        index: i,
                    });
                }
            }
            NodeFeats::Tokens { shape, .. } => {
                if shape != &[b, n] {
                    return Err(shape_err("feats", format!("({b}, {n}) tokens"), shape));
                }
            }
            NodeFeats::Degrees(map) => {
                for (l, t) in map {
                    let s = &t.shape;
                    if s.len() != 4 || s[0] != b || s[1] != n || s[3] != 2 * l + 1 {
                        return Err(shape_err(
                            "feats",
                            format!("({b}, {n}, dim, {})", 2 * l + 1),
                            s,
                        ));
                    }
                    if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                        return Err(Error::NonFinite {
                            name: "feats",
                            index: i,
                        });
                    }
                }
            }
        }
        if let Some(m) = &self.mask {
            if m.shape != [b, n] {
                return Err(shape_err("mask", format!("({b}, {n})"), &m.shape));
            }
        }
        if let Some(a) = &self.adj_mat {
            if a.shape != [n, n] && a.shape != [b, n, n] {
                return Err(shape_err(
                    "adj_mat",
                    format!("({n}, {n}) or ({b}, {n}, {n})"),
                    &a.shape,
                ));
            }
        }
        if let Some(a) = &self.neighbor_mask {
            if a.shape != [b, n, n] {
                return Err(shape_err(
                    "neighbor_mask",
                    format!("({b}, {n}, {n})"),
                    &a.shape,
                ));
            }
        }
        match &self.edges {
            Some(EdgeInput::Tokens { shape, .. }) if shape != &[b, n, n] => {
                return Err(shape_err("edges", format!("({b}, {n}, {n})"), shape));
            }
            Some(EdgeInput::Dense(t)) => {
                if t.shape.len() != 4 || t.shape[..3] != [b, n, n] {
                    return Err(shape_err(
                        "edges",
                        format!("({b}, {n}, {n}, edge_dim)"),
                        &t.shape,
                    ));
                }
                if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                    return Err(Error::NonFinite {
                        name: "edges",
                        index: i,
                    });
                }
            }
            _ => {}
        }
        if let Some(g) = &self.global_feats {
            if g.shape.len() != 3 || g.shape[0] != b {
                return Err(shape_err(
                    "global_feats",
                    format!("({b}, m, global_feats_dim)"),
                    &g.shape,
                ));
            }
        }
        Ok(())
    }

    /// The dense type-0 features `(b, n, dim)` of a validated input, for models that take nothing
    /// else.
    ///
    /// # Errors
    /// `InputShape` naming `feats` if they are tokens, degree dicts or of another width.
    pub fn dense_feats(&self, dim: usize) -> Result<&Tensor, Error> {
        let (b, n) = (self.batch(), self.nodes());
        match &self.feats {
            NodeFeats::Dense(t) if t.shape == [b, n, dim] => Ok(t),
            NodeFeats::Dense(t) => Err(shape_err("feats", format!("({b}, {n}, {dim})"), &t.shape)),
            _ => Err(shape_err("feats", format!("({b}, {n}, {dim}) floats"), &[])),
        }
    }

    /// Coordinates of batch element `bi` as points.
    pub fn points(&self, bi: usize) -> Vec<[f64; 3]> {
        let n = self.nodes();
        (0..n)
            .map(|i| {
                let o = (bi * n + i) * 3;
                [
                    self.coors.data[o],
                    self.coors.data[o + 1],
                    self.coors.data[o + 2],
                ]
            })
            .collect()
    }

    /// Node mask of batch element `bi`.
    pub fn node_mask(&self, bi: usize) -> Option<&[bool]> {
        let n = self.nodes();
        self.mask.as_ref().map(|m| &m.data[bi * n..(bi + 1) * n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud(feats: NodeFeats) -> ModelInputs {
        ModelInputs {
            feats,
            coors: Tensor::zeros(&[1, 2, 3]),
            mask: None,
            adj_mat: None,
            edges: None,
            neighbor_mask: None,
            global_feats: None,
        }
    }

    #[test]
    fn dense_feats_takes_only_dense_features_of_the_asked_width() -> Result<(), Error> {
        let inp = cloud(NodeFeats::Dense(Tensor::zeros(&[1, 2, 4])));
        assert_eq!(inp.dense_feats(4)?.shape, vec![1, 2, 4]);
        assert!(matches!(
            inp.dense_feats(3),
            Err(Error::InputShape { name: "feats", .. })
        ));
        let tokens = cloud(NodeFeats::Tokens {
            shape: vec![1, 2],
            ids: vec![0, 1],
        });
        assert!(matches!(
            tokens.dense_feats(4),
            Err(Error::InputShape { name: "feats", .. })
        ));
        Ok(())
    }
}
