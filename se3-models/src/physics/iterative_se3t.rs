//! The iterative SE(3)-Transformer for particle dynamics (Fuchs et al. 2021), trained by
//! reverse-mode gradients and Adam.
//!
//! K blocks, each a full SE(3)-Transformer ([`DifferentiableSe3Transformer`]) with a type-1 output
//! of one channel read as a displacement:
//!
//! ```text
//! x^0 = x,   x^{k+1} = x^k + (T/K) v + s d_k(x^k, v),   k = 0..K-1,   prediction x̂ = x^K
//! d_k = SE3T_k(coordinates x^k; type-0 input 1, type-1 input v)      (one channel each)
//! ```
//!
//! Each SE3T_k: conv_in, `depth` attention blocks (all other particles and the particle itself
//! as neighbours) and conv_out to one channel of degrees 0
//! and 1, every radial network 128 wide (the library's size).
//!
//! Cost: the forward pass runs each block's forward-only graph
//! ([`DifferentiableSe3Transformer::forward`]); the backward pass runs each block's training graph
//! once more with its cotangent. A batch's clouds share each graph run (one run of `B n` nodes,
//! not `B` runs of `n`). What remains is the training graph's arithmetic, most of it the
//! backward of the radial networks' 128-wide hidden layers (see the README's profile).
//!
//! `T` is the horizon of the inertial term ([`IterativeConfig::horizon`]; 0 leaves it out, then
//! the blocks learn the whole motion) and `s` a fixed scale of the blocks' output
//! ([`IterativeConfig::displacement_scale`]), so that fresh weights start near the inertial
//! prediction x + T v rather than at displacements of order one.
//!
//! Every block builds its neighbour graph (all pairs), relative positions, distances and kernel
//! basis from its own input coordinates x^k. Each block is translation invariant and rotation
//! equivariant (`d_k(R x + t, R v) = R d_k(x, v)`), so the prediction moves as `R x̂ + t`.
//!
//! The loss is the position MSE `L = (1 / 3Bn) Σ_b Σ_i |x̂_bi − y_bi|²` (averaged over samples,
//! nodes and coordinates, as [`super::metrics::position_mse`]). Its gradient is carried back
//! block by block: with `g^K = ∂L/∂x^K`, block k gets the cotangent `s g^{k+1}` on `d_k` and
//! * [`IterativeVariant::ThroughBasis`]: `g^k = g^{k+1} + (∂d_k/∂x^k)^T s g^{k+1}`, the second
//!   term through the in-graph kernel basis (`differentiable_coors`);
//! * [`IterativeVariant::StopGradient`]: `g^k = g^{k+1}` (the coordinates fed to the basis are
//!   constants for the gradient, the displacement's skip connection still carries it);
//! * [`IterativeVariant::SinglePass`]: one SE(3)-Transformer of K times the depth of a block
//!   (the same number of attention blocks), `x̂ = x + d(x, v)`.

use nalgebra::Vector3;
use rand::seq::SliceRandom;
use rand::Rng;

use se3_core::train::{Adam, Optimizer, Param};

use super::dataset::Sample;
use super::metrics::{mean_position_mse, Prediction};
use crate::checkpoint::{StateDict, Tensor};
use crate::differentiable::{Differentiable, Objective};
use crate::inputs::{ModelInputs, NodeFeats};
use crate::se3_transformer::net::DifferentiableSe3Transformer;
use crate::se3_transformer::{Se3TransformerConfig, Se3TransformerForward, Se3TransformerNet};
use crate::training::init::fresh_weights;
use crate::Error;

/// Which of the three compared models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IterativeVariant {
    /// K blocks, the loss gradient flowing through every block's kernel basis.
    ThroughBasis,
    /// K blocks, the coordinates fed to each basis cut from the gradient.
    StopGradient,
    /// One block of K times the depth.
    SinglePass,
}

impl IterativeVariant {
    /// All three, in the order of the comparison.
    pub const ALL: [IterativeVariant; 3] = [
        IterativeVariant::ThroughBasis,
        IterativeVariant::StopGradient,
        IterativeVariant::SinglePass,
    ];

    /// Short name (CSV columns, command line).
    pub fn name(self) -> &'static str {
        match self {
            IterativeVariant::ThroughBasis => "iterative",
            IterativeVariant::StopGradient => "iterative_no_basis_grad",
            IterativeVariant::SinglePass => "single_pass",
        }
    }
}

/// Size of an [`IterativeSe3Transformer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IterativeConfig {
    /// Blocks K (each an SE(3)-Transformer).
    pub blocks: usize,
    /// Hidden channels of every degree.
    pub dim: usize,
    /// Attention heads.
    pub heads: usize,
    /// Channels per head.
    pub dim_head: usize,
    /// Attention blocks in each of the K blocks.
    pub depth: usize,
    /// Hidden degrees `0..num_degrees` (and the kernel basis up to `num_degrees − 1`).
    pub num_degrees: usize,
    /// Horizon T of the inertial term `(T/K) v` added by every block (0: none).
    pub horizon: f64,
    /// Fixed scale s of every block's output.
    pub displacement_scale: f64,
}

impl Default for IterativeConfig {
    /// The model of the README's comparison: 3 blocks of one attention block, 8 channels of
    /// degrees 0 and 1, 2 heads of 8; the inertial term over the `dynamics` set's horizon
    /// (10 steps of 0.01) and output scale 0.01.
    fn default() -> Self {
        IterativeConfig {
            blocks: 3,
            dim: 8,
            heads: 2,
            dim_head: 8,
            depth: 1,
            num_degrees: 2,
            horizon: 0.1,
            displacement_scale: 0.01,
        }
    }
}

impl IterativeConfig {
    /// The SE(3)-Transformer of one block of `variant` (single pass: K times the depth).
    ///
    /// # Errors
    /// `InvalidParameter` for zero blocks, degrees below 2 or zero sizes; config errors.
    pub fn block_config(&self, variant: IterativeVariant) -> Result<Se3TransformerConfig, Error> {
        if self.blocks == 0
            || self.num_degrees < 2
            || self.dim == 0
            || self.heads == 0
            || self.dim_head == 0
            || self.depth == 0
            || !self.horizon.is_finite()
            || !self.displacement_scale.is_finite()
        {
            return Err(Error::InvalidParameter {
                name: "iterative SE(3)-Transformer config",
                expected: "blocks, dim, heads, dim_head, depth >= 1, num_degrees >= 2, finite horizon and scale",
                found: format!("{self:?}"),
            });
        }
        let depth = match variant {
            IterativeVariant::SinglePass => self.depth * self.blocks,
            _ => self.depth,
        };
        let kwargs = serde_json::json!({
            "dim": self.dim,
            "heads": self.heads,
            "dim_head": self.dim_head,
            "depth": depth,
            "input_degrees": 2,
            "num_degrees": self.num_degrees,
            "output_degrees": 2,
            "dim_in": [1, 1],
            "dim_out": [1, 1],
            "differentiable_coors": variant == IterativeVariant::ThroughBasis,
        });
        Se3TransformerConfig::from_kwargs(&kwargs)
    }

    /// Number of SE(3)-Transformers run one after the other.
    pub fn stages(&self, variant: IterativeVariant) -> usize {
        match variant {
            IterativeVariant::SinglePass => 1,
            _ => self.blocks,
        }
    }
}

/// Parameter gradients per block: (key, gradient) in each block's parameter order.
pub type BlockGradients = Vec<Vec<(String, Vec<f64>)>>;

/// What one block's run gives: displacement, coordinate gradient (with the basis term), the
/// gradients by name.
type BlockRun = (Vec<f64>, Option<Vec<f64>>, StateDict);

/// One block: its compiled graph with gradients and its parameters as float32 for Adam.
struct Block {
    net: DifferentiableSe3Transformer,
    /// (key, values) in the net's parameter order.
    values: Vec<(String, Vec<f32>)>,
}

/// The forward pass of a batch: the coordinates entering every block and the prediction.
#[derive(Debug, Clone)]
pub struct Trajectory {
    /// `x^k` for k = 0..K (K + 1 entries), each `B` graphs of `n` nodes, row-major `[B, n, 3]`.
    pub coordinates: Vec<Vec<f64>>,
}

impl Trajectory {
    /// The prediction x^K, `[B, n, 3]` row-major.
    pub fn prediction(&self) -> &[f64] {
        self.coordinates.last().map_or(&[], Vec::as_slice)
    }
}

/// Wall time of the stages of the last training step ([`IterativeSe3Transformer::train_step`]),
/// seconds. `forward` and `backward` are the two passes over the blocks; `host_graph`,
/// `graph_run` and `host_gradients` split the block runs of both passes (neighbours and kernel
/// basis on the host, the compiled graph, reading back and assembling the gradients).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimings {
    /// The forward pass x^0 -> x^K.
    pub forward: f64,
    /// The backward pass (every block run again with its cotangent).
    pub backward: f64,
    /// Host work before the graph runs (neighbour graph, inputs), both passes.
    pub host_graph: f64,
    /// Graph runs, both passes.
    pub graph_run: f64,
    /// Reading the outputs and gradients back and assembling them, both passes.
    pub host_gradients: f64,
    /// The Adam update.
    pub adam: f64,
    /// Writing the new weights into the graphs.
    pub write_back: f64,
}

/// The iterative SE(3)-Transformer (module doc) with its Adam state.
pub struct IterativeSe3Transformer {
    variant: IterativeVariant,
    config: IterativeConfig,
    blocks: Vec<Block>,
    adam: Adam,
    timings: StepTimings,
}

impl std::fmt::Debug for IterativeSe3Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IterativeSe3Transformer")
            .field("variant", &self.variant)
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

/// One batch's fixed inputs: positions, velocities and targets, `[B, n, 3]` row-major.
#[derive(Debug, Clone)]
pub struct DynamicsBatch {
    /// Graphs B.
    pub graphs: usize,
    /// Nodes per graph n.
    pub nodes: usize,
    /// Input positions x.
    pub positions: Vec<f64>,
    /// Input velocities v.
    pub velocities: Vec<f64>,
    /// Target positions y (empty if the samples have none).
    pub targets: Vec<f64>,
}

impl DynamicsBatch {
    /// The batch of `samples` (all of one size, with velocities).
    ///
    /// # Errors
    /// `InvalidParameter` for no samples, fewer than 2 nodes, unequal sizes or missing
    /// velocities.
    pub fn new(samples: &[&Sample]) -> Result<Self, Error> {
        let n = samples.first().map_or(0, |s| s.len());
        if n < 2 {
            return Err(Error::InvalidParameter {
                name: "batch",
                expected: "at least one graph of at least 2 nodes",
                found: format!("{} graphs of {n} nodes", samples.len()),
            });
        }
        let flat = |v: &[Vector3<f64>]| v.iter().flat_map(|x| [x.x, x.y, x.z]).collect::<Vec<_>>();
        let mut b = DynamicsBatch {
            graphs: samples.len(),
            nodes: n,
            positions: Vec::with_capacity(samples.len() * n * 3),
            velocities: Vec::with_capacity(samples.len() * n * 3),
            targets: Vec::new(),
        };
        let with_targets = samples.iter().all(|s| s.target_positions.len() == n);
        for s in samples {
            if s.len() != n || s.velocities.len() != n {
                return Err(Error::InvalidParameter {
                    name: "sample",
                    expected: "positions and velocities of every node, equal node counts",
                    found: format!("{} positions, {} velocities", s.len(), s.velocities.len()),
                });
            }
            b.positions.extend(flat(&s.positions));
            b.velocities.extend(flat(&s.velocities));
            if with_targets {
                b.targets.extend(flat(&s.target_positions));
            }
        }
        Ok(b)
    }
}

impl IterativeSe3Transformer {
    /// A model of `variant` with fresh weights (PyTorch's default initialisers, seeded by
    /// `seed`, one stream per block) and Adam at learning rate `lr`.
    ///
    /// # Errors
    /// Those of [`IterativeConfig::block_config`] and [`DifferentiableSe3Transformer::new`].
    pub fn new(
        variant: IterativeVariant,
        config: IterativeConfig,
        seed: u64,
        lr: f64,
    ) -> Result<Self, Error> {
        let cfg = config.block_config(variant)?;
        let keys = Se3TransformerNet::expected_keys(&cfg)?;
        let mut blocks = Vec::new();
        for k in 0..config.stages(variant) {
            let sd = fresh_weights(&keys, seed.wrapping_mul(1000).wrapping_add(k as u64))?;
            let net = DifferentiableSe3Transformer::new(
                &Se3TransformerNet::from_config(&cfg, &sd)?,
                forward_options(),
                &sd,
                Objective::Cotangents,
                variant == IterativeVariant::ThroughBasis,
            )?;
            let values = net
                .parameters()
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect();
            blocks.push(Block { net, values });
        }
        Ok(IterativeSe3Transformer {
            variant,
            config,
            blocks,
            adam: Adam::new(lr),
            timings: StepTimings::default(),
        })
    }

    /// The variant.
    pub fn variant(&self) -> IterativeVariant {
        self.variant
    }

    /// The config.
    pub fn config(&self) -> IterativeConfig {
        self.config
    }

    /// Number of trainable parameter elements over all blocks.
    pub fn parameter_count(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| b.values.iter())
            .map(|(_, v)| v.len())
            .sum()
    }

    /// The parameters of block `k` (key, float32 values), `None` past the last block.
    pub fn block_parameters(&self, k: usize) -> Option<&[(String, Vec<f32>)]> {
        self.blocks.get(k).map(|b| b.values.as_slice())
    }

    /// Wraps every operator of the blocks' training graphs in a timer
    /// ([`se3_core::exec::profile`]), so later steps record per-operator timings (benchmarks
    /// only).
    pub fn instrument(&mut self) {
        for block in &mut self.blocks {
            block.net.instrument();
        }
    }

    /// Wall time of the stages of the last training step.
    pub fn last_step_timings(&self) -> StepTimings {
        self.timings
    }

    /// Adds the stage times of the last run of a block to the step's timings.
    fn record_block_timings(&mut self, k: usize) {
        let Some(block) = self.blocks.get(k) else {
            return;
        };
        for &(stage, s) in block.net.last_timings() {
            match stage {
                "host: neighbours + inputs" => self.timings.host_graph += s,
                "graph: forward + backward" | "graph: forward" => self.timings.graph_run += s,
                _ => self.timings.host_gradients += s,
            }
        }
    }

    /// Sets the Adam learning rate.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.adam.set_lr(lr);
    }

    /// Runs block `k` on coordinates `coors` (`[B, n, 3]`): the displacement and, with a
    /// cotangent `cot` on it, the gradient of `<d_k, cot>` with respect to the coordinates
    /// (with [`IterativeVariant::ThroughBasis`], else `None`) and the parameter gradients
    /// `param.<key>`. Without a cotangent only the block's forward-only graph runs.
    fn run_block(
        &mut self,
        k: usize,
        batch: &DynamicsBatch,
        coors: &[f64],
        cot: Option<&[f64]>,
    ) -> Result<BlockRun, Error> {
        let (b, n) = (batch.graphs, batch.nodes);
        let mut feats = std::collections::BTreeMap::new();
        feats.insert(0, Tensor::new(vec![b, n, 1, 1], vec![1.0; b * n])?);
        feats.insert(1, Tensor::new(vec![b, n, 1, 3], batch.velocities.clone())?);
        let inputs = ModelInputs {
            feats: NodeFeats::Degrees(feats),
            coors: Tensor::new(vec![b, n, 3], coors.to_vec())?,
            mask: None,
            adj_mat: None,
            edges: None,
            neighbor_mask: None,
            global_feats: None,
        };
        let block = self.blocks.get_mut(k).ok_or(Error::InvalidParameter {
            name: "block",
            expected: "an index below the number of blocks",
            found: k.to_string(),
        })?;
        let (outputs, grads) = match cot {
            Some(cot) => {
                let mut cotangents = StateDict::new();
                cotangents.insert(
                    "cotangent.out".to_string(),
                    Tensor::new(vec![b, n, 3], cot.to_vec())?,
                );
                let run = block.net.gradients(&inputs, &cotangents)?;
                (run.outputs, run.grads)
            }
            None => (block.net.forward(&inputs)?, StateDict::new()),
        };
        self.record_block_timings(k);
        let out = outputs.get("out").ok_or(Error::MissingKey {
            key: "out".into(),
            expected: vec![b, n, 3],
        })?;
        if out.data.len() != b * n * 3 {
            return Err(Error::WrongShape {
                key: "out".into(),
                expected: vec![b, n, 3],
                found: out.shape.clone(),
            });
        }
        let coor_grad = grads.get("input.coors").map(|t| t.data.clone());
        Ok((out.data.clone(), coor_grad, grads))
    }

    /// The forward pass: x^0 = x, x^{k+1} = x^k + (T/K) v + s d_k(x^k, v), on the blocks'
    /// forward-only graphs.
    ///
    /// # Errors
    /// Those of the blocks' graphs (input shapes, non-finite values).
    pub fn forward(&mut self, batch: &DynamicsBatch) -> Result<Trajectory, Error> {
        let mut coordinates = vec![batch.positions.clone()];
        for k in 0..self.blocks.len() {
            let x = coordinates[k].clone();
            let (d, _, _) = self.run_block(k, batch, &x, None)?;
            let stages = self.blocks.len() as f64;
            let (step, scale) = (self.config.horizon / stages, self.config.displacement_scale);
            coordinates.push(
                x.iter()
                    .zip(&d)
                    .zip(&batch.velocities)
                    .map(|((a, b), v)| a + step * v + scale * b)
                    .collect(),
            );
        }
        Ok(Trajectory { coordinates })
    }

    /// The predicted positions of every sample of `batch`, `[B, n, 3]` row-major.
    ///
    /// # Errors
    /// As [`IterativeSe3Transformer::forward`].
    pub fn predict(&mut self, batch: &DynamicsBatch) -> Result<Vec<f64>, Error> {
        Ok(self.forward(batch)?.prediction().to_vec())
    }

    /// The loss `L` (module doc) of `batch`, the gradient `∂L/∂x` of the input coordinates
    /// (through the blocks as the variant says) and the parameter gradients per block (key,
    /// gradient, in each block's parameter order).
    ///
    /// # Errors
    /// `InvalidParameter` if the batch has no targets; those of the blocks' graphs.
    pub fn loss_and_gradients(
        &mut self,
        batch: &DynamicsBatch,
    ) -> Result<(f64, Vec<f64>, BlockGradients), Error> {
        if batch.targets.len() != batch.positions.len() {
            return Err(Error::InvalidParameter {
                name: "batch",
                expected: "target positions for every node",
                found: format!("{} target values", batch.targets.len()),
            });
        }
        let t_forward = std::time::Instant::now();
        let traj = self.forward(batch)?;
        self.timings.forward += t_forward.elapsed().as_secs_f64();
        let t_backward = std::time::Instant::now();
        let count = batch.targets.len() as f64;
        let pred = traj.prediction();
        let loss = pred
            .iter()
            .zip(&batch.targets)
            .map(|(p, y)| (p - y) * (p - y))
            .sum::<f64>()
            / count;
        let mut g: Vec<f64> = pred
            .iter()
            .zip(&batch.targets)
            .map(|(p, y)| 2.0 * (p - y) / count)
            .collect();
        let mut per_block = vec![Vec::new(); self.blocks.len()];
        for k in (0..self.blocks.len()).rev() {
            let scale = self.config.displacement_scale;
            let cot: Vec<f64> = g.iter().map(|v| scale * v).collect();
            let (_, coor_grad, grads) =
                self.run_block(k, batch, &traj.coordinates[k], Some(&cot))?;
            if self.variant == IterativeVariant::ThroughBasis {
                let cg = coor_grad.ok_or(Error::MissingKey {
                    key: "input.coors".into(),
                    expected: vec![batch.graphs, batch.nodes, 3],
                })?;
                g.iter_mut().zip(&cg).for_each(|(a, b)| *a += b);
            }
            for (key, _) in &self.blocks[k].values {
                let name = format!("param.{key}");
                let t = grads.get(&name).ok_or(Error::MissingKey {
                    key: name.clone(),
                    expected: vec![],
                })?;
                per_block[k].push((key.clone(), t.data.clone()));
            }
        }
        self.timings.backward += t_backward.elapsed().as_secs_f64();
        Ok((loss, g, per_block))
    }

    /// One Adam step on `batch`; returns the loss before the step.
    ///
    /// # Errors
    /// As [`IterativeSe3Transformer::loss_and_gradients`]; the optimizer's (non-finite
    /// gradients); session errors setting the new weights.
    pub fn train_step(&mut self, batch: &DynamicsBatch) -> Result<f64, Error> {
        self.timings = StepTimings::default();
        let (loss, _, grads) = self.loss_and_gradients(batch)?;
        let t_adam = std::time::Instant::now();
        let names: Vec<Vec<String>> = self
            .blocks
            .iter()
            .enumerate()
            .map(|(k, b)| {
                b.values
                    .iter()
                    .map(|(key, _)| format!("{k}.{key}"))
                    .collect()
            })
            .collect();
        let grads32: Vec<Vec<Vec<f32>>> = grads
            .iter()
            .map(|bl| {
                bl.iter()
                    .map(|(_, g)| g.iter().map(|&v| v as f32).collect())
                    .collect()
            })
            .collect();
        {
            let mut params = Vec::new();
            for ((block, nm), gr) in self.blocks.iter_mut().zip(&names).zip(&grads32) {
                for (((_, value), name), grad) in block.values.iter_mut().zip(nm).zip(gr) {
                    params.push(Param {
                        name,
                        value: value.as_mut_slice(),
                        grad,
                    });
                }
            }
            self.adam.step(&mut params)?;
        }
        self.timings.adam = t_adam.elapsed().as_secs_f64();
        let t_write = std::time::Instant::now();
        for block in &mut self.blocks {
            for (key, value) in &block.values {
                block.net.set_parameter(key, value.clone())?;
            }
        }
        self.timings.write_back = t_write.elapsed().as_secs_f64();
        Ok(loss)
    }

    /// The predictions of `samples` (all of one size) in batches of `batch_size`, one
    /// [`Prediction`] (positions) per sample.
    ///
    /// # Errors
    /// As [`IterativeSe3Transformer::forward`]; those of [`DynamicsBatch::new`].
    pub fn predict_samples(
        &mut self,
        samples: &[Sample],
        batch_size: usize,
    ) -> Result<Vec<Prediction>, Error> {
        let mut out = Vec::with_capacity(samples.len());
        for chunk in samples.chunks(batch_size.max(1)) {
            let refs: Vec<&Sample> = chunk.iter().collect();
            let batch = DynamicsBatch::new(&refs)?;
            let flat = self.predict(&batch)?;
            for cloud in flat.chunks_exact(3 * batch.nodes) {
                out.push(Prediction {
                    positions: cloud
                        .chunks_exact(3)
                        .map(|c| Vector3::new(c[0], c[1], c[2]))
                        .collect(),
                    ..Prediction::default()
                });
            }
        }
        Ok(out)
    }

    /// Mean position MSE over `samples` in batches of `batch_size`
    /// ([`mean_position_mse`]).
    ///
    /// # Errors
    /// As [`IterativeSe3Transformer::predict_samples`] and [`mean_position_mse`].
    pub fn mse(&mut self, samples: &[Sample], batch_size: usize) -> Result<f64, Error> {
        let predicted = self.predict_samples(samples, batch_size)?;
        mean_position_mse(&predicted, samples)
    }

    /// One epoch of Adam steps over `samples` shuffled by `rng`, in batches of `batch_size`;
    /// returns the mean training loss of its steps.
    ///
    /// # Errors
    /// As [`IterativeSe3Transformer::train_step`]; `EmptyGraph` for no samples.
    pub fn train_epoch(
        &mut self,
        samples: &[Sample],
        batch_size: usize,
        rng: &mut impl Rng,
    ) -> Result<f64, Error> {
        self.train_epoch_reporting(samples, batch_size, rng, |_, _| {})
    }

    /// [`train_epoch`](Self::train_epoch), calling `on_step(step, loss)` after each Adam step
    /// (steps counted from 1 within the epoch), e.g. for a progress bar.
    ///
    /// # Errors
    /// As [`train_epoch`](Self::train_epoch).
    pub fn train_epoch_reporting(
        &mut self,
        samples: &[Sample],
        batch_size: usize,
        rng: &mut impl Rng,
        mut on_step: impl FnMut(usize, f64),
    ) -> Result<f64, Error> {
        let mut order: Vec<usize> = (0..samples.len()).collect();
        order.shuffle(rng);
        let mut sum = 0.0;
        let mut steps = 0usize;
        for rows in order.chunks(batch_size.max(1)) {
            let refs: Vec<&Sample> = rows.iter().map(|&i| &samples[i]).collect();
            let batch = DynamicsBatch::new(&refs)?;
            let loss = self.train_step(&batch)?;
            sum += loss;
            steps += 1;
            on_step(steps, loss);
        }
        if steps == 0 {
            return Err(Error::EmptyGraph { batch: 0, nodes: 0 });
        }
        Ok(sum / steps as f64)
    }
}
