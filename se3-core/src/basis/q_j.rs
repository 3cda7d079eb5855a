//! se3-transformer-pytorch's change-of-basis matrices `Q_J` (CONVENTIONS.md 2.3).
//!
//! `basis_transformation_Q_J(J, d_in, d_out)` has shape `((2 d_out+1)(2 d_in+1), 2J+1)`, rows
//! ordered `o * (2 d_in+1) + i`, unit Frobenius norm, and equals
//! `sign(J, d_in, d_out) * wigner_3j(d_out, d_in, J)` reshaped. The library finds it as a null
//! vector of an SVD, so its sign has no rule: it is read from the table the library produced
//! (`data/se3t_qj_signs.json`, degrees up to 3, shipped inside the crate). Checkpoints are only
//! portable together with these signs (a flip is absorbed by the radial network's last layer).
//!
//! **Beyond the table** (any degree above 3) the sign is `+1`: se3's own choice. Models
//! trained with se3 are self-consistent; importing a se3-transformer-pytorch checkpoint with
//! degrees above 3 would need that checkpoint's signs ([`qj_sign`] returns `None` there so a
//! loader can tell).

use std::collections::HashMap;
use std::sync::OnceLock;

use nalgebra::DMatrix;
use serde::Deserialize;

use crate::so3::clebsch_gordan::clebsch_gordan;
use crate::Error;

/// Whether `Q_J` is used exactly or rounded to f32 as the library does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QjPrecision {
    /// The f64 matrix (the reference's `qj64_*`, `basis_exactq_*`).
    Exact,
    /// Rounded to f32 and back, bit-identical to the library's `Q_J` (`qj_*`, `basis_*`).
    RoundedF32,
}

#[derive(Deserialize)]
struct SignRow {
    #[serde(rename = "J")]
    j: usize,
    d_in: usize,
    d_out: usize,
    sign: i8,
}

#[derive(Deserialize)]
struct SignFile {
    rows: Vec<SignRow>,
}

fn sign_table() -> &'static HashMap<(usize, usize, usize), i8> {
    static T: OnceLock<HashMap<(usize, usize, usize), i8>> = OnceLock::new();
    T.get_or_init(|| {
        let file: SignFile = serde_json::from_str(include_str!("../../data/se3t_qj_signs.json"))
            .expect("the shipped sign table is valid JSON");
        file.rows
            .into_iter()
            .map(|r| ((r.j, r.d_in, r.d_out), r.sign))
            .collect()
    })
}

/// The sign se3-transformer-pytorch's `Q_J(J, d_in, d_out)` carries relative to
/// `wigner_3j(d_out, d_in, J)`, or `None` outside its table (degrees above 3).
pub fn qj_sign(j: usize, d_in: usize, d_out: usize) -> Option<i8> {
    sign_table().get(&(j, d_in, d_out)).copied()
}

/// se3-transformer-pytorch's `basis_transformation_Q_J(J, d_in, d_out)`, shape
/// `((2 d_out+1)(2 d_in+1), 2J+1)`: `sign * wigner_3j(d_out, d_in, J)` reshaped, with the sign
/// of [`qj_sign`] (+1 beyond the table, see the module documentation).
///
/// # Errors
/// `SelectionRule` if `J` is outside `|d_in - d_out| ..= d_in + d_out`, `DegreeTooHigh` if a
/// degree exceeds `L_MAX`.
pub fn q_j(
    j: usize,
    d_in: usize,
    d_out: usize,
    precision: QjPrecision,
) -> Result<DMatrix<f64>, Error> {
    let c = clebsch_gordan(d_out, d_in, j)?;
    let sign = qj_sign(j, d_in, d_out).unwrap_or(1) as f64;
    let (rows, cols) = ((2 * d_out + 1) * (2 * d_in + 1), 2 * j + 1);
    Ok(DMatrix::from_fn(rows, cols, |r, m| {
        let x = sign * c.data[r * cols + m];
        match precision {
            QjPrecision::Exact => x,
            QjPrecision::RoundedF32 => x as f32 as f64,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_table_covers_every_triple_up_to_degree_3() {
        for d_in in 0..=3usize {
            for d_out in 0..=3usize {
                for j in d_in.abs_diff(d_out)..=(d_in + d_out) {
                    assert!(qj_sign(j, d_in, d_out).is_some(), "{j} {d_in} {d_out}");
                }
            }
        }
        assert_eq!(qj_sign(0, 4, 4), None);
    }

    #[test]
    fn q_j_has_unit_norm() -> Result<(), Error> {
        let q = q_j(3, 2, 4, QjPrecision::Exact)?;
        assert_eq!(q.shape(), (45, 7));
        assert!((q.norm() - 1.0).abs() < 1e-14);
        Ok(())
    }
}
