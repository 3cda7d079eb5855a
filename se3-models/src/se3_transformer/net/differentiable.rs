//! [`Differentiable`] for the SE(3)-Transformer: [`Se3TransformerNet`]'s graph with the
//! library's outputs (pooled in the graph with `return_pooled`), an [`Objective`] and its
//! backward pass (`se3_core::autodiff`), giving `∂L/∂w` for every checkpoint parameter
//! (`param.<key>`) and for the float inputs (`input.feats` or `input.feats_type<l>`,
//! `input.edges`, `input.global_feats`, `input.coors`). The coordinates' gradient is the true
//! derivative through the in-graph kernel basis and distances (se3-transformer-pytorch
//! detaches the basis unless `differentiable_coors`, so the references store none).

use luminal::prelude::*;
use se3_core::exec::{IndexBound, InputKind, Session};
use se3_core::layers::graph::{expand_at, reshape, X};

use super::{FlatInputs, NetSession, Se3TransformerNet};
use crate::checkpoint::{StateDict, Tensor};
use crate::differentiable::{Differentiable, Gradients, Objective, ObjectiveGraph, Parameters};
use crate::inputs::{EdgeInput, ModelInputs, NodeFeats};
use crate::se3_transformer::Se3TransformerForward;
use crate::Error;

/// One output of the library: its name, degree and whether it is pooled.
#[derive(Debug, Clone)]
struct NamedOutput {
    name: String,
    l: usize,
    channels: usize,
    width: usize,
}

/// The SE(3)-Transformer compiled with gradients, as `se3 grad` and `se3 train` run it.
#[derive(Debug)]
pub struct DifferentiableSe3Transformer {
    run: NetSession,
    fwd: Se3TransformerForward,
    outputs: Vec<NamedOutput>,
    objective: ObjectiveGraph,
    params: Parameters,
    /// The graph inputs whose gradients are outputs `grad.input.<name>`.
    inputs: Vec<String>,
    reduce: bool,
    /// Wall time of the stages of the last run, seconds.
    timings: Vec<(&'static str, f64)>,
    /// The model, for the forward-only graph built on first use.
    net: Se3TransformerNet,
    /// The forward-only graph ([`DifferentiableSe3Transformer::forward`]), its weights kept
    /// equal to the parameters.
    forward_run: Option<NetSession>,
}

impl DifferentiableSe3Transformer {
    /// Compiles `net` with the forward literals `fwd` and gradients for `objective`; the
    /// trainable parameters are the session weights named as keys of `checkpoint`. With
    /// `coordinate_gradients` the graph also gives `input.coors` (its backward through the
    /// kernel basis costs about a sixth more time and half again the intermediates of a
    /// training step, so training leaves it out).
    ///
    /// # Errors
    /// Graph build errors; `WrongShape` for a checkpoint that disagrees with the graph;
    /// `InvalidConfig` for a `return_type` the model does not output.
    pub fn new(
        net: &Se3TransformerNet,
        fwd: Se3TransformerForward,
        checkpoint: &StateDict,
        objective: Objective,
        coordinate_gradients: bool,
    ) -> Result<Self, Error> {
        let mut s = Session::new();
        let (x, edges, basis) = net.declare_inputs(&mut s)?;
        let y = net.build_for_gradients(&mut s, "", &x, &edges, &basis)?;
        let fiber = net.output_fiber().clone();
        let return_type = if net.returns_scalar() {
            Some(0)
        } else {
            fwd.return_type
        };
        let mut outputs = Vec::new();
        let mut graph_outputs = Vec::new();
        let pool = fwd.return_pooled.then(|| {
            let cloud = s.input::<(Dyn<'n'>,)>(
                "pool.cloud",
                InputKind::Indices {
                    bound: IndexBound::Dim('b'),
                    allow_missing: false,
                },
            );
            let weight = s.input::<(Dyn<'n'>,)>("pool.weight", InputKind::Values);
            (cloud, weight)
        });
        for (d, t) in fiber.degrees().iter().zip(y.tensors()) {
            let name = match return_type {
                Some(r) if r == d.l => "out".to_string(),
                Some(_) => continue,
                None => format!("type{}", d.l),
            };
            let w = d.channels * d.width();
            let flat: GraphTensor<(Dyn<'n'>, X)> = reshape(*t, &['n'.into(), w.into()]);
            let out: GraphTensor<()> = match pool {
                Some((cloud, weight)) => {
                    let weighted = flat * expand_at::<_, (Dyn<'n'>, X)>(weight, 1, w);
                    let pooled: GraphTensor<(Dyn<'b'>, X)> =
                        se3_core::ops::scatter_add::<Dyn<'b'>, X, Dyn<'n'>>(weighted, cloud);
                    GraphTensor::from_id(pooled.id, pooled.shape, pooled.graph_ref)
                }
                None => GraphTensor::from_id(flat.id, flat.shape, flat.graph_ref),
            };
            outputs.push(NamedOutput {
                name: name.clone(),
                l: d.l,
                channels: d.channels,
                width: d.width(),
            });
            graph_outputs.push((name, out));
        }
        if let (Some(r), true) = (return_type, outputs.is_empty()) {
            return Err(Error::InvalidConfig {
                field: "return_type",
                expected: "a degree the model outputs",
                found: r.to_string(),
            });
        }
        for (name, t) in &graph_outputs {
            s.output(&format!("out.{name}"), *t);
        }
        let (objective, pairs) = ObjectiveGraph::attach(&mut s, objective, &graph_outputs);
        let params = Parameters::from_session(&s, checkpoint)?;
        // float inputs with gradients
        let mut inputs = Vec::new();
        if coordinate_gradients {
            inputs.push("coords".to_string());
        }
        if net.token_emb.is_none() {
            inputs.extend(
                net.fibers()
                    .input
                    .degrees()
                    .iter()
                    .map(|d| format!("x.{}", d.l)),
            );
        }
        if net.edge_emb.is_none() && net.options().edge_input_width() > 0 {
            inputs.push("edges.features".into());
        }
        if net.options().global_feats_dim.is_some() {
            inputs.push("global".into());
        }
        let mut wrt = Vec::new();
        for name in &inputs {
            wrt.push(s.tensor(name)?);
        }
        for p in params.iter() {
            wrt.push(s.tensor(&p.name)?);
        }
        let grads = se3_core::autodiff::gradients(&pairs, &wrt)?;
        let names = inputs
            .iter()
            .map(|n| format!("grad.input.{n}"))
            .chain(params.iter().map(|p| format!("grad.{}", p.name)));
        for (name, g) in names.zip(grads) {
            s.output(&name, g);
        }
        s.compile();
        Ok(DifferentiableSe3Transformer {
            run: NetSession::from_session(s, net),
            fwd,
            outputs,
            objective,
            params,
            inputs,
            reduce: net.options().reduce_dim_out,
            timings: Vec::new(),
            net: net.clone(),
            forward_run: None,
        })
    }

    /// The outputs alone (named and shaped as the library returns them), on a forward-only
    /// graph of the same layers with the current parameters (built on first use).
    ///
    /// # Errors
    /// As [`NetSession::forward_inputs`].
    pub fn forward(&mut self, inputs: &ModelInputs) -> Result<StateDict, Error> {
        let run = match &mut self.forward_run {
            Some(run) => run,
            slot => {
                let mut run = self.net.compile()?;
                for p in self.params.iter() {
                    run.session()
                        .set_weight(&p.name, p.value.clone(), &p.shape)?;
                }
                slot.insert(run)
            }
        };
        let t = std::time::Instant::now();
        let out = run.forward_inputs(inputs, &self.fwd)?;
        self.timings = vec![("graph: forward", t.elapsed().as_secs_f64())];
        Ok(out)
    }

    /// The session (e.g. its memory figures).
    pub fn session(&mut self) -> &mut Session {
        self.run.session()
    }

    /// Wall time of the stages of the last [`Differentiable::gradients`]: host inputs
    /// (neighbour selection, per-edge inputs), the graph (forward and backward), host outputs
    /// and gradients, seconds.
    pub fn last_timings(&self) -> &[(&'static str, f64)] {
        &self.timings
    }

    /// Wraps every operator of the graph in a timer ([`se3_core::exec::profile`]), so later
    /// runs record per-operator timings (benchmarks only).
    pub fn instrument(&mut self) {
        self.run
            .session()
            .compile_with(se3_core::exec::profile::Instrument);
    }
}

impl Differentiable for DifferentiableSe3Transformer {
    fn objective(&self) -> Objective {
        self.objective.objective()
    }

    fn parameters(&self) -> &Parameters {
        &self.params
    }

    fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        if let Some(run) = &mut self.forward_run {
            let shape = self
                .params
                .get(name)
                .map(|p| p.shape.clone())
                .unwrap_or_default();
            run.session().set_weight(name, value.clone(), &shape)?;
        }
        self.params.set(self.run.session(), name, value)
    }

    fn gradients(&mut self, inputs: &ModelInputs, given: &StateDict) -> Result<Gradients, Error> {
        let (b, n) = (inputs.batch(), inputs.nodes());
        let rows = b * n;
        let flat = FlatInputs::of(inputs, &self.run.input)?;
        let mask = flat.mask;
        let nodes = flat.nodes(&self.run.options)?;
        let t0 = std::time::Instant::now();
        let (src, dst) = self
            .run
            .set_inputs(&flat.coords, b, mask, nodes, flat.extra)?;
        let pooled = self.fwd.return_pooled;
        let s = self.run.session();
        if pooled {
            let mut weight = vec![0.0f32; rows];
            for bi in 0..b {
                let kept: Vec<usize> = (bi * n..(bi + 1) * n)
                    .filter(|&i| mask.is_none_or(|m| m[i]))
                    .collect();
                for &i in &kept {
                    weight[i] = 1.0 / kept.len() as f32;
                }
            }
            let cloud = (0..rows).map(|i| (i / n) as f32).collect();
            s.set_dim('b', b);
            s.set("pool.cloud", cloud, &[rows])?;
            s.set("pool.weight", weight, &[rows])?;
        }
        let shapes: Vec<(String, Vec<usize>)> = self
            .outputs
            .iter()
            .map(|o| {
                let w = o.channels * o.width;
                let shape = if pooled { vec![b, w] } else { vec![rows, w] };
                (o.name.clone(), shape)
            })
            .collect();
        self.objective.set_inputs(s, given, |name| {
            shapes
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(Vec::new, |(_, sh)| sh.clone())
        })?;
        let t1 = std::time::Instant::now();
        s.run()?;
        let t2 = std::time::Instant::now();
        let loss = self.objective.loss(s)?;
        let mut outputs = StateDict::new();
        for o in &self.outputs {
            let data = s.get(&format!("out.{}", o.name))?.data;
            let mut shape = vec![b];
            if !pooled {
                shape.push(n);
            }
            if !self.reduce {
                shape.push(o.channels);
            }
            if o.l != 0 {
                shape.push(o.width);
            }
            let wide = data.iter().map(|&v| f64::from(v)).collect();
            outputs.insert(o.name.clone(), Tensor::new(shape, wide)?);
        }
        let mut grads = StateDict::new();
        for p in self.params.iter() {
            let g = s.get(&format!("grad.{}", p.name))?.data;
            let wide = g.iter().map(|&v| f64::from(v)).collect();
            grads.insert(
                format!("param.{}", p.name),
                Tensor::new(p.shape.clone(), wide)?,
            );
        }
        for name in &self.inputs {
            let g = s.get(&format!("grad.input.{name}"))?.data;
            let (key, shape, data) = match name.as_str() {
                "coords" => ("coors".to_string(), vec![b, n, 3], widen(&g)),
                "edges.features" => {
                    let t = match &inputs.edges {
                        Some(EdgeInput::Dense(t)) => t,
                        _ => continue,
                    };
                    let width = t.data.len() / (rows * n).max(1);
                    let data = scatter_edge_gradients(&g, &src, &dst, n, rows, width);
                    ("edges".to_string(), t.shape.clone(), data)
                }
                "global" => {
                    let t = match &inputs.global_feats {
                        Some(t) => t,
                        None => continue,
                    };
                    let per_cloud = t.data.len() / b.max(1);
                    let mut data = vec![0.0f64; t.data.len()];
                    for (i, row) in g.chunks(per_cloud.max(1)).enumerate().take(rows) {
                        let at = (i / n) * per_cloud;
                        for (o, v) in data[at..at + per_cloud].iter_mut().zip(row) {
                            *o += f64::from(*v);
                        }
                    }
                    ("global_feats".to_string(), t.shape.clone(), data)
                }
                other => {
                    // `x.<l>`: the library's `feats` (dense degree 0) or `feats` per degree
                    let l: usize = other
                        .strip_prefix("x.")
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    match &inputs.feats {
                        NodeFeats::Dense(t) => ("feats".to_string(), t.shape.clone(), widen(&g)),
                        NodeFeats::Degrees(map) => match map.get(&l) {
                            Some(t) => (format!("feats_type{l}"), t.shape.clone(), widen(&g)),
                            None => continue,
                        },
                        NodeFeats::Tokens { .. } => continue,
                    }
                }
            };
            grads.insert(format!("input.{key}"), Tensor::new(shape, data)?);
        }
        self.timings = vec![
            ("host: neighbours + inputs", (t1 - t0).as_secs_f64()),
            ("graph: forward + backward", (t2 - t1).as_secs_f64()),
            ("host: outputs + gradients", t2.elapsed().as_secs_f64()),
        ];
        // degrees given beyond the input fiber do not reach the outputs
        if let NodeFeats::Degrees(map) = &inputs.feats {
            for (l, t) in map {
                let key = format!("input.feats_type{l}");
                if grads.get(&key).is_none() {
                    grads.insert(key, Tensor::zeros(&t.shape));
                }
            }
        }
        Ok(Gradients {
            outputs,
            loss,
            grads,
        })
    }

    fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        Ok(self.run.session().set_device(device)?)
    }
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// The gradient of the edge features `(b, n, n, width)` from that of the per-edge rows
/// `[E, width]` of edges `src -> dst` (global rows of clouds of `n` nodes; missing edges
/// carry none).
fn scatter_edge_gradients(
    g: &[f32],
    src: &[f32],
    dst: &[f32],
    n: usize,
    rows: usize,
    width: usize,
) -> Vec<f64> {
    let mut out = vec![0.0f64; rows * n * width];
    for (q, (&j, &i)) in src.iter().zip(dst).enumerate() {
        if j < 0.0 || i < 0.0 {
            continue;
        }
        let (i, j) = (i as usize, j as usize);
        let pair = i * n + j % n;
        for (o, v) in out[pair * width..(pair + 1) * width]
            .iter_mut()
            .zip(&g[q * width..(q + 1) * width])
        {
            *o += f64::from(*v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::differentiable::differentiable_from_files;
    use crate::model_file::ModelFile;

    /// Float32 gradients against float64 autograd, relative to each tensor's largest value.
    const TOL_GRAD: f64 = 1e-4;

    fn reference(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/reference/models")
            .join(name)
    }

    /// Every stored `param.*` and `input.*` gradient of every SE(3)-Transformer reference
    /// that has them, through the dispatch `se3 grad` runs: worst error per model.
    #[test]
    fn every_se3_transformer_reference_gradient_matches_torch_autograd() -> Result<(), Error> {
        let mut failures = Vec::new();
        let mut models = 0;
        for entry in std::fs::read_dir(reference("")).map_err(|source| Error::Io {
            path: reference("").display().to_string(),
            source,
        })? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = reference(&name);
            if !name.starts_with("se3t_") || !dir.join("gradients.safetensors").exists() {
                continue;
            }
            let file = ModelFile::load(dir.join("config.json"))?;
            let sd = StateDict::load(dir.join("weights.safetensors"))?;
            let inputs =
                ModelInputs::load(dir.join("inputs.safetensors"), &file.forward_kwargs.tensors)?;
            let want = StateDict::load(dir.join("gradients.safetensors"))?;
            let mut model = differentiable_from_files(&file, &sd, Objective::Cotangents)?;
            let run = model.gradients(&inputs, &want)?;
            let (mut worst, mut at, mut checked) = (0.0f64, String::new(), 0);
            for (key, w) in want.iter() {
                if !(key.starts_with("param.") || key.starts_with("input.")) {
                    continue;
                }
                let g = run.grads.get(key).ok_or(Error::MissingKey {
                    key: format!("{name}: {key}"),
                    expected: w.shape.clone(),
                })?;
                assert_eq!(g.data.len(), w.data.len(), "{name} {key}: size");
                let scale = w.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let diff = g
                    .data
                    .iter()
                    .zip(&w.data)
                    .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                let e = if scale > 0.0 { diff / scale } else { diff };
                if e >= worst {
                    (worst, at) = (e, key.to_string());
                }
                checked += 1;
            }
            println!("{name}: {checked} gradients, worst relative error {worst:.2e} ({at})");
            assert!(checked > 3, "{name}: only {checked} gradients");
            if worst >= TOL_GRAD {
                failures.push(format!("{name}: {worst:.2e} at {at}"));
            }
            models += 1;
        }
        assert!(models >= 15, "only {models} references with gradients");
        assert!(failures.is_empty(), "gradients off: {failures:#?}");
        Ok(())
    }
}
