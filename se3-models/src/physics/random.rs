//! Seeded random draws for the simulators: normal variates and uniform rotations.

use nalgebra::{Rotation3, UnitQuaternion, Vector3, Vector4};
use rand::Rng;

/// A standard normal variate N(0, 1) by the Box–Muller transform (one of the pair is used).
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    // u1 in (0, 1]: ln(u1) is finite
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A vector of three independent N(0, σ²) components.
pub fn normal_vector<R: Rng + ?Sized>(rng: &mut R, sigma: f64) -> Vector3<f64> {
    Vector3::new(
        standard_normal(rng),
        standard_normal(rng),
        standard_normal(rng),
    ) * sigma
}

/// A rotation drawn uniformly (Haar measure) on SO(3): a normalised 4-d Gaussian as a unit
/// quaternion.
pub fn uniform_rotation<R: Rng + ?Sized>(rng: &mut R) -> Rotation3<f64> {
    loop {
        let q = Vector4::new(
            standard_normal(rng),
            standard_normal(rng),
            standard_normal(rng),
            standard_normal(rng),
        );
        let norm = q.norm();
        if norm > 1e-9 {
            let unit = UnitQuaternion::from_quaternion(nalgebra::Quaternion::from(q / norm));
            return unit.to_rotation_matrix();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_normal_has_unit_variance() {
        let (mut rng, seed) = se3_core::testing::rng();
        let n = 20_000;
        let draws: Vec<f64> = (0..n).map(|_| standard_normal(&mut rng)).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // 6 standard errors: mean ~ 1/sqrt(n) = 0.007, variance ~ sqrt(2/n) = 0.01
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.06,
            "seed {seed}: mean {mean}, var {var}"
        );
    }

    #[test]
    fn uniform_rotation_is_a_rotation() {
        let (mut rng, seed) = se3_core::testing::rng();
        let r = uniform_rotation(&mut rng);
        let m = r.matrix();
        assert!((m * m.transpose() - nalgebra::Matrix3::identity()).norm() < 1e-12);
        assert!((m.determinant() - 1.0).abs() < 1e-12, "seed {seed}");
    }
}
