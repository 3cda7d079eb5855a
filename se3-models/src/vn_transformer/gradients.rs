//! Gradients of the VN-Transformer: the compiled graph with its backward pass
//! (`se3_core::autodiff`), giving `∂L/∂w` for every checkpoint parameter (`param.<key>`) and
//! `∂L/∂coors`, `∂L/∂feats` (`input.<name>`) of an [`Objective`]: `L = Σ_out <out,
//! cotangent.out>` (the loss of `gradients.safetensors`, tests/reference/GRADIENTS.md) or the
//! in-graph `Σ_out mean((out − target.out)²)`. Every op of the model has a vector-Jacobian
//! product, the fused attention included (`ops::head_attention::backward`).

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::Session;
use se3_core::layers::VnTensor;

use super::{Bound, FeatKind, VnSession, VnTransformer};
use crate::checkpoint::{StateDict, Tensor};
use crate::differentiable::{Differentiable, Gradients, Objective, ObjectiveGraph, Parameters};
use crate::inputs::ModelInputs;
use crate::Error;

/// The model's named outputs as graph tensors in the reference layout `(b, n, c, w)` (`c` = 1
/// with `reduce_dim_out`, so the data of `(b, n, w)`): `out` without features, else `coors`
/// and `feats` (components `3..3 + F` of `x`).
pub(super) fn named_outputs(x: VnTensor, feat_width: usize) -> Vec<(String, GraphTensor<()>)> {
    let ranges: Vec<(&str, usize, usize)> = if feat_width == 0 {
        vec![("out", 0, 3)]
    } else {
        vec![("coors", 0, 3), ("feats", 3, 3 + feat_width)]
    };
    ranges
        .into_iter()
        .map(|(name, lo, hi)| {
            let mut t = x.no_shape();
            t.shape.permute(&[0, 1, 3, 2]);
            t.shape.slice(&[
                (Expression::from(0), Expression::from(i32::MAX)),
                (Expression::from(0), Expression::from(i32::MAX)),
                (Expression::from(0), Expression::from(i32::MAX)),
                (Expression::from(lo), Expression::from(hi)),
            ]);
            (name.to_string(), t.contiguous())
        })
        .collect()
}

/// Attaches `objective` to the named outputs of `x` ([`named_outputs`]; its inputs
/// `objective.<out>` in the graph shape `(b, n, c, w)`) and adds the outputs `grad.<weight>`,
/// `grad.input.coors` and, with float features, `grad.input.feats`: the gradients of its loss.
pub(super) fn add_gradients(
    s: &mut Session,
    x: VnTensor,
    feat_width: usize,
    coors: GraphTensor<()>,
    feats: Option<GraphTensor<()>>,
    objective: Objective,
) -> Result<ObjectiveGraph, Error> {
    let outputs = named_outputs(x, feat_width);
    let (graph, pairs) = ObjectiveGraph::attach(s, objective, &outputs);
    let names: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
    let mut wrt = vec![coors];
    wrt.extend(feats);
    for n in &names {
        wrt.push(s.tensor(n)?);
    }
    let grads = se3_core::autodiff::gradients(&pairs, &wrt)?;
    s.output("grad.input.coors", grads[0]);
    let skip = if feats.is_some() {
        s.output("grad.input.feats", grads[1]);
        2
    } else {
        1
    };
    for (n, g) in names.iter().zip(&grads[skip..]) {
        s.output(&format!("grad.{n}"), *g);
    }
    Ok(graph)
}

/// Sets each `(name, shape, value)` of `overrides` as a weight of `s` (those `s` declares).
pub(super) fn apply_overrides(
    s: &mut Session,
    overrides: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), Error> {
    if overrides.is_empty() {
        return Ok(());
    }
    let declared: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
    for (name, shape, value) in overrides {
        if declared.contains(name) {
            s.set_weight(name, value.clone(), shape)?;
        }
    }
    Ok(())
}

impl VnTransformer {
    /// Compiles the model with its backward pass for the objective `L = Σ_out <out,
    /// cotangent.out>`: [`VnSession::forward_and_gradients`] gives the outputs and the
    /// gradients of one run (graphs are built per kind of features on first use, as
    /// [`VnTransformer::compile`]).
    pub fn compile_with_gradients(self) -> VnSession {
        self.compile_for(Objective::Cotangents)
    }

    /// Compiles the model with its backward pass for `objective`.
    pub fn compile_for(self, objective: Objective) -> VnSession {
        let mut s = self.compile();
        s.with_gradients = true;
        s.objective = objective;
        s
    }

    /// The model compiled with gradients for `objective`, with its parameters' values from
    /// `checkpoint` kept beside the graphs: the [`Differentiable`] form.
    ///
    /// # Errors
    /// Graph build errors; `WrongShape` for a checkpoint that disagrees with the graph.
    pub fn compile_differentiable(
        self,
        checkpoint: &StateDict,
        objective: Objective,
    ) -> Result<VnDifferentiable, Error> {
        // the graph of the config's own kind of features declares every parameter it uses
        let kind = if self.cfg.num_tokens.is_some() {
            FeatKind::Tokens
        } else if self.cfg.feat_width() > 0 {
            FeatKind::Dense(self.cfg.feat_width())
        } else {
            FeatKind::Absent
        };
        let (store, _) = self.graph(kind, false, None)?;
        // `ln.beta` is a buffer of the library (zeros, not trained): not a parameter
        let mut trainable = StateDict::new();
        for (k, t) in checkpoint.iter() {
            if !k.ends_with("ln.beta") {
                trainable.insert(k.to_string(), t.clone());
            }
        }
        let params = Parameters::from_session(&store, &trainable)?;
        Ok(VnDifferentiable {
            session: self.compile_for(objective),
            store,
            params,
        })
    }
}

/// The VN-Transformer compiled with gradients and its trainable parameters: the library's
/// `named_parameters()` (with L2 attention `to_k` is tied to `to_q`, so only `to_q.*`; the
/// layer norms' `ln.beta` are buffers).
#[derive(Debug)]
pub struct VnDifferentiable {
    session: VnSession,
    /// A forward graph holding the parameters' values as the [`Parameters`] store.
    store: Session,
    params: Parameters,
}

impl VnDifferentiable {
    /// The compiled session.
    pub fn session(&self) -> &VnSession {
        &self.session
    }
}

impl Differentiable for VnDifferentiable {
    fn objective(&self) -> Objective {
        self.session.objective
    }

    fn parameters(&self) -> &Parameters {
        &self.params
    }

    fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        self.params.set(&mut self.store, name, value.clone())?;
        self.session.set_parameter(name, value)
    }

    fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        self.session.set_device(device)
    }

    fn gradients(&mut self, inputs: &ModelInputs, given: &StateDict) -> Result<Gradients, Error> {
        let (outputs, grads, loss) = self.session.run_objective(inputs, given)?;
        Ok(Gradients {
            outputs,
            loss,
            grads,
        })
    }
}

impl VnSession {
    /// Replaces the value of the checkpoint parameter `name` in every compiled graph and in
    /// those compiled later (e.g. after an optimizer step).
    ///
    /// # Errors
    /// `MissingKey` for a key the config does not have, `WrongShape` for a value of another
    /// length.
    pub fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        let keys = VnTransformer::expected_keys(&self.model.cfg)?;
        let (_, shape) =
            keys.into_iter()
                .find(|(k, _)| k == name)
                .ok_or_else(|| Error::MissingKey {
                    key: name.to_string(),
                    expected: vec![],
                })?;
        if value.len() != shape.iter().product::<usize>() {
            return Err(Error::WrongShape {
                key: name.to_string(),
                expected: shape,
                found: vec![value.len()],
            });
        }
        let entry = (name.to_string(), shape, value);
        for (_, g, _) in &mut self.graphs {
            apply_overrides(g, std::slice::from_ref(&entry))?;
        }
        self.overrides.retain(|(k, ..)| k != name);
        self.overrides.push(entry);
        Ok(())
    }

    /// The outputs (as [`VnSession::forward`]) and the gradients of the session's objective
    /// (`L = Σ_out <out, cotangent.out>` for [`VnTransformer::compile_with_gradients`]):
    /// `param.<key>` for every checkpoint key (zeros for a key the config does not use, e.g.
    /// `to_k` tied to `to_q` with L2 attention), `input.coors` `(b, n, 3)` and, with float
    /// features, `input.feats` `(b, n, F)`. `given` holds the objective's `cotangent.<out>`
    /// (or `target.<out>`) of each output's shape (`gradients.safetensors`). A session from
    /// [`VnTransformer::compile`] recompiles its graphs with gradients.
    ///
    /// # Errors
    /// As [`VnSession::forward`]; `MissingKey` or `WrongShape` for a missing or misshapen
    /// cotangent.
    pub fn forward_and_gradients(
        &mut self,
        inp: &ModelInputs,
        given: &StateDict,
    ) -> Result<(StateDict, StateDict), Error> {
        let (outputs, grads, _) = self.run_objective(inp, given)?;
        Ok((outputs, grads))
    }

    /// Outputs, gradients and loss of one run (see [`VnSession::forward_and_gradients`]).
    fn run_objective(
        &mut self,
        inp: &ModelInputs,
        given: &StateDict,
    ) -> Result<(StateDict, StateDict, f64), Error> {
        if !self.with_gradients {
            // graphs compiled for the forward alone are rebuilt with their backward pass
            self.with_gradients = true;
            self.graphs.clear();
        }
        let bound = self.bind(inp)?;
        self.set_given(&bound, given)?;
        self.graphs[bound.graph].1.run()?;
        let outputs = self.read_outputs(&bound)?;
        let (_, s, objective) = &self.graphs[bound.graph];
        let loss = match objective {
            Some(o) => o.loss(s)?,
            None => 0.0,
        };
        let to_f64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let mut grads = StateDict::new();
        let declared: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
        for (key, shape) in VnTransformer::expected_keys(&self.model.cfg)? {
            let data = if declared.contains(&key) {
                to_f64(&s.get(&format!("grad.{key}"))?.data)
            } else {
                vec![0.0; shape.iter().product()]
            };
            grads.insert(format!("param.{key}"), Tensor::new(shape, data)?);
        }
        let (b, n) = (bound.batch, bound.nodes);
        let gc = s.get("grad.input.coors")?;
        grads.insert("input.coors", Tensor::new(vec![b, n, 3], to_f64(&gc.data))?);
        if let FeatKind::Dense(f) = bound.kind {
            let gf = s.get("grad.input.feats")?;
            grads.insert("input.feats", Tensor::new(vec![b, n, f], to_f64(&gf.data))?);
        }
        Ok((outputs, grads, loss))
    }

    /// The gradients of [`VnSession::forward_and_gradients`] alone.
    ///
    /// # Errors
    /// As [`VnSession::forward_and_gradients`].
    pub fn gradients(&mut self, inp: &ModelInputs, given: &StateDict) -> Result<StateDict, Error> {
        Ok(self.forward_and_gradients(inp, given)?.1)
    }

    /// Channels of the graph output `x` (1 with `reduce_dim_out`, else `dim`).
    fn channels_out(&self) -> usize {
        if self.model.cfg.reduce_dim_out {
            1
        } else {
            self.model.cfg.dim
        }
    }

    /// The output names of `bound`'s graph with their widths.
    fn output_widths(bound: &Bound) -> Vec<(&'static str, usize)> {
        match bound.kind {
            FeatKind::Absent => vec![("out", 3)],
            _ => vec![("coors", 3), ("feats", bound.feat_width)],
        }
    }

    /// Sets the objective's inputs of `bound`'s graph to zeros (a forward run of a graph with
    /// gradients).
    pub(super) fn zero_cotangents(&mut self, bound: &Bound) -> Result<(), Error> {
        let (b, n, c) = (bound.batch, bound.nodes, self.channels_out());
        let mse = self.objective == Objective::MeanSquaredError;
        let s = &mut self.graphs[bound.graph].1;
        for (name, w) in Self::output_widths(bound) {
            let len = b * n * c * w;
            s.set(&format!("objective.{name}"), vec![0.0; len], &[b, n, c, w])?;
            if mse {
                s.set(&format!("objective.weight.{name}"), vec![0.0], &[])?;
            }
        }
        Ok(())
    }

    /// Sets the objective's inputs of `bound`'s graph from `given` (`cotangent.<out>` or
    /// `target.<out>`, `(b, n, [c,] w)`).
    fn set_given(&mut self, bound: &Bound, given: &StateDict) -> Result<(), Error> {
        let (b, n) = (bound.batch, bound.nodes);
        let c = self.channels_out();
        let reduced = self.model.cfg.reduce_dim_out;
        let prefix = self.objective.given_prefix();
        let (_, s, objective) = &mut self.graphs[bound.graph];
        for (name, w) in Self::output_widths(bound) {
            let expected = if reduced {
                vec![b, n, w]
            } else {
                vec![b, n, c, w]
            };
            let key = format!("{prefix}{name}");
            let t = given.get(&key).ok_or_else(|| Error::MissingKey {
                key: key.clone(),
                expected: expected.clone(),
            })?;
            if t.shape != expected {
                return Err(Error::WrongShape {
                    key,
                    expected,
                    found: t.shape.clone(),
                });
            }
        }
        let widths = Self::output_widths(bound);
        match objective {
            Some(o) => o.set_inputs(s, given, |name| {
                let w = widths.iter().find(|(k, _)| *k == name).map_or(0, |x| x.1);
                vec![b, n, c, w]
            }),
            None => Ok(()),
        }
    }
}
