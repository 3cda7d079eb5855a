//! Parity under inversion, for O(3) = SO(3) x {I, -I}.
//!
//! An O(3) irrep is a degree `l` with a parity `p`. The inversion `-I` acts on it by the scalar
//! `p`; a general orthogonal matrix `M` (det ±1) acts as `p^{(1 - det M)/2} D^l(det(M) M)`.
//! Spherical harmonics have parity `(-1)^l`: `Y_l(-v) = (-1)^l Y_l(v)` (both conventions), so
//! with [`sh_parity`] the O(3) matrix of [`wigner_d_o3`] satisfies `Y_l(M v) = D(M) Y_l(v)`
//! for every orthogonal `M`.

use nalgebra::{DMatrix, Matrix3, Rotation3};

use super::rotation::check_orthogonal;
use super::wigner_d::wigner_d;
use crate::Error;

/// Behaviour under inversion `v -> -v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    /// Unchanged under inversion (`p = +1`, e3nn's `e`).
    Even,
    /// Sign flip under inversion (`p = -1`, e3nn's `o`).
    Odd,
}

impl Parity {
    /// The scalar the inversion multiplies by: +1 or -1.
    pub fn factor(self) -> f64 {
        match self {
            Parity::Even => 1.0,
            Parity::Odd => -1.0,
        }
    }

    /// Parity of a product (tensor product of irreps multiplies parities).
    pub fn times(self, other: Parity) -> Parity {
        if self == other {
            Parity::Even
        } else {
            Parity::Odd
        }
    }
}

/// The parity of degree-`l` spherical harmonics: `(-1)^l`.
pub fn sh_parity(l: usize) -> Parity {
    if l.is_multiple_of(2) {
        Parity::Even
    } else {
        Parity::Odd
    }
}

/// The representation matrix of an orthogonal matrix `m` (rotation or improper) on the O(3)
/// irrep `(l, parity)`: `parity.factor()^{(1 - det m)/2} D^l(det(m) m)`.
///
/// # Errors
/// `NonFinite` if `m` holds NaN/inf, `NotARotation` if `m` is not orthogonal,
/// `DegreeTooHigh` if `l > L_MAX`.
pub fn wigner_d_o3(l: usize, parity: Parity, m: &Matrix3<f64>) -> Result<DMatrix<f64>, Error> {
    let det = check_orthogonal(m)?;
    if det > 0.0 {
        return wigner_d(l, &Rotation3::from_matrix_unchecked(*m));
    }
    let d = wigner_d(l, &Rotation3::from_matrix_unchecked(-*m))?;
    Ok(d * parity.factor())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::so3::spherical_harmonics::{spherical_harmonics, Convention, Normalization};
    use nalgebra::Vector3;

    #[test]
    fn harmonics_follow_a_reflection_with_their_parity() -> Result<(), Error> {
        // Mirror through the plane normal to (1, 2, 2)/3.
        let n = Vector3::new(1.0, 2.0, 2.0) / 3.0;
        let mirror = Matrix3::identity() - 2.0 * n * n.transpose();
        let v = Vector3::new(0.3, -0.2, 0.8);
        for l in 0..=6 {
            let d = wigner_d_o3(l, sh_parity(l), &mirror)?;
            let lhs =
                spherical_harmonics(l, &(mirror * v), Convention::E3nn, Normalization::Component)?;
            let rhs = d * spherical_harmonics(l, &v, Convention::E3nn, Normalization::Component)?;
            assert!((lhs - rhs).amax() < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn parities_multiply() {
        assert_eq!(Parity::Odd.times(Parity::Odd), Parity::Even);
        assert_eq!(Parity::Odd.times(Parity::Even), Parity::Odd);
    }
}
