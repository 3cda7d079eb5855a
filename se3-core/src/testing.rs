//! Test helpers (feature `testing`): seeded randomness, random rotations and reflections,
//! relative errors, tolerances and equivariance checks.
//!
//! Every equivariance test draws fresh randomness from [`seed`] (printed, replayable with
//! `SE3_SEED=<n>`), and compares by the relative error of [`rel_error`]: the largest absolute
//! difference divided by the largest magnitude of the expected values.

mod module_equivariance;

pub use module_equivariance::{
    assert_module_equivariant, module_equivariance, DegreeError, EquivarianceFailure,
    EquivarianceReport,
};

use nalgebra::{DMatrix, Matrix3, Quaternion, Rotation3, UnitQuaternion, Vector3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Relative tolerance for comparing float32 results with float64 truth.
pub const TOL_F32: f64 = 1e-4;
/// Relative tolerance for float64 results.
pub const TOL_F64: f64 = 1e-10;
/// Relative tolerance for exact float64 math against float64 truth (harmonics, D, CG).
pub const TOL_EXACT: f64 = 1e-12;

/// The seed of this test run: `SE3_SEED` if set, else drawn fresh and printed so that a
/// failure can be replayed.
pub fn seed() -> u64 {
    if let Some(s) = std::env::var("SE3_SEED").ok().and_then(|s| s.parse().ok()) {
        return s;
    }
    let s = rand::random::<u64>();
    eprintln!("SE3_SEED={s}");
    s
}

/// A generator seeded with [`seed`] (printed); returns the seed too, for messages.
pub fn rng() -> (StdRng, u64) {
    let s = seed();
    (StdRng::seed_from_u64(s), s)
}

/// A standard normal sample (Box-Muller).
pub fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A uniformly (Haar) distributed unit quaternion: a normalised 4D Gaussian.
pub fn random_quaternion<R: Rng + ?Sized>(rng: &mut R) -> UnitQuaternion<f64> {
    loop {
        let q = Quaternion::new(normal(rng), normal(rng), normal(rng), normal(rng));
        if q.norm() > 1e-6 {
            return UnitQuaternion::from_quaternion(q);
        }
    }
}

/// A uniformly (Haar) distributed rotation.
pub fn random_rotation<R: Rng + ?Sized>(rng: &mut R) -> Rotation3<f64> {
    random_quaternion(rng).to_rotation_matrix()
}

/// A uniformly distributed improper orthogonal matrix (det -1): `-R` for a Haar rotation `R`
/// (an inversion composed with a rotation; every reflection is of that form).
pub fn random_reflection<R: Rng + ?Sized>(rng: &mut R) -> Matrix3<f64> {
    -random_rotation(rng).into_inner()
}

/// A mirror `I - 2 n n^T` through a random plane.
pub fn random_mirror<R: Rng + ?Sized>(rng: &mut R) -> Matrix3<f64> {
    let n = random_unit_vector(rng);
    Matrix3::identity() - 2.0 * n * n.transpose()
}

/// A uniformly distributed unit vector.
pub fn random_unit_vector<R: Rng + ?Sized>(rng: &mut R) -> Vector3<f64> {
    loop {
        let v = Vector3::new(normal(rng), normal(rng), normal(rng));
        let n = v.norm();
        if n > 1e-6 {
            return v / n;
        }
    }
}

/// A Gaussian vector with standard deviation `scale` per component.
pub fn random_vector<R: Rng + ?Sized>(rng: &mut R, scale: f64) -> Vector3<f64> {
    Vector3::new(normal(rng), normal(rng), normal(rng)) * scale
}

/// `n` Gaussian vectors as rows.
pub fn random_vectors<R: Rng + ?Sized>(rng: &mut R, n: usize, scale: f64) -> Vec<[f64; 3]> {
    (0..n)
        .map(|_| {
            let v = random_vector(rng, scale);
            [v.x, v.y, v.z]
        })
        .collect()
}

/// `n` standard normal values.
pub fn random_values<R: Rng + ?Sized>(rng: &mut R, n: usize) -> Vec<f64> {
    (0..n).map(|_| normal(rng)).collect()
}

/// Largest absolute difference over the largest expected magnitude (`max|e|`, floored at
/// 1e-300), with the index of the largest difference. Lengths must agree (else infinity).
pub fn rel_error_at(found: &[f64], expected: &[f64]) -> (f64, usize) {
    if found.len() != expected.len() {
        return (f64::INFINITY, 0);
    }
    let scale = expected
        .iter()
        .fold(0.0f64, |a, &b| a.max(b.abs()))
        .max(1e-300);
    let mut worst = (0.0f64, 0usize);
    for (i, (f, e)) in found.iter().zip(expected).enumerate() {
        let d = (f - e).abs();
        if d > worst.0 || d.is_nan() {
            worst = (if d.is_nan() { f64::INFINITY } else { d }, i);
        }
    }
    (worst.0 / scale, worst.1)
}

/// The relative error of [`rel_error_at`].
pub fn rel_error(found: &[f64], expected: &[f64]) -> f64 {
    rel_error_at(found, expected).0
}

/// A comparison that failed: what, how far off, where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{what}: max relative error {error:e} at index {index} (found {found}, expected {expected}) exceeds {tol:e}; replay with SE3_SEED"
)]
pub struct Mismatch {
    /// What was compared (file, key, property).
    pub what: String,
    /// Max relative error reached.
    pub error: f64,
    /// Index of the largest absolute difference.
    pub index: usize,
    /// Value found there.
    pub found: f64,
    /// Value expected there.
    pub expected: f64,
    /// The tolerance.
    pub tol: f64,
}

/// Compares by relative error; returns the error reached, or a [`Mismatch`] naming `what`,
/// the error and the index. Different lengths are a mismatch.
pub fn check_close(what: &str, found: &[f64], expected: &[f64], tol: f64) -> Result<f64, Mismatch> {
    let (error, index) = rel_error_at(found, expected);
    if error <= tol {
        return Ok(error);
    }
    Err(Mismatch {
        what: format!("{what} (lengths {} vs {})", found.len(), expected.len()),
        error,
        index,
        found: found.get(index).copied().unwrap_or(f64::NAN),
        expected: expected.get(index).copied().unwrap_or(f64::NAN),
        tol,
    })
}

/// Equivariance check `f(g x) = rho_out(g) f(x)`: `transformed_then_f` is `f(g x)`,
/// `f_then_transformed` is `rho_out(g) f(x)`; compared by relative error.
pub fn assert_equivariant(
    what: &str,
    transformed_then_f: &[f64],
    f_then_transformed: &[f64],
    tol: f64,
) -> Result<f64, Mismatch> {
    check_close(
        &format!("equivariance of {what}"),
        transformed_then_f,
        f_then_transformed,
        tol,
    )
}

/// Applies `D` to degree-l features stored as rows of length `2l+1` (the libraries' layout
/// `(..., 2l+1)`): every row `f` becomes `D f` (i.e. `f -> f D^T`).
pub fn rotate_rows(d: &DMatrix<f64>, rows: &[f64]) -> Vec<f64> {
    let n = d.nrows();
    debug_assert_eq!(rows.len() % n, 0);
    let mut out = vec![0.0; rows.len()];
    for (src, dst) in rows.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        for i in 0..n {
            dst[i] = (0..n).map(|j| d[(i, j)] * src[j]).sum();
        }
    }
    out
}

/// Applies a 3x3 matrix to each `[x, y, z]` row.
pub fn transform_points(m: &Matrix3<f64>, points: &[[f64; 3]]) -> Vec<[f64; 3]> {
    points
        .iter()
        .map(|p| {
            let q = m * Vector3::from(*p);
            [q.x, q.y, q.z]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_rotations_are_proper_and_reflections_improper() {
        let mut r = StdRng::seed_from_u64(1);
        for _ in 0..10 {
            let q = random_rotation(&mut r).into_inner();
            assert!((q.determinant() - 1.0).abs() < 1e-12);
            assert!((random_reflection(&mut r).determinant() + 1.0).abs() < 1e-12);
            assert!((random_mirror(&mut r).determinant() + 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn rel_error_names_the_worst_index() {
        let (e, i) = rel_error_at(&[1.0, 2.0, 3.5], &[1.0, 2.0, 3.0]);
        assert_eq!(i, 2);
        assert!((e - 0.5 / 3.0).abs() < 1e-15);
        assert!(check_close("x", &[1.0], &[1.0, 2.0], 1.0).is_err());
        assert!(check_close("x", &[f64::NAN], &[1.0], 1.0).is_err());
    }
}
