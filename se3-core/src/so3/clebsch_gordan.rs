//! Clebsch-Gordan coefficients in the real basis: e3nn's `wigner_3j(l1, l2, l3)`, same sign.
//!
//! `C` has shape `(2l1+1, 2l2+1, 2l3+1)`, Frobenius norm 1, and is invariant:
//! `sum_ijk C_ijk D1_il D2_jm D3_kn = C_lmn` for the D of [`crate::so3::wigner_d()`]
//! (equivalently it intertwines `D^{l1} (x) D^{l2}` with `D^{l3}`).
//!
//! # How it is computed (e3nn's construction, so that the overall sign is e3nn's)
//! 1. The complex SU(2) Clebsch-Gordan coefficients `<l1 m1 l2 m2 | l3 m3>` (Condon-Shortley)
//!    from Racah's formula, written so that the alternating sum is over products of three
//!    binomial coefficients, summed exactly in `i128`:
//!    `C = sqrt((2J+1) (J+M)!(J-M)!(j1-m1)!(j1+m1)!(j2-m2)!(j2+m2)! /
//!    ((j1+j2+J+1)! (j1+j2-J)! (J+j1-j2)! (J-j1+j2)!)) *
//!    sum_k (-1)^k binom(j1+j2-J, k) binom(J+j1-j2, j1-m1-k) binom(J-j1+j2, j2+m2-k)`.
//!    Only the square root is rounded (f64, relative error ~1e-15).
//! 2. The real/complex change of basis `Q_l` (rows m = -l..l; `Q[l+m, l+|m|] = 1/sqrt2`,
//!    `Q[l+m, l-|m|] = -i/sqrt2` for m < 0, `Q[l, l] = 1`, `Q[l+m, l+m] = (-1)^m/sqrt2`,
//!    `Q[l+m, l-m] = i(-1)^m/sqrt2` for m > 0, all times `(-i)^l`):
//!    `C_real[j, l, m] = sum_{i,k,n} Q1[i, j] Q2[k, l] conj(Q3[n, m]) C[i, k, n]`, which is real.
//! 3. Divided by its Frobenius norm.
//!
//! Results are cached per triple and shared as `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use nalgebra::Complex;

use super::spherical_harmonics::L_MAX;
use crate::Error;

/// The real-basis Clebsch-Gordan tensor of one triple `(l1, l2, l3)`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ClebschGordan {
    /// `(l1, l2, l3)`.
    pub degrees: [usize; 3],
    /// `(2l1+1, 2l2+1, 2l3+1)`.
    pub shape: [usize; 3],
    /// `data[(i * (2l2+1) + j) * (2l3+1) + k] = C[i, j, k]`.
    pub data: Vec<f64>,
}

impl ClebschGordan {
    /// The entry `C[i, j, k]` (indices `m + l`).
    pub fn get(&self, i: usize, j: usize, k: usize) -> f64 {
        self.data[(i * self.shape[1] + j) * self.shape[2] + k]
    }
}

/// The selection rule `|l1 - l2| <= l3 <= l1 + l2`.
pub fn is_coupled(l1: usize, l2: usize, l3: usize) -> bool {
    l1.abs_diff(l2) <= l3 && l3 <= l1 + l2
}

/// e3nn's `wigner_3j(l1, l2, l3)`: the real Clebsch-Gordan tensor, cached.
///
/// Shape `(2l1+1, 2l2+1, 2l3+1)`, unit Frobenius norm, invariant under
/// `D^{l1} (x) D^{l2} (x) D^{l3}`; sign as e3nn 0.6 (module documentation).
///
/// # Errors
/// `SelectionRule` if `(l1, l2, l3)` breaks `|l1 - l2| <= l3 <= l1 + l2`, `DegreeTooHigh` if a
/// degree exceeds `L_MAX`.
pub fn clebsch_gordan(l1: usize, l2: usize, l3: usize) -> Result<Arc<ClebschGordan>, Error> {
    for l in [l1, l2, l3] {
        if l > L_MAX {
            return Err(Error::DegreeTooHigh { l, max: L_MAX });
        }
    }
    if !is_coupled(l1, l2, l3) {
        return Err(Error::SelectionRule { l1, l2, j: l3 });
    }
    type Cache = Mutex<HashMap<[usize; 3], Arc<ClebschGordan>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = [l1, l2, l3];
    if let Some(c) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let c = Arc::new(compute_real(l1, l2, l3));
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, c.clone());
    Ok(c)
}

/// Alias of [`clebsch_gordan`] under e3nn's name.
///
/// # Errors
/// As [`clebsch_gordan`].
pub fn wigner_3j(l1: usize, l2: usize, l3: usize) -> Result<Arc<ClebschGordan>, Error> {
    clebsch_gordan(l1, l2, l3)
}

fn binom(n: i64, k: i64) -> i128 {
    if k < 0 || k > n || n < 0 {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: i128 = 1;
    for t in 0..k {
        r = r * (n - t) as i128 / (t + 1) as i128;
    }
    r
}

fn factorial(n: i64) -> f64 {
    (1..=n).fold(1.0, |a, t| a * t as f64)
}

/// The complex (standard, Condon-Shortley) coefficient `<j1 m1 j2 m2 | j m1+m2>`.
fn su2_cg(j1: i64, m1: i64, j2: i64, m2: i64, j: i64) -> f64 {
    let m = m1 + m2;
    if m.abs() > j {
        return 0.0;
    }
    let a = j1 + j2 - j;
    let mut sum: i128 = 0;
    for k in 0..=a {
        let term = binom(a, k) * binom(j + j1 - j2, j1 - m1 - k) * binom(j - j1 + j2, j2 + m2 - k);
        if k % 2 == 0 {
            sum += term;
        } else {
            sum -= term;
        }
    }
    if sum == 0 {
        return 0.0;
    }
    // Ratio of factorials as a product of ratios to keep every intermediate moderate.
    let num = [j + m, j - m, j1 - m1, j1 + m1, j2 - m2, j2 + m2];
    let den = [j1 + j2 + j + 1, a, j + j1 - j2, j - j1 + j2];
    let mut ratio = (2 * j + 1) as f64;
    for n in num {
        ratio *= factorial(n);
    }
    for d in den {
        ratio /= factorial(d);
    }
    ratio.sqrt() * sum as f64
}

/// `Q_l[row, col]` of the module documentation, `(-i)^l` included.
fn change_of_basis(l: usize) -> Vec<Vec<Complex<f64>>> {
    let d = 2 * l + 1;
    let li = l as i64;
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let mut q = vec![vec![Complex::new(0.0, 0.0); d]; d];
    for m in -li..=li {
        let row = (li + m) as usize;
        let am = m.unsigned_abs() as usize;
        if m < 0 {
            q[row][l + am] = Complex::new(h, 0.0);
            q[row][l - am] = Complex::new(0.0, -h);
        } else if m == 0 {
            q[row][l] = Complex::new(1.0, 0.0);
        } else {
            let s = if m % 2 == 0 { 1.0 } else { -1.0 };
            q[row][l + am] = Complex::new(s * h, 0.0);
            q[row][l - am] = Complex::new(0.0, s * h);
        }
    }
    // (-i)^l
    let phase = match l % 4 {
        0 => Complex::new(1.0, 0.0),
        1 => Complex::new(0.0, -1.0),
        2 => Complex::new(-1.0, 0.0),
        _ => Complex::new(0.0, 1.0),
    };
    for row in &mut q {
        for c in row.iter_mut() {
            *c *= phase;
        }
    }
    q
}

/// Nonzero columns of row `i` of `Q_l`: `l + |m|` and `l - |m|`.
fn q_cols(l: usize, i: usize) -> [usize; 2] {
    let am = i.abs_diff(l);
    [l + am, l - am]
}

fn compute_real(l1: usize, l2: usize, l3: usize) -> ClebschGordan {
    let (d1, d2, d3) = (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1);
    let (q1, q2, q3) = (
        change_of_basis(l1),
        change_of_basis(l2),
        change_of_basis(l3),
    );
    let mut acc = vec![Complex::new(0.0, 0.0); d1 * d2 * d3];
    for (i, q1_row) in q1.iter().enumerate() {
        let m1 = i as i64 - l1 as i64;
        for (k, q2_row) in q2.iter().enumerate() {
            let m2 = k as i64 - l2 as i64;
            let m3 = m1 + m2;
            if m3.abs() > l3 as i64 {
                continue;
            }
            let n = (m3 + l3 as i64) as usize;
            let c = su2_cg(l1 as i64, m1, l2 as i64, m2, l3 as i64);
            if c == 0.0 {
                continue;
            }
            // Distinct columns only (for m = 0 both entries name the same column).
            let cols = |l: usize, r: usize| {
                let [a, b] = q_cols(l, r);
                if a == b {
                    vec![a]
                } else {
                    vec![a, b]
                }
            };
            for &j in &cols(l1, i) {
                for &l in &cols(l2, k) {
                    for &m in &cols(l3, n) {
                        acc[(j * d2 + l) * d3 + m] += q1_row[j] * q2_row[l] * q3[n][m].conj() * c;
                    }
                }
            }
        }
    }
    let mut data: Vec<f64> = acc.iter().map(|z| z.re).collect();
    debug_assert!(acc.iter().all(|z| z.im.abs() < 1e-10));
    let norm = data.iter().map(|x| x * x).sum::<f64>().sqrt();
    for x in &mut data {
        *x /= norm;
    }
    ClebschGordan {
        degrees: [l1, l2, l3],
        shape: [d1, d2, d3],
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn su2_coefficients_match_textbook_values() {
        // <1 1 1 -1 | 0 0> = 1/sqrt(3), <1/2...> not needed; <1 0 1 0 | 2 0> = sqrt(2/3).
        assert!((su2_cg(1, 1, 1, -1, 0) - (1.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert!((su2_cg(1, 0, 1, 0, 2) - (2.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert!((su2_cg(1, 0, 1, 0, 1)).abs() < 1e-15);
        assert!((su2_cg(2, 1, 1, -1, 1) - (0.3f64).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn unit_norm_and_cached() -> Result<(), Error> {
        let a = clebsch_gordan(3, 4, 5)?;
        let n: f64 = a.data.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-14);
        let b = clebsch_gordan(3, 4, 5)?;
        assert!(Arc::ptr_eq(&a, &b));
        Ok(())
    }

    #[test]
    fn selection_rule_is_checked() {
        assert!(matches!(
            clebsch_gordan(1, 1, 3),
            Err(Error::SelectionRule { l1: 1, l2: 1, j: 3 })
        ));
    }
}
