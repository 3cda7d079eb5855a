//! Training data sets in memory and their safetensors file format (`se3 train --data`).
//!
//! # File format
//! One safetensors file (float32, or float64) holds the splits `train` and, optionally, `val`.
//! For a split `s` of `S` samples padded to `n` nodes:
//!
//! | key                | shape            | meaning                                             |
//! |--------------------|------------------|-----------------------------------------------------|
//! | `s.coors`          | `[S, n, 3]`      | coordinates (required)                              |
//! | `s.feats`          | `[S, n, d]`      | type-0 node features (required)                     |
//! | `s.mask`           | `[S, n]`         | 1 for a real node, 0 for padding (optional)         |
//! | `s.target.<out>`   | `[S, n, ...]`    | the target of model output `<out>` (one or more)    |
//!
//! `<out>` is the name the model gives its output (`type0`, `type1`, ... for the TFN stack and
//! the SE(3)-Transformer's degree outputs, `out` for single-output models): the target's shape
//! after the sample axis is the output's shape after the batch axis. Padding entries are zero.
//! A mask stored as floats is read as `v != 0`. Graphs are padded, not concatenated: there are
//! no graph ids.

use std::collections::BTreeMap;
use std::path::Path;

use rand::{Rng, SeedableRng};

use crate::checkpoint::{SaveDtype, StateDict, Tensor};
use crate::inputs::{BoolTensor, ModelInputs, NodeFeats};
use crate::Error;

/// The splits a data set file may hold, in order.
pub const SPLITS: [&str; 2] = ["train", "val"];

/// One split: `S` samples of `n` (padded) nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Coordinates `[S, n, 3]`.
    pub coors: Tensor,
    /// Type-0 node features `[S, n, d]`.
    pub feats: Tensor,
    /// Real-node mask `[S, n]`, if the split has padding.
    pub mask: Option<BoolTensor>,
    /// Targets by output name, `[S, n, ...]`.
    pub targets: BTreeMap<String, Tensor>,
}

/// One batch of a split: the model inputs and the targets as `target.<out>` `[b, n, ...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub inputs: ModelInputs,
    pub targets: StateDict,
}

/// A training data set: the `train` split and an optional `val` split.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSet {
    pub train: Split,
    pub val: Option<Split>,
}

fn shape_error(tensor: &str, expected: String, found: &[usize]) -> Error {
    Error::DatasetShape {
        tensor: tensor.to_string(),
        expected,
        found: found.to_vec(),
    }
}

/// Rows `rows` of a tensor whose first axis is the sample axis.
fn take_rows(t: &Tensor, rows: &[usize]) -> Result<Tensor, Error> {
    let per = t.shape[1..].iter().product::<usize>();
    let mut data = Vec::with_capacity(rows.len() * per);
    for &r in rows {
        data.extend_from_slice(&t.data[r * per..(r + 1) * per]);
    }
    let mut shape = t.shape.clone();
    shape[0] = rows.len();
    Tensor::new(shape, data)
}

impl Split {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.coors.shape[0]
    }

    /// True if the split has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Nodes per sample (padded).
    pub fn nodes(&self) -> usize {
        self.coors.shape[1]
    }

    /// Channels of the type-0 features.
    pub fn feature_dim(&self) -> usize {
        self.feats.shape[2]
    }

    fn from_dict(dict: &mut StateDict, name: &str) -> Result<Option<Split>, Error> {
        let key = |k: &str| format!("{name}.{k}");
        let Some(coors) = dict.remove(&key("coors")) else {
            return Ok(None);
        };
        let feats = dict.remove(&key("feats")).ok_or(Error::MissingKey {
            key: key("feats"),
            expected: vec![coors.shape.first().copied().unwrap_or(0), 0, 0],
        })?;
        let mask = dict.remove(&key("mask")).map(|m| BoolTensor {
            shape: m.shape,
            data: m.data.iter().map(|&v| v != 0.0).collect(),
        });
        let prefix = key("target.");
        let target_keys: Vec<String> = dict
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        let mut targets = BTreeMap::new();
        for k in target_keys {
            if let Some(t) = dict.remove(&k) {
                targets.insert(k[prefix.len()..].to_string(), t);
            }
        }
        let split = Split {
            coors,
            feats,
            mask,
            targets,
        };
        split.check(name)?;
        Ok(Some(split))
    }

    /// Checks that every tensor has the sample and node counts of `coors`.
    fn check(&self, name: &str) -> Result<(), Error> {
        let c = &self.coors.shape;
        if c.len() != 3 || c[2] != 3 {
            return Err(shape_error(
                &format!("{name}.coors"),
                "[samples, nodes, 3]".into(),
                c,
            ));
        }
        let (s, n) = (c[0], c[1]);
        if self.feats.shape.len() != 3 || self.feats.shape[..2] != [s, n] {
            return Err(shape_error(
                &format!("{name}.feats"),
                format!("[{s}, {n}, channels]"),
                &self.feats.shape,
            ));
        }
        if let Some(m) = &self.mask {
            if m.shape != [s, n] {
                return Err(shape_error(
                    &format!("{name}.mask"),
                    format!("[{s}, {n}]"),
                    &m.shape,
                ));
            }
        }
        if self.targets.is_empty() {
            return Err(Error::MissingKey {
                key: format!("{name}.target.<output>"),
                expected: vec![s, n],
            });
        }
        for (k, t) in &self.targets {
            if t.shape.len() < 2 || t.shape[..2] != [s, n] {
                return Err(shape_error(
                    &format!("{name}.target.{k}"),
                    format!("[{s}, {n}, ...]"),
                    &t.shape,
                ));
            }
        }
        for (k, t) in [("coors", &self.coors), ("feats", &self.feats)]
            .into_iter()
            .chain(self.targets.iter().map(|(k, t)| (k.as_str(), t)))
        {
            if let Some(index) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    name: if k == "coors" {
                        "coors"
                    } else {
                        "data set tensor"
                    },
                    index,
                });
            }
        }
        Ok(())
    }

    /// The samples `rows` as one batch.
    ///
    /// # Errors
    /// `Core`/shape errors only for an inconsistent split (not after [`TrainingSet::load`]).
    pub fn batch(&self, rows: &[usize]) -> Result<Batch, Error> {
        let mask = match &self.mask {
            Some(m) => {
                let n = self.nodes();
                let mut data = Vec::with_capacity(rows.len() * n);
                for &r in rows {
                    data.extend_from_slice(&m.data[r * n..(r + 1) * n]);
                }
                Some(BoolTensor {
                    shape: vec![rows.len(), n],
                    data,
                })
            }
            None => None,
        };
        let mut targets = StateDict::new();
        for (k, t) in &self.targets {
            targets.insert(format!("target.{k}"), take_rows(t, rows)?);
        }
        Ok(Batch {
            inputs: ModelInputs {
                feats: NodeFeats::Dense(take_rows(&self.feats, rows)?),
                coors: take_rows(&self.coors, rows)?,
                mask,
                adj_mat: None,
                edges: None,
                neighbor_mask: None,
                global_feats: None,
            },
            targets,
        })
    }

    /// Real nodes of the samples `rows` (all nodes without a mask).
    pub fn real_nodes(&self, rows: &[usize]) -> usize {
        let n = self.nodes();
        match &self.mask {
            Some(m) => rows
                .iter()
                .map(|&r| m.data[r * n..(r + 1) * n].iter().filter(|&&v| v).count())
                .sum(),
            None => rows.len() * n,
        }
    }

    fn insert_into(&self, dict: &mut StateDict, name: &str) -> Result<(), Error> {
        dict.insert(format!("{name}.coors"), self.coors.clone());
        dict.insert(format!("{name}.feats"), self.feats.clone());
        if let Some(m) = &self.mask {
            dict.insert(
                format!("{name}.mask"),
                Tensor::new(
                    m.shape.clone(),
                    m.data.iter().map(|&v| f64::from(u8::from(v))).collect(),
                )?,
            );
        }
        for (k, t) in &self.targets {
            dict.insert(format!("{name}.target.{k}"), t.clone());
        }
        Ok(())
    }
}

impl TrainingSet {
    /// Reads a data set file (format in the module documentation).
    ///
    /// # Errors
    /// `Io`, `Safetensors`; `MissingKey` without `train.coors`, `train.feats` or a target;
    /// `DatasetShape` naming the first tensor whose shape disagrees with the split;
    /// `NonFinite` for NaN/inf values; `UnexpectedKey` for a tensor of no split.
    pub fn load(path: impl AsRef<Path>) -> Result<TrainingSet, Error> {
        let mut dict = StateDict::load(path)?;
        TrainingSet::from_dict(&mut dict)
    }

    fn from_dict(dict: &mut StateDict) -> Result<TrainingSet, Error> {
        let train = Split::from_dict(dict, "train")?.ok_or(Error::MissingKey {
            key: "train.coors".into(),
            expected: vec![0, 0, 3],
        })?;
        let val = Split::from_dict(dict, "val")?;
        if let Some(v) = &val {
            let per_sample = |t: &Tensor| t.shape[2..].to_vec();
            let mut pairs = vec![("feats", &train.feats, &v.feats)];
            for (k, t) in &train.targets {
                let key = format!("target.{k}");
                let u = v.targets.get(k).ok_or(Error::MissingKey {
                    key: format!("val.{key}"),
                    expected: t.shape.clone(),
                })?;
                pairs.push((k.as_str(), t, u));
            }
            for (k, t, u) in pairs {
                if per_sample(t) != per_sample(u) {
                    let name = if k == "feats" {
                        k.to_string()
                    } else {
                        format!("target.{k}")
                    };
                    return Err(shape_error(
                        &format!("val.{name}"),
                        format!(
                            "[samples, nodes, {}] as in train.{name}",
                            per_sample(t)
                                .iter()
                                .map(usize::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        &u.shape,
                    ));
                }
            }
            if let Some(k) = v.targets.keys().find(|k| !train.targets.contains_key(*k)) {
                return Err(shape_error(
                    &format!("val.target.{k}"),
                    "no such tensor: train has no target of that name".into(),
                    &v.targets[k].shape,
                ));
            }
        }
        if let Some((k, t)) = dict.iter().next() {
            return Err(Error::UnexpectedKey {
                key: k.to_string(),
                shape: t.shape.clone(),
            });
        }
        Ok(TrainingSet { train, val })
    }

    /// Writes the data set as float32 safetensors.
    ///
    /// # Errors
    /// `Io`, `Safetensors`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        let mut dict = StateDict::new();
        self.train.insert_into(&mut dict, "train")?;
        if let Some(v) = &self.val {
            v.insert_into(&mut dict, "val")?;
        }
        dict.save(path, SaveDtype::F32)
    }

    /// The split called `name` (`train` or `val`).
    pub fn split(&self, name: &str) -> Option<&Split> {
        match name {
            "train" => Some(&self.train),
            "val" => self.val.as_ref(),
            _ => None,
        }
    }
}

/// The toy task "weighted neighbours": `n` points uniform in a ball of radius 1.5 with one
/// charge `q_i` in [0.5, 1.5] each (the feature); targets, for every node `i`,
/// `type0 = mean_{j != i} q_j |x_j - x_i|` (`[n, 1, 1]`, invariant) and
/// `type1 = mean_{j != i} q_j (x_j - x_i)` (`[n, 1, 3]`, rotates like the coordinates).
/// A single TFN convolution `{0: 1} -> {0: 1, 1: 1}` with mean pooling can represent both.
/// The same `seed` gives the same set.
///
/// # Errors
/// `InvalidParameter` for fewer than 2 nodes or no training sample.
pub fn weighted_neighbours(
    seed: u64,
    train: usize,
    val: usize,
    nodes: usize,
) -> Result<TrainingSet, Error> {
    if nodes < 2 || train == 0 {
        return Err(Error::InvalidParameter {
            name: "weighted_neighbours",
            expected: "at least 2 nodes and 1 training sample",
            found: format!("{nodes} nodes, {train} training samples"),
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut split = |samples: usize| -> Result<Split, Error> {
        let n = nodes;
        let (mut coors, mut feats) = (Vec::new(), Vec::new());
        let (mut t0, mut t1) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            let mut pts = Vec::with_capacity(n);
            while pts.len() < n {
                let p: [f64; 3] = [
                    rng.gen_range(-1.5..1.5),
                    rng.gen_range(-1.5..1.5),
                    rng.gen_range(-1.5..1.5),
                ];
                if p.iter().map(|v| v * v).sum::<f64>() <= 2.25 {
                    pts.push(p);
                }
            }
            let q: Vec<f64> = (0..n).map(|_| rng.gen_range(0.5..1.5)).collect();
            for i in 0..n {
                let (mut s0, mut s1) = (0.0, [0.0; 3]);
                for j in (0..n).filter(|&j| j != i) {
                    let d: Vec<f64> = (0..3).map(|a| pts[j][a] - pts[i][a]).collect();
                    s0 += q[j] * d.iter().map(|v| v * v).sum::<f64>().sqrt();
                    for a in 0..3 {
                        s1[a] += q[j] * d[a];
                    }
                }
                let m = (n - 1) as f64;
                t0.push(s0 / m);
                t1.extend(s1.iter().map(|v| v / m));
                coors.extend_from_slice(&pts[i]);
                feats.push(q[i]);
            }
        }
        let mut targets = BTreeMap::new();
        targets.insert(
            "type0".to_string(),
            Tensor::new(vec![samples, n, 1, 1], t0)?,
        );
        targets.insert(
            "type1".to_string(),
            Tensor::new(vec![samples, n, 1, 3], t1)?,
        );
        Ok(Split {
            coors: Tensor::new(vec![samples, n, 3], coors)?,
            feats: Tensor::new(vec![samples, n, 1], feats)?,
            mask: None,
            targets,
        })
    };
    let train = split(train)?;
    let val = if val > 0 { Some(split(val)?) } else { None };
    Ok(TrainingSet { train, val })
}
