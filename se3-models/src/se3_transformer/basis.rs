//! The kernel basis of the oracle: se3-core's `get_basis` (`se3_core::basis::KernelBasis`, Q_J
//! rounded to float32 like the library) with an optional Q_J sign table of another LAPACK build.

use std::collections::BTreeMap;
use std::path::Path;

use se3_core::basis::{qj_sign, KernelBasis, KernelBasisValues, QjPrecision};

use crate::Error;

/// Highest degree of the sign table se3-transformer-pytorch produced for the reference data (and
/// that se3-core ships); above it se3-core uses +1.
pub const REFERENCE_SIGN_DEGREE: usize = 3;

/// The signs of se3-transformer's Q_J per (J, d_in, d_out).
///
/// Q_J is the null vector of a Sylvester system returned by torch's SVD, so its overall sign depends
/// on the LAPACK build that computed it (CONVENTIONS 2.3); weights are only portable together with the
/// table. [`QjSigns::reference`] is the table of the reference data (the one se3-core ships);
/// [`QjSigns::load`] reads another one in the format of `math/se3t_qj_signs.json`
/// (`{"rows": [{"J", "d_in", "d_out", "sign"}, ...]}`). Triples missing from a table keep se3-core's
/// sign.
#[derive(Debug, Clone, PartialEq)]
pub struct QjSigns {
    signs: BTreeMap<(usize, usize, usize), f64>,
}

#[derive(serde::Deserialize)]
struct SignRow {
    #[serde(rename = "J")]
    j: usize,
    d_in: usize,
    d_out: usize,
    sign: i32,
}

#[derive(serde::Deserialize)]
struct SignFile {
    rows: Vec<SignRow>,
}

impl QjSigns {
    /// The sign table of the reference data (degrees up to [`REFERENCE_SIGN_DEGREE`]).
    pub fn reference() -> Self {
        let mut signs = BTreeMap::new();
        for di in 0..=REFERENCE_SIGN_DEGREE {
            for d_o in 0..=REFERENCE_SIGN_DEGREE {
                for j in di.abs_diff(d_o)..=(di + d_o) {
                    if let Some(s) = qj_sign(j, di, d_o) {
                        signs.insert((j, di, d_o), f64::from(s));
                    }
                }
            }
        }
        Self { signs }
    }

    /// Parses a sign table in the JSON format of `math/se3t_qj_signs.json`.
    ///
    /// # Errors
    /// `ConfigParse` if the text is not such a table, `InvalidConfig` (field `sign`) for a sign other
    /// than 1 or -1 (field `J`) for a J outside |d_in - d_out|..=d_in + d_out, `TooLarge` for a
    /// degree above [`crate::limits::MAX_DEGREE`].
    pub fn from_json(text: &str, origin: &str) -> Result<Self, Error> {
        let f: SignFile = serde_json::from_str(text).map_err(|source| Error::ConfigParse {
            path: origin.to_string(),
            source,
        })?;
        let mut signs = BTreeMap::new();
        for r in f.rows {
            let s = match r.sign {
                1 => 1.0,
                -1 => -1.0,
                other => {
                    return Err(Error::InvalidConfig {
                        field: "sign",
                        expected: "1 or -1",
                        found: other.to_string(),
                    })
                }
            };
            crate::limits::at_most("d_in", r.d_in, crate::limits::MAX_DEGREE)?;
            crate::limits::at_most("d_out", r.d_out, crate::limits::MAX_DEGREE)?;
            if r.j < r.d_in.abs_diff(r.d_out) || r.j > r.d_in + r.d_out {
                return Err(Error::InvalidConfig {
                    field: "J",
                    expected: "|d_in - d_out| <= J <= d_in + d_out",
                    found: format!("J {} with d_in {} and d_out {}", r.j, r.d_in, r.d_out),
                });
            }
            signs.insert((r.j, r.d_in, r.d_out), s);
        }
        Ok(Self { signs })
    }

    /// Reads a sign table file.
    ///
    /// # Errors
    /// `Io`, `FileTooLarge` past [`crate::limits::MAX_TEXT_FILE_BYTES`], plus the errors of
    /// [`QjSigns::from_json`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = crate::limits::read_text_file(path)?;
        Self::from_json(&text, &path.display().to_string())
    }
}

/// `get_basis` for all pairs of degrees up to `max_degree`, with sign flips relative to se3-core's
/// table applied per (pair, frequency).
#[derive(Debug, Clone)]
pub struct Se3tBasis {
    basis: KernelBasis,
    /// (pair index `d_in * (max + 1) + d_out`, frequency, nf) whose Q_J sign is flipped.
    flips: Vec<(usize, usize, usize)>,
}

impl Se3tBasis {
    /// The basis with se3-core's (the reference data's) signs.
    ///
    /// # Errors
    /// `Core(DegreeTooHigh)` beyond se3-core's harmonics.
    pub fn new(max_degree: usize) -> Result<Self, Error> {
        Ok(Self {
            basis: KernelBasis::new(max_degree, QjPrecision::RoundedF32)?,
            flips: Vec::new(),
        })
    }

    /// The basis with the signs of `signs` (triples it lacks keep se3-core's).
    ///
    /// # Errors
    /// As [`Se3tBasis::new`].
    pub fn with_signs(max_degree: usize, signs: &QjSigns) -> Result<Self, Error> {
        let mut flips = Vec::new();
        for di in 0..=max_degree {
            for d_o in 0..=max_degree {
                let nf = 2 * di.min(d_o) + 1;
                for f in 0..nf {
                    let j = di.abs_diff(d_o) + f;
                    let core = f64::from(qj_sign(j, di, d_o).unwrap_or(1));
                    if let Some(&s) = signs.signs.get(&(j, di, d_o)) {
                        if s != core {
                            flips.push((di * (max_degree + 1) + d_o, f, nf));
                        }
                    }
                }
            }
        }
        Ok(Self {
            basis: KernelBasis::new(max_degree, QjPrecision::RoundedF32)?,
            flips,
        })
    }

    /// The `(J, d_in, d_out)` whose Q_J sign differs from se3-core's (the argument of
    /// `se3_core::layers::EdgeBasis::from_geometry` that builds this basis in a graph).
    pub fn sign_flips(&self) -> Vec<(usize, usize, usize)> {
        let m = self.basis.max_degree() + 1;
        self.flips
            .iter()
            .map(|&(pair, f, _)| {
                let (d_in, d_out) = (pair / m, pair % m);
                (d_in.abs_diff(d_out) + f, d_in, d_out)
            })
            .collect()
    }

    /// Highest degree.
    pub fn max_degree(&self) -> usize {
        self.basis.max_degree()
    }

    /// The basis at every relative position: blocks per pair, layout `[edge][o][i][f]`.
    ///
    /// # Errors
    /// `Core(NonFinite)` for a NaN/inf vector.
    pub fn compute(&self, rel: &[[f64; 3]]) -> Result<KernelBasisValues<f64>, Error> {
        let mut v = self.basis.compute(rel)?;
        for &(pair, f, nf) in &self.flips {
            for x in v.blocks[pair].iter_mut().skip(f).step_by(nf) {
                *x = -*x;
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_sign_table_matches_the_json_file() -> Result<(), Error> {
        let path = format!(
            "{}/../tests/reference/math/se3t_qj_signs.json",
            env!("CARGO_MANIFEST_DIR")
        );
        assert_eq!(QjSigns::load(path)?, QjSigns::reference());
        Ok(())
    }

    #[test]
    fn a_flipped_sign_negates_exactly_that_frequency() -> Result<(), Error> {
        let text = r#"{"rows": [{"J": 2, "d_in": 1, "d_out": 1, "sign": 1}]}"#;
        let signs = QjSigns::from_json(text, "test")?;
        assert_eq!(qj_sign(2, 1, 1), Some(-1), "reference sign of (2, 1, 1)");
        let r = [[0.3, -1.2, 0.7], [1.0, 0.5, -0.25]];
        let a = Se3tBasis::new(2)?.compute(&r)?;
        let b = Se3tBasis::with_signs(2, &signs)?.compute(&r)?;
        for (p, (ba, bb)) in a.blocks.iter().zip(&b.blocks).enumerate() {
            for (idx, (x, y)) in ba.iter().zip(bb).enumerate() {
                // pair (1, 1) is index 1 * 3 + 1; its nf = 3 and J = 2 is f = 2
                let flipped = p == 4 && idx % 3 == 2;
                assert_eq!(*y, if flipped { -x } else { *x }, "pair {p} entry {idx}");
            }
        }
        Ok(())
    }
}
