//! egnn-pytorch models as [`Differentiable`]: the layer graphs on the unfused edge stage (its
//! weights are session weights, set in place), the backward sweep of [`super::gradients`],
//! and the objective's loss and cotangents formed on the host between the forward and the
//! backward sweep (the neighbour selection between layers runs on the host, so the model is
//! several graphs, not one).

use super::{CompiledEgnn, Egnn, EgnnPath};
use crate::checkpoint::{StateDict, Tensor};
use crate::differentiable::{Differentiable, Gradients, Objective, Parameter, Parameters};
use crate::inputs::ModelInputs;
use crate::Error;

/// An egnn-pytorch model (`EGNN` or `EGNN_Network`) with gradients for an [`Objective`] over
/// its outputs `feats` and `coors`.
#[derive(Debug)]
pub struct DifferentiableEgnn {
    model: CompiledEgnn,
    objective: Objective,
    params: Parameters,
}

impl DifferentiableEgnn {
    /// Wraps `model` (graphs are compiled on first use of each input layout).
    pub fn new(model: Egnn, objective: Objective) -> Self {
        let mut model = CompiledEgnn::new(model);
        model.set_path(EgnnPath::Unfused);
        let params = Parameters::from_list(
            model
                .parameters()
                .iter()
                .map(|(name, shape, value)| Parameter {
                    name: name.clone(),
                    shape: shape.clone(),
                    value: value.clone(),
                })
                .collect(),
        );
        DifferentiableEgnn {
            model,
            objective,
            params,
        }
    }
}

impl Differentiable for DifferentiableEgnn {
    fn objective(&self) -> Objective {
        self.objective
    }

    fn parameters(&self) -> &Parameters {
        &self.params
    }

    fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        self.model.set_parameter(name, &value)?;
        self.params.set_host(name, value)
    }

    fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        self.model.set_device(device)
    }

    fn gradients(&mut self, inputs: &ModelInputs, given: &StateDict) -> Result<Gradients, Error> {
        let objective = self.objective;
        let mut loss = 0.0f64;
        let (outputs, grads) = self.model.forward_and_gradients_with(inputs, |out| {
            let mut cot = StateDict::new();
            for (name, o) in out.iter() {
                let key = format!("{}{name}", objective.given_prefix());
                let t = given.get(&key).ok_or_else(|| Error::MissingKey {
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
                let c: Vec<f64> = match objective {
                    Objective::Cotangents => {
                        loss += o.data.iter().zip(&t.data).map(|(a, b)| a * b).sum::<f64>();
                        t.data.clone()
                    }
                    Objective::MeanSquaredError => {
                        let n = o.data.len().max(1) as f64;
                        let diff: Vec<f64> =
                            o.data.iter().zip(&t.data).map(|(a, b)| a - b).collect();
                        loss += diff.iter().map(|d| d * d).sum::<f64>() / n;
                        diff.iter().map(|d| 2.0 * d / n).collect()
                    }
                };
                cot.insert(
                    format!("cotangent.{name}"),
                    Tensor::new(o.shape.clone(), c)?,
                );
            }
            Ok(cot)
        })?;
        Ok(Gradients {
            outputs,
            loss,
            grads,
        })
    }
}
