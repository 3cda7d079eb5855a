//! Gradient-free reference predictors for the position-prediction tasks.

use nalgebra::Vector3;

use super::dataset::Dataset;
use super::metrics::position_mse;
use crate::Error;

/// A gradient-free predictor of future positions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Baseline {
    /// x̂ = x: nothing moves.
    Static,
    /// x̂ = x + T v: straight-line motion over the horizon T (no interaction). The EGNN paper's
    /// "Linear" baseline learns T; [`fit_horizon`] gives that T in closed form.
    ConstantVelocity { horizon: f64 },
}

/// The least-squares horizon of the constant-velocity baseline on `data`:
/// T* = argmin_T Σ |x + T v − y|² = Σ (y − x)·v / Σ |v|².
///
/// # Errors
/// `MissingInput` without velocities or targets; `InvalidParameter` if every velocity is zero.
pub fn fit_horizon(data: &Dataset) -> Result<f64, Error> {
    let (mut num, mut den) = (0.0, 0.0);
    for s in &data.samples {
        if s.target_positions.len() != s.positions.len() {
            return Err(Error::MissingInput {
                name: "target_positions",
            });
        }
        if s.velocities.len() != s.positions.len() {
            return Err(Error::MissingInput { name: "velocities" });
        }
        for ((x, v), y) in s
            .positions
            .iter()
            .zip(&s.velocities)
            .zip(&s.target_positions)
        {
            num += (y - x).dot(v);
            den += v.norm_squared();
        }
    }
    if den <= 0.0 {
        return Err(Error::InvalidParameter {
            name: "velocities",
            expected: "at least one non-zero velocity",
            found: "all zero".into(),
        });
    }
    Ok(num / den)
}

impl Baseline {
    /// The predicted target positions for input positions and velocities.
    pub fn predict(
        &self,
        positions: &[Vector3<f64>],
        velocities: &[Vector3<f64>],
    ) -> Vec<Vector3<f64>> {
        match *self {
            Baseline::Static => positions.to_vec(),
            Baseline::ConstantVelocity { horizon } => positions
                .iter()
                .zip(velocities)
                .map(|(x, v)| x + v * horizon)
                .collect(),
        }
    }

    /// Mean over samples of the position MSE (the EGNN metric) of this baseline on `data`.
    ///
    /// # Errors
    /// `MissingInput` if the samples have no target positions or (for constant velocity) no
    /// velocities; `InputShape` for mismatched lengths.
    pub fn mse(&self, data: &Dataset) -> Result<f64, Error> {
        let mut sum = 0.0;
        for s in &data.samples {
            if s.target_positions.is_empty() {
                return Err(Error::MissingInput {
                    name: "target_positions",
                });
            }
            if matches!(self, Baseline::ConstantVelocity { .. })
                && s.velocities.len() != s.positions.len()
            {
                return Err(Error::MissingInput { name: "velocities" });
            }
            sum += position_mse(
                &self.predict(&s.positions, &s.velocities),
                &s.target_positions,
            )?;
        }
        Ok(sum / data.samples.len().max(1) as f64)
    }
}
