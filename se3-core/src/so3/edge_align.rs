//! equiformer-pytorch's edge-aligned rotations (eSCN-style tensor products,
//! tests/reference/CONVENTIONS.md 3.2).
//!
//! For an edge `v`, with `u = v/|v|` and `e = (0, 1, 0)` (the m = 0 axis), equiformer builds the
//! half-turn `R = 2 (u+e)(u+e)^T / |u+e|^2 - I` (symmetric, `R u = e`), converts it to three
//! angles with its own `rot_to_euler_angles` and uses `D^l = wigner_D(l, angles)` (e3nn's
//! Euler convention). That `D^1` is *not* `R`: it is another rotation that also maps `e` to
//! `u` (`D^1 e = u`), differing from `R^T` by a turn about `e`.

use nalgebra::{DMatrix, Matrix3, Rotation3, Vector3};

use super::rotation::{euler_e3nn, euler_zyz};
use super::wigner_d::{wigner_d_batch, wigner_d_from_euler};
use crate::Error;

/// Below this `|u + e|^2` the edge is taken as antiparallel to `e`.
const ANTIPARALLEL_TOL: f64 = 1e-24;

/// equiformer's `rot_x_to_y_direction(u, e)`: the half-turn `2 (u+e)(u+e)^T/|u+e|^2 - I` that
/// maps the direction of `v` to `e = (0, 1, 0)`.
///
/// For `v` antiparallel to `e` (where equiformer divides by zero) this returns the half-turn
/// about the x axis, which also maps `-e` to `e`.
///
/// # Errors
/// `NonFinite` if `v` holds NaN/inf, `ZeroVector` if `v = 0`.
pub fn equiformer_edge_rotation(v: &Vector3<f64>) -> Result<Rotation3<f64>, Error> {
    for (i, &c) in v.iter().enumerate() {
        if !c.is_finite() {
            return Err(Error::NonFinite {
                what: "edge vector",
                index: i,
                value: c,
            });
        }
    }
    let n = v.norm();
    if n == 0.0 {
        return Err(Error::ZeroVector {
            what: "edge vector",
            index: 0,
        });
    }
    let s = v / n + Vector3::y();
    let s2 = s.norm_squared();
    if s2 < ANTIPARALLEL_TOL {
        return Ok(Rotation3::from_matrix_unchecked(Matrix3::new(
            1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0,
        )));
    }
    Ok(Rotation3::from_matrix_unchecked(
        2.0 * s * s.transpose() / s2 - Matrix3::identity(),
    ))
}

/// equiformer's `rot_to_euler_angles(R)`: `xyz = R e_y`, `beta = acos(xyz_1)`,
/// `alpha = atan2(xyz_0, xyz_2)`, then `gamma = atan2(M_02, M_00)` of
/// `M = (Rz(alpha) Ry(beta))^T R`.
pub fn equiformer_euler_angles(r: &Rotation3<f64>) -> [f64; 3] {
    let m = r.matrix();
    let xyz = Vector3::new(m[(0, 1)], m[(1, 1)], m[(2, 1)]);
    let xyz = xyz / xyz.norm();
    let beta = xyz.y.clamp(-1.0, 1.0).acos();
    let alpha = xyz.x.clamp(-1.0, 1.0).atan2(xyz.z.clamp(-1.0, 1.0));
    let rest = euler_zyz(alpha, beta, 0.0).inverse() * r;
    let rm = rest.matrix();
    let gamma = rm[(0, 2)].atan2(rm[(0, 0)]);
    [alpha, beta, gamma]
}

/// The degree-l matrix equiformer uses for edge `v`: e3nn's `wigner_D(l, angles)` of the
/// angles of [`equiformer_euler_angles`] of [`equiformer_edge_rotation`].
///
/// # Errors
/// As [`equiformer_edge_rotation`], plus `DegreeTooHigh` if `l > L_MAX`.
pub fn equiformer_edge_wigner_d(l: usize, v: &Vector3<f64>) -> Result<DMatrix<f64>, Error> {
    let [a, b, g] = equiformer_euler_angles(&equiformer_edge_rotation(v)?);
    wigner_d_from_euler(l, a, b, g)
}

/// [`equiformer_edge_wigner_d`] for many edges and all degrees `0..=lmax`, in the flat layout
/// of [`wigner_d_batch`].
///
/// # Errors
/// `NonFinite`/`ZeroVector` for a bad edge (first one, with its index), `DegreeTooHigh` if
/// `lmax > L_MAX`.
pub fn equiformer_edge_wigner_d_batch(lmax: usize, edges: &[[f64; 3]]) -> Result<Vec<f64>, Error> {
    let mut rotations = Vec::with_capacity(edges.len());
    for (i, e) in edges.iter().enumerate() {
        let r = equiformer_edge_rotation(&Vector3::from(*e)).map_err(|err| match err {
            Error::NonFinite { what, value, .. } => Error::NonFinite {
                what,
                index: i,
                value,
            },
            Error::ZeroVector { what, .. } => Error::ZeroVector { what, index: i },
            other => other,
        })?;
        let [a, b, g] = equiformer_euler_angles(&r);
        rotations.push(euler_e3nn(a, b, g));
    }
    wigner_d_batch(lmax, &rotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_rotation_maps_the_edge_to_y() -> Result<(), Error> {
        for v in [
            Vector3::new(0.3, -0.2, 0.9),
            Vector3::new(0.0, -2.0, 0.0),
            Vector3::new(0.0, 1.0, 0.0),
        ] {
            let r = equiformer_edge_rotation(&v)?;
            assert!((r * v.normalize() - Vector3::y()).amax() < 1e-14);
        }
        Ok(())
    }

    #[test]
    fn batch_matches_single_and_names_bad_edges() -> Result<(), Error> {
        let edges = [[0.3, -0.2, 0.9], [-1.0, 0.5, 0.1]];
        let b = equiformer_edge_wigner_d_batch(2, &edges)?;
        let d = equiformer_edge_wigner_d(2, &Vector3::from(edges[1]))?;
        for i in 0..5 {
            for j in 0..5 {
                assert!((b[35 + 10 + i * 5 + j] - d[(i, j)]).abs() < 1e-14);
            }
        }
        assert!(matches!(
            equiformer_edge_wigner_d_batch(2, &[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
            Err(Error::ZeroVector { index: 1, .. })
        ));
        Ok(())
    }

    #[test]
    fn edge_d1_maps_y_to_the_edge() -> Result<(), Error> {
        let v = Vector3::new(-0.5, 0.4, 0.7);
        let d = equiformer_edge_wigner_d(1, &v)?;
        let img = d * nalgebra::DVector::from_column_slice(&[0.0, 1.0, 0.0]);
        let u = v.normalize();
        for c in 0..3 {
            assert!((img[c] - u[c]).abs() < 1e-14);
        }
        Ok(())
    }
}
