//! A learned interatomic potential: an invariant energy model of atom clusters, its forces
//! `F = −∂E/∂x` from the backward pass, and its training on energies *and* forces (the force
//! loss differentiated again with respect to the parameters: a second backward pass over the
//! first, one compiled graph).
//!
//! The model (an atom-centred descriptor network, invariant under rotations, translations,
//! reflections and permutations of the atoms), per atom `i` of a cluster:
//! - pair distances `d_ij = |x_i − x_j|` over every other atom `j` of its cluster
//!   (`ops::relative_positions`, `ops::distances`);
//! - radial descriptors `G_ik = s Σ_j exp(−γ (d_ij − μ_k)²) f_c(d_ij)`, `K` Gaussians with
//!   centres `μ_k` evenly from `r_min` to the cutoff `r_c`, `γ = 1 / (2 Δμ²)`, the smooth
//!   cutoff `f_c(d) = (cos(π d / r_c) + 1) / 2` for `d < r_c` (0 beyond), `s = 1/8`
//!   (`ops::scatter_add` over the edges);
//! - atomic energy `e_i = σ (W₃ silu(W₂ silu(W₁ G_i + b₁) + b₂) + b₃) + μ_E`, with `μ_E` the
//!   training set's mean energy per atom and `σ` its rms force component (constants);
//! - cluster energy `E = Σ_i e_i`, forces `F_i = −∂E/∂x_i` (`autodiff::forces`).
//!
//! Loss of a batch of `G` clusters (`N` atoms): `L = w_E Σ_g ((E_g − E*_g) / n_g)² / G +
//! w_F Σ_i |F_i − F*_i|² / (3 N)`; its gradient with respect to the weights runs through the
//! forces' backward graph (gather ↔ scatter-add and luminal primitives, all of which have
//! vector-Jacobian products that are themselves differentiable).
//! Parameters: `mlp.<k>.weight` `(out, in)`, `mlp.<k>.bias` `(out)`, `k = 0, 1, 2`.

use luminal::prelude::{symbolic::Expression, *};
use nalgebra::Vector3;
use rand::Rng;
use se3_core::autodiff;
use se3_core::exec::{IndexBound, InputKind, Session};
use se3_core::ops::{distances, relative_positions, scatter_add};

use super::batch::GraphBatch;
use super::dataset::Sample;
use crate::Error;

type N = Dyn<'n'>;
type E = Dyn<'e'>;
type G = Dyn<'g'>;
type X = Dyn<'-'>;

/// The energy of a cluster and the forces on its atoms.
pub type EnergyAndForces = (f64, Vec<Vector3<f64>>);

/// Sizes and loss weights of a [`LearnedPotential`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PotentialConfig {
    /// Radial Gaussians `K`.
    pub radial: usize,
    /// Smallest Gaussian centre (σ units).
    pub r_min: f64,
    /// Cutoff radius `r_c`: pairs farther apart do not interact.
    pub cutoff: f64,
    /// Width of the two hidden layers.
    pub hidden: usize,
    /// Weight `w_E` of the energy-per-atom term of the loss.
    pub energy_weight: f64,
    /// Weight `w_F` of the force term of the loss.
    pub force_weight: f64,
}

impl Default for PotentialConfig {
    fn default() -> Self {
        PotentialConfig {
            radial: 32,
            r_min: 0.8,
            cutoff: 3.0,
            hidden: 64,
            energy_weight: 1.0,
            force_weight: 1.0,
        }
    }
}

impl PotentialConfig {
    fn check(&self) -> Result<(), Error> {
        let ok = self.radial >= 2
            && self.hidden >= 1
            && self.r_min.is_finite()
            && self.cutoff.is_finite()
            && 0.0 <= self.r_min
            && self.r_min < self.cutoff
            && self.energy_weight >= 0.0
            && self.force_weight >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "potential config",
                expected: "radial >= 2, hidden >= 1, 0 <= r_min < cutoff, weights >= 0",
                found: format!("{self:?}"),
            })
        }
    }

    /// The trainable parameters with their shapes.
    fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (k, h) = (self.radial, self.hidden);
        vec![
            ("mlp.0.weight".into(), vec![h, k]),
            ("mlp.0.bias".into(), vec![h]),
            ("mlp.1.weight".into(), vec![h, h]),
            ("mlp.1.bias".into(), vec![h]),
            ("mlp.2.weight".into(), vec![1, h]),
            ("mlp.2.bias".into(), vec![1]),
        ]
    }
}

/// One trainable parameter: name, shape, value.
#[derive(Clone, Debug, PartialEq)]
pub struct PotentialParameter {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Vec<f32>,
}

/// Losses of one training step (before the update).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLoss {
    /// `L`.
    pub loss: f64,
    /// Mean squared energy error per atom, `Σ_g ((E_g − E*_g) / n_g)² / G`.
    pub energy_mse: f64,
    /// Mean squared force component error, `Σ_i |F_i − F*_i|² / (3 N)`.
    pub force_mse: f64,
}

/// The graph tensors of the model on a batch.
struct Built {
    energy: GraphTensor<(G, X)>,
    forces: GraphTensor<(N, Const<3>)>,
}

fn index(bound: char) -> InputKind {
    InputKind::Indices {
        bound: IndexBound::Dim(bound),
        allow_missing: false,
    }
}

/// `t` broadcast along a new axis `axis` of `size`.
fn expand_at<S: Shape, D: Shape>(
    t: GraphTensor<S>,
    axis: usize,
    size: Expression,
) -> GraphTensor<D> {
    let mut sh = t.shape;
    sh.expand(axis, size);
    GraphTensor::from_id(t.id, sh, t.graph_ref)
}

/// `x Wᵀ + b` for `x (n, in)`, weights `<name>.weight (out, in)`, `<name>.bias (out)`.
fn dense(
    s: &mut Session,
    name: &str,
    x: GraphTensor<(N, X)>,
    (inputs, outputs): (usize, usize),
) -> GraphTensor<(N, X)> {
    let w: GraphTensor<(X, X)> =
        s.weight_with_shape(&format!("{name}.weight"), &[outputs.into(), inputs.into()]);
    let b: GraphTensor<(X,)> = s.weight_with_shape(&format!("{name}.bias"), &[outputs.into()]);
    let x3: GraphTensor<(N, X, X)> = expand_at(x, 1, outputs.into());
    let w3: GraphTensor<(N, X, X)> = expand_at(w, 0, 'n'.into());
    let y: GraphTensor<(N, X)> = (x3 * w3).sum_reduce::<(N, X), Axis<2>>();
    y + expand_at::<_, (N, X)>(b, 0, 'n'.into())
}

fn silu<S: Shape>(x: GraphTensor<S>) -> GraphTensor<S> {
    x * x.sigmoid()
}

/// The energy and forces of the clusters of a batch: inputs `coords` `(n, 3)`, `src`, `dst`
/// `(e,)` (directed pairs within each cluster), `graph` `(n,)` (cluster of each atom, `0..g`);
/// weights as [`PotentialConfig::parameter_shapes`] and the constants `centers` `(K)`,
/// `energy_shift`, `energy_scale` `(1)`.
fn build(s: &mut Session, cfg: &PotentialConfig) -> Result<Built, Error> {
    let coords = s.input::<(N, Const<3>)>("coords", InputKind::Coordinates);
    let src = s.input::<(E,)>("src", index('n'));
    let dst = s.input::<(E,)>("dst", index('n'));
    let graph = s.input::<(N,)>("graph", index('g'));
    let (k, h) = (cfg.radial, cfg.hidden);
    let centers: GraphTensor<(X,)> = s.weight_with_shape("centers", &[k.into()]);
    let shift: GraphTensor<(X,)> = s.weight_with_shape("energy_shift", &[1.into()]);
    let scale: GraphTensor<(X,)> = s.weight_with_shape("energy_scale", &[1.into()]);
    let d = distances(relative_positions(coords, dst, src));
    let spacing = (cfg.cutoff - cfg.r_min) / (k - 1) as f64;
    let gamma = (0.5 / (spacing * spacing)) as f32;
    let de =
        expand_at::<_, (E, X)>(d, 1, k.into()) - expand_at::<_, (E, X)>(centers, 0, 'e'.into());
    let gauss = (de * de * (-gamma)).exp();
    let rc = s.graph().constant(cfg.cutoff as f32).expand::<(E,), _>();
    let inside = d.less_than(rc);
    let envelope = ((d * (std::f32::consts::PI / cfg.cutoff as f32)).cos() + 1.0) * 0.5 * inside;
    let per_edge = gauss * expand_at::<_, (E, X)>(envelope, 1, k.into()) * 0.125;
    let descriptors: GraphTensor<(N, X)> = scatter_add(per_edge, dst);
    let h1 = silu(dense(s, "mlp.0", descriptors, (k, h)));
    let h2 = silu(dense(s, "mlp.1", h1, (h, h)));
    let out = dense(s, "mlp.2", h2, (h, 1));
    let atomic = out * expand_at::<_, (N, X)>(scale, 0, 'n'.into())
        + expand_at::<_, (N, X)>(shift, 0, 'n'.into());
    let energy: GraphTensor<(G, X)> = scatter_add(atomic, graph);
    let forces = autodiff::forces(energy.no_shape(), coords.no_shape())?;
    Ok(Built {
        energy,
        forces: GraphTensor::from_id(forces.id, forces.shape, forces.graph_ref),
    })
}

/// A learned potential with its compiled graphs: one for energies and forces, one that also
/// gives the loss and its gradients for training.
#[derive(Debug)]
pub struct LearnedPotential {
    cfg: PotentialConfig,
    params: Vec<PotentialParameter>,
    constants: Vec<(String, Vec<usize>, Vec<f32>)>,
    predict: Session,
    train: Session,
}

/// A batch's inputs: name, data, shape.
type Feed = Vec<(&'static str, Vec<f32>, Vec<usize>)>;

impl LearnedPotential {
    /// A model with weights drawn by `rng` (uniform in ±√(6 / (in + out)), biases 0) and the
    /// energy normalisation `energy_shift` (mean energy per atom) and `energy_scale` (rms
    /// force component) of the training data ([`energy_normalization`]).
    ///
    /// # Errors
    /// `InvalidParameter` for a bad config or a non-positive scale; graph build errors.
    pub fn new<R: Rng + ?Sized>(
        cfg: PotentialConfig,
        energy_shift: f64,
        energy_scale: f64,
        rng: &mut R,
    ) -> Result<Self, Error> {
        cfg.check()?;
        if !(energy_scale.is_finite() && energy_scale > 0.0 && energy_shift.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "energy_scale",
                expected: "a finite positive scale and a finite shift",
                found: format!("scale {energy_scale}, shift {energy_shift}"),
            });
        }
        let params = cfg
            .parameter_shapes()
            .into_iter()
            .map(|(name, shape)| {
                let value = if shape.len() == 2 {
                    let bound = (6.0 / (shape[0] + shape[1]) as f32).sqrt();
                    (0..shape[0] * shape[1])
                        .map(|_| rng.gen_range(-bound..bound))
                        .collect()
                } else {
                    vec![0.0; shape[0]]
                };
                PotentialParameter { name, shape, value }
            })
            .collect();
        let centers: Vec<f32> = (0..cfg.radial)
            .map(|k| {
                (cfg.r_min + (cfg.cutoff - cfg.r_min) * k as f64 / (cfg.radial - 1) as f64) as f32
            })
            .collect();
        let constants = vec![
            ("centers".to_string(), vec![cfg.radial], centers),
            (
                "energy_shift".to_string(),
                vec![1],
                vec![energy_shift as f32],
            ),
            (
                "energy_scale".to_string(),
                vec![1],
                vec![energy_scale as f32],
            ),
        ];
        let mut predict = Session::new();
        let built = build(&mut predict, &cfg)?;
        predict.output("energy", built.energy);
        predict.output("forces", built.forces);
        predict.compile();
        let mut train = Session::new();
        let built = build(&mut train, &cfg)?;
        let loss = Self::loss_graph(&mut train, &cfg, &built);
        let wrt: Vec<GraphTensor<()>> = cfg
            .parameter_shapes()
            .iter()
            .map(|(n, _)| train.tensor(n))
            .collect::<Result<_, _>>()?;
        let grads = autodiff::grad(loss.no_shape(), &wrt)?;
        for ((n, _), g) in cfg.parameter_shapes().iter().zip(grads) {
            train.output(&format!("grad.{n}"), g);
        }
        train.compile();
        let mut model = LearnedPotential {
            cfg,
            params,
            constants,
            predict,
            train,
        };
        model.upload()?;
        Ok(model)
    }

    /// Adds the loss (module docs) and its parts as outputs `loss`, `energy_mse`, `force_mse`.
    fn loss_graph(s: &mut Session, cfg: &PotentialConfig, built: &Built) -> GraphTensor<()> {
        let per_graph = [Expression::from('g'), 1.into()];
        let e_ref = s.input_with_shape::<(G, X)>("energy_ref", InputKind::Values, &per_graph);
        let inv_atoms = s.input_with_shape::<(G, X)>("inv_atoms", InputKind::Values, &per_graph);
        let f_ref = s.input::<(N, Const<3>)>("forces_ref", InputKind::Values);
        let inv_graphs = s.input::<()>("inv_graphs", InputKind::Values);
        let inv_components = s.input::<()>("inv_components", InputKind::Values);
        let de = (built.energy - e_ref) * inv_atoms;
        let energy_mse = (de * de).sum_reduce::<(), _>() * inv_graphs;
        let df = built.forces - f_ref;
        let force_mse = (df * df).sum_reduce::<(), _>() * inv_components;
        let loss = energy_mse * cfg.energy_weight as f32 + force_mse * cfg.force_weight as f32;
        s.output("energy_mse", energy_mse);
        s.output("force_mse", force_mse);
        s.output("loss", loss);
        loss
    }

    /// Sets the weights and constants in both graphs.
    fn upload(&mut self) -> Result<(), Error> {
        for s in [&mut self.predict, &mut self.train] {
            for p in &self.params {
                s.set_weight(&p.name, p.value.clone(), &p.shape)?;
            }
            for (n, shape, v) in &self.constants {
                s.set_weight(n, v.clone(), shape)?;
            }
        }
        Ok(())
    }

    /// The config.
    pub fn config(&self) -> &PotentialConfig {
        &self.cfg
    }

    /// The trainable parameters.
    pub fn parameters(&self) -> &[PotentialParameter] {
        &self.params
    }

    /// Replaces the parameters' values (same names and lengths, e.g. after an optimizer step).
    ///
    /// # Errors
    /// `WrongShape` for a value of another length.
    pub fn set_parameters(&mut self, values: Vec<Vec<f32>>) -> Result<(), Error> {
        for (p, v) in self.params.iter_mut().zip(values) {
            if v.len() != p.value.len() {
                return Err(Error::WrongShape {
                    key: p.name.clone(),
                    expected: p.shape.clone(),
                    found: vec![v.len()],
                });
            }
            for s in [&mut self.predict, &mut self.train] {
                s.set_weight(&p.name, v.clone(), &p.shape)?;
            }
            p.value = v;
        }
        Ok(())
    }

    /// The inputs of a batch of clusters (all atom pairs of each cluster within the cutoff
    /// interact; pairs beyond it get zero weight in the graph).
    fn feed(batch: &GraphBatch) -> (Feed, usize) {
        let edges = batch.fully_connected_edges();
        let (n, e, g) = (batch.nodes(), edges.len(), batch.graphs());
        let feed = vec![
            ("coords", batch.positions.clone(), vec![n, 3]),
            (
                "src",
                edges.iter().map(|&(a, _)| a as f32).collect(),
                vec![e],
            ),
            (
                "dst",
                edges.iter().map(|&(_, b)| b as f32).collect(),
                vec![e],
            ),
            (
                "graph",
                batch.graph_ids.iter().map(|&k| k as f32).collect(),
                vec![n],
            ),
        ];
        (feed, g)
    }

    fn set_feed(s: &mut Session, feed: &Feed, graphs: usize) -> Result<(), Error> {
        s.set_dim('g', graphs);
        for (name, data, shape) in feed {
            s.set(name, data.clone(), shape)?;
        }
        Ok(())
    }

    /// Energies `E_g` and forces `F = −∂E/∂x` of each cluster of `samples`.
    ///
    /// # Errors
    /// `EmptyGraph` for no samples or an empty cluster; session errors.
    pub fn predict(&mut self, samples: &[&Sample]) -> Result<Vec<EnergyAndForces>, Error> {
        let batch = Self::batch(samples)?;
        let (feed, g) = Self::feed(&batch);
        Self::set_feed(&mut self.predict, &feed, g)?;
        self.predict.run()?;
        let energy = self.predict.get("energy")?.data;
        let forces = self.predict.get("forces")?.data;
        Ok(batch
            .offsets
            .windows(2)
            .enumerate()
            .map(|(k, w)| {
                let f = (w[0]..w[1])
                    .map(|i| {
                        Vector3::new(
                            f64::from(forces[3 * i]),
                            f64::from(forces[3 * i + 1]),
                            f64::from(forces[3 * i + 2]),
                        )
                    })
                    .collect();
                (f64::from(energy[k]), f)
            })
            .collect())
    }

    fn batch(samples: &[&Sample]) -> Result<GraphBatch, Error> {
        if samples.is_empty() || samples.iter().any(|s| s.is_empty()) {
            return Err(Error::EmptyGraph {
                batch: samples.len(),
                nodes: samples.iter().map(|s| s.len()).min().unwrap_or(0),
            });
        }
        GraphBatch::from_samples(samples, 0)
    }

    /// The loss of `samples` (which need energies and forces) and its gradient with respect to
    /// every parameter (in [`LearnedPotential::parameters`] order).
    ///
    /// # Errors
    /// `EmptyGraph`; `MissingInput` (`energy`/`forces`) for samples without them; session
    /// errors.
    pub fn loss_and_gradients(
        &mut self,
        samples: &[&Sample],
    ) -> Result<(StepLoss, Vec<Vec<f32>>), Error> {
        let batch = Self::batch(samples)?;
        if batch.energy.len() != batch.graphs() {
            return Err(Error::MissingInput { name: "energy" });
        }
        if batch.forces.len() != batch.positions.len() {
            return Err(Error::MissingInput { name: "forces" });
        }
        let (mut feed, g) = Self::feed(&batch);
        let n = batch.nodes();
        let inv_atoms = batch
            .offsets
            .windows(2)
            .map(|w| 1.0 / (w[1] - w[0]) as f32)
            .collect();
        feed.push(("energy_ref", batch.energy.clone(), vec![g, 1]));
        feed.push(("inv_atoms", inv_atoms, vec![g, 1]));
        feed.push(("forces_ref", batch.forces.clone(), vec![n, 3]));
        feed.push(("inv_graphs", vec![1.0 / g as f32], vec![]));
        feed.push(("inv_components", vec![1.0 / (3 * n) as f32], vec![]));
        Self::set_feed(&mut self.train, &feed, g)?;
        self.train.run()?;
        let scalar = |s: &Session, name: &str| -> Result<f64, Error> {
            Ok(s.get(name)?
                .data
                .first()
                .copied()
                .map_or(f64::NAN, f64::from))
        };
        let loss = StepLoss {
            loss: scalar(&self.train, "loss")?,
            energy_mse: scalar(&self.train, "energy_mse")?,
            force_mse: scalar(&self.train, "force_mse")?,
        };
        let grads = self
            .params
            .iter()
            .map(|p| Ok(self.train.get(&format!("grad.{}", p.name))?.data))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok((loss, grads))
    }
}

/// The normalisation of a [`LearnedPotential`] from training `samples` (those with an
/// energy): the mean energy per atom (shift) and the root mean square force component (scale,
/// at least 1e-3), so that the network's output and its gradient are of order one.
pub fn energy_normalization(samples: &[Sample]) -> (f64, f64) {
    let per_atom: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.energy.map(|e| e / s.len().max(1) as f64))
        .collect();
    let mean = per_atom.iter().sum::<f64>() / per_atom.len().max(1) as f64;
    let (mut sq, mut count) = (0.0, 0usize);
    for f in samples.iter().flat_map(|s| &s.forces) {
        sq += f.norm_squared();
        count += 3;
    }
    (mean, (sq / count.max(1) as f64).sqrt().max(1e-3))
}
