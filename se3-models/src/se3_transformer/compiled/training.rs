//! The SE(3)-Transformer compiled with its gradients: one graph gives the outputs and the
//! gradients of `L = Σ_out <out, cotangent.out>` with respect to every parameter (PyTorch key
//! names, `param.<key>`) and every float input (`input.<name>`), for training with se3-core's
//! optimizers.
//!
//! The compiled layers hold their weights as session constants cut from the PyTorch parameters
//! (transposed, split per head, re-ordered for the contraction kernels; a parameter may feed
//! several constants). Which parameter element each constant element holds is found by building
//! the graph once from a state dict whose every parameter element holds its own tag (a distinct
//! float32 bit pattern, so up to about 319M elements) and reading the constants back; the build
//! from the real weights is then checked against that map element by element (every constant element is a parameter element
//! or the same constant in both builds), so a layer that transforms a weight rather than copying
//! it is an error, not a silently wrong gradient. `∂L/∂param` is the sum of the gradients of the
//! constant elements it feeds.
//!
//! The clouds of a batch share one graph run where the model allows it (`merged_batch.rs`),
//! so a batch of small clouds costs one forward and backward, not one per cloud.
//! [`TrainableSe3Transformer::forward`] runs a second, forward-only graph of the same layers
//! (built on first use, its weights written with every parameter update) for predictions that
//! need no gradient.
//!
//! Embeddings (`token_emb`, `pos_emb`, `edge_emb`, `adj_emb`) run on the host; their gradients
//! are taken on the host from the gradients of the graph's inputs (node features, radial input),
//! as are those of the float inputs (`feats`, `edges`, `global_feats`, and with
//! `differentiable_coors` the `coors`, through the in-graph kernel basis).

use crate::differentiable::Objective;
use std::collections::BTreeMap;

use luminal::prelude::{Dyn, GraphTensor, ShapeTracker};
use se3_core::exec::InputKind;

use super::param_runs::ParamRuns;
use super::{convert_radials, strip_layers, GraphForm, Se3Transformer, EGNN_EDGE_INPUT};
use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::{EdgeInput, ModelInputs, NodeFeats};
use crate::se3_transformer::oracle::Prepared;
use crate::se3_transformer::{Se3TransformerConfig, Se3TransformerForward, Se3TransformerOracle};
use crate::Error;

/// The float32 bit pattern of the first tag, 2^22: parameter element `g` is tagged with the
/// float32 whose bit pattern is `TAG_BASE_BITS + g` in the mapping build. Consecutive bit
/// patterns are distinct float32 values, and a copy keeps them exactly.
const TAG_BASE_BITS: u32 = 0x4A80_0000;
/// The tags stay below 2^60 (exponent 59), far from overflow in any arithmetic a layer might do
/// on its weights while building: 38 binades of 2^23 values, about 319M parameter elements.
const TAG_LIMIT: usize = (0x5D80_0000u32 - TAG_BASE_BITS) as usize;

/// The tag of parameter element `g` (`g < TAG_LIMIT`).
fn tag_of(g: usize) -> f32 {
    f32::from_bits(TAG_BASE_BITS + g as u32)
}

/// The parameter element a constant element `t` of the mapping build holds, if it is a tag.
fn element_of_tag(t: f32) -> Option<usize> {
    let bits = t.to_bits();
    (bits >= TAG_BASE_BITS && (bits - TAG_BASE_BITS) < TAG_LIMIT as u32)
        .then(|| (bits - TAG_BASE_BITS) as usize)
}

/// Parameters that live on the host (embeddings), not in the graph.
const HOST_PARAMS: [&str; 4] = [
    "token_emb.weight",
    "pos_emb.weight",
    "edge_emb.weight",
    "adj_emb.weight",
];

/// Whether a state-dict key is a buffer (not a parameter of `named_parameters()`).
fn is_buffer(key: &str) -> bool {
    key.ends_with("inv_freq")
}

/// One PyTorch parameter and its current value.
#[derive(Debug, Clone)]
struct Parameter {
    key: String,
    shape: Vec<usize>,
    value: Vec<f64>,
}

/// A session constant fed (in part) from parameters; its values live in the session only.
#[derive(Debug, Clone)]
struct Feed {
    name: String,
    shape: Vec<usize>,
    /// Elements.
    len: usize,
    /// The parameter elements it holds; the others are constants.
    runs: ParamRuns,
}

/// The SE(3)-Transformer with its gradients (module doc).
pub struct TrainableSe3Transformer {
    compiled: Se3Transformer,
    params: Vec<Parameter>,
    index: BTreeMap<String, usize>,
    feeds: Vec<Feed>,
    /// Feeds that read each parameter.
    readers: Vec<Vec<usize>>,
    /// Graph inputs with a gradient output `grad.<name>`.
    grad_inputs: Vec<String>,
    /// Output degrees and channels of the graph.
    out_degrees: Vec<(usize, usize)>,
    objective: Objective,
    timings: Vec<(&'static str, f64)>,
    /// The config, the form and the buffers, to build the forward-only graph.
    cfg: Se3TransformerConfig,
    form: GraphForm,
    buffers: StateDict,
    /// The forward-only graph ([`TrainableSe3Transformer::forward`]), built on first use and
    /// written with every parameter update after that.
    forward_graph: Option<Se3Transformer>,
}

impl std::fmt::Debug for TrainableSe3Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainableSe3Transformer")
            .field("parameters", &self.params.len())
            .field("feeds", &self.feeds.len())
            .finish()
    }
}

/// A shape of the declared rank for a weight of `len` elements: the fixed axes as declared,
/// the first dynamic one taking the rest, the others 1 (`Session::set_weight` checks only fixed
/// axes, rank and length).
fn set_shape(dims: &[Option<usize>], len: usize) -> Vec<usize> {
    let fixed: usize = dims.iter().flatten().product();
    let mut first = true;
    dims.iter()
        .map(|d| match d {
            Some(v) => *v,
            None if first => {
                first = false;
                len / fixed.max(1)
            }
            None => 1,
        })
        .collect()
}

fn f32_of(v: f64) -> f32 {
    v as f32
}

impl TrainableSe3Transformer {
    /// Builds and compiles the model of `cfg` with weights `sd` (PyTorch key names) and its
    /// gradients, the radial networks and edge contractions in `form`.
    ///
    /// # Errors
    /// Those of [`Se3TransformerOracle::from_state_dict`]; `NotCompiled` for more than 319M
    /// parameter elements or a layer that transforms a weight rather than copying it;
    /// `Core(NoGradient)` if the graph crosses an op without a backward pass (fused ops before
    /// their backward is merged: use [`GraphForm::Unfused`]).
    pub fn new(cfg: &Se3TransformerConfig, sd: &StateDict, form: GraphForm) -> Result<Self, Error> {
        Self::with_objective(cfg, sd, form, Objective::Cotangents)
    }

    /// As [`TrainableSe3Transformer::new`], with the backward pass seeded by `objective`.
    ///
    /// # Errors
    /// As [`TrainableSe3Transformer::new`].
    pub fn with_objective(
        cfg: &Se3TransformerConfig,
        sd: &StateDict,
        form: GraphForm,
        objective: Objective,
    ) -> Result<Self, Error> {
        let keys = Se3TransformerOracle::expected_keys(cfg)?;
        let mut params = Vec::new();
        let mut tagged = StateDict::new();
        let mut buffers = StateDict::new();
        let mut next = 0usize;
        for (key, shape) in &keys {
            let t = sd.get(key).ok_or_else(|| Error::MissingKey {
                key: key.clone(),
                expected: shape.clone(),
            })?;
            if is_buffer(key) {
                tagged.insert(key.clone(), t.clone());
                buffers.insert(key.clone(), t.clone());
                continue;
            }
            if HOST_PARAMS.contains(&key.as_str()) {
                tagged.insert(key.clone(), t.clone());
            } else {
                let len = t.data.len();
                if next + len > TAG_LIMIT {
                    return Err(Error::NotCompiled {
                        option: "gradients of more than 319M parameter elements",
                    });
                }
                let tags = (0..len).map(|i| f64::from(tag_of(next + i))).collect();
                tagged.insert(key.clone(), Tensor::new(t.shape.clone(), tags)?);
                next += len;
            }
            params.push(Parameter {
                key: key.clone(),
                shape: t.shape.clone(),
                value: t.data.clone(),
            });
        }
        // graph elements by tag: parameter index and offset of each graph parameter's tags
        let mut starts = Vec::new();
        let mut at = 0usize;
        for (pi, p) in params.iter().enumerate() {
            if !HOST_PARAMS.contains(&p.key.as_str()) {
                starts.push((at, pi));
                at += p.value.len();
            }
        }
        let locate = |tag: usize| -> Option<(u32, u32)> {
            let pos = starts.partition_point(|&(s, _)| s <= tag).checked_sub(1)?;
            let (s, pi) = starts[pos];
            Some((pi as u32, (tag - s) as u32))
        };

        let mut tag_model = Se3TransformerOracle::from_state_dict(cfg, &tagged)?;
        let tag_nets = convert_radials(&mut tag_model)?;
        let (tag_graph, _) = Se3Transformer::build_graph(&tag_model, tag_nets, form)?;
        drop(tag_model);

        let mut host = Se3TransformerOracle::from_state_dict(cfg, sd)?;
        let nets = convert_radials(&mut host)?;
        let (mut compiled, outs) = Se3Transformer::build_graph(&host, nets, form)?;
        strip_layers(&mut host);
        compiled.model = Some(host);

        let mut feeds = Vec::new();
        for (name, dims) in compiled.session.weights() {
            let tags = tag_graph.session.weight_values(&name)?;
            let values = compiled.session.weight_values(&name)?;
            if tags.len() != values.len() {
                return Err(Error::NotCompiled {
                    option: "a weight whose size depends on its values",
                });
            }
            let mut runs = ParamRuns::default();
            for (at, (&t, &v)) in tags.iter().zip(&values).enumerate() {
                let src = element_of_tag(t).filter(|&g| g < next).and_then(locate);
                let holds = match src {
                    Some((pi, ei)) => f32_of(params[pi as usize].value[ei as usize]) == v,
                    None => t.to_bits() == v.to_bits(),
                };
                if !holds {
                    return Err(Error::NotCompiled {
                        option: "gradients of a layer that transforms its weights",
                    });
                }
                if let Some((pi, ei)) = src {
                    runs.push(at, pi, ei as usize);
                }
            }
            if !runs.is_empty() {
                let shape = set_shape(&dims, values.len());
                feeds.push(Feed {
                    name,
                    shape,
                    len: values.len(),
                    runs,
                });
            }
        }
        drop(tag_graph);
        let mut readers = vec![Vec::new(); params.len()];
        for (fi, f) in feeds.iter().enumerate() {
            for p in f.runs.params() {
                readers[p as usize].push(fi);
            }
        }

        // cotangents of the outputs and the gradients
        let s = &mut compiled.session;
        let mut pairs = Vec::new();
        for &(l, t) in &outs {
            let dims = se3_core::ops::logical_dims_of(&t.shape);
            let c = match objective {
                Objective::Cotangents => {
                    s.input_with_shape::<()>(&format!("cot.{l}"), InputKind::Values, &dims)
                }
                Objective::MeanSquaredError => {
                    // (out - target) * w, w = 2 / len on every element (set per run)
                    type T3 = GraphTensor<(Dyn<'-'>, Dyn<'-'>, Dyn<'-'>)>;
                    let target: T3 =
                        s.input_with_shape(&format!("target.{l}"), InputKind::Values, &dims);
                    let w: T3 = s.input_with_shape(&format!("mse_w.{l}"), InputKind::Values, &dims);
                    let out = T3::from_id(t.id, t.shape, t.graph_ref);
                    ((out - target) * w).no_shape()
                }
            };
            pairs.push((t, c));
        }
        let mut grad_inputs: Vec<String> = compiled
            .in_degrees
            .iter()
            .map(|&(l, _)| format!("x.{l}"))
            .collect();
        let edge_dim = compiled.model.as_ref().map_or(0, |m| m.shape.edge_dim);
        if compiled.coors.is_some() {
            grad_inputs.push(super::coors::COORS_INPUT.to_string());
            if edge_dim > 0 {
                grad_inputs.push(super::coors::EDGE_INPUT.to_string());
            }
        } else if edge_dim > 0 {
            grad_inputs.push("radial_in".to_string());
        }
        if compiled.egnn && edge_dim > 0 {
            // the EGNN trunk's edge MLPs read the edge features from an input of their own
            grad_inputs.push(EGNN_EDGE_INPUT.to_string());
        }
        if compiled.global_dim.is_some() {
            grad_inputs.push("global".to_string());
        }
        let mut wrt = Vec::new();
        for n in &grad_inputs {
            wrt.push(s.tensor(n)?);
        }
        for f in &feeds {
            // the whole buffer, whatever the declared (possibly dynamic) axes
            let t = s.tensor(&f.name)?;
            let flat = ShapeTracker::new(&[f.len.into()]);
            wrt.push(GraphTensor::from_id(t.id, flat, t.graph_ref));
        }
        let grads = se3_core::autodiff::gradients(&pairs, &wrt)?;
        let names = grad_inputs.iter().chain(feeds.iter().map(|f| &f.name));
        for (n, g) in names.zip(&grads) {
            s.output(&format!("grad.{n}"), *g);
        }
        s.compile();
        let out_degrees = compiled.out_degrees.clone();
        let index = params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.key.clone(), i))
            .collect();
        Ok(TrainableSe3Transformer {
            compiled,
            params,
            index,
            feeds,
            readers,
            grad_inputs,
            out_degrees,
            objective,
            timings: Vec::new(),
            cfg: cfg.clone(),
            form,
            buffers,
            forward_graph: None,
        })
    }

    /// The outputs only (named as [`Se3TransformerOracle::forward`]'s), from a forward-only graph of
    /// the same layers: no backward pass is run, so a prediction costs a fraction of
    /// [`TrainableSe3Transformer::forward_and_gradients`]. The graph is built and compiled on the
    /// first call from the current parameters, and every later parameter update writes it too.
    ///
    /// # Errors
    /// Input errors of [`Se3TransformerOracle::forward`]; those of the graph build
    /// ([`Se3Transformer::from_model_in`]); `NotCompiled` if the forward graph's
    /// weights are not those of the training graph.
    pub fn forward(
        &mut self,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
    ) -> Result<StateDict, Error> {
        if self.forward_graph.is_none() {
            self.forward_graph = Some(self.build_forward_graph()?);
        }
        let graph = self.forward_graph.as_mut().ok_or(Error::NotCompiled {
            option: "a forward graph whose build did not finish",
        })?;
        let out = graph.forward(inp, fwd)?;
        self.timings = graph
            .last_timings()
            .iter()
            .map(|&(stage, s)| match stage {
                "graph" => ("graph: forward", s),
                _ => ("host: neighbours + basis", s),
            })
            .collect();
        Ok(out)
    }

    /// The forward-only graph of the current parameters; checks that it holds every weight
    /// the training graph feeds from parameters, with the same number of elements.
    fn build_forward_graph(&self) -> Result<Se3Transformer, Error> {
        let mut sd = self.buffers.clone();
        for p in &self.params {
            sd.insert(
                p.key.clone(),
                Tensor::new(p.shape.clone(), p.value.clone())?,
            );
        }
        let model = Se3TransformerOracle::from_state_dict(&self.cfg, &sd)?;
        let graph = Se3Transformer::from_model_in(model, self.form)?;
        let weights: BTreeMap<String, usize> = graph
            .session
            .weights()
            .into_iter()
            .map(|(name, _)| {
                let len = graph.session.weight_values(&name).map_or(0, |v| v.len());
                (name, len)
            })
            .collect();
        for f in &self.feeds {
            if weights.get(&f.name) != Some(&f.len) {
                return Err(Error::NotCompiled {
                    option: "a forward graph whose weights differ from the training graph's",
                });
            }
        }
        Ok(graph)
    }

    /// The parameters (PyTorch key names, `named_parameters()` order) and their shapes.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        self.params
            .iter()
            .map(|p| (p.key.clone(), p.shape.clone()))
            .collect()
    }

    /// The current value of parameter `key`, row-major.
    ///
    /// # Errors
    /// `MissingKey` for a key that is not a parameter.
    pub fn parameter(&self, key: &str) -> Result<&[f64], Error> {
        let i = self.param_index(key)?;
        Ok(&self.params[i].value)
    }

    fn param_index(&self, key: &str) -> Result<usize, Error> {
        self.index
            .get(key)
            .copied()
            .ok_or_else(|| Error::MissingKey {
                key: key.to_string(),
                expected: vec![],
            })
    }

    /// Runs the training graph on `device` from now on, its weights uploaded once and again
    /// after [`set_parameter`](Self::set_parameter) ([`Se3Transformer::set_device`]).
    ///
    /// # Errors
    /// `CudaNotCompiled`, `CudaUnavailable`, or `InvalidOp` to move the graph off its device.
    pub fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        self.compiled.set_device(device)
    }

    /// Sets parameter `key` (row-major `values`) in the graph (every constant it feeds) or on
    /// the host (embeddings).
    ///
    /// # Errors
    /// `MissingKey` for a key that is not a parameter, `WrongShape` for a wrong length,
    /// `NonFinite` for NaN or infinite values; session errors.
    pub fn set_parameter(&mut self, key: &str, values: &[f64]) -> Result<(), Error> {
        self.set_parameters(&[(key, values)])
    }

    /// [`TrainableSe3Transformer::set_parameters`] from float32 values (an optimizer's state).
    ///
    /// # Errors
    /// As [`TrainableSe3Transformer::set_parameters`].
    pub fn set_parameters_f32(&mut self, values: &[(String, Vec<f32>)]) -> Result<(), Error> {
        let mut touched = vec![false; self.feeds.len()];
        for (key, v) in values {
            // one parameter widened at a time
            let wide: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            let pi = self.update_parameter(key, &wide)?;
            for &fi in &self.readers[pi] {
                touched[fi] = true;
            }
        }
        self.write_feeds(&touched)
    }

    /// Sets several parameters (as [`TrainableSe3Transformer::set_parameter`]), writing each
    /// graph constant they feed once: the form for an optimizer step, where a constant cut from
    /// several parameters would otherwise be rewritten once per parameter.
    ///
    /// # Errors
    /// As [`TrainableSe3Transformer::set_parameter`]; the values before the failing key are set.
    pub fn set_parameters(&mut self, updates: &[(&str, &[f64])]) -> Result<(), Error> {
        let mut touched = vec![false; self.feeds.len()];
        for (key, values) in updates {
            let pi = self.update_parameter(key, values)?;
            for &fi in &self.readers[pi] {
                touched[fi] = true;
            }
        }
        self.write_feeds(&touched)
    }

    /// Writes the graph constants marked in `touched` from the current parameters (in the
    /// training graph and the forward graph).
    fn write_feeds(&mut self, touched: &[bool]) -> Result<(), Error> {
        for (fi, _) in touched.iter().enumerate().filter(|t| *t.1) {
            let f = &self.feeds[fi];
            // the constants of the feed are read back from the session (no host copy is kept)
            let mut values = self.compiled.session.weight_values(&f.name)?;
            let params = &self.params;
            f.runs.write(&mut values, |p, e| f32_of(params[p].value[e]));
            if let Some(graph) = self.forward_graph.as_mut() {
                graph
                    .session
                    .set_weight(&f.name, values.clone(), &f.shape)?;
            }
            self.compiled
                .session
                .set_weight(&f.name, values, &f.shape)?;
        }
        Ok(())
    }

    /// Checks and stores the value of parameter `key` (and the host copy of an embedding);
    /// returns its index. The graph constants are written by the caller.
    fn update_parameter(&mut self, key: &str, values: &[f64]) -> Result<usize, Error> {
        let pi = self.param_index(key)?;
        let p = &self.params[pi];
        if values.len() != p.value.len() {
            return Err(Error::WrongShape {
                key: key.to_string(),
                expected: p.shape.clone(),
                found: vec![values.len()],
            });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                name: "parameter values",
                index,
            });
        }
        self.params[pi].value.copy_from_slice(values);
        let hosts = [
            self.compiled.model.as_mut(),
            self.forward_graph.as_mut().and_then(|g| g.model.as_mut()),
        ];
        for host in hosts.into_iter().flatten() {
            let mat = match key {
                "token_emb.weight" => host.token_emb.as_mut(),
                "pos_emb.weight" => host.pos_emb.as_mut(),
                "edge_emb.weight" => host.edge_emb.as_mut(),
                "adj_emb.weight" => host.adj_emb.as_mut(),
                _ => None,
            };
            if let Some(m) = mat {
                m.data = values.to_vec();
            }
        }
        Ok(pi)
    }

    /// Wall time of the stages of the last [`TrainableSe3Transformer::forward_and_gradients`],
    /// seconds.
    pub fn last_timings(&self) -> &[(&'static str, f64)] {
        &self.timings
    }

    /// Wraps every operator of the training graph in a timer ([`se3_core::exec::profile`]), so
    /// later steps record per-operator timings (benchmarks only).
    pub fn instrument(&mut self) {
        self.compiled.instrument();
    }

    /// The compiled model (e.g. for its session's memory figures).
    pub fn compiled(&self) -> &Se3Transformer {
        &self.compiled
    }

    /// The outputs (named as [`Se3TransformerOracle::forward`]'s) and the gradients of
    /// `L = Σ_out <out, cotangents["cotangent.<out>"]>` (with [`Objective::MeanSquaredError`]:
    /// of `Σ_out mean((out - cotangents["target.<out>"])²)`): `param.<key>` for every parameter and
    /// `input.<name>` for the float inputs (`feats`, or `feats_type<l>` for per-degree
    /// features; `edges` for float edge features; `global_feats`; `coors` with
    /// `differentiable_coors`).
    ///
    /// # Errors
    /// Input errors of [`Se3TransformerOracle::forward`]; `MissingKey` for an output without a
    /// cotangent; `WrongShape` for a cotangent of the wrong size.
    pub fn forward_and_gradients(
        &mut self,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
        cotangents: &StateDict,
    ) -> Result<(StateDict, StateDict), Error> {
        let (b, n) = (inp.batch(), inp.nodes());
        let t0 = std::time::Instant::now();
        let items = self.compiled.host()?.prepare(inp)?;
        let t1 = std::time::Instant::now();
        let mut graph_s = 0.0;
        let mut per_batch = Vec::with_capacity(b);
        // allocated after the first graph run, so they are not alive at its peak
        let mut grads: Option<Vec<Vec<f64>>> = None;
        let mut input_grads: Vec<BTreeMap<String, Vec<f32>>> = Vec::with_capacity(b);
        let groups = super::merged_batch::run_groups(&items, n, self.compiled.mergeable());
        for group in &groups {
            let range = group.items.clone();
            let clouds = range.len();
            for &(l, c) in &self.out_degrees {
                let shape = [clouds * n, c, 2 * l + 1];
                match self.objective {
                    Objective::Cotangents => {
                        let mut cot = Vec::new();
                        for bi in range.clone() {
                            cot.extend(self.graph_cotangent(inp, fwd, cotangents, bi, l, c)?);
                        }
                        self.compiled
                            .session
                            .set(&format!("cot.{l}"), cot, &shape)?;
                    }
                    Objective::MeanSquaredError => {
                        let (mut target, mut w) = (Vec::new(), Vec::new());
                        for bi in range.clone() {
                            let (t, wt) = self.graph_target(inp, fwd, cotangents, bi, l, c)?;
                            target.extend(t);
                            w.extend(wt);
                        }
                        let s = &mut self.compiled.session;
                        s.set(&format!("target.{l}"), target, &shape)?;
                        s.set(&format!("mse_w.{l}"), w, &shape)?;
                    }
                }
            }
            let tg = std::time::Instant::now();
            per_batch.extend(self.compiled.run_group(&items, group, inp)?);
            graph_s += tg.elapsed().as_secs_f64();
            let s = &self.compiled.session;
            let acc = grads.get_or_insert_with(|| self.zero_gradients());
            for f in &self.feeds {
                let g = s.get(&format!("grad.{}", f.name))?;
                if g.data.len() != f.len {
                    return Err(Error::NotCompiled {
                        option: "a parameter gradient of another size than its constant",
                    });
                }
                f.runs.accumulate(&g.data, acc);
            }
            // the clouds of a merged run are of one size: every input's gradient splits evenly
            let mut per_cloud = vec![BTreeMap::new(); clouds];
            for name in &self.grad_inputs {
                let data = s.get(&format!("grad.{name}"))?.data;
                let part = data.len() / clouds;
                for (i, ig) in per_cloud.iter_mut().enumerate() {
                    ig.insert(name.clone(), data[i * part..(i + 1) * part].to_vec());
                }
            }
            input_grads.extend(per_cloud);
        }
        let outputs = self.compiled.host()?.assemble(per_batch, inp, fwd, b, n)?;
        let mut grads = grads.unwrap_or_else(|| self.zero_gradients());
        let mut sd = StateDict::new();
        self.host_gradients(inp, &items, &input_grads, &mut grads, &mut sd)?;
        for (p, g) in self.params.iter().zip(grads) {
            sd.insert(format!("param.{}", p.key), Tensor::new(p.shape.clone(), g)?);
        }
        let total = t1.elapsed().as_secs_f64();
        self.timings = vec![
            ("host: neighbours + basis", (t1 - t0).as_secs_f64()),
            ("graph: forward + backward", graph_s),
            ("host: outputs + gradients", total - graph_s),
        ];
        Ok((outputs, sd))
    }

    /// One zero gradient buffer per parameter.
    fn zero_gradients(&self) -> Vec<Vec<f64>> {
        self.params
            .iter()
            .map(|p| vec![0.0; p.value.len()])
            .collect()
    }

    /// The target of graph output `out.<l>` of batch element `bi` and the weight `2 / len` of
    /// its elements (0 for a degree not returned) for [`Objective::MeanSquaredError`].
    fn graph_target(
        &self,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
        targets: &StateDict,
        bi: usize,
        l: usize,
        c: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        let (b, n) = (inp.batch(), inp.nodes());
        let per = n * c * (2 * l + 1);
        let Some(name) = self.output_name(fwd, l)? else {
            return Ok((vec![0.0; per], vec![0.0; per]));
        };
        if fwd.return_pooled {
            return Err(Error::NotCompiled {
                option: "an in-graph MSE objective with return_pooled",
            });
        }
        let key = format!("target.{name}");
        let t = targets.get(&key).ok_or_else(|| Error::MissingKey {
            key: key.clone(),
            expected: vec![b * per],
        })?;
        if t.data.len() != b * per {
            return Err(Error::WrongShape {
                key,
                expected: vec![b * per],
                found: t.shape.clone(),
            });
        }
        let target = t.data[bi * per..(bi + 1) * per]
            .iter()
            .map(|&v| v as f32)
            .collect();
        Ok((target, vec![(2.0 / (b * per) as f64) as f32; per]))
    }

    /// The name of the output that holds degree `l` (`out` or `type<l>`; `None` if the
    /// forward does not return it).
    fn output_name(&self, fwd: &Se3TransformerForward, l: usize) -> Result<Option<String>, Error> {
        let host = self.compiled.host()?;
        let mut return_type = fwd.return_type;
        if host.shape.output_degrees == Some(1) {
            return_type = Some(0);
        }
        Ok(match return_type {
            Some(r) if r == l => Some("out".to_string()),
            Some(_) => None,
            None => Some(format!("type{l}")),
        })
    }

    /// The cotangent of graph output `out.<l>` (`[n, c, 2l + 1]`) of batch element `bi`: the
    /// adjoint of the output assembly (return type, pooling over unmasked nodes).
    fn graph_cotangent(
        &self,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
        cotangents: &StateDict,
        bi: usize,
        l: usize,
        c: usize,
    ) -> Result<Vec<f32>, Error> {
        let n = inp.nodes();
        let m = 2 * l + 1;
        let Some(name) = self.output_name(fwd, l)? else {
            return Ok(vec![0.0; n * c * m]);
        };
        let key = format!("cotangent.{name}");
        let b = inp.batch();
        let per = if fwd.return_pooled { c * m } else { n * c * m };
        let t = cotangents.get(&key).ok_or_else(|| Error::MissingKey {
            key: key.clone(),
            expected: vec![b * per],
        })?;
        if t.data.len() != b * per {
            return Err(Error::WrongShape {
                key,
                expected: vec![b * per],
                found: t.shape.clone(),
            });
        }
        let slice = &t.data[bi * per..(bi + 1) * per];
        if !fwd.return_pooled {
            return Ok(slice.iter().map(|&v| v as f32).collect());
        }
        let mask = inp.node_mask(bi);
        let valid = |i: usize| mask.is_none_or(|mk| mk[i]);
        let cnt = (0..n).filter(|&i| valid(i)).count().max(1);
        let mut out = vec![0.0f32; n * c * m];
        for i in (0..n).filter(|&i| valid(i)) {
            for (o, &v) in out[i * c * m..(i + 1) * c * m].iter_mut().zip(slice) {
                *o = (v / cnt as f64) as f32;
            }
        }
        Ok(out)
    }

    /// Gradients of the host-side parameters (embeddings) and of the float inputs from the
    /// gradients of the graph's inputs.
    fn host_gradients(
        &self,
        inp: &ModelInputs,
        items: &[Prepared],
        input_grads: &[BTreeMap<String, Vec<f32>>],
        grads: &mut [Vec<f64>],
        sd: &mut StateDict,
    ) -> Result<(), Error> {
        let host = self.compiled.host()?;
        let (b, n) = (inp.batch(), inp.nodes());
        let get = |bi: usize, name: &str| -> Result<&Vec<f32>, Error> {
            input_grads[bi].get(name).ok_or(Error::MissingInput {
                name: "gradient of a graph input",
            })
        };
        let pidx = |key: &str| self.index.get(key).copied();
        // node features
        let d0 = host.shape.fiber_in[0].1;
        match &inp.feats {
            NodeFeats::Degrees(map) => {
                for &(l, _) in &self.compiled.in_degrees {
                    let shape = map.get(&l).map(|t| t.shape.clone()).unwrap_or_default();
                    let mut all = Vec::new();
                    for bi in 0..b {
                        all.extend(get(bi, &format!("x.{l}"))?.iter().map(|&v| f64::from(v)));
                    }
                    sd.insert(format!("input.feats_type{l}"), Tensor::new(shape, all)?);
                }
                // a degree passed but not read (`dim_in` shorter than `input_degrees`) does
                // not reach the outputs: its gradient is zero
                for (l, t) in map {
                    if !self.compiled.in_degrees.iter().any(|&(d, _)| d == *l) {
                        let zeros = vec![0.0; t.data.len()];
                        sd.insert(
                            format!("input.feats_type{l}"),
                            Tensor::new(t.shape.clone(), zeros)?,
                        );
                    }
                }
            }
            NodeFeats::Dense(_) | NodeFeats::Tokens { .. } => {
                let mut all = Vec::with_capacity(b * n * d0);
                for bi in 0..b {
                    all.extend(get(bi, "x.0")?.iter().map(|&v| f64::from(v)));
                }
                if let (Some(pe), Some(pi)) = (&host.pos_emb, pidx("pos_emb.weight")) {
                    for bi in 0..b {
                        for i in 0..n {
                            for c in 0..d0 {
                                let at = if pe.cols == 1 { i } else { i * pe.cols + c };
                                grads[pi][at] += all[(bi * n + i) * d0 + c];
                            }
                        }
                    }
                }
                match &inp.feats {
                    NodeFeats::Tokens { ids, .. } => {
                        if let Some(pi) = pidx("token_emb.weight") {
                            for (r, &t) in ids.iter().enumerate() {
                                let t = t as usize;
                                for c in 0..d0 {
                                    grads[pi][t * d0 + c] += all[r * d0 + c];
                                }
                            }
                        }
                    }
                    _ => sd.insert("input.feats", Tensor::new(vec![b, n, d0], all)?),
                }
            }
        }
        // edge features: the radial input's edge columns, or the in-graph edge input
        let edge_dim = host.shape.edge_dim;
        if edge_dim > 0 {
            let in_graph = self.compiled.coors.is_some();
            let (name, width) = if in_graph {
                (super::coors::EDGE_INPUT, edge_dim)
            } else {
                ("radial_in", self.compiled.radial_width)
            };
            // the edge columns of each row of every input that reads the edge features:
            // (input, row width, first edge column)
            let mut sources = vec![(name, width, width - edge_dim)];
            if self.compiled.egnn {
                sources.push((EGNN_EDGE_INPUT, edge_dim, 0));
            }
            let adj_dim = host.adj_emb.as_ref().map_or(0, |m| m.cols);
            let edge_in = edge_dim - adj_dim;
            let mut dense = match &inp.edges {
                Some(EdgeInput::Dense(t)) => Some((t.shape.clone(), vec![0.0; t.data.len()])),
                _ => None,
            };
            for ((bi, item), &(name, width, off)) in items
                .iter()
                .enumerate()
                .flat_map(|it| sources.iter().map(move |src| (it, src)))
            {
                let g = get(bi, name)?;
                let gr = &item.graph;
                for e in 0..gr.n * gr.k {
                    let (i, j) = (e / gr.k, gr.nbr[e]);
                    let row = &g[e * width + off..(e + 1) * width];
                    let pair = (bi * n + i) * n + j;
                    match (&inp.edges, &mut dense) {
                        (Some(EdgeInput::Tokens { ids, .. }), _) => {
                            if let Some(pi) = pidx("edge_emb.weight") {
                                let t = ids[pair] as usize;
                                for c in 0..edge_in {
                                    grads[pi][t * edge_in + c] += f64::from(row[c]);
                                }
                            }
                        }
                        (_, Some((_, d))) => {
                            for c in 0..edge_in {
                                d[pair * edge_in + c] += f64::from(row[c]);
                            }
                        }
                        _ => {}
                    }
                    if let (Some(labels), Some(pi)) = (&item.adj_labels, pidx("adj_emb.weight")) {
                        let t = labels[i * n + j] as usize;
                        for c in 0..adj_dim {
                            grads[pi][t * adj_dim + c] += f64::from(row[edge_in + c]);
                        }
                    }
                }
            }
            if let Some((shape, d)) = dense {
                sd.insert("input.edges", Tensor::new(shape, d)?);
            }
        }
        if let Some(gt) = &inp.global_feats {
            let mut all = Vec::with_capacity(gt.data.len());
            for bi in 0..b {
                all.extend(get(bi, "global")?.iter().map(|&v| f64::from(v)));
            }
            sd.insert("input.global_feats", Tensor::new(gt.shape.clone(), all)?);
        }
        if self.compiled.coors.is_some() {
            let mut all = Vec::with_capacity(b * n * 3);
            for bi in 0..b {
                all.extend(
                    get(bi, super::coors::COORS_INPUT)?
                        .iter()
                        .map(|&v| f64::from(v)),
                );
            }
            sd.insert("input.coors", Tensor::new(vec![b, n, 3], all)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{element_of_tag, tag_of, TAG_LIMIT};
    use rand::Rng;

    /// Tags round-trip through float64 (the state dict) and back for random elements across
    /// the whole range, past the 2^24 elements an integer tag would allow, and a value that is
    /// not a tag (negative, small, or past the range) maps to none.
    #[test]
    fn parameter_tags_round_trip_beyond_float32_integers() {
        let (mut r, seed) = se3_core::testing::rng();
        let mut elems: Vec<usize> = (0..1000).map(|_| r.gen_range(0..TAG_LIMIT)).collect();
        elems.extend([0, 16_777_216, 25_000_000, TAG_LIMIT - 1]);
        for g in elems {
            let t = f64::from(tag_of(g)) as f32;
            assert_eq!(element_of_tag(t), Some(g), "element {g} (seed {seed})");
        }
        for v in [-1.0f32, 0.5, 1.0e3, 2.0e18, f32::INFINITY] {
            assert_eq!(element_of_tag(v), None, "value {v}");
        }
    }
}
