//! se3's Tensor Field Network and SE(3)-Transformer for the charged N-body benchmark (the EGNN
//! paper's protocol), both one [`DifferentiableSe3Transformer`] trained by reverse-mode gradients and
//! Adam.
//!
//! Every graph is fully connected (5 particles: each node sees the 4 others). Inputs, as in the
//! paper: positions `x` (the kernel basis of the relative positions), the charge `q_i` as a
//! type-0 feature, the velocity `v_i` as a type-1 feature and `q_i q_j` as edge feature (an
//! input of every radial network). The network's type-1 output of one channel is read as a
//! displacement:
//!
//! ```text
//! x̂_i = x_i + T v_i + s d_i(x, v, q),    d = Net(coordinates x; type-0 q, type-1 v; edges q_i q_j)
//! ```
//!
//! with `T` the horizon of the inertial term ([`NBodySe3Config::horizon`]: 1000 steps of 0.001
//! between input and target frame) and `s` a fixed output scale. `d(Q x + t, Q v) = Q d(x, v)`
//! for every rotation `Q`, so `x̂` moves as `Q x̂ + t`. Not under reflections: the degree-1
//! kernel from type 1 to type 1 holds the pseudovector `r × v` (SE(3), not E(3)).
//!
//! The networks ([`NBodyArchitecture`]) are se3-transformer-pytorch's `SE3Transformer` layers:
//! * TFN: `depth = 0` attention blocks and `num_conv_layers = L − 2`: `conv_in`, then `L − 2`
//!   times `NormSE3` (GELU of the norms) and `ConvSE3`, then `conv_out` (L `ConvSE3` layers in
//!   all, the library's order: no norm between the last hidden conv and `conv_out`).
//! * SE(3)-Transformer: `conv_in`, `depth` attention blocks (`AttentionBlockSE3` and
//!   `FeedForwardBlockSE3`, each particle attending to the others and itself), `conv_out`.
//!
//! The loss is the position MSE `L = (1 / 3Bn) Σ_b Σ_i |x̂_bi − y_bi|²`
//! `= s² mean((d − d*)²)` with `d* = (y − x − T v) / s`: the network's in-graph MSE objective
//! against `d*`, its gradients times `s²`.

use std::collections::BTreeMap;

use se3_core::train::{Adam, Optimizer, Param};

use super::dataset::Sample;
use super::nbody_model::NBodyModel;
use crate::checkpoint::{StateDict, Tensor};
use crate::differentiable::{Differentiable, Objective};
use crate::inputs::{EdgeInput, ModelInputs, NodeFeats};
use crate::se3_transformer::net::DifferentiableSe3Transformer;
use crate::se3_transformer::{Se3TransformerConfig, Se3TransformerForward, Se3TransformerNet};
use crate::training::init::fresh_weights;
use crate::Error;

/// Which network computes the displacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NBodyArchitecture {
    /// Tensor Field Network: `layers` ConvSE3 layers with NormSE3 between (module doc).
    Tfn,
    /// SE(3)-Transformer: `layers` attention blocks between `conv_in` and `conv_out`.
    Se3Transformer,
}

impl NBodyArchitecture {
    /// Short name (command line, file names).
    pub fn name(self) -> &'static str {
        match self {
            NBodyArchitecture::Tfn => "tfn",
            NBodyArchitecture::Se3Transformer => "se3t",
        }
    }
}

/// Size of an [`NBodySe3Net`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NBodySe3Config {
    /// The network.
    pub architecture: NBodyArchitecture,
    /// Hidden channels of every degree.
    pub dim: usize,
    /// TFN: ConvSE3 layers (at least 2); SE(3)-Transformer: attention blocks (at least 1).
    pub layers: usize,
    /// Hidden degrees `0..num_degrees` (and the kernel basis up to `num_degrees − 1`).
    pub num_degrees: usize,
    /// Attention heads (SE(3)-Transformer only).
    pub heads: usize,
    /// Channels per head (SE(3)-Transformer only).
    pub dim_head: usize,
    /// Horizon T of the inertial term `T v`.
    pub horizon: f64,
    /// Fixed scale s of the network's displacement.
    pub displacement_scale: f64,
}

impl NBodySe3Config {
    /// The default size of `architecture`: 16 channels of degrees 0 and 1 (TFN: 4 convs;
    /// SE(3)-Transformer: 2 attention blocks of 2 heads of 8), T = 1, s = 0.1.
    pub fn new(architecture: NBodyArchitecture) -> Self {
        NBodySe3Config {
            architecture,
            dim: 16,
            layers: match architecture {
                NBodyArchitecture::Tfn => 4,
                NBodyArchitecture::Se3Transformer => 2,
            },
            num_degrees: 2,
            heads: 2,
            dim_head: 8,
            horizon: 1.0,
            displacement_scale: 0.1,
        }
    }

    /// The network's `SE3Transformer` constructor arguments.
    ///
    /// # Errors
    /// `InvalidParameter` for fewer layers than the architecture needs, degrees below 2, zero
    /// sizes or a non-finite horizon or scale; config errors.
    pub fn network_config(&self) -> Result<Se3TransformerConfig, Error> {
        let min_layers = match self.architecture {
            NBodyArchitecture::Tfn => 2,
            NBodyArchitecture::Se3Transformer => 1,
        };
        if self.layers < min_layers
            || self.num_degrees < 2
            || self.dim == 0
            || self.heads == 0
            || self.dim_head == 0
            || !self.horizon.is_finite()
            || !self.displacement_scale.is_finite()
        {
            return Err(Error::InvalidParameter {
                name: "N-body TFN / SE(3)-Transformer config",
                expected: "TFN layers >= 2 or SE(3)-Transformer layers >= 1, num_degrees >= 2, non-zero sizes, finite horizon and scale",
                found: format!("{self:?}"),
            });
        }
        let (depth, convs) = match self.architecture {
            NBodyArchitecture::Tfn => (0, self.layers - 2),
            NBodyArchitecture::Se3Transformer => (self.layers, 0),
        };
        let kwargs = serde_json::json!({
            "dim": self.dim,
            "heads": self.heads,
            "dim_head": self.dim_head,
            "depth": depth,
            "num_conv_layers": convs,
            "input_degrees": 2,
            "num_degrees": self.num_degrees,
            "output_degrees": 2,
            "dim_in": [1, 1],
            "dim_out": [1, 1],
            "edge_dim": 1,
            "attend_self": true,
        });
        Se3TransformerConfig::from_kwargs(&kwargs)
    }
}

/// The N-body TFN or SE(3)-Transformer (module doc) with its Adam state.
pub struct NBodySe3Net {
    config: NBodySe3Config,
    net: DifferentiableSe3Transformer,
    /// (key, float32 values) in the net's parameter order.
    values: Vec<(String, Vec<f32>)>,
    adam: Adam,
}

impl std::fmt::Debug for NBodySe3Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NBodySe3Net")
            .field("config", &self.config)
            .finish()
    }
}

/// The forward options: the type-1 output only.
fn forward_options() -> Se3TransformerForward {
    Se3TransformerForward {
        return_type: Some(1),
        return_pooled: false,
    }
}

/// A batch as the network takes it, and its positions, velocities and targets `[B n 3]`.
struct NetBatch {
    inputs: ModelInputs,
    positions: Vec<f64>,
    velocities: Vec<f64>,
    targets: Vec<f64>,
}

fn net_batch(samples: &[&Sample]) -> Result<NetBatch, Error> {
    let n = samples.first().map_or(0, |s| s.len());
    if n < 2 {
        return Err(Error::InvalidParameter {
            name: "batch",
            expected: "at least one graph of at least 2 nodes",
            found: format!("{} graphs of {n} nodes", samples.len()),
        });
    }
    let b = samples.len();
    let (mut positions, mut velocities, mut targets) = (vec![], vec![], vec![]);
    let (mut charges, mut edges) = (vec![], vec![]);
    for s in samples {
        if s.len() != n || s.velocities.len() != n || s.features.len() != n {
            return Err(Error::InvalidParameter {
                name: "sample",
                expected: "positions, velocities and one charge per node, equal node counts",
                found: format!(
                    "{} positions, {} velocities, {} features",
                    s.len(),
                    s.velocities.len(),
                    s.features.len()
                ),
            });
        }
        positions.extend(s.positions.iter().flat_map(|x| [x.x, x.y, x.z]));
        velocities.extend(s.velocities.iter().flat_map(|x| [x.x, x.y, x.z]));
        if s.target_positions.len() == n {
            targets.extend(s.target_positions.iter().flat_map(|x| [x.x, x.y, x.z]));
        }
        charges.extend(s.features.iter().copied());
        for qi in &s.features {
            edges.extend(s.features.iter().map(|qj| qi * qj));
        }
    }
    if targets.len() != positions.len() {
        targets.clear();
    }
    let mut feats = BTreeMap::new();
    feats.insert(0, Tensor::new(vec![b, n, 1, 1], charges)?);
    feats.insert(1, Tensor::new(vec![b, n, 1, 3], velocities.clone())?);
    let inputs = ModelInputs {
        feats: NodeFeats::Degrees(feats),
        coors: Tensor::new(vec![b, n, 3], positions.clone())?,
        mask: None,
        adj_mat: None,
        edges: Some(EdgeInput::Dense(Tensor::new(vec![b, n, n, 1], edges)?)),
        neighbor_mask: None,
        global_feats: None,
    };
    Ok(NetBatch {
        inputs,
        positions,
        velocities,
        targets,
    })
}

impl NBodySe3Net {
    /// A model with fresh weights (PyTorch's default initialisers, seeded by `seed`) and Adam
    /// at learning rate `lr`.
    ///
    /// # Errors
    /// Those of [`NBodySe3Config::network_config`] and [`DifferentiableSe3Transformer::new`].
    pub fn new(config: NBodySe3Config, seed: u64, lr: f64) -> Result<Self, Error> {
        let cfg = config.network_config()?;
        let keys = Se3TransformerNet::expected_keys(&cfg)?;
        let sd = fresh_weights(&keys, seed)?;
        let net = DifferentiableSe3Transformer::new(
            &Se3TransformerNet::from_config(&cfg, &sd)?,
            forward_options(),
            &sd,
            Objective::MeanSquaredError,
            false,
        )?;
        let values = net
            .parameters()
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect();
        Ok(NBodySe3Net {
            config,
            net,
            values,
            adam: Adam::new(lr),
        })
    }

    /// The config.
    pub fn config(&self) -> NBodySe3Config {
        self.config
    }

    /// Number of trainable parameter elements.
    pub fn parameter_count(&self) -> usize {
        self.values.iter().map(|(_, v)| v.len()).sum()
    }

    /// The displacement `d` of `batch` and the parameter gradients of the network's objective
    /// `mean((d - d_target)²)` (`d_target`: zeros when `None`).
    fn run(
        &mut self,
        batch: &NetBatch,
        d_target: Option<Vec<f64>>,
    ) -> Result<(Vec<f64>, StateDict), Error> {
        let shape = batch.inputs.coors.shape.clone();
        let target = d_target.unwrap_or_else(|| vec![0.0; batch.positions.len()]);
        let mut targets = StateDict::new();
        targets.insert(
            "target.out".to_string(),
            Tensor::new(shape.clone(), target)?,
        );
        let run = self.net.gradients(&batch.inputs, &targets)?;
        let (outputs, grads) = (run.outputs, run.grads);
        let out = outputs.get("out").ok_or(Error::MissingKey {
            key: "out".into(),
            expected: shape.clone(),
        })?;
        if out.data.len() != batch.positions.len() {
            return Err(Error::WrongShape {
                key: "out".into(),
                expected: shape,
                found: out.shape.clone(),
            });
        }
        Ok((out.data.clone(), grads))
    }

    fn prediction(&self, batch: &NetBatch, d: &[f64]) -> Vec<f64> {
        let (t, s) = (self.config.horizon, self.config.displacement_scale);
        batch
            .positions
            .iter()
            .zip(&batch.velocities)
            .zip(d)
            .map(|((x, v), d)| x + t * v + s * d)
            .collect()
    }

    /// One Adam step on the position MSE of `samples`; returns the loss before the step.
    ///
    /// # Errors
    /// `InvalidParameter` for samples without velocities, charges or targets; the network's
    /// input and session errors; the optimizer's (non-finite gradients).
    pub fn train_step(&mut self, samples: &[&Sample]) -> Result<f64, Error> {
        let batch = net_batch(samples)?;
        if batch.targets.is_empty() {
            return Err(Error::InvalidParameter {
                name: "sample",
                expected: "target positions",
                found: "none".into(),
            });
        }
        // L = mean((x + T v + s d - y)²) = s² mean((d - d_target)²), d_target = (y - x - T v) / s:
        // one run of the network's in-graph MSE gives d and, times s², the gradients of L.
        let (t, s) = (self.config.horizon, self.config.displacement_scale);
        let d_target: Vec<f64> = batch
            .targets
            .iter()
            .zip(&batch.positions)
            .zip(&batch.velocities)
            .map(|((y, x), v)| (y - x - t * v) / s)
            .collect();
        let (d, grads) = self.run(&batch, Some(d_target))?;
        let pred = self.prediction(&batch, &d);
        let loss = pred
            .iter()
            .zip(&batch.targets)
            .map(|(p, y)| (p - y) * (p - y))
            .sum::<f64>()
            / pred.len().max(1) as f64;
        let s2 = s * s;
        let mut grads32 = Vec::with_capacity(self.values.len());
        for (key, _) in &self.values {
            let name = format!("param.{key}");
            let t = grads.get(&name).ok_or(Error::MissingKey {
                key: name.clone(),
                expected: vec![],
            })?;
            grads32.push(
                t.data
                    .iter()
                    .map(|&v| (s2 * v) as f32)
                    .collect::<Vec<f32>>(),
            );
        }
        {
            let mut params: Vec<Param<'_>> = self
                .values
                .iter_mut()
                .zip(&grads32)
                .map(|((key, value), grad)| Param {
                    name: key,
                    value: value.as_mut_slice(),
                    grad,
                })
                .collect();
            self.adam.step(&mut params)?;
        }
        for (key, value) in &self.values {
            self.net.set_parameter(key, value.clone())?;
        }
        Ok(loss)
    }
}

impl NBodyModel for NBodySe3Net {
    fn label(&self) -> String {
        let c = &self.config;
        match c.architecture {
            NBodyArchitecture::Tfn => format!(
                "se3 TFN ({} ConvSE3 layers, {} channels of degrees 0..{}, x + {} v + {} d)",
                c.layers,
                c.dim,
                c.num_degrees - 1,
                c.horizon,
                c.displacement_scale
            ),
            NBodyArchitecture::Se3Transformer => format!(
                "se3 SE(3)-Transformer ({} attention blocks, {} channels of degrees 0..{}, {} heads of {}, x + {} v + {} d)",
                c.layers,
                c.dim,
                c.num_degrees - 1,
                c.heads,
                c.dim_head,
                c.horizon,
                c.displacement_scale
            ),
        }
    }

    fn published_test_mse(&self) -> Option<(&'static str, f64)> {
        Some(match self.config.architecture {
            NBodyArchitecture::Tfn => ("TFN", 0.0155),
            NBodyArchitecture::Se3Transformer => ("SE(3)-Transformer", 0.0244),
        })
    }

    fn reflection_equivariant(&self) -> bool {
        false
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.adam.set_lr(lr);
    }

    fn train_step(&mut self, samples: &[&Sample]) -> Result<f64, Error> {
        NBodySe3Net::train_step(self, samples)
    }

    fn predict_positions(&mut self, samples: &[&Sample]) -> Result<Vec<f64>, Error> {
        let batch = net_batch(samples)?;
        let (d, _) = self.run(&batch, None)?;
        Ok(self.prediction(&batch, &d))
    }
}
