//! Rotation matrices in the Euler-angle conventions of the reference libraries, and checked
//! conversion of a plain 3x3 matrix into a rotation.

use nalgebra::{Matrix3, Rotation3, Vector3};

use crate::Error;

/// Rotation about the x axis: `[[1,0,0],[0,c,-s],[0,s,c]]`.
pub fn rot_x(t: f64) -> Rotation3<f64> {
    Rotation3::from_axis_angle(&Vector3::x_axis(), t)
}

/// Rotation about the y axis: `[[c,0,s],[0,1,0],[-s,0,c]]`.
pub fn rot_y(t: f64) -> Rotation3<f64> {
    Rotation3::from_axis_angle(&Vector3::y_axis(), t)
}

/// Rotation about the z axis: `[[c,-s,0],[s,c,0],[0,0,1]]`.
pub fn rot_z(t: f64) -> Rotation3<f64> {
    Rotation3::from_axis_angle(&Vector3::z_axis(), t)
}

/// e3nn's `angles_to_matrix(alpha, beta, gamma) = Ry(alpha) Rx(beta) Ry(gamma)` (gamma is
/// applied first). `wigner_d(1, &euler_e3nn(a, b, g))` is this matrix itself.
pub fn euler_e3nn(alpha: f64, beta: f64, gamma: f64) -> Rotation3<f64> {
    rot_y(alpha) * rot_x(beta) * rot_y(gamma)
}

/// The inverse of [`euler_e3nn`]: angles `(alpha, beta, gamma)` with
/// `euler_e3nn(alpha, beta, gamma) = r`, `beta` in `[0, pi]` (e3nn's `matrix_to_angles`).
pub fn euler_e3nn_angles(r: &Rotation3<f64>) -> [f64; 3] {
    // The image of the y axis fixes alpha and beta: R e_y = Ry(a) Rx(b) e_y.
    let m = r.matrix();
    let y = Vector3::new(m[(0, 1)], m[(1, 1)], m[(2, 1)]);
    let beta = y.y.clamp(-1.0, 1.0).acos();
    let alpha = y.x.atan2(y.z);
    let rest = (rot_y(alpha) * rot_x(beta)).inverse() * r;
    let rm = rest.matrix();
    let gamma = rm[(0, 2)].atan2(rm[(0, 0)]);
    [alpha, beta, gamma]
}

/// se3-transformer-pytorch's `rot(alpha, beta, gamma) = Rz(alpha) Ry(beta) Rz(gamma)`, a matrix
/// in its relabelled frame `(r2, r0, r1)`: `euler_e3nn(a, b, g) = P^T rot(a, b, g) P` with
/// `P = `[`se3t_frame`].
pub fn euler_zyz(alpha: f64, beta: f64, gamma: f64) -> Rotation3<f64> {
    rot_z(alpha) * rot_y(beta) * rot_z(gamma)
}

/// The permutation `P` that maps input coordinates `(r0, r1, r2)` to se3-transformer-pytorch's
/// relabelled frame `(r2, r0, r1)`.
pub fn se3t_frame() -> Matrix3<f64> {
    Matrix3::new(0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
}

/// Largest deviation `max |M^T M - I|` accepted by [`rotation_from_matrix`].
pub const ORTHOGONALITY_TOL: f64 = 1e-9;

/// A plain 3x3 matrix checked to be a rotation (orthogonal, determinant +1).
///
/// # Errors
/// `NonFinite` if an entry is NaN/inf, `NotARotation` if `M^T M` deviates from `I` by more
/// than [`ORTHOGONALITY_TOL`] or the determinant is negative.
pub fn rotation_from_matrix(m: &Matrix3<f64>) -> Result<Rotation3<f64>, Error> {
    let det = check_orthogonal(m)?;
    if det < 0.0 {
        return Err(Error::NotARotation {
            determinant: det,
            orthogonality_error: 0.0,
        });
    }
    Ok(Rotation3::from_matrix_unchecked(*m))
}

/// Checks that `m` is finite and orthogonal; returns its determinant (+1 or -1).
pub(crate) fn check_orthogonal(m: &Matrix3<f64>) -> Result<f64, Error> {
    for (i, &c) in m.iter().enumerate() {
        if !c.is_finite() {
            return Err(Error::NonFinite {
                what: "rotation matrix",
                index: i,
                value: c,
            });
        }
    }
    let err = (m.transpose() * m - Matrix3::identity()).amax();
    let det = m.determinant();
    if err > ORTHOGONALITY_TOL {
        return Err(Error::NotARotation {
            determinant: det,
            orthogonality_error: err,
        });
    }
    Ok(det)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euler_angles_round_trip() {
        for &(a, b, g) in &[(0.3, 1.2, -2.0), (-2.5, 0.1, 0.7), (1.0, 3.0, 3.1)] {
            let r = euler_e3nn(a, b, g);
            let [a2, b2, g2] = euler_e3nn_angles(&r);
            let r2 = euler_e3nn(a2, b2, g2);
            assert!((r.matrix() - r2.matrix()).amax() < 1e-12);
        }
    }

    #[test]
    fn zyz_in_the_relabelled_frame_is_e3nn_euler() {
        let p = se3t_frame();
        let (a, b, g) = (0.4, -1.1, 2.2);
        let lhs = euler_e3nn(a, b, g).into_inner();
        let rhs = p.transpose() * euler_zyz(a, b, g).matrix() * p;
        assert!((lhs - rhs).amax() < 1e-14);
    }

    #[test]
    fn non_rotations_are_rejected() {
        let m = Matrix3::new(1.0, 0.1, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0);
        assert!(matches!(
            rotation_from_matrix(&m),
            Err(Error::NotARotation { .. })
        ));
        assert!(matches!(
            rotation_from_matrix(&-Matrix3::identity()),
            Err(Error::NotARotation { .. })
        ));
    }
}
