//! Wigner D matrices: the real representation `D^l(R)` of SO(3) on degree-l harmonics.
//!
//! `D^l(R)` is defined by `Y_l(R v) = D^l(R) Y_l(v)` for the harmonics of
//! [`crate::so3::spherical_harmonics()`] (both conventions give the same D: they differ from
//! each other by a per-degree scalar). It equals e3nn's `wigner_D(l, alpha, beta, gamma)` for
//! `R = `[`euler_e3nn`]`(alpha, beta, gamma)` and se3-transformer-pytorch's
//! `irr_repr(l, alpha, beta, gamma)`; `D^1(R) = R` (e3nn's axis order, CONVENTIONS.md 1.3).
//! A degree-l feature row vector `f` transforms as `f -> f D^l(R)^T`.
//!
//! # How it is computed
//! By exact quadrature on the sphere, a projection that is well conditioned at every degree:
//! with component normalisation `(1/4pi) int Y_i Y_j = delta_ij`, so
//! `D_ij(R) = (1/4pi) sum_k w_k Y_i(R p_k) Y_j(p_k)`, where `(p_k, w_k)` is a product grid
//! (Gauss-Legendre in `cos theta` with l+1 nodes, 2l+1 equally spaced azimuths) that
//! integrates every polynomial of degree <= 2l exactly. No angles, no matrix exponentials,
//! no recursions in l: accuracy ~1e-15 at all degrees up to [`L_MAX`].

use std::sync::OnceLock;

use nalgebra::{DMatrix, Matrix3, Rotation3, UnitQuaternion, Vector3};
use rayon::prelude::*;

use super::rotation::{euler_e3nn, rotation_from_matrix};
use super::spherical_harmonics::{
    sh_len, sh_offset, spherical_harmonics_batch, Convention, Normalization, L_MAX,
};
use crate::Error;

/// A quadrature grid exact for polynomials of degree <= 2 lmax on the sphere, with the
/// weighted harmonics `w_k Y(p_k) / (4 pi)` of all degrees `0..=lmax` at its points.
struct Grid {
    lmax: usize,
    points: Vec<Vector3<f64>>,
    /// `weighted[k * (lmax+1)^2 + idx] = w_k Y_idx(p_k) / (4 pi)`.
    weighted: Vec<f64>,
}

/// Gauss-Legendre nodes and weights on [-1, 1] with `n` nodes (Newton on P_n).
fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    // P_n(x) and P_n'(x) by the three-term recurrence.
    let legendre = |x: f64| {
        let (mut p0, mut p1) = (1.0f64, x);
        for k in 2..=n {
            let p2 = ((2 * k - 1) as f64 * x * p1 - (k - 1) as f64 * p0) / k as f64;
            p0 = p1;
            p1 = p2;
        }
        (p1, n as f64 * (x * p1 - p0) / (x * x - 1.0))
    };
    let mut nodes = vec![0.0; n];
    let mut weights = vec![0.0; n];
    for i in 0..n {
        let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        for _ in 0..100 {
            let (p, dp) = legendre(x);
            let dx = p / dp;
            x -= dx;
            if dx.abs() < 1e-15 {
                break;
            }
        }
        let (_, dp) = legendre(x);
        nodes[i] = x;
        weights[i] = 2.0 / ((1.0 - x * x) * dp * dp);
    }
    (nodes, weights)
}

fn build_grid(lmax: usize) -> Grid {
    let (nodes, gl_w) = if lmax == 0 {
        (vec![0.0], vec![2.0])
    } else {
        gauss_legendre(lmax + 1)
    };
    let naz = 2 * lmax + 1;
    let mut points = Vec::with_capacity(nodes.len() * naz);
    let mut weights = Vec::with_capacity(nodes.len() * naz);
    for (&z, &w) in nodes.iter().zip(&gl_w) {
        let s = (1.0 - z * z).max(0.0).sqrt();
        for j in 0..naz {
            let phi = 2.0 * std::f64::consts::PI * j as f64 / naz as f64;
            points.push(Vector3::new(s * phi.cos(), z, s * phi.sin()));
            weights.push(w * 2.0 * std::f64::consts::PI / naz as f64);
        }
    }
    let arr: Vec<[f64; 3]> = points.iter().map(|p| [p.x, p.y, p.z]).collect();
    let len = sh_len(lmax);
    let mut weighted =
        spherical_harmonics_batch(lmax, &arr, Convention::E3nn, Normalization::Component)
            .expect("grid points are finite unit vectors and lmax <= L_MAX");
    let inv4pi = 1.0 / (4.0 * std::f64::consts::PI);
    for (k, w) in weights.iter().enumerate() {
        for v in &mut weighted[k * len..(k + 1) * len] {
            *v *= w * inv4pi;
        }
    }
    Grid {
        lmax,
        points,
        weighted,
    }
}

fn grid(lmax: usize) -> &'static Grid {
    static GRIDS: OnceLock<Vec<OnceLock<Grid>>> = OnceLock::new();
    let grids = GRIDS.get_or_init(|| (0..=L_MAX).map(|_| OnceLock::new()).collect());
    grids[lmax].get_or_init(|| build_grid(lmax))
}

fn check_rotation(r: &Rotation3<f64>) -> Result<(), Error> {
    for (i, &c) in r.matrix().iter().enumerate() {
        if !c.is_finite() {
            return Err(Error::NonFinite {
                what: "rotation matrix",
                index: i,
                value: c,
            });
        }
    }
    Ok(())
}

/// Projects `Y(R p_k)` onto the grid harmonics for degrees `ls`, grid of degree `g.lmax`.
fn project(g: &Grid, r: &Rotation3<f64>, ls: std::ops::RangeInclusive<usize>) -> Vec<DMatrix<f64>> {
    let lmax = g.lmax;
    let len = sh_len(lmax);
    let rotated: Vec<[f64; 3]> = g
        .points
        .iter()
        .map(|p| {
            let q = r * p;
            [q.x, q.y, q.z]
        })
        .collect();
    let yr = spherical_harmonics_batch(lmax, &rotated, Convention::E3nn, Normalization::Component)
        .expect("rotated grid points are finite unit vectors");
    ls.map(|l| {
        let d = 2 * l + 1;
        let off = sh_offset(l);
        // Sum ring by ring (points of one latitude), then the rings: two short sums round
        // less than one long one.
        let mut m = DMatrix::<f64>::zeros(d, d);
        let mut ring = DMatrix::<f64>::zeros(d, d);
        let naz = 2 * lmax + 1;
        for (k, p) in (0..g.points.len()).enumerate() {
            let a = &yr[p * len + off..p * len + off + d];
            let b = &g.weighted[p * len + off..p * len + off + d];
            for i in 0..d {
                let ai = a[i];
                for j in 0..d {
                    ring[(i, j)] += ai * b[j];
                }
            }
            if (k + 1) % naz == 0 {
                m += &ring;
                ring.fill(0.0);
            }
        }
        m
    })
    .collect()
}

/// The Wigner D matrix of degree `l` of the rotation `r`, shape `(2l+1, 2l+1)`.
///
/// `Y_l(R v) = D^l(R) Y_l(v)`; `D(R1 R2) = D(R1) D(R2)`; `D(R^T) = D(R)^T`; `D^1(R) = R`.
/// Basis and sign as e3nn `wigner_D` (module documentation).
///
/// # Errors
/// `DegreeTooHigh` if `l > L_MAX`, `NonFinite` if `r` holds NaN/inf.
pub fn wigner_d(l: usize, r: &Rotation3<f64>) -> Result<DMatrix<f64>, Error> {
    if l > L_MAX {
        return Err(Error::DegreeTooHigh { l, max: L_MAX });
    }
    check_rotation(r)?;
    Ok(project(grid(l), r, l..=l).remove(0))
}

/// Wigner D matrices of all degrees `0..=lmax` of one rotation (index = degree), sharing one
/// quadrature grid.
///
/// # Errors
/// As [`wigner_d`].
pub fn wigner_d_all(lmax: usize, r: &Rotation3<f64>) -> Result<Vec<DMatrix<f64>>, Error> {
    if lmax > L_MAX {
        return Err(Error::DegreeTooHigh {
            l: lmax,
            max: L_MAX,
        });
    }
    check_rotation(r)?;
    Ok(project(grid(lmax), r, 0..=lmax))
}

/// Offset of degree `l`'s block in the flat layout of [`wigner_d_batch`]:
/// `sum_{k<l} (2k+1)^2 = l (2l-1) (2l+1) / 3`.
pub const fn wigner_d_offset(l: usize) -> usize {
    l * (4 * l * l - 1) / 3
}

/// Length of all blocks of degrees `0..=lmax` of one rotation in [`wigner_d_batch`].
pub const fn wigner_d_len(lmax: usize) -> usize {
    wigner_d_offset(lmax + 1)
}

/// Wigner D matrices of degrees `0..=lmax` for many rotations, in parallel, flat:
/// `out[n * wigner_d_len(lmax) + wigner_d_offset(l) + i * (2l+1) + j] = D^l(R_n)[i, j]`
/// (row-major blocks, degree after degree).
///
/// # Errors
/// `DegreeTooHigh` if `lmax > L_MAX`, `NonFinite` if a rotation holds NaN/inf.
pub fn wigner_d_batch(lmax: usize, rotations: &[Rotation3<f64>]) -> Result<Vec<f64>, Error> {
    if lmax > L_MAX {
        return Err(Error::DegreeTooHigh {
            l: lmax,
            max: L_MAX,
        });
    }
    for r in rotations {
        check_rotation(r)?;
    }
    let g = grid(lmax);
    let len = wigner_d_len(lmax);
    let mut out = vec![0.0; rotations.len() * len];
    out.par_chunks_mut(len)
        .zip(rotations.par_iter())
        .for_each(|(o, r)| {
            for (l, d) in project(g, r, 0..=lmax).into_iter().enumerate() {
                let n = 2 * l + 1;
                let off = wigner_d_offset(l);
                for i in 0..n {
                    for j in 0..n {
                        o[off + i * n + j] = d[(i, j)];
                    }
                }
            }
        });
    Ok(out)
}

/// [`wigner_d`] of a unit quaternion.
///
/// # Errors
/// As [`wigner_d`].
pub fn wigner_d_from_quaternion(l: usize, q: &UnitQuaternion<f64>) -> Result<DMatrix<f64>, Error> {
    wigner_d(l, &q.to_rotation_matrix())
}

/// [`wigner_d`] of a plain 3x3 matrix, checked to be a rotation.
///
/// # Errors
/// As [`wigner_d`], plus `NotARotation` if `m` is not orthogonal with determinant +1.
pub fn wigner_d_from_matrix(l: usize, m: &Matrix3<f64>) -> Result<DMatrix<f64>, Error> {
    wigner_d(l, &rotation_from_matrix(m)?)
}

/// e3nn's `wigner_D(l, alpha, beta, gamma)` (= se3-transformer-pytorch's `irr_repr`): the D of
/// `Ry(alpha) Rx(beta) Ry(gamma)`.
///
/// # Errors
/// As [`wigner_d`]; `NonFinite` if an angle is NaN/inf.
pub fn wigner_d_from_euler(
    l: usize,
    alpha: f64,
    beta: f64,
    gamma: f64,
) -> Result<DMatrix<f64>, Error> {
    for (i, a) in [alpha, beta, gamma].into_iter().enumerate() {
        if !a.is_finite() {
            return Err(Error::NonFinite {
                what: "Euler angles",
                index: i,
                value: a,
            });
        }
    }
    wigner_d(l, &euler_e3nn(alpha, beta, gamma))
}

/// se3-transformer-pytorch's constant matrix `J_l` with `irr_repr = Z(a) J Z(b) J Z(g)`.
///
/// `J_l` is how the harmonics transform under the improper matrix
/// `M = [[0,-1,0],[-1,0,0],[0,0,1]]` (in its relabelled frame: `y -> -z`, `z -> -y`), i.e.
/// `Y_l(M v) = J_l Y_l(v)`: `J_l = (-1)^l D^l(-M)` with `-M` the half-turn about `(1, 1, 0)`.
/// `J_1 = M`.
///
/// # Errors
/// `DegreeTooHigh` if `l > L_MAX`.
pub fn se3t_j_matrix(l: usize) -> Result<DMatrix<f64>, Error> {
    let half_turn = Matrix3::new(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0);
    let d = wigner_d(l, &Rotation3::from_matrix_unchecked(half_turn))?;
    Ok(if l.is_multiple_of(2) { d } else { -d })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::so3::spherical_harmonics::spherical_harmonics;

    type R = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn degree_one_is_the_rotation_itself() -> R {
        let r = euler_e3nn(0.3, 1.1, -0.4);
        let d = wigner_d(1, &r)?;
        assert!((d - DMatrix::from_column_slice(3, 3, r.matrix().as_slice())).amax() < 1e-14);
        Ok(())
    }

    #[test]
    fn harmonics_rotate_with_d_up_to_l_max() -> R {
        let r = euler_e3nn(2.0, 0.7, 1.3);
        let v = Vector3::new(0.3, -0.4, 0.9);
        let ds = wigner_d_all(L_MAX, &r)?;
        for (l, d) in ds.iter().enumerate() {
            let lhs = spherical_harmonics(l, &(r * v), Convention::E3nn, Normalization::Component)?;
            let rhs = d * spherical_harmonics(l, &v, Convention::E3nn, Normalization::Component)?;
            assert!((lhs - rhs).amax() < 1e-12, "l = {l}");
        }
        Ok(())
    }

    #[test]
    fn batch_matches_single() -> R {
        let rs = [euler_e3nn(0.1, 0.2, 0.3), euler_e3nn(-1.0, 2.5, 0.7)];
        let b = wigner_d_batch(3, &rs)?;
        assert_eq!(b.len(), 2 * wigner_d_len(3));
        assert_eq!(wigner_d_len(3), 1 + 9 + 25 + 49);
        for (n, r) in rs.iter().enumerate() {
            for l in 0..=3 {
                let d = wigner_d(l, r)?;
                let k = 2 * l + 1;
                for i in 0..k {
                    for j in 0..k {
                        let got = b[n * wigner_d_len(3) + wigner_d_offset(l) + i * k + j];
                        assert!((got - d[(i, j)]).abs() < 1e-14);
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn gauss_legendre_integrates_polynomials() {
        let (x, w) = gauss_legendre(6);
        let int: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(10)).sum();
        assert!((int - 2.0 / 11.0).abs() < 1e-15);
        for n in 1..=17 {
            let (_, w) = gauss_legendre(n);
            assert!((w.iter().sum::<f64>() - 2.0).abs() < 2e-15, "n = {n}");
        }
    }
}
