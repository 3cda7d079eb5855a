//! The TFN stack as a [`TrainableModel`]: the graph compiled with its gradients
//! ([`TfnGraph::compile_with_gradients`]), the loss's cotangents made on the host.

use std::collections::BTreeMap;

use super::graph::{TfnGraph, TfnSession};
use super::{TfnStack, TfnStackConfig};
use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::ModelInputs;
use crate::training::model::{mse_and_cotangents, LossAndGradients, OutputTransform, TrainableModel};
use crate::Error;

/// A TFN stack compiled with gradients, with its parameters on the host.
#[derive(Debug)]
pub struct TrainableTfn {
    session: TfnSession,
    params: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl TrainableTfn {
    /// Compiles the stack of `cfg` with weights `sd` (PyTorch keys).
    ///
    /// # Errors
    /// As [`TfnGraph::from_state_dict`] and [`TfnGraph::compile_with_gradients`].
    pub fn new(cfg: &TfnStackConfig, sd: &StateDict) -> Result<TrainableTfn, Error> {
        let session = TfnGraph::from_state_dict(cfg, sd)?.compile_with_gradients()?;
        let mut params = Vec::new();
        for (key, shape) in TfnStack::expected_keys(cfg)? {
            let t = sd.get(&key).ok_or(Error::MissingKey {
                key: key.clone(),
                expected: shape.clone(),
            })?;
            params.push((key, shape, t.data.iter().map(|&v| v as f32).collect()));
        }
        Ok(TrainableTfn { session, params })
    }

    fn zero_cotangents(&self, b: usize, n: usize) -> Result<StateDict, Error> {
        let mut zero = StateDict::new();
        for (name, (shape, _)) in self.output_layout() {
            let shape: Vec<usize> = [b, n].into_iter().chain(shape[1..].iter().copied()).collect();
            zero.insert(format!("cotangent.{name}"), Tensor::zeros(&shape));
        }
        Ok(zero)
    }
}

impl TrainableModel for TrainableTfn {
    fn outputs(&mut self, inputs: &ModelInputs) -> Result<StateDict, Error> {
        let zero = self.zero_cotangents(inputs.batch(), inputs.nodes())?;
        Ok(self.session.forward_and_gradients(inputs, &zero)?.0)
    }

    fn loss_and_gradients(
        &mut self,
        inputs: &ModelInputs,
        targets: &StateDict,
    ) -> Result<LossAndGradients, Error> {
        let outputs = self.outputs(inputs)?;
        let (loss, cot) = mse_and_cotangents(&outputs, targets)?;
        let mut gradients = self.session.gradients(inputs, &cot)?;
        gradients.remove("input.feats");
        Ok(LossAndGradients { loss, gradients })
    }

    fn parameters(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.params.clone()
    }

    fn set_parameter(&mut self, key: &str, values: &[f32]) -> Result<(), Error> {
        let (_, shape, v) = self
            .params
            .iter_mut()
            .find(|(k, _, _)| k == key)
            .ok_or(Error::MissingKey {
                key: key.to_string(),
                expected: vec![values.len()],
            })?;
        if v.len() != values.len() {
            return Err(Error::WrongShape {
                key: key.to_string(),
                expected: shape.clone(),
                found: vec![values.len()],
            });
        }
        v.copy_from_slice(values);
        self.session
            .session_mut()
            .set_weight(key, values.to_vec(), shape)?;
        Ok(())
    }

    fn feature_dim(&self) -> usize {
        self.session.fibers()[0].degrees()[0].channels
    }

    fn output_layout(&self) -> BTreeMap<String, (Vec<usize>, OutputTransform)> {
        let fibers = self.session.fibers();
        fibers[fibers.len() - 1]
            .degrees()
            .iter()
            .map(|d| {
                (
                    format!("type{}", d.l),
                    (vec![0, d.channels, d.width()], OutputTransform::Degree(d.l)),
                )
            })
            .collect()
    }
}
