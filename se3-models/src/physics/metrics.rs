//! Evaluation metrics: position MSE, energy and force MAE, and the equivariance error of any
//! model's outputs (outputs of moved inputs against moved outputs).

use nalgebra::{Rotation3, Vector3};
use rand::Rng;

use super::dataset::Sample;
use super::random::{normal_vector, uniform_rotation};
use crate::Error;

fn check_lengths(name: &'static str, found: usize, expected: usize) -> Result<(), Error> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::InputShape {
            name,
            expected: format!("{expected} entries (as many as the reference)"),
            found: vec![found],
        })
    }
}

/// Mean squared error of predicted positions, averaged over nodes and the three coordinates:
/// (1 / 3n) Σ_i |x̂_i − x_i|² — the EGNN paper's N-body metric (`nn.MSELoss` on `[n, 3]`).
///
/// # Errors
/// `InputShape` if the lengths differ or are zero.
pub fn position_mse(predicted: &[Vector3<f64>], target: &[Vector3<f64>]) -> Result<f64, Error> {
    check_lengths("predicted positions", predicted.len(), target.len())?;
    if target.is_empty() {
        return Err(Error::EmptyGraph { batch: 0, nodes: 0 });
    }
    let sum: f64 = predicted
        .iter()
        .zip(target)
        .map(|(p, t)| (p - t).norm_squared())
        .sum();
    Ok(sum / (3 * target.len()) as f64)
}

/// Mean absolute error (1/n) Σ |â_k − a_k| of scalars (energies).
///
/// # Errors
/// `InputShape` if the lengths differ, `EmptyGraph` if there is nothing to compare.
pub fn mean_absolute_error(predicted: &[f64], target: &[f64]) -> Result<f64, Error> {
    check_lengths("predicted values", predicted.len(), target.len())?;
    if target.is_empty() {
        return Err(Error::EmptyGraph { batch: 0, nodes: 0 });
    }
    Ok(predicted
        .iter()
        .zip(target)
        .map(|(p, t)| (p - t).abs())
        .sum::<f64>()
        / target.len() as f64)
}

/// Force MAE over components: (1 / 3n) Σ_i Σ_a |F̂_ia − F_ia|.
///
/// # Errors
/// As [`mean_absolute_error`].
pub fn force_mae(predicted: &[Vector3<f64>], target: &[Vector3<f64>]) -> Result<f64, Error> {
    check_lengths("predicted forces", predicted.len(), target.len())?;
    let flat = |v: &[Vector3<f64>]| v.iter().flat_map(|f| [f.x, f.y, f.z]).collect::<Vec<_>>();
    mean_absolute_error(&flat(predicted), &flat(target))
}

/// What a model predicts for one graph; parts it does not predict stay empty / `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prediction {
    /// Positions (transform as points: x ↦ R x + t).
    pub positions: Vec<Vector3<f64>>,
    /// Forces or other vectors (transform as directions: v ↦ R v).
    pub vectors: Vec<Vector3<f64>>,
    /// Energy or other invariant.
    pub energy: Option<f64>,
}

/// A sample under the rigid motion x ↦ R x + t: positions and target positions move, velocities
/// and forces rotate, features and energy stay.
pub fn transform_sample(
    sample: &Sample,
    rotation: &Rotation3<f64>,
    translation: &Vector3<f64>,
) -> Sample {
    let points = |v: &[Vector3<f64>]| v.iter().map(|x| rotation * x + translation).collect();
    let directions = |v: &[Vector3<f64>]| v.iter().map(|x| rotation * x).collect();
    Sample {
        positions: points(&sample.positions),
        velocities: directions(&sample.velocities),
        features: sample.features.clone(),
        target_positions: points(&sample.target_positions),
        energy: sample.energy,
        forces: directions(&sample.forces),
    }
}

/// Relative equivariance error of `model` on `sample` under (R, t): the largest, over the parts
/// the model predicts, of
/// * positions: |P(g x) − (R P(x) + t)| / |P(x) − c| (c the centroid of the input positions, so
///   the translation does not inflate the scale),
/// * vectors: |V(g x) − R V(x)| / |V(x)|,
/// * energy: |E(g x) − E(x)| / |E(x)|,
///
/// with Frobenius norms over all nodes and a floor of 1e-12 on the denominators. An exactly
/// E(3)-equivariant model gives rounding error (≲ 1e-6 in f32).
///
/// # Errors
/// The model's errors; `InputShape` if its two outputs differ in which parts or lengths.
pub fn equivariance_error(
    model: &mut impl FnMut(&Sample) -> Result<Prediction, Error>,
    sample: &Sample,
    rotation: &Rotation3<f64>,
    translation: &Vector3<f64>,
) -> Result<f64, Error> {
    let plain = model(sample)?;
    let moved = model(&transform_sample(sample, rotation, translation))?;
    equivariance_error_between(&plain, &moved, sample, rotation, translation)
}

/// [`equivariance_error`] from the two predictions already made: `plain` of `sample` and
/// `moved` of [`transform_sample`]`(sample, rotation, translation)` (e.g. both from batched
/// runs).
///
/// # Errors
/// `InputShape` if the two predictions differ in which parts or lengths.
pub fn equivariance_error_between(
    plain: &Prediction,
    moved: &Prediction,
    sample: &Sample,
    rotation: &Rotation3<f64>,
    translation: &Vector3<f64>,
) -> Result<f64, Error> {
    check_lengths(
        "positions of the moved input",
        moved.positions.len(),
        plain.positions.len(),
    )?;
    check_lengths(
        "vectors of the moved input",
        moved.vectors.len(),
        plain.vectors.len(),
    )?;
    let n = sample.positions.len().max(1) as f64;
    let centroid = sample.positions.iter().fold(Vector3::zeros(), |a, x| a + x) / n;
    let ratio = |num: f64, den: f64| num.sqrt() / den.sqrt().max(1e-12);
    let mut worst: f64 = 0.0;
    if !plain.positions.is_empty() {
        let num: f64 = plain
            .positions
            .iter()
            .zip(&moved.positions)
            .map(|(p, q)| (q - (rotation * p + translation)).norm_squared())
            .sum();
        let den: f64 = plain
            .positions
            .iter()
            .map(|p| (p - centroid).norm_squared())
            .sum();
        worst = worst.max(ratio(num, den));
    }
    if !plain.vectors.is_empty() {
        let num: f64 = plain
            .vectors
            .iter()
            .zip(&moved.vectors)
            .map(|(v, w)| (w - rotation * v).norm_squared())
            .sum();
        let den: f64 = plain.vectors.iter().map(|v| v.norm_squared()).sum();
        worst = worst.max(ratio(num, den));
    }
    match (plain.energy, moved.energy) {
        (Some(e), Some(f)) => worst = worst.max((f - e).abs() / e.abs().max(1e-12)),
        (None, None) => {}
        _ => {
            return Err(Error::InputShape {
                name: "energy of the moved input",
                expected: "the same presence as for the unmoved input".into(),
                found: vec![usize::from(moved.energy.is_some())],
            })
        }
    }
    Ok(worst)
}

/// Mean and maximum of [`equivariance_error`] over `samples`, each under a fresh uniform
/// rotation and a translation ~ N(0, translation_std² I) drawn from `rng`: the per-epoch
/// equivariance metric.
///
/// # Errors
/// As [`equivariance_error`]; `EmptyGraph` for no samples.
pub fn mean_equivariance_error<R: Rng + ?Sized>(
    model: &mut impl FnMut(&Sample) -> Result<Prediction, Error>,
    samples: &[Sample],
    translation_std: f64,
    rng: &mut R,
) -> Result<(f64, f64), Error> {
    if samples.is_empty() {
        return Err(Error::EmptyGraph { batch: 0, nodes: 0 });
    }
    let mut sum = 0.0;
    let mut max: f64 = 0.0;
    for s in samples {
        let r = uniform_rotation(rng);
        let t = normal_vector(rng, translation_std);
        let e = equivariance_error(model, s, &r, &t)?;
        sum += e;
        max = max.max(e);
    }
    Ok((sum / samples.len() as f64, max))
}

/// Position MSE of `predicted` against the targets of `samples` (one prediction per sample),
/// averaged over all nodes and coordinates of all samples.
///
/// # Errors
/// `InputShape` if the counts of predictions, samples or their nodes differ; `EmptyGraph`
/// for no nodes.
pub fn mean_position_mse(predicted: &[Prediction], samples: &[Sample]) -> Result<f64, Error> {
    check_lengths("predictions", predicted.len(), samples.len())?;
    let (mut sum, mut count) = (0.0, 0usize);
    for (p, s) in predicted.iter().zip(samples) {
        check_lengths(
            "predicted positions",
            p.positions.len(),
            s.target_positions.len(),
        )?;
        sum += p
            .positions
            .iter()
            .zip(&s.target_positions)
            .map(|(a, b)| (a - b).norm_squared())
            .sum::<f64>();
        count += 3 * p.positions.len();
    }
    if count == 0 {
        return Err(Error::EmptyGraph { batch: 0, nodes: 0 });
    }
    Ok(sum / count as f64)
}

/// Mean and largest [`equivariance_error`] of batched predictions: every sample under its own
/// uniform random rotation and a translation ~ N(0, translation_std² I) drawn from `rng`, the
/// moved samples predicted together by `predict` (one [`Prediction`] per sample) and compared
/// with `plain`, the predictions of `samples` already made.
///
/// # Errors
/// `EmptyGraph` for no samples; `InputShape` if `plain` or the predictions of the moved
/// samples do not have one entry per sample; those of `predict`.
pub fn batched_equivariance_error<R: Rng + ?Sized>(
    predict: &mut impl FnMut(&[Sample]) -> Result<Vec<Prediction>, Error>,
    samples: &[Sample],
    plain: &[Prediction],
    translation_std: f64,
    rng: &mut R,
) -> Result<(f64, f64), Error> {
    if samples.is_empty() {
        return Err(Error::EmptyGraph { batch: 0, nodes: 0 });
    }
    check_lengths("predictions of the samples", plain.len(), samples.len())?;
    let motions: Vec<_> = samples
        .iter()
        .map(|_| (uniform_rotation(rng), normal_vector(rng, translation_std)))
        .collect();
    let moved_samples: Vec<Sample> = samples
        .iter()
        .zip(&motions)
        .map(|(s, (r, t))| transform_sample(s, r, t))
        .collect();
    let moved = predict(&moved_samples)?;
    check_lengths(
        "predictions of the moved samples",
        moved.len(),
        samples.len(),
    )?;
    let (mut sum, mut max) = (0.0, 0.0f64);
    for (((s, (r, t)), p), q) in samples.iter().zip(&motions).zip(plain).zip(&moved) {
        let e = equivariance_error_between(p, q, s, r, t)?;
        sum += e;
        max = max.max(e);
    }
    Ok((sum / samples.len() as f64, max))
}
