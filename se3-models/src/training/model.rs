//! What the trainer needs of a model: outputs, the MSE loss and its parameter gradients, and
//! parameters it can read and replace (under their PyTorch key names).

use std::collections::BTreeMap;

use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::ModelInputs;
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
    /// `L = Σ_out mean((out - target.out)²)` (the mean over every element of the output).
    pub loss: f64,
    /// `dL/dp` for every parameter, keyed `param.<key>`.
    pub gradients: StateDict,
}

/// A compiled model that the trainer can optimise.
pub trait TrainableModel {
    /// The outputs on `inputs`, named as `se3 infer` names them.
    ///
    /// # Errors
    /// Input validation errors of the model.
    fn outputs(&mut self, inputs: &ModelInputs) -> Result<StateDict, Error>;

    /// The loss `Σ_out mean((out - target.out)²)` against `targets` (`target.<out>`) and its
    /// gradients with respect to every parameter.
    ///
    /// # Errors
    /// Input validation errors; `MissingKey` if a target is missing.
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

    /// Type-0 input channels (`feats` `[b, n, d]`).
    fn feature_dim(&self) -> usize;

    /// Each output's shape after the batch axis, a node axis given as 0, and its transform.
    fn output_layout(&self) -> BTreeMap<String, (Vec<usize>, OutputTransform)>;
}

/// `Σ_out mean((out - target.out)²)` and its cotangents `cotangent.<out>` = `2 (out - target) / len`.
///
/// # Errors
/// `MissingKey` if an output has no target, `WrongShape` if their shapes differ.
pub fn mse_and_cotangents(
    outputs: &StateDict,
    targets: &StateDict,
) -> Result<(f64, StateDict), Error> {
    let mut loss = 0.0;
    let mut cot = StateDict::new();
    for (name, o) in outputs.iter() {
        let key = format!("target.{name}");
        let t = targets.get(&key).ok_or(Error::MissingKey {
            key: key.clone(),
            expected: o.shape.clone(),
        })?;
        if t.shape != o.shape {
            return Err(Error::WrongShape {
                key,
                expected: o.shape.clone(),
                found: t.shape.clone(),
            });
        }
        let len = o.data.len().max(1) as f64;
        let diff: Vec<f64> = o.data.iter().zip(&t.data).map(|(a, b)| a - b).collect();
        loss += diff.iter().map(|d| d * d).sum::<f64>() / len;
        cot.insert(
            format!("cotangent.{name}"),
            Tensor::new(o.shape.clone(), diff.iter().map(|d| 2.0 * d / len).collect())?,
        );
    }
    Ok((loss, cot))
}

impl<M: TrainableModel + ?Sized> TrainableModel for Box<M> {
    fn outputs(&mut self, inputs: &ModelInputs) -> Result<StateDict, Error> {
        (**self).outputs(inputs)
    }

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

    fn feature_dim(&self) -> usize {
        (**self).feature_dim()
    }

    fn output_layout(&self) -> BTreeMap<String, (Vec<usize>, OutputTransform)> {
        (**self).output_layout()
    }
}
