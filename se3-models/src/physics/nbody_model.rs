//! What a model must offer to be trained on the charged N-body benchmark by
//! [`super::nbody_benchmark::train_nbody`]: one Adam step on a batch, predicted positions, a
//! learning rate to set, and a name for the table. The position MSE and the equivariance error
//! are computed here from the predictions, once for every model.

use nalgebra::{Matrix3, Vector3};
use rand::Rng;

use super::dataset::Sample;
use crate::Error;

/// A model of the N-body benchmark: input positions, velocities and charges of each sample,
/// output the predicted positions at the target frame, trained on the position MSE.
pub trait NBodyModel {
    /// The model as the result table names it (architecture and size).
    fn label(&self) -> String;

    /// The EGNN paper's published test MSE of this kind of model (its table's name and value).
    fn published_test_mse(&self) -> Option<(&'static str, f64)>;

    /// Whether the model is equivariant under reflections too (E(3), as EGNN), not only under
    /// rotations (SE(3), as TFN and the SE(3)-Transformer, whose degree-1 kernels hold the
    /// pseudovector `r × v`): the equivariance probes then draw reflections as well.
    fn reflection_equivariant(&self) -> bool;

    /// Sets the optimizer's learning rate for the next steps (its moments are kept).
    fn set_learning_rate(&mut self, lr: f64);

    /// One optimizer step on the position MSE of `samples` (all with the same node count);
    /// returns the loss before the step.
    ///
    /// # Errors
    /// `InvalidParameter` for samples without velocities, charges or targets; the model's
    /// session and optimizer errors.
    fn train_step(&mut self, samples: &[&Sample]) -> Result<f64, Error>;

    /// Predicted positions of `samples` (all with the same node count), row-major
    /// `[graphs, nodes, 3]`.
    ///
    /// # Errors
    /// `InvalidParameter` for samples without velocities or charges or of different sizes;
    /// session errors.
    fn predict_positions(&mut self, samples: &[&Sample]) -> Result<Vec<f64>, Error>;

    /// Position MSE of `samples` (mean over graphs, nodes and axes), in batches of `batch`.
    ///
    /// # Errors
    /// As [`NBodyModel::predict_positions`]; `InvalidParameter` for samples without targets.
    fn mse(&mut self, samples: &[Sample], batch: usize) -> Result<f64, Error> {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for chunk in samples.chunks(batch.max(1)) {
            let refs: Vec<&Sample> = chunk.iter().collect();
            if refs.iter().any(|s| s.target_positions.len() != s.len()) {
                return Err(Error::InvalidParameter {
                    name: "sample",
                    expected: "target positions",
                    found: "none".into(),
                });
            }
            let p = self.predict_positions(&refs)?;
            let target = refs
                .iter()
                .flat_map(|s| s.target_positions.iter().flat_map(|x| [x.x, x.y, x.z]));
            sum += p
                .iter()
                .zip(target)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>();
            count += p.len();
        }
        Ok(sum / count.max(1) as f64)
    }

    /// Relative equivariance error on `samples` under one random rotation `Q` (for a
    /// [`NBodyModel::reflection_equivariant`] model a reflection with probability ½) and
    /// translation `t`: `|P(Q x + t, Q v) - (Q P(x, v) + t)| / |P(x, v) - c|`
    /// over the batch (Frobenius norms, `c` each graph's input centroid).
    ///
    /// # Errors
    /// As [`NBodyModel::predict_positions`].
    fn equivariance_error(&mut self, samples: &[&Sample], rng: &mut impl Rng) -> Result<f64, Error>
    where
        Self: Sized,
    {
        let rot = super::random::uniform_rotation(rng);
        let mut m: Matrix3<f64> = *rot.matrix();
        if self.reflection_equivariant() && rng.gen_bool(0.5) {
            m = -m;
        }
        let t = super::random::normal_vector(rng, 1.0);
        let moved: Vec<Sample> = samples
            .iter()
            .map(|s| {
                let points = |v: &[Vector3<f64>]| v.iter().map(|x| m * x + t).collect();
                Sample {
                    positions: points(&s.positions),
                    velocities: s.velocities.iter().map(|v| m * v).collect(),
                    target_positions: points(&s.target_positions),
                    ..(*s).clone()
                }
            })
            .collect();
        let plain = self.predict_positions(samples)?;
        let refs: Vec<&Sample> = moved.iter().collect();
        let turned = self.predict_positions(&refs)?;
        let at = |v: &[f64], k: usize| Vector3::new(v[3 * k], v[3 * k + 1], v[3 * k + 2]);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        let mut k = 0;
        for s in samples {
            let n = s.len();
            let c = s.positions.iter().fold(Vector3::zeros(), |a, x| a + x) / n.max(1) as f64;
            for _ in 0..n {
                if 3 * k + 2 >= plain.len().min(turned.len()) {
                    return Err(Error::InvalidParameter {
                        name: "prediction",
                        expected: "three coordinates per input node",
                        found: format!("{} values", plain.len()),
                    });
                }
                let (p, q) = (at(&plain, k), at(&turned, k));
                num += (q - (m * p + t)).norm_squared();
                den += (p - c).norm_squared();
                k += 1;
            }
        }
        Ok(num.sqrt() / den.sqrt().max(1e-12))
    }
}
