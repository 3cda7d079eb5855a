//! [`Differentiable`] for the SE(3)-Transformer: [`TrainableSe3Transformer`] with its forward
//! literals, its parameters mirrored as [`Parameters`] for optimizers, and the objective's value
//! from the run's outputs.

use super::training::TrainableSe3Transformer;
use super::GraphForm;
use crate::checkpoint::StateDict;
use crate::differentiable::{
    host_loss, Differentiable, Gradients, Objective, Parameter, Parameters,
};
use crate::inputs::ModelInputs;
use crate::se3_transformer::{Se3TransformerConfig, Se3TransformerForward};
use crate::Error;

/// The SE(3)-Transformer compiled with gradients, as `se3 grad` and `se3 train` run it.
#[derive(Debug)]
pub struct DifferentiableSe3Transformer {
    model: TrainableSe3Transformer,
    fwd: Se3TransformerForward,
    params: Parameters,
    objective: Objective,
}

impl DifferentiableSe3Transformer {
    /// Compiles the model of `cfg` from `weights` with gradients for `objective`; the radial
    /// networks and edge contractions take their fused form ([`GraphForm::Fused`]).
    ///
    /// # Errors
    /// As [`TrainableSe3Transformer::with_objective`].
    pub fn new(
        cfg: &Se3TransformerConfig,
        fwd: Se3TransformerForward,
        weights: &StateDict,
        objective: Objective,
    ) -> Result<Self, Error> {
        let model =
            TrainableSe3Transformer::with_objective(cfg, weights, GraphForm::Fused, objective)?;
        let mut list = Vec::new();
        for (name, shape) in model.parameters() {
            let value = model.parameter(&name)?.iter().map(|&v| v as f32).collect();
            list.push(Parameter { name, shape, value });
        }
        Ok(Self {
            model,
            fwd,
            params: Parameters::from_list(list),
            objective,
        })
    }

    /// The wrapped model.
    pub fn model(&self) -> &TrainableSe3Transformer {
        &self.model
    }
}

impl Differentiable for DifferentiableSe3Transformer {
    fn objective(&self) -> Objective {
        self.objective
    }

    fn parameters(&self) -> &Parameters {
        &self.params
    }

    fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        let wide: Vec<f64> = value.iter().map(|&v| f64::from(v)).collect();
        self.model.set_parameter(name, &wide)?;
        self.params.set_host(name, value)
    }

    fn gradients(&mut self, inputs: &ModelInputs, given: &StateDict) -> Result<Gradients, Error> {
        let (outputs, grads) = self.model.forward_and_gradients(inputs, &self.fwd, given)?;
        let loss = host_loss(self.objective, &outputs, given)?;
        Ok(Gradients {
            outputs,
            loss,
            grads,
        })
    }

    fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        self.model.set_device(device)
    }
}
