//! Per-edge angular quantities as polynomial tables for the CUDA kernels of `edge_basis.cu`:
//! real spherical harmonics and the SE(3)-Transformer kernel basis, each column a polynomial
//! in the unit edge direction `u`,
//!
//! ```text
//! out[e, col] = sum_t coef[t] u_x^a[t] u_y^b[t] u_z^c[t]     (terms t of column col)
//! ```
//!
//! The harmonics' columns are [`sh_polynomials`] (degree-major, `m = -l..=l`); the kernel
//! basis's columns are the blocks of [`EdgeBasis::from_geometry`](crate::layers::EdgeBasis)
//! side by side, pair `(d_in, d_out)` in the order `d_in`-major, each block's columns
//! `(i, f, o)` as the graph's `(E, 2 d_in + 1, nf (2 d_out + 1))` block, the same constant
//! tables (`Q_J` rounded to f32, the model's sign flips).
//!
//! On the CUDA backend the graph's basis still runs as its composition of primitives (fused
//! element-wise programs, a reduction, a cuBLAS GEMM against the constant table), which keeps
//! it differentiable; these kernels compute the same numbers in one pass and are checked
//! against that composition through the CPU shim (crate `se3-cuda-check`).

use crate::so3::spherical_harmonics::{sh_polynomials, Convention, Normalization};
use crate::Error;

/// A polynomial table in compressed columns.
#[derive(Debug, Clone, PartialEq)]
pub struct PolynomialTable {
    /// Output columns.
    pub cols: usize,
    /// Terms of column `c`: `col_start[c]..col_start[c + 1]` (`cols + 1` entries).
    pub col_start: Vec<u32>,
    /// Powers of each term packed `a | b << 8 | c << 16`.
    pub powers: Vec<u32>,
    /// Coefficient of each term.
    pub coefs: Vec<f32>,
    /// The first column of each block (pairs of the kernel basis; degrees of the harmonics),
    /// with `cols` at the end.
    pub block_start: Vec<usize>,
}

impl PolynomialTable {
    fn push_column(&mut self, terms: impl IntoIterator<Item = ([u8; 3], f32)>) {
        for ([a, b, c], coef) in terms {
            if coef != 0.0 {
                self.powers
                    .push(u32::from(a) | (u32::from(b) << 8) | (u32::from(c) << 16));
                self.coefs.push(coef);
            }
        }
        self.cols += 1;
        self.col_start
            .push(u32::try_from(self.powers.len()).unwrap_or(u32::MAX));
    }

    fn empty() -> PolynomialTable {
        PolynomialTable {
            cols: 0,
            col_start: vec![0],
            powers: Vec::new(),
            coefs: Vec::new(),
            block_start: Vec::new(),
        }
    }

    /// Real spherical harmonics of degrees `0..=lmax`, `(lmax + 1)^2` columns.
    ///
    /// # Errors
    /// `DegreeTooHigh` above the library's largest degree.
    pub fn spherical_harmonics(
        lmax: usize,
        convention: Convention,
        normalization: Normalization,
    ) -> Result<PolynomialTable, Error> {
        let mut t = PolynomialTable::empty();
        let polys = sh_polynomials(lmax, convention, normalization)?;
        for (col, poly) in polys.iter().enumerate() {
            if (col as f64).sqrt().fract() == 0.0 {
                t.block_start.push(col);
            }
            t.push_column(poly.iter().map(|m| (m.powers, m.coefficient as f32)));
        }
        t.block_start.push(t.cols);
        Ok(t)
    }

    /// The kernel basis of every pair `(d_in, d_out)` up to `max_degree`, as
    /// [`EdgeBasis::from_geometry`](crate::layers::EdgeBasis) with `sign_flips`.
    ///
    /// # Errors
    /// `DegreeTooHigh` above the library's largest degree.
    pub fn kernel_basis(
        max_degree: usize,
        sign_flips: &[(usize, usize, usize)],
    ) -> Result<PolynomialTable, Error> {
        let p = 2 * max_degree + 1;
        let mut t = PolynomialTable::empty();
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                let dense = crate::layers::edges::basis_table(d_in, d_out, p, sign_flips)?;
                let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
                let cols = mi * nf * mo;
                t.block_start.push(t.cols);
                for col in 0..cols {
                    let terms = (0..p * p * p).map(|row| {
                        let powers = [(row / (p * p)) as u8, (row / p % p) as u8, (row % p) as u8];
                        (powers, dense[row * cols + col])
                    });
                    t.push_column(terms);
                }
            }
        }
        t.block_start.push(t.cols);
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use nalgebra::Vector3;
    use rand::Rng;

    use super::*;
    use crate::so3::spherical_harmonics::spherical_harmonics;

    /// The table evaluated on the host, as the kernels do.
    fn eval(t: &PolynomialTable, u: [f32; 3], col: usize) -> f32 {
        let (s, e) = (t.col_start[col] as usize, t.col_start[col + 1] as usize);
        (s..e)
            .map(|k| {
                let p = t.powers[k];
                let pw = |x: f32, n: u32| x.powi(n as i32);
                t.coefs[k]
                    * pw(u[0], p & 255)
                    * pw(u[1], (p >> 8) & 255)
                    * pw(u[2], (p >> 16) & 255)
            })
            .sum()
    }

    #[test]
    fn harmonics_table_evaluates_to_spherical_harmonics() -> Result<(), Error> {
        let (mut r, seed) = crate::testing::rng();
        let lmax = 4;
        let t =
            PolynomialTable::spherical_harmonics(lmax, Convention::E3nn, Normalization::Component)?;
        assert_eq!(t.cols, (lmax + 1) * (lmax + 1));
        assert_eq!(t.block_start, vec![0, 1, 4, 9, 16, 25]);
        for _ in 0..20 {
            let v = Vector3::new(
                r.gen_range(-1.0..1.0),
                r.gen_range(-1.0..1.0),
                r.gen_range(-1.0..1.0),
            );
            let u = v.normalize();
            for l in 0..=lmax {
                let want = spherical_harmonics(l, &v, Convention::E3nn, Normalization::Component)?;
                for m in 0..2 * l + 1 {
                    let got = eval(&t, [u.x as f32, u.y as f32, u.z as f32], l * l + m);
                    assert!(
                        (f64::from(got) - want[m]).abs() < 1e-4 * (1.0 + want[m].abs()),
                        "l {l} m {m}: {got} vs {} (seed {seed})",
                        want[m]
                    );
                }
            }
        }
        Ok(())
    }
}
