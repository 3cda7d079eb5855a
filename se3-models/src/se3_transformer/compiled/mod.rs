//! The SE(3)-Transformer compiled to one luminal graph: the layers of
//! [`Se3TransformerOracle`] (conv_in, conv/norm stacks, the
//! attention + feed-forward trunk, sequential or reversible, conv_out, final norm, linear_out) as
//! graph operations in float32, built once per config and run on any number of nodes.
//!
//! Neighbour selection (CONVENTIONS 2.6: kNN within `valid_radius`, masks, sparse adjacency,
//! adjacency degrees, causal), the edge features and the kernel basis are prepared per batch
//! element by the same code as the float64 oracle and fed to the graph as inputs (`nbr [e]`,
//! `valid [n, k]`, radial input `[e, n_in]`, one basis block per degree pair); everything after
//! runs in the graph. With `differentiable_coors` the graph instead takes the coordinates and
//! builds the relative positions, distances, radial input and kernel basis itself
//! (`compiled/coors.rs`).
//! ConvSE3 messages use the reassociated contraction
//! ([`Contraction::Reassociated`](crate::se3_transformer::Contraction)): neighbour sums (mean
//! pooling, attention-weighted values) are taken of `h_ij (x) Kx_ij` before the radial network's
//! last layer, and attention logits fold the query into that layer, so per-edge radial weights are
//! never formed.
//!
//! The radial networks of the degree pairs of a layer (a convolution, or the keys and values of an
//! attention block) read the same per-edge input, so they run together up to their last layer
//! (one GEMM per radial layer over `[P, e, 128]`, one grouped LayerNorm + GELU), which keeps the
//! graph small and its compilation fast. One bank per layer rather than one for the whole model
//! keeps only the running layer's hidden activations alive (the session runs the graph in a
//! memory-aware order, se3-core `exec::MemoryStats`).
//!
//! Rotary embeddings rotate degree-0 keys and values per edge, which the reassociated sum cannot
//! carry, so with rotary the degree-0 attention forms its messages per edge (degree 0 is the cheap
//! part); the angles are inputs computed on the host.
//!
//! The EGNN trunk (`use_egnn`) is compiled too (edge MLP over the self slot and the neighbours,
//! higher degrees moved along `h_i - h_j`), so every option of the oracle runs on the graph;
//! [`Error::NotCompiled`] stays for options added to the oracle later.

mod attention;
mod blocked;
mod conv;
mod coors;
mod ctx;
mod differentiable;
mod egnn;
mod merged_batch;
mod node;
mod param_runs;
mod training;
mod unfused;

pub use differentiable::DifferentiableSe3Transformer;
pub use training::TrainableSe3Transformer;

use std::collections::BTreeMap;

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::{IndexBound, InputKind, Session};

use self::attention::attention;
pub use self::blocked::BlockStats;
use self::conv::conv_pooled;
use self::ctx::{pair_key, radial_mlp, Ctx, GFeats, RadialNets};
use self::egnn::egnn_layer;
use se3_core::layers::RotaryAngles;
use se3_core::layers::RotaryEmbedding;

/// The graph input of the EGNN trunk's edge features (`[edges, edge_dim]`, the rows of the
/// radial input's edge columns), read by every EGNN layer's edge MLP.
const EGNN_EDGE_INPUT: &str = "egnn_edge";
use self::node::{linear, norm, residual};
use crate::checkpoint::{SafetensorsFile, StateDict, WeightSource};
use crate::inputs::ModelInputs;
use crate::se3_transformer::conv::radial_input;
use crate::se3_transformer::oracle::{Prepared, Trunk};
use crate::se3_transformer::{Se3TransformerForward, Se3TransformerOracle};
use crate::Error;
use se3_core::layers::graph::{reshape, T2, T3, T4};

/// A flat per-run input typed by one of a fixed set of dynamic dimensions (the session checks
/// dimension names across inputs, so each flat input gets its own).
fn flat_input(s: &mut Session, name: &str, slot: usize) -> Result<GraphTensor<(Dyn<'-'>,)>, Error> {
    macro_rules! pick {
        ($($i:literal => $c:literal),*) => {
            match slot {
                $($i => { let t = s.input::<(Dyn<$c>,)>(name, InputKind::Values); GraphTensor::from_id(t.id, t.shape, t.graph_ref) })*
                _ => return Err(Error::NotCompiled { option: "more than 40 degree pairs" }),
            }
        };
    }
    Ok(
        pick!(0 => 'A', 1 => 'B', 2 => 'C', 3 => 'D', 4 => 'E', 5 => 'F', 6 => 'G', 7 => 'H',
        8 => 'I', 9 => 'J', 10 => 'K', 11 => 'L', 12 => 'M', 13 => 'N', 14 => 'O', 15 => 'P',
        16 => 'Q', 17 => 'R', 18 => 'S', 19 => 'T', 20 => 'U', 21 => 'V', 22 => 'W', 23 => 'X',
        24 => 'Y', 25 => 'Z', 26 => 'a', 27 => 'b', 28 => 'c', 29 => 'd', 30 => 'f', 31 => 'h',
        32 => 'i', 33 => 'j', 34 => 'l', 35 => 'm', 36 => 'o', 37 => 'p', 38 => 'q', 39 => 'r'),
    )
}

/// The graph's outputs by degree, `out.<l>` as `[n, c, 2l + 1]`.
pub(crate) type GraphOutputs = Vec<(usize, GraphTensor<()>)>;

/// The form the compiled graph takes of the radial networks and the edge contractions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GraphForm {
    /// Fused kernels (`radial_hidden` over a layer's pairs, `edge_contract`), reassociated:
    /// per-edge radial weights are never formed. The inference form.
    #[default]
    Fused,
    /// Primitive forms (per-pair radial networks, per-edge messages; `compiled/unfused.rs`),
    /// every op with a vector-Jacobian product: the training form until the fused kernels have
    /// backward passes.
    Unfused,
}

/// What [`Se3Transformer::estimate_memory`] expects one forward to hold, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The weights: float32 in the graph and the host model's float64 copy.
    pub weights: usize,
    /// The host's per-edge data of one cloud (clouds of a batch are prepared together, so this
    /// counts once per batch element in [`MemoryEstimate::total`]).
    pub host_graph: usize,
    /// The most graph inputs and intermediates alive at once in one graph run: of one cloud, or
    /// of as many clouds of the batch as share a run (`merged_batch.rs`, up to 32,768 edges;
    /// their merged host data, a copy of at most that many edges, is not counted).
    pub graph_peak: usize,
    /// Neighbours per node assumed.
    pub neighbours: usize,
}

impl MemoryEstimate {
    /// Weights, the host data of `batch` clouds and one graph run's peak.
    pub fn total(&self, batch: usize) -> usize {
        self.weights + self.host_graph * batch + self.graph_peak
    }
}

/// The SE(3)-Transformer as one compiled luminal graph (module doc).
pub struct Se3Transformer {
    /// The host part (embeddings, neighbour selection, basis table, output assembly); `None` only
    /// while building.
    model: Option<Se3TransformerOracle>,
    session: Session,
    in_degrees: Vec<(usize, usize)>,
    pairs: Vec<(usize, usize)>,
    out_degrees: Vec<(usize, usize)>,
    radial_width: usize,
    fourier: Option<usize>,
    global_dim: Option<usize>,
    dim_head: usize,
    egnn: bool,
    /// `differentiable_coors`: geometry built in the graph from `coors` (`coors.rs`).
    coors: Option<coors::CoorsInputs>,
    /// [`Se3TransformerOracle::message_hops`] of the model the graph was built from, counted before
    /// its layers were stripped from the host (`blocked.rs`).
    message_hops: usize,
    timings: Vec<(&'static str, f64)>,
}

impl std::fmt::Debug for Se3Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Se3Transformer")
            .field("session", &self.session)
            .finish()
    }
}

impl Se3Transformer {
    /// Builds and compiles the graph of `model`'s layers (weights rounded to float32).
    ///
    /// # Errors
    /// `NotCompiled` for rotary embeddings or the EGNN trunk; weight errors of the session.
    pub fn new(model: &Se3TransformerOracle) -> Result<Self, Error> {
        Self::from_model(model.clone())
    }

    /// As [`Se3Transformer::new`], taking the model: its float64 layer weights are dropped
    /// as they go into the graph, so the weights are held about once (the radial networks' last
    /// layers, the bulk, are converted to float32 first and their float64 copies dropped; each
    /// float32 copy is dropped once its layer is built; only embeddings and the basis table stay
    /// on the host).
    ///
    /// # Errors
    /// As [`Se3Transformer::new`].
    pub fn from_model(model: Se3TransformerOracle) -> Result<Self, Error> {
        Self::from_model_in(model, GraphForm::Fused)
    }

    /// As [`Se3Transformer::from_model`], the radial networks and edge contractions in
    /// `form` ([`GraphForm::Unfused`]: the forward of the training graph).
    ///
    /// # Errors
    /// As [`Se3Transformer::new`].
    pub fn from_model_in(model: Se3TransformerOracle, form: GraphForm) -> Result<Self, Error> {
        let mut host = model;
        let nets = convert_radials(&mut host)?;
        let (mut compiled, _) = Self::build_graph(&host, nets, form)?;
        compiled.session.compile();
        strip_layers(&mut host);
        compiled.model = Some(host);
        Ok(compiled)
    }

    /// Runs the graph on `device` from now on, its weights uploaded once and kept there (see
    /// [`Session::set_device`]).
    ///
    /// # Errors
    /// `CudaNotCompiled`, `CudaUnavailable`, or `InvalidOp` to move the graph off its device.
    pub fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        Ok(self.session.set_device(device)?)
    }

    /// Loads a state dict with PyTorch key names (moving its tensors, [`Se3TransformerOracle::
    /// from_state_dict_owned`]) and compiles it ([`Se3Transformer::from_model`]): the
    /// weights are never held twice in float64.
    ///
    /// # Errors
    /// Those of [`Se3TransformerOracle::from_state_dict`] and [`Se3Transformer::new`].
    pub fn from_state_dict(
        cfg: &crate::se3_transformer::Se3TransformerConfig,
        sd: StateDict,
    ) -> Result<Self, Error> {
        Self::from_model(Se3TransformerOracle::graph_host_from_state_dict(cfg, sd)?)
    }

    /// Loads a safetensors checkpoint with PyTorch key names one tensor at a time
    /// ([`SafetensorsFile`]) and compiles it: the radial networks' last layers, the bulk of the
    /// weights, go to float32 as they are read, so neither the file nor the weights in float64
    /// are ever held whole (the benchmark at 3 degrees, its weights drawn as they are read: build peak 173 -> 141 MiB).
    ///
    /// # Errors
    /// As [`SafetensorsFile::open`] and [`WeightSource::take`] (`MissingKey`, `WrongShape`,
    /// `WrongDtype`), `UnexpectedKey` for a tensor the config has no place for, config errors and
    /// those of [`Se3Transformer::new`].
    pub fn from_safetensors(
        cfg: &crate::se3_transformer::Se3TransformerConfig,
        path: impl AsRef<std::path::Path>,
    ) -> Result<Self, Error> {
        let mut file = SafetensorsFile::open_for_graph(path)?;
        let host = Se3TransformerOracle::from_source(cfg, &mut file)?;
        file.finish()?;
        drop(file);
        Self::from_model(host)
    }

    /// Loads the weights from `src` (keys and shapes as [`Se3Transformer::expected_keys`]; every
    /// key taken once) and compiles them. A source whose [`WeightSource::graph_host`] is `true`
    /// hands the radial networks' last layers to float32 as they are read (as
    /// [`Se3Transformer::from_safetensors`]); whether the source held keys the model did not take
    /// is the source's to check.
    ///
    /// # Errors
    /// The source's errors, config errors and those of [`Se3Transformer::new`].
    pub fn from_source(
        cfg: &crate::se3_transformer::Se3TransformerConfig,
        src: &mut dyn WeightSource,
    ) -> Result<Self, Error> {
        Self::from_model(Se3TransformerOracle::from_source(cfg, src)?)
    }

    /// Every state-dict key (PyTorch name) a checkpoint of `cfg` holds, with its shape, in module
    /// order ([`Se3TransformerOracle::expected_keys`]: the checkpoint is parsed in one place).
    ///
    /// # Errors
    /// Config errors (`InvalidConfig`, `Core(DegreeTooHigh)`).
    pub fn expected_keys(
        cfg: &crate::se3_transformer::Se3TransformerConfig,
    ) -> Result<Vec<(String, Vec<usize>)>, Error> {
        Se3TransformerOracle::expected_keys(cfg)
    }

    /// The graph of `model`'s layers in `form`, not compiled yet, and its outputs by degree
    /// (`out.<l>`, `[n, c, 2l + 1]`).
    pub(crate) fn build_graph(
        model: &Se3TransformerOracle,
        nets: RadialNets,
        form: GraphForm,
    ) -> Result<(Self, GraphOutputs), Error> {
        let cfg = &model.cfg;
        let shape = &model.shape;
        let mut s = Session::new();
        let mut slot = 0;
        let n = Expression::from('n');
        let k = Expression::from('k');
        let e = Expression::from('e');
        s.derive_dim('e', n * k);
        let nbr = s.input::<(Dyn<'e'>,)>(
            "nbr",
            InputKind::Indices {
                bound: IndexBound::Dim('n'),
                allow_missing: false,
            },
        );
        let valid_t = s.input::<(Dyn<'n'>, Dyn<'k'>)>("valid", InputKind::Mask);
        let valid: T2 = GraphTensor::from_id(valid_t.id, valid_t.shape, valid_t.graph_ref);
        let pool_t = s.input::<(Dyn<'n'>, Dyn<'k'>)>("pool_w", InputKind::Values);
        let pool_w: T2 = GraphTensor::from_id(pool_t.id, pool_t.shape, pool_t.graph_ref);
        let fourier = model.conv_in.fourier;
        let radial_width = 1 + shape.edge_dim + fourier.map_or(0, |f| 2 * f);
        let geometry = if cfg.differentiable_coors {
            Some(coors::InGraphGeometry::declare(
                &mut s,
                nbr,
                &model.table,
                fourier,
                shape.edge_dim,
                &mut slot,
            )?)
        } else {
            None
        };
        let radial_in: T2 = match &geometry {
            Some(geo) => geo.radial_in,
            None => {
                let rin = flat_input(&mut s, "radial_in", slot)?;
                slot += 1;
                reshape(rin, &[e, radial_width.into()])
            }
        };
        let mut pairs = Vec::new();
        let mut basis = BTreeMap::new();
        for d_in in 0..=shape.max_degree {
            for d_out in 0..=shape.max_degree {
                let b: T4 = match &geometry {
                    Some(geo) => geo.block(d_in, d_out)?,
                    None => {
                        let t = flat_input(&mut s, &format!("basis.{d_in}.{d_out}"), slot)?;
                        slot += 1;
                        let nf = 2 * d_in.min(d_out) + 1;
                        reshape(
                            t,
                            &[e, (2 * d_out + 1).into(), (2 * d_in + 1).into(), nf.into()],
                        )
                    }
                };
                basis.insert((d_in, d_out), b);
                pairs.push((d_in, d_out));
            }
        }
        let global_dim = cfg.global_feats_dim;
        let global = match global_dim {
            Some(gd) => {
                let t = flat_input(&mut s, "global", slot)?;
                slot += 1;
                Some(reshape::<_, (Dyn<'-'>, Dyn<'-'>)>(
                    t,
                    &[Expression::from('g'), gd.into()],
                ))
            }
            None => None,
        };
        let mut x = GFeats::new();
        let in_degrees = shape.fiber_in.clone();
        for &(l, c) in &in_degrees {
            let t = flat_input(&mut s, &format!("x.{l}"), slot)?;
            slot += 1;
            let x3: T3 = reshape(t, &[n, c.into(), (2 * l + 1).into()]);
            x.insert(l, x3);
        }
        let egnn_in = if matches!(model.trunk, Trunk::Egnn(_)) {
            // with the geometry in the graph, the distances follow the coordinates (their
            // gradient reaches `coors`); otherwise an input
            let dist: T2 = match &geometry {
                Some(geo) => geo.dist,
                None => {
                    let t = flat_input(&mut s, "egnn_dist", slot)?;
                    slot += 1;
                    reshape(t, &[e, 1.into()])
                }
            };
            let edge_feat = if shape.edge_dim > 0 {
                let t = flat_input(&mut s, EGNN_EDGE_INPUT, slot)?;
                slot += 1;
                Some(reshape::<_, (Dyn<'-'>, Dyn<'-'>)>(
                    t,
                    &[e, shape.edge_dim.into()],
                ))
            } else {
                None
            };
            Some((dist, edge_feat))
        } else {
            None
        };
        let dh = cfg.dim_head;
        let rotary = match &model.rotary {
            Some(rot) => {
                let mut inputs = Vec::new();
                for name in [
                    "rot_node_cos",
                    "rot_node_sin",
                    "rot_edge_cos",
                    "rot_edge_sin",
                ] {
                    let t = flat_input(&mut s, name, slot)?;
                    slot += 1;
                    let rows = if name.starts_with("rot_node") { n } else { e };
                    inputs.push(reshape::<_, (Dyn<'-'>, Dyn<'-'>)>(t, &[rows, dh.into()]));
                }
                let pm = RotaryEmbedding::half_matrix(dh, rot.rotated(dh));
                let mut half = s.weight::<(Dyn<'-'>, Dyn<'-'>)>("rot_half");
                half.shape = ShapeTracker::new(&[dh.into(), dh.into()]);
                s.set_weight("rot_half", pm, &[dh, dh])?;
                Some(RotaryAngles {
                    node_cos: inputs[0],
                    node_sin: inputs[1],
                    edge_cos: inputs[2],
                    edge_sin: inputs[3],
                    half,
                })
            }
            None => None,
        };
        let mut ctx = Ctx::new(&mut s, nbr, valid, pool_w, radial_in, basis, global);
        ctx.rotary = rotary;
        ctx.nets = nets;
        ctx.form = form;
        for group in model_pair_groups(model) {
            ctx.radial_bank(&group);
        }
        let mut x = conv_pooled(&mut ctx, &model.conv_in, &x)?;
        ctx.release(&model.conv_in.pairs);
        for (conv, nrm) in &model.convs {
            let y = norm(&mut ctx, nrm, &x)?;
            x = conv_pooled(&mut ctx, conv, &y)?;
            ctx.release(&conv.pairs);
        }
        x = match &model.trunk {
            Trunk::Sequential(blocks) => {
                for (a, f) in blocks {
                    x = attention_block(&mut ctx, a, &x)?;
                    release_attention(&mut ctx, a);
                    x = ff_block(&mut ctx, f, &x)?;
                }
                x
            }
            Trunk::Reversible(blocks) => {
                let (mut x1, mut x2) = (x.clone(), x);
                for (a, f) in blocks {
                    // the blocks keep their own residual inside (as the oracle)
                    let y1 = residual(&attention_block(&mut ctx, a, &x2)?, &x1);
                    release_attention(&mut ctx, a);
                    let y2 = residual(&ff_block(&mut ctx, f, &y1)?, &x2);
                    x1 = y1;
                    x2 = y2;
                }
                residual(&x1, &x2)
                    .into_iter()
                    .map(|(l, t)| (l, t * 0.5))
                    .collect()
            }
            Trunk::Egnn(net) => {
                let (dist, edge_feat) = egnn_in.ok_or(Error::MissingInput {
                    name: "egnn inputs",
                })?;
                for (layer, ff) in &net.layers {
                    x = egnn_layer(&mut ctx, layer, &x, dist, edge_feat)?;
                    if let Some(f) = ff {
                        x = ff_block(&mut ctx, f, &x)?;
                    }
                }
                x
            }
        };
        if let Some(c) = &model.conv_out {
            x = conv_pooled(&mut ctx, c, &x)?;
        }
        if let Some(nrm) = &model.norm {
            x = norm(&mut ctx, nrm, &x)?;
        }
        if let Some(lin) = &model.linear_out {
            x = linear(&mut ctx, lin, &x, None)?;
        }
        drop(ctx);
        let mut out_degrees = Vec::new();
        let mut out_tensors = Vec::new();
        for (&l, &t) in &x {
            let d = se3_core::layers::graph::dims(t);
            let c = d[1].to_usize().unwrap_or(0);
            let flat: T3 = reshape(t.contiguous(), &d);
            s.output(&format!("out.{l}"), flat);
            out_degrees.push((l, c));
            out_tensors.push((l, flat.no_shape()));
        }
        let compiled = Self {
            model: None,
            session: s,
            in_degrees,
            pairs,
            out_degrees,
            radial_width,
            fourier,
            global_dim,
            dim_head: cfg.dim_head,
            egnn: matches!(model.trunk, Trunk::Egnn(_)),
            coors: geometry.as_ref().map(coors::InGraphGeometry::inputs),
            message_hops: model.message_hops(),
            timings: Vec::new(),
        };
        Ok((compiled, out_tensors))
    }

    /// Wraps every operator of the compiled graph in a timer ([`se3_core::exec::profile`]), so
    /// later forwards record per-operator timings (benchmarks only: it adds a clock read per op).
    pub fn instrument(&mut self) {
        self.session
            .compile_with(se3_core::exec::profile::Instrument);
    }

    /// An estimate of the memory of one forward on `batch` clouds of `nodes` nodes, made before
    /// anything of the forward is allocated: the graph's schedule at those sizes walked with
    /// every tensor's size from its shape ([`Session::estimate_peak_bytes_for`]), the host's
    /// per-edge data of one cloud (neighbour indices, relative positions, distances, edge
    /// features, the float64 kernel basis) and the weights. The graph's peak is that of one
    /// run, which holds several clouds of a batch when they merge (`merged_batch.rs`). Neighbours per node are
    /// `min(num_neighbors + max_sparse_neighbors, nodes - 1)` (bonds counted at their cap, or all
    /// other nodes without one).
    ///
    /// # Errors
    /// `EmptyGraph` below 2 nodes; `NotCompiled` with `differentiable_coors` (its geometry
    /// inputs are not sized here); session errors.
    pub fn estimate_memory(&mut self, batch: usize, nodes: usize) -> Result<MemoryEstimate, Error> {
        if nodes < 2 || batch == 0 {
            return Err(Error::EmptyGraph { batch, nodes });
        }
        if self.coors.is_some() {
            return Err(Error::NotCompiled {
                option: "a memory estimate with differentiable_coors",
            });
        }
        let model = self.host()?;
        let cfg = &model.cfg;
        let others = nodes - 1;
        let sparse = if cfg.attend_sparse_neighbors {
            cfg.max_sparse_neighbors.unwrap_or(others)
        } else {
            0
        };
        let k = cfg
            .num_neighbors
            .unwrap_or(others)
            .min(others)
            .saturating_add(sparse)
            .min(others)
            .max(1);
        let edges = nodes * k;
        // clouds of a batch share a run up to the merge limit (`merged_batch.rs`)
        let per_run = if self.mergeable() {
            (merged_batch::MERGE_EDGE_LIMIT / edges).clamp(1, batch)
        } else {
            1
        };
        let run_nodes = nodes * per_run;
        let run_edges = edges * per_run;
        let edge_dim = model.shape.edge_dim;
        let weights: usize = Se3TransformerOracle::expected_keys(cfg)?
            .iter()
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum();
        let mut basis_per_edge = 0;
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("valid".into(), vec![run_nodes, k]),
            ("radial_in".into(), vec![run_edges * self.radial_width]),
        ];
        for &(d_in, d_out) in &self.pairs {
            let width = (2 * d_out + 1) * (2 * d_in + 1) * (2 * d_in.min(d_out) + 1);
            basis_per_edge += width;
            shapes.push((format!("basis.{d_in}.{d_out}"), vec![run_edges * width]));
        }
        for &(l, c) in &self.in_degrees {
            shapes.push((format!("x.{l}"), vec![run_nodes * c * (2 * l + 1)]));
        }
        if let Some(g) = self.global_dim {
            shapes.push(("global".into(), vec![g]));
        }
        if self.egnn {
            shapes.push(("egnn_dist".into(), vec![run_edges]));
            if edge_dim > 0 {
                shapes.push((EGNN_EDGE_INPUT.into(), vec![run_edges * edge_dim]));
            }
        }
        if model.rotary.is_some() {
            for (name, rows) in [
                ("rot_node_cos", run_nodes),
                ("rot_node_sin", run_nodes),
                ("rot_edge_cos", run_edges),
                ("rot_edge_sin", run_edges),
            ] {
                shapes.push((name.into(), vec![rows * self.dim_head]));
            }
        }
        let named: Vec<(&str, Vec<usize>)> = shapes
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let mut dims = vec![('n', run_nodes), ('k', k)];
        if self.global_dim.is_some() {
            dims.push(('g', 1));
        }
        let graph_peak = self.session.estimate_peak_bytes_for(&named, &dims)?;
        // per edge on the host: index (8) + valid (1) + relative position (24) + distance (8),
        // edge features and basis in f64
        let host_per_edge = 41 + 8 * (edge_dim + basis_per_edge);
        Ok(MemoryEstimate {
            weights: weights * (4 + 8),
            host_graph: edges * host_per_edge,
            graph_peak,
            neighbours: k,
        })
    }

    /// Memory figures of the last graph run (resident weights, peak intermediates; se3-core
    /// [`MemoryStats`](se3_core::exec::MemoryStats)).
    pub fn memory_stats(&self) -> se3_core::exec::MemoryStats {
        self.session.memory_stats()
    }

    /// Wall time of the stages of the last forward: host preparation (neighbour selection, edge
    /// features, kernel basis) and the graph run, seconds.
    pub fn last_timings(&self) -> &[(&'static str, f64)] {
        &self.timings
    }

    /// Runs the model on `inp`: neighbour selection and basis as the oracle, the layers on the
    /// graph; outputs named as [`Se3TransformerOracle::forward`]'s.
    ///
    /// # Errors
    /// The input errors of [`Se3TransformerOracle::forward`]; session errors.
    pub fn forward(
        &mut self,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
    ) -> Result<StateDict, Error> {
        let (b, n) = (inp.batch(), inp.nodes());
        let t0 = std::time::Instant::now();
        let items = self.host()?.prepare(inp)?;
        let t1 = std::time::Instant::now();
        let mut per_batch = Vec::with_capacity(b);
        for group in merged_batch::run_groups(&items, n, self.mergeable()) {
            per_batch.extend(self.run_group(&items, &group, inp)?);
        }
        let t2 = std::time::Instant::now();
        self.timings = vec![
            ("prepare (neighbours + basis)", (t1 - t0).as_secs_f64()),
            ("graph", (t2 - t1).as_secs_f64()),
        ];
        self.host()?.assemble(per_batch, inp, fwd, b, n)
    }

    /// Whether clouds of a batch may share a graph run (`merged_batch.rs`): no global
    /// features, rotary embeddings or EGNN trunk.
    fn mergeable(&self) -> bool {
        self.global_dim.is_none()
            && !self.egnn
            && self.model.as_ref().is_some_and(|m| m.rotary.is_none())
    }

    /// Runs the clouds of `group` (one run, merged if more than one): their outputs.
    fn run_group(
        &mut self,
        items: &[Prepared],
        group: &merged_batch::RunGroup,
        inp: &ModelInputs,
    ) -> Result<Vec<crate::se3_transformer::features::Feats>, Error> {
        let range = group.items.clone();
        if range.len() == 1 {
            return Ok(vec![
                self.run_one(&items[range.start], &inp.points(range.start))?
            ]);
        }
        let part = &items[range.clone()];
        let merged = merged_batch::merge(part);
        let points: Vec<[f64; 3]> = range.clone().flat_map(|bi| inp.points(bi)).collect();
        let out = self.run_one(&merged, &points)?;
        let nodes: Vec<usize> = part.iter().map(|i| i.graph.n).collect();
        Ok(merged_batch::split_feats(out, &nodes))
    }

    fn host(&self) -> Result<&Se3TransformerOracle, Error> {
        self.model.as_ref().ok_or(Error::NotCompiled {
            option: "a model whose build did not finish",
        })
    }

    fn run_one(
        &mut self,
        item: &Prepared,
        points: &[[f64; 3]],
    ) -> Result<crate::se3_transformer::features::Feats, Error> {
        let g = &item.graph;
        let (n, k) = (g.n, g.k);
        let host_rotary = self.model.as_ref().and_then(|m| m.rotary.clone());
        let s = &mut self.session;
        let f32v = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        s.set("nbr", g.nbr.iter().map(|&j| j as f32).collect(), &[n * k])?;
        s.set(
            "valid",
            g.valid.iter().map(|&v| f32::from(u8::from(v))).collect(),
            &[n, k],
        )?;
        let mut pool = vec![0.0f32; n * k];
        for i in 0..n {
            let cnt = (0..k).filter(|&kk| g.valid[i * k + kk]).count();
            for kk in (0..k).filter(|&kk| g.valid[i * k + kk]) {
                pool[i * k + kk] = 1.0 / cnt as f32;
            }
        }
        s.set("pool_w", pool, &[n, k])?;
        if let Some(c) = &self.coors {
            c.set(s, points, g)?;
        } else {
            let mut rin = Vec::with_capacity(n * k * self.radial_width);
            for e in 0..n * k {
                let v = radial_input(
                    g.dist[e],
                    &g.edge_feat[e * g.edge_dim..(e + 1) * g.edge_dim],
                    self.fourier,
                )?;
                rin.extend(v.iter().map(|&x| x as f32));
            }
            let len = rin.len();
            s.set("radial_in", rin, &[len])?;
            for &(d_in, d_out) in &self.pairs {
                let block = g.basis.block(d_in, d_out)?;
                s.set(
                    &format!("basis.{d_in}.{d_out}"),
                    f32v(block),
                    &[block.len()],
                )?;
            }
        }
        if self.global_dim.is_some() {
            let gb = item.global.as_ref().ok_or(Error::MissingInput {
                name: "global_feats",
            })?;
            s.set_dim('g', gb.rows());
            s.set("global", f32v(&gb.data), &[gb.data.len()])?;
        }
        if self.egnn {
            if self.coors.is_none() {
                s.set(
                    "egnn_dist",
                    g.dist.iter().map(|&d| d as f32).collect(),
                    &[n * k],
                )?;
            }
            if g.edge_dim > 0 {
                s.set(EGNN_EDGE_INPUT, f32v(&g.edge_feat), &[g.edge_feat.len()])?;
            }
        }
        if let Some(rot) = &host_rotary {
            let dh = self.dim_head;
            let (nc, ns) = rot.cos_sin(dh, (0..n).map(|i| (i, 0.0)));
            let (ec, es) = rot.cos_sin(dh, (0..n * k).map(|e| (g.nbr[e], g.dist[e])));
            for (name, v) in [
                ("rot_node_cos", nc),
                ("rot_node_sin", ns),
                ("rot_edge_cos", ec),
                ("rot_edge_sin", es),
            ] {
                let len = v.len();
                s.set(name, v, &[len])?;
            }
        }
        for &(l, _) in &self.in_degrees {
            let blk = item
                .x0
                .get(&l)
                .ok_or(Error::MissingInput { name: "feats" })?;
            s.set(&format!("x.{l}"), f32v(&blk.data), &[blk.data.len()])?;
        }
        s.run()?;
        let mut out = crate::se3_transformer::features::Feats::new();
        for &(l, c) in &self.out_degrees {
            let o = s.get(&format!("out.{l}"))?;
            out.insert(
                l,
                crate::se3_transformer::features::Block {
                    channels: c,
                    m: 2 * l + 1,
                    data: o.data.iter().map(|&v| f64::from(v)).collect(),
                },
            );
        }
        Ok(out)
    }
}

/// Drops the layers of a host model whose graph is built (only embeddings, neighbour selection
/// and the basis table stay on the host).
fn strip_layers(host: &mut Se3TransformerOracle) {
    host.conv_in.pairs.clear();
    host.conv_in.self_interact = None;
    host.convs.clear();
    host.trunk = Trunk::Sequential(Vec::new());
    if let Some(c) = &mut host.conv_out {
        c.pairs.clear();
        c.self_interact = None;
    }
}

/// The ConvSE3 degree pairs of the model by layer (conv_in, each conv of the stack, the keys and
/// values of each attention block, conv_out), in module order: one radial bank each, so only the
/// hidden activations of the layer being run are alive.
fn model_pair_groups(
    model: &Se3TransformerOracle,
) -> Vec<Vec<&crate::se3_transformer::conv::Pair>> {
    use crate::se3_transformer::attention::KeyProj;
    let mut groups = vec![model.conv_in.pairs.iter().collect::<Vec<_>>()];
    groups.extend(model.convs.iter().map(|(c, _)| c.pairs.iter().collect()));
    let blocks = match &model.trunk {
        Trunk::Sequential(b) | Trunk::Reversible(b) => b.as_slice(),
        Trunk::Egnn(_) => &[],
    };
    for (a, _) in blocks {
        let mut g: Vec<_> = a.attn.to_v.pairs.iter().collect();
        if let KeyProj::Conv(c) = &a.attn.to_k {
            g.splice(0..0, c.pairs.iter());
        }
        groups.push(g);
    }
    if let Some(c) = &model.conv_out {
        groups.push(c.pairs.iter().collect());
    }
    groups.retain(|g| !g.is_empty());
    groups
}

fn attention_block_raw(
    ctx: &mut Ctx<'_>,
    a: &crate::se3_transformer::attention::AttentionBlock,
    x: &GFeats,
) -> Result<GFeats, Error> {
    let y = norm(ctx, &a.prenorm, x)?;
    attention(ctx, &a.attn, &y)
}

fn attention_block(
    ctx: &mut Ctx<'_>,
    a: &crate::se3_transformer::attention::AttentionBlock,
    x: &GFeats,
) -> Result<GFeats, Error> {
    Ok(residual(&attention_block_raw(ctx, a, x)?, x))
}

/// Drops the converted radial networks of an attention block's keys and values (built).
fn release_attention(ctx: &mut Ctx<'_>, a: &crate::se3_transformer::attention::AttentionBlock) {
    use crate::se3_transformer::attention::KeyProj;
    if let KeyProj::Conv(c) = &a.attn.to_k {
        ctx.release(&c.pairs);
    }
    ctx.release(&a.attn.to_v.pairs);
}

/// Converts the radial networks of every pair of the model's layers to float32 (the networks the
/// graph build reads, [`Ctx::radial_net`]) and drops the float64 last layers, one pair at a time,
/// so the model's bulk is never held twice.
///
/// # Errors
/// `WrongShape` for a malformed network (none in a loaded model).
fn convert_radials(model: &mut Se3TransformerOracle) -> Result<RadialNets, Error> {
    use crate::se3_transformer::attention::KeyProj;
    let mut nets = RadialNets::new();
    let mut convs: Vec<&mut crate::se3_transformer::conv::ConvSe3> = vec![&mut model.conv_in];
    convs.extend(model.convs.iter_mut().map(|(c, _)| c));
    if let Trunk::Sequential(blocks) | Trunk::Reversible(blocks) = &mut model.trunk {
        for (a, _) in blocks.iter_mut() {
            if let KeyProj::Conv(c) = &mut a.attn.to_k {
                convs.push(c);
            }
            convs.push(&mut a.attn.to_v);
        }
    }
    if let Some(c) = &mut model.conv_out {
        convs.push(c);
    }
    for conv in convs {
        for p in &mut conv.pairs {
            let net = radial_mlp(&p.radial)?;
            p.radial.l6.w = Vec::new();
            p.radial.l6.b = Vec::new();
            p.radial.l6_f32 = None;
            nets.insert(pair_key(p), std::rc::Rc::new(net));
        }
    }
    Ok(nets)
}

fn ff_block_raw(
    ctx: &mut Ctx<'_>,
    f: &crate::se3_transformer::attention::FeedForwardBlock,
    x: &GFeats,
) -> Result<GFeats, Error> {
    let y = norm(ctx, &f.prenorm, x)?;
    let y = linear(ctx, &f.project_in, &y, None)?;
    let y = norm(ctx, &f.nonlin, &y)?;
    linear(ctx, &f.project_out, &y, None)
}

fn ff_block(
    ctx: &mut Ctx<'_>,
    f: &crate::se3_transformer::attention::FeedForwardBlock,
    x: &GFeats,
) -> Result<GFeats, Error> {
    Ok(residual(&ff_block_raw(ctx, f, x)?, x))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::checkpoint::Tensor;
    use crate::model_file::ModelFile;
    use crate::se3_transformer::Se3TransformerConfig;

    fn reference(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/reference/models")
            .join(name)
    }

    /// Config, forward options, weights and inputs of a reference model.
    fn load(
        name: &str,
    ) -> Result<
        (
            Se3TransformerConfig,
            Se3TransformerForward,
            StateDict,
            ModelInputs,
        ),
        Error,
    > {
        let file = ModelFile::load(reference(name).join("config.json"))?;
        let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
        let sd = StateDict::load(reference(name).join("weights.safetensors"))?;
        let inputs = ModelInputs::load(
            reference(name).join("inputs.safetensors"),
            &file.forward_kwargs.tensors,
        )?;
        Ok((cfg, fwd, sd, inputs))
    }

    #[test]
    fn moving_the_state_dict_in_gives_the_outputs_of_the_copying_build() -> Result<(), Error> {
        // tied keys/values read the same converted radial networks twice
        for name in ["se3t_basic", "se3t_tie_kv", "se3t_reversible"] {
            let (cfg, fwd, sd, inputs) = load(name)?;
            let copied = Se3TransformerOracle::from_state_dict(&cfg, &sd)?;
            let want = Se3Transformer::new(&copied)?.forward(&inputs, &fwd)?;
            let got = Se3Transformer::from_state_dict(&cfg, sd)?.forward(&inputs, &fwd)?;
            assert_eq!(got, want, "{name}");
        }
        Ok(())
    }

    #[test]
    fn moving_loader_names_an_unexpected_key() -> Result<(), Error> {
        let (cfg, _, mut sd, _) = load("se3t_basic")?;
        sd.insert("not.a.weight", Tensor::new(vec![2], vec![1.0, 2.0])?);
        match Se3Transformer::from_state_dict(&cfg, sd) {
            Err(Error::UnexpectedKey { key, shape }) => {
                assert_eq!((key.as_str(), shape), ("not.a.weight", vec![2]));
                Ok(())
            }
            other => panic!("expected UnexpectedKey, got {other:?}"),
        }
    }
}
