//! What the trainer needs of a model ([`TrainableModel`]: outputs, the MSE loss and its
//! parameter gradients, parameters it can read and replace under their PyTorch keys, how each
//! output transforms) and its implementation over any [`Differentiable`] model of the dispatch
//! [`crate::differentiable::differentiable_from_files`] ([`DifferentiableModel`]).

use std::collections::BTreeMap;

use crate::checkpoint::{StateDict, Tensor};
use crate::differentiable::{Differentiable, Objective};
use crate::inputs::ModelInputs;
use crate::model_file::ModelFile;
use crate::Error;

/// How a model output transforms under `x -> R x + t` of the input coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputTransform {
    /// A degree-`l` feature on its last axis (`2l + 1` components): `f -> f D^l(R)^T`
    /// (degree 0 is invariant, degree 1 rotates like coordinates stored as rows).
    Degree(usize),
    /// Coordinates on the last axis: `x -> x R^T + t`.
    Position,
}

/// One evaluation of the training objective on a batch.
#[derive(Debug, Clone)]
pub struct LossAndGradients {
    /// The outputs of the batch.
    pub outputs: StateDict,
    /// `L = Σ_out mean((out - target.out)²)` (the mean over every element of the output).
    pub loss: f64,
    /// `dL/dp` for every parameter, keyed `param.<key>`.
    pub gradients: StateDict,
}

/// A compiled model that the trainer can optimise.
pub trait TrainableModel {
    /// The loss `Σ_out mean((out - target.out)²)` against `targets` (`target.<out>`), its
    /// gradients with respect to every parameter, and the outputs.
    ///
    /// # Errors
    /// Input validation errors; `MissingKey` / `WrongShape` for a missing or misshapen target.
    fn loss_and_gradients(
        &mut self,
        inputs: &ModelInputs,
        targets: &StateDict,
    ) -> Result<LossAndGradients, Error>;

    /// The trainable parameters: PyTorch key, shape, float32 values.
    fn parameters(&self) -> Vec<(String, Vec<usize>, Vec<f32>)>;

    /// Replaces parameter `key` with `values` (row-major, its shape).
    ///
    /// # Errors
    /// `MissingKey` for an unknown key, `WrongShape` for a wrong length.
    fn set_parameter(&mut self, key: &str, values: &[f32]) -> Result<(), Error>;

    /// How output `name` transforms (`None`: not known, treated as invariant).
    fn output_transform(&self, name: &str) -> Option<OutputTransform>;
}

impl<M: TrainableModel + ?Sized> TrainableModel for Box<M> {
    fn loss_and_gradients(
        &mut self,
        inputs: &ModelInputs,
        targets: &StateDict,
    ) -> Result<LossAndGradients, Error> {
        (**self).loss_and_gradients(inputs, targets)
    }

    fn parameters(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        (**self).parameters()
    }

    fn set_parameter(&mut self, key: &str, values: &[f32]) -> Result<(), Error> {
        (**self).set_parameter(key, values)
    }

    fn output_transform(&self, name: &str) -> Option<OutputTransform> {
        (**self).output_transform(name)
    }
}

/// `Σ_out mean((out - target.out)²)` over the outputs, on the host.
///
/// # Errors
/// `MissingKey` if an output has no target, `WrongShape` if their sizes differ.
pub fn mean_squared_error(outputs: &StateDict, targets: &StateDict) -> Result<f64, Error> {
    let mut loss = 0.0;
    for (name, o) in outputs.iter() {
        let key = format!("target.{name}");
        let t = targets.get(&key).ok_or(Error::MissingKey {
            key: key.clone(),
            expected: o.shape.clone(),
        })?;
        if t.data.len() != o.data.len() {
            return Err(Error::WrongShape {
                key,
                expected: o.shape.clone(),
                found: t.shape.clone(),
            });
        }
        let len = o.data.len().max(1) as f64;
        loss += o
            .data
            .iter()
            .zip(&t.data)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            / len;
    }
    Ok(loss)
}

/// A [`Differentiable`] model compiled for [`Objective::MeanSquaredError`], with the output
/// transforms of its config.
pub struct DifferentiableModel {
    inner: Box<dyn Differentiable>,
    transforms: BTreeMap<String, OutputTransform>,
}

impl std::fmt::Debug for DifferentiableModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DifferentiableModel")
            .field("parameters", &self.inner.parameters().len())
            .field("transforms", &self.transforms)
            .finish_non_exhaustive()
    }
}

impl DifferentiableModel {
    /// Wraps `inner` (compiled for the mean squared error). Output transforms: `type<l>` is
    /// degree `l`; otherwise the config's `outputs.<name>.transforms_as` (invariant, a vector,
    /// or coordinates when the name holds `coors`).
    ///
    /// # Errors
    /// `InvalidConfig` if `inner` was compiled for another objective.
    pub fn new(inner: Box<dyn Differentiable>, file: &ModelFile) -> Result<Self, Error> {
        if inner.objective() != Objective::MeanSquaredError {
            return Err(Error::InvalidConfig {
                field: "objective",
                expected: "a model compiled for the mean squared error",
                found: format!("{:?}", inner.objective()),
            });
        }
        let mut transforms = BTreeMap::new();
        for (name, spec) in &file.outputs {
            let t = if name.contains("coors") {
                OutputTransform::Position
            } else if spec.is_vector() {
                OutputTransform::Degree(1)
            } else if spec.is_invariant() {
                OutputTransform::Degree(0)
            } else {
                continue;
            };
            transforms.insert(name.clone(), t);
        }
        Ok(DifferentiableModel { inner, transforms })
    }
}

impl TrainableModel for DifferentiableModel {
    fn loss_and_gradients(
        &mut self,
        inputs: &ModelInputs,
        targets: &StateDict,
    ) -> Result<LossAndGradients, Error> {
        let g = self.inner.gradients(inputs, targets)?;
        let mut gradients = g.grads;
        let inputs_grads: Vec<String> = gradients
            .keys()
            .filter(|k| !k.starts_with("param."))
            .map(str::to_string)
            .collect();
        for k in inputs_grads {
            gradients.remove(&k);
        }
        Ok(LossAndGradients {
            outputs: g.outputs,
            loss: g.loss,
            gradients,
        })
    }

    fn parameters(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.inner
            .parameters()
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone(), p.value.clone()))
            .collect()
    }

    fn set_parameter(&mut self, key: &str, values: &[f32]) -> Result<(), Error> {
        self.inner.set_parameter(key, values.to_vec())
    }

    fn output_transform(&self, name: &str) -> Option<OutputTransform> {
        if let Some(l) = name.strip_prefix("type").and_then(|l| l.parse().ok()) {
            return Some(OutputTransform::Degree(l));
        }
        self.transforms.get(name).copied()
    }
}

/// Zero tensors shaped like `targets` (to run a model whose graph wants targets).
pub fn zeros_like(targets: &StateDict) -> Result<StateDict, Error> {
    let mut z = StateDict::new();
    for (k, t) in targets.iter() {
        z.insert(k.to_string(), Tensor::zeros(&t.shape));
    }
    Ok(z)
}
