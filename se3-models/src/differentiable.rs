//! Models with gradients: one trait over every compiled model that can be differentiated,
//! the objective it differentiates, its trainable parameters, and the dispatch from a
//! `config.json` + checkpoint (what `se3 grad` and `se3 train` run).
//!
//! A differentiable model is one compiled graph that computes, in one run, the outputs, a
//! scalar loss `L` and `∂L/∂w` for every parameter `w` (PyTorch key names, `param.<key>`)
//! and float input (`input.<name>`), with the weights resident between runs. The loss is
//! chosen when the graph is built ([`Objective`]):
//! - [`Objective::Cotangents`]: `L = Σ_out <out, cotangent.out>` with the cotangents given
//!   per run (the convention of the references' `gradients.safetensors`);
//! - [`Objective::MeanSquaredError`]: `L = Σ_out mean((out − target.out)²)` with the targets
//!   given per run (the references' `training.safetensors`), computed in the graph.

use luminal::prelude::*;
use se3_core::autodiff::{self, Tensor as GradTensor};
use se3_core::exec::{InputKind, Session};

use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::ModelInputs;
use crate::model_file::ModelFile;
use crate::tfn::graph::TfnGraph;
use crate::tfn::TfnStackConfig;
use crate::vn_transformer::{VnTransformer, VnTransformerConfig};
use crate::Error;

/// The scalar a differentiable model's graph differentiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// `L = Σ_out <out, cotangent.out>`; each run is given `cotangent.<out>`.
    Cotangents,
    /// `L = Σ_out mean((out − target.out)²)`; each run is given `target.<out>`.
    MeanSquaredError,
}

impl Objective {
    /// The key prefix of what a run is given per output (`cotangent.` or `target.`).
    pub fn given_prefix(self) -> &'static str {
        match self {
            Self::Cotangents => "cotangent.",
            Self::MeanSquaredError => "target.",
        }
    }
}

/// What one differentiated run returns.
#[derive(Debug, Clone)]
pub struct Gradients {
    /// The model's outputs (named as [`crate::zoo::CompiledModel::forward`] names them).
    pub outputs: StateDict,
    /// The objective's value `L`.
    pub loss: f64,
    /// `param.<key>` for every parameter and `input.<name>` for the float inputs the model
    /// differentiates, in the shapes of the checkpoint and the inputs file.
    pub grads: StateDict,
}

/// A compiled model with gradients.
pub trait Differentiable {
    /// The objective the graph was built for.
    fn objective(&self) -> Objective;

    /// The trainable parameters with their current values.
    fn parameters(&self) -> &Parameters;

    /// Replaces the value of parameter `name` (in the graph and on the host).
    ///
    /// # Errors
    /// `MissingKey` for an unknown name, `WrongShape` for a value of another length.
    fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error>;

    /// One run: outputs, loss and gradients. `given` holds the objective's per-output
    /// tensors (`cotangent.<out>` or `target.<out>`, in the outputs' shapes).
    ///
    /// # Errors
    /// Input validation errors; `MissingKey` / `WrongShape` for a missing or misshapen
    /// cotangent or target.
    fn gradients(&mut self, inputs: &ModelInputs, given: &StateDict) -> Result<Gradients, Error>;

    /// Runs the model's graphs on `device` from now on ([`Session::set_device`]): the
    /// parameters are uploaded by the next run and stay on the device until
    /// [`set_parameter`](Self::set_parameter) changes them. A failed call leaves the model on
    /// the host, usable. The default (a model without a device path) accepts only the CPU.
    ///
    /// # Errors
    /// `CudaNotCompiled` (built without the `cuda` feature), `CudaUnavailable` (driver library,
    /// NVRTC library, cuBLAS library or device missing), `InvalidOp` to move a graph off its
    /// device or for a model without a device path.
    fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        device.check()?;
        match device {
            se3_core::Device::Cpu => Ok(()),
            _ => Err(se3_core::Error::InvalidOp {
                op: "Differentiable::set_device",
                problem: "this model's gradient graphs have no device path",
            }
            .into()),
        }
    }
}

/// One trainable parameter: its PyTorch key, shape and current value.
#[derive(Debug, Clone)]
pub struct Parameter {
    /// PyTorch state-dict key.
    pub name: String,
    /// Extent of every axis.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub value: Vec<f32>,
}

/// The trainable parameters of a compiled session, in a fixed order: values kept on the host
/// beside the session's resident copies and set in both at once.
#[derive(Debug, Clone, Default)]
pub struct Parameters {
    list: Vec<Parameter>,
}

impl Parameters {
    /// The session's weights that are checkpoint parameters (the session may also hold
    /// constant tables, e.g. Clebsch-Gordan blocks, which are not trained), with their
    /// values from `checkpoint`, in the session's order.
    ///
    /// # Errors
    /// `WrongShape` if a checkpoint tensor's size differs from the session's weight.
    pub fn from_session(s: &Session, checkpoint: &StateDict) -> Result<Self, Error> {
        let mut list = Vec::new();
        for (name, dims) in s.weights() {
            let Some(t) = checkpoint.get(&name) else {
                continue;
            };
            let shape: Vec<usize> = dims.iter().map(|d| d.unwrap_or(0)).collect();
            let n: usize = shape.iter().product();
            if n != t.data.len() {
                return Err(Error::WrongShape {
                    key: name,
                    expected: shape,
                    found: t.shape.clone(),
                });
            }
            list.push(Parameter {
                name,
                shape,
                value: t.data.iter().map(|&v| v as f32).collect(),
            });
        }
        Ok(Self { list })
    }

    /// Parameters kept by a model that feeds them to its graph itself.
    pub fn from_list(list: Vec<Parameter>) -> Self {
        Self { list }
    }

    /// Sets parameter `name` to `value` here only (for a model that feeds its graph itself).
    ///
    /// # Errors
    /// `MissingKey` for an unknown name, `WrongShape` for a value of another length.
    pub fn set_host(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        let p = self
            .list
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::MissingKey {
                key: name.to_string(),
                expected: vec![],
            })?;
        if value.len() != p.value.len() {
            return Err(Error::WrongShape {
                key: name.to_string(),
                expected: p.shape.clone(),
                found: vec![value.len()],
            });
        }
        p.value = value;
        Ok(())
    }

    /// The parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = &Parameter> {
        self.list.iter()
    }

    /// How many parameters there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The parameter `name`.
    pub fn get(&self, name: &str) -> Option<&Parameter> {
        self.list.iter().find(|p| p.name == name)
    }

    /// Sets parameter `name` to `value` in `s` (a resident weight of the same name) and here.
    ///
    /// # Errors
    /// `MissingKey` for an unknown name, `WrongShape` for a value of another length.
    pub fn set(&mut self, s: &mut Session, name: &str, value: Vec<f32>) -> Result<(), Error> {
        let p = self
            .list
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::MissingKey {
                key: name.to_string(),
                expected: vec![],
            })?;
        if value.len() != p.value.len() {
            return Err(Error::WrongShape {
                key: name.to_string(),
                expected: p.shape.clone(),
                found: vec![value.len()],
            });
        }
        s.set_weight(name, value.clone(), &p.shape)?;
        p.value = value;
        Ok(())
    }

    /// The parameters as a float64 state dict under their keys (e.g. to save a checkpoint).
    ///
    /// # Errors
    /// None for consistent shapes.
    pub fn to_state_dict(&self) -> Result<StateDict, Error> {
        let mut sd = StateDict::new();
        for p in &self.list {
            sd.insert(
                p.name.clone(),
                Tensor::new(
                    p.shape.clone(),
                    p.value.iter().map(|&v| f64::from(v)).collect(),
                )?,
            );
        }
        Ok(sd)
    }
}

/// The graph side of an [`Objective`]: per output `<out>` an input `objective.<out>` (the
/// cotangent or target, in the output's graph shape) and, for the mean squared error, a
/// rank-0 input `objective.weight.<out>` (`1 / len`), and the output `loss`.
#[derive(Debug, Clone)]
pub struct ObjectiveGraph {
    objective: Objective,
    outputs: Vec<String>,
}

impl ObjectiveGraph {
    /// Adds the objective's inputs and `loss` output for the graph `outputs` (name as the
    /// model reports it, graph tensor), and returns the `(output, cotangent)` pairs to hand to
    /// [`autodiff::gradients`].
    pub fn attach(
        s: &mut Session,
        objective: Objective,
        outputs: &[(String, GraphTensor<()>)],
    ) -> (Self, Vec<(GradTensor, GradTensor)>) {
        let mut pairs = Vec::new();
        let mut loss: Option<GradTensor> = None;
        for (name, out) in outputs {
            let dims = se3_core::ops::logical_dims_of(&out.shape);
            let given =
                s.input_with_shape::<()>(&format!("objective.{name}"), InputKind::Values, &dims);
            let (l, pair) = match objective {
                Objective::Cotangents => (autodiff::pairing(*out, given), (*out, given)),
                Objective::MeanSquaredError => {
                    let w = s.input_with_shape::<()>(
                        &format!("objective.weight.{name}"),
                        InputKind::Values,
                        &[],
                    );
                    let (l, cot) = autodiff::squared_error(*out, given, w);
                    (l, (*out, cot))
                }
            };
            pairs.push(pair);
            loss = Some(match loss {
                Some(acc) => autodiff::add_losses(acc, l),
                None => l,
            });
        }
        if let Some(l) = loss {
            s.output("loss", l);
        }
        let names = outputs.iter().map(|(n, _)| n.clone()).collect();
        (
            Self {
                objective,
                outputs: names,
            },
            pairs,
        )
    }

    /// The objective.
    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// Sets the per-run inputs from `given` (`cotangent.<out>` or `target.<out>`); the graph
    /// shape of each output comes from `graph_shape(<out>)` (same element count as the
    /// given tensor).
    ///
    /// # Errors
    /// `MissingKey` if `given` lacks an output's tensor, `WrongShape` if its element count
    /// differs from the output's.
    pub fn set_inputs(
        &self,
        s: &mut Session,
        given: &StateDict,
        graph_shape: impl Fn(&str) -> Vec<usize>,
    ) -> Result<(), Error> {
        for name in &self.outputs {
            let shape = graph_shape(name);
            let key = format!("{}{name}", self.objective.given_prefix());
            let t = given.get(&key).ok_or_else(|| Error::MissingKey {
                key: key.clone(),
                expected: shape.clone(),
            })?;
            let n: usize = shape.iter().product();
            if t.data.len() != n {
                return Err(Error::WrongShape {
                    key,
                    expected: shape,
                    found: t.shape.clone(),
                });
            }
            let data = t.data.iter().map(|&v| v as f32).collect();
            s.set(&format!("objective.{name}"), data, &shape)?;
            if self.objective == Objective::MeanSquaredError {
                s.set(
                    &format!("objective.weight.{name}"),
                    vec![1.0 / n as f32],
                    &[],
                )?;
            }
        }
        Ok(())
    }

    /// The loss of the last run.
    ///
    /// # Errors
    /// As `Session::get`.
    pub fn loss(&self, s: &Session) -> Result<f64, Error> {
        Ok(s.get("loss")?.data.first().copied().map_or(0.0, f64::from))
    }
}

/// The objective's value from a run's `outputs` and what it was `given` (`cotangent.<out>` or
/// `target.<out>` for every output), for models that seed their backward pass on the host.
///
/// # Errors
/// `MissingKey` for an output without its given tensor, `WrongShape` for another length.
pub fn host_loss(
    objective: Objective,
    outputs: &StateDict,
    given: &StateDict,
) -> Result<f64, Error> {
    let mut loss = 0.0;
    for (name, out) in outputs.iter() {
        let key = format!("{}{name}", objective.given_prefix());
        let g = given.get(&key).ok_or_else(|| Error::MissingKey {
            key: key.clone(),
            expected: out.shape.clone(),
        })?;
        if g.data.len() != out.data.len() {
            return Err(Error::WrongShape {
                key,
                expected: out.shape.clone(),
                found: g.shape.clone(),
            });
        }
        let pairs = out.data.iter().zip(&g.data);
        loss += match objective {
            Objective::Cotangents => pairs.map(|(o, c)| o * c).sum::<f64>(),
            Objective::MeanSquaredError => {
                pairs.map(|(o, t)| (o - t) * (o - t)).sum::<f64>() / out.data.len().max(1) as f64
            }
        };
    }
    Ok(loss)
}

/// Compiles the model described by `file` from `weights` with gradients for `objective`.
/// One arm per model family.
///
/// # Errors
/// `NotCompiled` for a model kind without gradients yet; config and checkpoint errors.
pub fn differentiable_from_files(
    file: &ModelFile,
    weights: &StateDict,
    objective: Objective,
) -> Result<Box<dyn Differentiable>, Error> {
    if file.is_tfn_stack() {
        let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
        let graph = TfnGraph::from_state_dict(&cfg, weights)?;
        return Ok(Box::new(graph.compile_differentiable(weights, objective)?));
    }
    if file.is_se3_transformer() {
        let cfg =
            crate::se3_transformer::Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let fwd = crate::se3_transformer::Se3TransformerForward::from_literals(
            &file.forward_kwargs.literals,
        )?;
        let net = crate::se3_transformer::Se3TransformerNet::from_config(&cfg, weights)?;
        // `se3 grad` (cotangents) gives every float input's gradient; training needs none of
        // the coordinates'
        let coordinates = objective == Objective::Cotangents;
        return Ok(Box::new(
            crate::se3_transformer::net::DifferentiableSe3Transformer::new(
                &net,
                fwd,
                weights,
                objective,
                coordinates,
            )?,
        ));
    }
    if file.is_vn_transformer() {
        let cfg = VnTransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let model = VnTransformer::from_state_dict(&cfg, weights)?;
        return Ok(Box::new(model.compile_differentiable(weights, objective)?));
    }
    if file.is_equiformer() {
        let cfg = crate::equiformer::EquiformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let fwd =
            crate::equiformer::EquiformerForward::from_literals(&file.forward_kwargs.literals)?;
        let model = crate::equiformer::Equiformer::from_state_dict(&cfg, weights)?;
        return Ok(Box::new(crate::equiformer::DifferentiableEquiformer::new(
            model, fwd, weights, objective,
        )?));
    }
    if crate::egnn::Egnn::handles(file) {
        let model = crate::egnn::Egnn::from_parts(file, weights)?;
        return Ok(Box::new(crate::egnn::DifferentiableEgnn::new(
            model, objective,
        )));
    }
    Err(Error::NotCompiled {
        option: "gradients of this model kind",
    })
}

#[cfg(test)]
mod device_tests {
    use std::path::PathBuf;

    use se3_core::exec::Session;
    use se3_core::Device;

    use super::{differentiable_from_files, Objective};
    use crate::checkpoint::StateDict;
    use crate::model_file::ModelFile;
    use crate::Error;

    /// One model of every family: asking for CUDA device 0 gives the typed error of what this
    /// build and machine lack (no device here: `CudaNotCompiled` without the feature,
    /// `CudaUnavailable` with it), or succeeds where the device opens; the CPU is accepted.
    #[test]
    fn every_family_asks_for_a_device_with_a_typed_error_or_moves_there() -> Result<(), Error> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/models");
        let opens = Session::on(Device::CUDA0).is_ok();
        for name in [
            "tfn_stack",
            "se3t_basic",
            "vn_feat_eps0",
            "equi_mlp",
            "egnn_layer_feats_only",
        ] {
            let dir = root.join(name);
            let file = ModelFile::load(dir.join("config.json"))?;
            let weights = StateDict::load(dir.join("weights.safetensors"))?;
            let mut d = differentiable_from_files(&file, &weights, Objective::MeanSquaredError)?;
            d.set_device(Device::Cpu)?;
            match (d.set_device(Device::CUDA0), cfg!(feature = "cuda")) {
                (Err(Error::Core(se3_core::Error::CudaNotCompiled)), false) => {}
                (Err(Error::Core(se3_core::Error::CudaUnavailable { .. })), true) if !opens => {}
                (Ok(()), true) if opens => {}
                (other, compiled) => panic!(
                    "{name}: {other:?} (CUDA compiled in: {compiled}, device opens: {opens})"
                ),
            }
        }
        Ok(())
    }
}
