//! equiformer-pytorch's constant z-basis of the edge-aligned tensor product
//! (CONVENTIONS.md 3.2; stored in equiformer checkpoints as `basis:(d_in,d_out)`).
//!
//! With the edge rotated onto the m = 0 axis, the harmonics `Y_J` are nonzero only at m = 0,
//! so the kernel basis collapses to column `m = 0` of each `Q_J`. For a pair with
//! `d_min = min(d_in, d_out) >= 1` and `J = |d_in - d_out| + f`:
//!
//! ```text
//! Z[i, f] = sum_o Q_J[o, i, m = 0]     o, i restricted to the centred 2 d_min + 1 orders
//! ```
//!
//! (the restricted matrix is a possibly flipped diagonal; the sum picks it out). Shape
//! `(2 d_min + 1, 2 d_min + 1)`. equiformer uses its float32 `Q_J`: use
//! [`QjPrecision::RoundedF32`] for bit-compatible values.

use nalgebra::DMatrix;

use super::q_j::{q_j, QjPrecision};
use crate::Error;

/// The z-basis of pair `(d_in, d_out)`, shape `(2 d_min+1, 2 d_min+1)` (rows: input order m,
/// columns: frequency f).
///
/// # Errors
/// `NotTabulated` if `min(d_in, d_out) = 0` (equiformer has no basis there: the radial weight
/// alone connects such degrees), `DegreeTooHigh` if a degree exceeds `L_MAX`.
pub fn equiformer_zbasis(
    d_in: usize,
    d_out: usize,
    precision: QjPrecision,
) -> Result<DMatrix<f64>, Error> {
    let d_min = d_in.min(d_out);
    if d_min == 0 {
        return Err(Error::NotTabulated {
            what: "equiformer z-basis (pairs with a degree-0 side have none)",
            degrees: vec![d_in, d_out],
        });
    }
    let (n_in, n_out, n_min) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_min + 1);
    let (pad_in, pad_out) = ((n_in - n_min) / 2, (n_out - n_min) / 2);
    let nf = n_min;
    let mut z = DMatrix::<f64>::zeros(n_min, nf);
    for f in 0..nf {
        let j = d_in.abs_diff(d_out) + f;
        let q = q_j(j, d_in, d_out, precision)?;
        for i in 0..n_min {
            let mut s = 0.0;
            for o in 0..n_min {
                s += q[((o + pad_out) * n_in + i + pad_in, j)];
            }
            z[(i, f)] = s;
        }
    }
    Ok(z)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degree_zero_pairs_have_no_zbasis() {
        assert!(matches!(
            equiformer_zbasis(0, 2, QjPrecision::Exact),
            Err(Error::NotTabulated { .. })
        ));
    }

    #[test]
    fn zbasis_of_1_1_has_the_trace_column_first() -> Result<(), Error> {
        // J = 0: Q_0 = I / sqrt(3) up to sign, so column 0 is constant 1/sqrt(3) in magnitude.
        let z = equiformer_zbasis(1, 1, QjPrecision::Exact)?;
        for i in 0..3 {
            assert!((z[(i, 0)].abs() - 1.0 / 3f64.sqrt()).abs() < 1e-15);
        }
        Ok(())
    }
}
