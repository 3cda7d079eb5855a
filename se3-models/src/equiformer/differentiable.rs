//! [`Differentiable`] for the Equiformer: the compiled gradient graph
//! ([`Equiformer::compile_with_gradients`]) behind the shared training interface.
//!
//! The objective is evaluated on the host from the outputs in the library's shapes (so it
//! covers `reduce_dim_out` and `return_pooled`, whose pooling runs on the host):
//! - [`Objective::Cotangents`]: one run, `L = Σ_out <out, cotangent.out>`;
//! - [`Objective::MeanSquaredError`]: a forward run for the outputs, then the gradient run with
//!   the cotangents `2 (out − target) / len` of `L = Σ_out mean((out − target.out)²)`.

use se3_core::exec::Session;
use se3_core::layers::Param;

use super::{CompiledEquiformer, Equiformer, EquiformerForward};
use crate::checkpoint::{StateDict, Tensor};
use crate::differentiable::{Differentiable, Gradients, Objective, Parameters};
use crate::inputs::ModelInputs;
use crate::Error;

/// An Equiformer with gradients for one [`Objective`].
pub struct DifferentiableEquiformer {
    model: CompiledEquiformer,
    objective: Objective,
    params: Parameters,
    /// The parameters' host copies as resident weights (what [`Parameters::set`] writes).
    store: Session,
    /// The outputs the model returns (`type0`, and `type1` with a degree 1).
    outputs: Vec<String>,
}

impl std::fmt::Debug for DifferentiableEquiformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DifferentiableEquiformer")
            .field("model", &self.model)
            .field("objective", &self.objective)
            .finish_non_exhaustive()
    }
}

impl DifferentiableEquiformer {
    /// Wraps `model` (loaded from `weights`) for `objective`; the trainable parameters are
    /// [`Equiformer::parameter_keys`] with their values in `weights`.
    ///
    /// # Errors
    /// `MissingKey` / `WrongShape` for a checkpoint without a parameter or with another
    /// shape; config errors.
    pub fn new(
        model: Equiformer,
        fwd: EquiformerForward,
        weights: &StateDict,
        objective: Objective,
    ) -> Result<Self, Error> {
        let mut store = Session::new();
        let mut checkpoint = StateDict::new();
        for (key, shape) in model.parameter_keys()? {
            let t = weights.get(&key).ok_or_else(|| Error::MissingKey {
                key: key.clone(),
                expected: shape.clone(),
            })?;
            if t.data.len() != shape.iter().product::<usize>() {
                return Err(Error::WrongShape {
                    key,
                    expected: shape,
                    found: t.shape.clone(),
                });
            }
            let data = t.data.iter().map(|&v| v as f32).collect();
            let p = Param {
                key: key.clone(),
                shape,
                data,
            };
            let _: luminal::prelude::GraphTensor<()> = p.declare(&mut store, "")?;
            checkpoint.insert(key, t.clone());
        }
        let params = Parameters::from_session(&store, &checkpoint)?;
        let outputs = if model.shape.dim.len() > 1 {
            vec!["type0".to_string(), "type1".to_string()]
        } else {
            vec!["type0".to_string()]
        };
        Ok(DifferentiableEquiformer {
            model: CompiledEquiformer::new(model, fwd).with_gradients(),
            objective,
            params,
            store,
            outputs,
        })
    }

    /// The given tensor of every output (`cotangent.<out>` or `target.<out>`).
    fn given<'a>(&self, given: &'a StateDict) -> Result<Vec<(String, &'a Tensor)>, Error> {
        let prefix = self.objective.given_prefix();
        self.outputs
            .iter()
            .map(|o| {
                let key = format!("{prefix}{o}");
                match given.get(&key) {
                    Some(t) => Ok((key, t)),
                    None => Err(Error::MissingKey {
                        key,
                        expected: vec![],
                    }),
                }
            })
            .collect()
    }
}

/// Checks that `given` has the shape of `out` (`WrongShape` otherwise).
fn same_shape(key: &str, given: &Tensor, out: &Tensor) -> Result<(), Error> {
    if given.data.len() != out.data.len() {
        return Err(Error::WrongShape {
            key: key.to_string(),
            expected: out.shape.clone(),
            found: given.shape.clone(),
        });
    }
    Ok(())
}

impl Differentiable for DifferentiableEquiformer {
    fn objective(&self) -> Objective {
        self.objective
    }

    fn parameters(&self) -> &Parameters {
        &self.params
    }

    fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        self.params.set(&mut self.store, name, value.clone())?;
        self.model.set_parameter(name, value)
    }

    fn gradients(&mut self, inputs: &ModelInputs, given: &StateDict) -> Result<Gradients, Error> {
        let per_output = self.given(given)?;
        match self.objective {
            Objective::Cotangents => {
                let mut cot = StateDict::new();
                for (k, t) in &per_output {
                    cot.insert(k.clone(), (*t).clone());
                }
                let (outputs, grads) = self.model.forward_and_gradients(inputs, &cot)?;
                let mut loss = 0.0;
                for ((k, c), o) in per_output.iter().zip(&self.outputs) {
                    let out = outputs.get(o).ok_or(Error::MissingKey {
                        key: o.clone(),
                        expected: c.shape.clone(),
                    })?;
                    same_shape(k, c, out)?;
                    loss += out
                        .data
                        .iter()
                        .zip(&c.data)
                        .map(|(a, b)| a * b)
                        .sum::<f64>();
                }
                Ok(Gradients {
                    outputs,
                    loss,
                    grads,
                })
            }
            Objective::MeanSquaredError => {
                let outputs = self.model.forward(inputs)?;
                let mut loss = 0.0;
                let mut cot = StateDict::new();
                for ((k, t), o) in per_output.iter().zip(&self.outputs) {
                    let out = outputs.get(o).ok_or(Error::MissingKey {
                        key: o.clone(),
                        expected: t.shape.clone(),
                    })?;
                    same_shape(k, t, out)?;
                    let n = t.data.len().max(1) as f64;
                    let diff: Vec<f64> = out.data.iter().zip(&t.data).map(|(a, b)| a - b).collect();
                    loss += diff.iter().map(|d| d * d).sum::<f64>() / n;
                    cot.insert(
                        format!("cotangent.{o}"),
                        Tensor::new(
                            out.shape.clone(),
                            diff.iter().map(|d| 2.0 * d / n).collect(),
                        )?,
                    );
                }
                let (_, grads) = self.model.forward_and_gradients(inputs, &cot)?;
                Ok(Gradients {
                    outputs,
                    loss,
                    grads,
                })
            }
        }
    }
}
