//! STOPGAP — to be replaced by `se3_core::so3` / `se3_core::basis` once the `math` branch is merged.
//!
//! Minimal float64 versions of what the SE(3)-Transformer oracle needs:
//! * [`sh_se3t`]: spherical harmonics in se3-transformer-pytorch's convention
//!   (tests/reference/CONVENTIONS.md 2.1): Condon-Shortley tesseral harmonics at polar angle
//!   `pi - beta`, azimuth `alpha`, where `(x, y, z) = (r2, r0, r1)`; equals `(-1)^l` e3nn component / sqrt(4 pi).
//! * [`wigner_3j`]: e3nn's `wigner_3j(l1, l2, l3)` (complex SU(2) Clebsch-Gordan through e3nn's
//!   real/complex change of basis with its `(-i)^l` factor, unit Frobenius norm).
//! * [`q_j`]: se3-transformer's `basis_transformation_Q_J` = sign * wigner_3j(d_out, d_in, J), rounded
//!   to float32 as the library does (CONVENTIONS 2.3), signs from a [`QjSigns`] table (default: the
//!   reference data's `math/se3t_qj_signs.json`).
//! * [`QTable::basis`]: `get_basis` (CONVENTIONS 2.4) for one relative position.

use crate::Error;

/// Highest degree with a known Q_J sign.
pub const MAX_BASIS_DEGREE: usize = 3;

/// Signs of Q_J of the reference data for d_in in 0..=3 (outer), d_out in 0..=3, J ascending from
/// |d_in - d_out| (`math/se3t_qj_signs.json`).
const QJ_SIGNS: &str = "+--+-+--+-+----+-+++++-+----++-----++--++-+-";

fn factorial(n: i64) -> f64 {
    (1..=n).fold(1.0, |a, k| a * k as f64)
}

/// Spherical harmonics Y^l (m = -l..=l) of every degree `0..=max_l` at `r`, se3-transformer convention.
pub fn sh_se3t(max_l: usize, r: [f64; 3]) -> Vec<Vec<f64>> {
    let (x, y, z) = (r[2], r[0], r[1]);
    let beta = (x * x + y * y).sqrt().atan2(z);
    let alpha = y.atan2(x);
    let theta = std::f64::consts::PI - beta;
    let (ct, st) = (theta.cos(), theta.sin());
    // associated Legendre P_l^m(ct) with Condon-Shortley phase, m >= 0
    let mut p = vec![vec![0.0; max_l + 1]; max_l + 1];
    for m in 0..=max_l {
        let mut pmm = 1.0;
        for k in 0..m {
            pmm *= -((2 * k + 1) as f64) * st;
        }
        p[m][m] = pmm;
        if m < max_l {
            p[m + 1][m] = ct * (2 * m + 1) as f64 * pmm;
        }
        for l in (m + 2)..=max_l {
            p[l][m] = ((2 * l - 1) as f64 * ct * p[l - 1][m] - (l + m - 1) as f64 * p[l - 2][m])
                / (l - m) as f64;
        }
    }
    let four_pi = 4.0 * std::f64::consts::PI;
    (0..=max_l)
        .map(|l| {
            let base = ((2 * l + 1) as f64 / four_pi).sqrt();
            (0..=2 * l)
                .map(|i| {
                    let m = i as i64 - l as i64;
                    let am = m.unsigned_abs() as usize;
                    if m == 0 {
                        base * p[l][0]
                    } else {
                        let n = base
                            * (2.0 * factorial((l - am) as i64) / factorial((l + am) as i64))
                                .sqrt();
                        let ang = if m < 0 {
                            (am as f64 * alpha).sin()
                        } else {
                            (am as f64 * alpha).cos()
                        };
                        n * p[l][am] * ang
                    }
                })
                .collect()
        })
        .collect()
}

/// <j1 m1 j2 m2 | j3 m3>, Condon-Shortley (Racah's formula).
fn su2_cg(j1: i64, m1: i64, j2: i64, m2: i64, j3: i64, m3: i64) -> f64 {
    if m3 != m1 + m2 {
        return 0.0;
    }
    let vmin = (-j1 + j2 + m3).max(-j1 + m1).max(0);
    let vmax = (j2 + j3 + m1).min(j3 - j1 + j2).min(j3 + m3);
    let c = ((2 * j3 + 1) as f64
        * factorial(j3 + j1 - j2)
        * factorial(j3 - j1 + j2)
        * factorial(j1 + j2 - j3)
        * factorial(j3 + m3)
        * factorial(j3 - m3)
        / (factorial(j1 + j2 + j3 + 1)
            * factorial(j1 - m1)
            * factorial(j1 + m1)
            * factorial(j2 - m2)
            * factorial(j2 + m2)))
    .sqrt();
    let mut s = 0.0;
    for v in vmin..=vmax {
        let sign = if (v + j2 + m2).rem_euclid(2) == 0 {
            1.0
        } else {
            -1.0
        };
        s += sign * factorial(j2 + j3 + m1 - v) * factorial(j1 - m1 + v)
            / (factorial(v)
                * factorial(j3 - j1 + j2 - v)
                * factorial(j3 + m3 - v)
                * factorial(v + j1 - j2 - m3));
    }
    c * s
}

#[derive(Clone, Copy)]
struct C64(f64, f64);
impl C64 {
    fn mul(self, o: Self) -> Self {
        Self(self.0 * o.0 - self.1 * o.1, self.0 * o.1 + self.1 * o.0)
    }
    fn conj(self) -> Self {
        Self(self.0, -self.1)
    }
}

/// e3nn's real-to-complex change of basis q[(l + m), complex index], times (-i)^l.
fn change_basis(l: usize) -> Vec<Vec<C64>> {
    let n = 2 * l + 1;
    let li = l as i64;
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let mut q = vec![vec![C64(0.0, 0.0); n]; n];
    for m in -li..0 {
        q[(li + m) as usize][(li - m) as usize] = C64(h, 0.0);
        q[(li + m) as usize][(li + m) as usize] = C64(0.0, -h);
    }
    q[l][l] = C64(1.0, 0.0);
    for m in 1..=li {
        let s = if m % 2 == 0 { 1.0 } else { -1.0 };
        q[(li + m) as usize][(li + m) as usize] = C64(s * h, 0.0);
        q[(li + m) as usize][(li - m) as usize] = C64(0.0, s * h);
    }
    // (-i)^l
    let f = match l % 4 {
        0 => C64(1.0, 0.0),
        1 => C64(0.0, -1.0),
        2 => C64(-1.0, 0.0),
        _ => C64(0.0, 1.0),
    };
    for row in &mut q {
        for v in row.iter_mut() {
            *v = f.mul(*v);
        }
    }
    q
}

/// e3nn's `wigner_3j(l1, l2, l3)`, shape (2l1+1, 2l2+1, 2l3+1) row-major, unit Frobenius norm.
pub fn wigner_3j(l1: usize, l2: usize, l3: usize) -> Vec<f64> {
    let (n1, n2, n3) = (2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1);
    let (q1, q2, q3) = (change_basis(l1), change_basis(l2), change_basis(l3));
    let mut su2 = vec![0.0; n1 * n2 * n3];
    for i in 0..n1 {
        for k in 0..n2 {
            for nn in 0..n3 {
                su2[(i * n2 + k) * n3 + nn] = su2_cg(
                    l1 as i64,
                    i as i64 - l1 as i64,
                    l2 as i64,
                    k as i64 - l2 as i64,
                    l3 as i64,
                    nn as i64 - l3 as i64,
                );
            }
        }
    }
    // C[j, l, m] = sum_{i,k,n} q1[i][j] q2[k][l] conj(q3[n][m]) su2[i,k,n]
    let mut out = vec![0.0; n1 * n2 * n3];
    for j in 0..n1 {
        for l in 0..n2 {
            for m in 0..n3 {
                let mut acc = C64(0.0, 0.0);
                for i in 0..n1 {
                    for k in 0..n2 {
                        let a = q1[i][j].mul(q2[k][l]);
                        if a.0 == 0.0 && a.1 == 0.0 {
                            continue;
                        }
                        for nn in 0..n3 {
                            let c = su2[(i * n2 + k) * n3 + nn];
                            if c == 0.0 {
                                continue;
                            }
                            let t = a.mul(q3[nn][m].conj());
                            acc.0 += t.0 * c;
                            acc.1 += t.1 * c;
                        }
                    }
                }
                out[(j * n2 + l) * n3 + m] = acc.0;
            }
        }
    }
    let norm = out.iter().map(|v| v * v).sum::<f64>().sqrt();
    out.iter().map(|v| v / norm).collect()
}

/// The signs of se3-transformer's Q_J per (J, d_in, d_out).
///
/// Q_J is the null vector of a Sylvester system returned by torch's SVD, so its overall sign depends on
/// the LAPACK build that computed it (CONVENTIONS 2.3); weights are only portable together with the
/// table. [`QjSigns::reference`] is the table of the reference data; [`QjSigns::load`] reads another
/// one in the format of `math/se3t_qj_signs.json` (`{"rows": [{"J", "d_in", "d_out", "sign"}, ...]}`).
#[derive(Debug, Clone, PartialEq)]
pub struct QjSigns {
    signs: std::collections::BTreeMap<(usize, usize, usize), f64>,
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
    /// The sign table of the reference data (degrees up to [`MAX_BASIS_DEGREE`]).
    pub fn reference() -> Self {
        let mut signs = std::collections::BTreeMap::new();
        let mut idx = 0;
        for di in 0..=MAX_BASIS_DEGREE {
            for d_o in 0..=MAX_BASIS_DEGREE {
                for j in di.abs_diff(d_o)..=(di + d_o) {
                    let s = if QJ_SIGNS.as_bytes()[idx] == b'+' {
                        1.0
                    } else {
                        -1.0
                    };
                    signs.insert((j, di, d_o), s);
                    idx += 1;
                }
            }
        }
        Self { signs }
    }

    /// Parses a sign table in the JSON format of `math/se3t_qj_signs.json`.
    ///
    /// # Errors
    /// `ConfigParse` if the text is not such a table, `InvalidConfig` (field `sign`) for a sign other
    /// than 1 or -1.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, Error> {
        let f: SignFile = serde_json::from_str(text).map_err(|source| Error::ConfigParse {
            path: origin.to_string(),
            source,
        })?;
        let mut signs = std::collections::BTreeMap::new();
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
            signs.insert((r.j, r.d_in, r.d_out), s);
        }
        Ok(Self { signs })
    }

    /// Reads a sign table file.
    ///
    /// # Errors
    /// `Io`, plus the errors of [`QjSigns::from_json`].
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    fn sign(&self, j: usize, d_in: usize, d_out: usize) -> Result<f64, Error> {
        self.signs
            .get(&(j, d_in, d_out))
            .copied()
            .ok_or(Error::DegreeTooHigh {
                found: d_in.max(d_out),
                max: self.signs.keys().map(|k| k.1.max(k.2)).max().unwrap_or(0),
            })
    }
}

/// se3-transformer's Q_J(J, d_in, d_out): ((2 d_out+1)(2 d_in+1), 2J+1), rows `o (2 d_in+1) + i`,
/// `sign * wigner_3j(d_out, d_in, J)` rounded to float32 as the library returns it.
///
/// # Errors
/// `DegreeTooHigh` if the sign table has no entry for the triple.
pub fn q_j(j: usize, d_in: usize, d_out: usize, signs: &QjSigns) -> Result<Vec<f64>, Error> {
    let sign = signs.sign(j, d_in, d_out)?;
    Ok(wigner_3j(d_out, d_in, j)
        .into_iter()
        .map(|v| f64::from((sign * v) as f32))
        .collect())
}

/// The Q_J matrices of every degree pair up to `max_degree`, computed once per model.
#[derive(Debug, Clone)]
pub struct QTable {
    max_degree: usize,
    /// [(d_in * (max+1) + d_out)][f] = Q_J with J = |d_in - d_out| + f.
    q: Vec<Vec<Vec<f64>>>,
}

impl QTable {
    /// Q_J for all pairs of degrees `<= max_degree` with the reference sign table.
    ///
    /// # Errors
    /// `DegreeTooHigh` above [`MAX_BASIS_DEGREE`].
    pub fn new(max_degree: usize) -> Result<Self, Error> {
        Self::with_signs(max_degree, &QjSigns::reference())
    }

    /// Q_J for all pairs of degrees `<= max_degree` with the given sign table.
    ///
    /// # Errors
    /// `DegreeTooHigh` for a degree the table does not cover.
    pub fn with_signs(max_degree: usize, signs: &QjSigns) -> Result<Self, Error> {
        let mut q = Vec::new();
        for di in 0..=max_degree {
            for d_o in 0..=max_degree {
                let mut per = Vec::new();
                for j in di.abs_diff(d_o)..=(di + d_o) {
                    per.push(q_j(j, di, d_o, signs)?);
                }
                q.push(per);
            }
        }
        Ok(Self { max_degree, q })
    }

    /// Kernel basis K[o, i, f] (row-major, (2 d_out+1, 2 d_in+1, 2 min+1)) of every pair at `r`,
    /// indexed `[d_in * (max_degree+1) + d_out]`.
    pub fn basis(&self, r: [f64; 3]) -> Vec<Vec<f64>> {
        let md = self.max_degree;
        let y = sh_se3t(2 * md, r);
        let mut out = Vec::with_capacity((md + 1) * (md + 1));
        for di in 0..=md {
            for d_o in 0..=md {
                let (ni, no) = (2 * di + 1, 2 * d_o + 1);
                let nf = 2 * di.min(d_o) + 1;
                let mut k = vec![0.0; no * ni * nf];
                for (f, q) in self.q[di * (md + 1) + d_o].iter().enumerate() {
                    let jdeg = di.abs_diff(d_o) + f;
                    let yj = &y[jdeg];
                    let nj = 2 * jdeg + 1;
                    for o in 0..no {
                        for i in 0..ni {
                            let row = &q[(o * ni + i) * nj..(o * ni + i + 1) * nj];
                            let v: f64 = row.iter().zip(yj).map(|(a, b)| a * b).sum();
                            k[(o * ni + i) * nf + f] = v;
                        }
                    }
                }
                out.push(k);
            }
        }
        out
    }

    /// Highest degree covered.
    pub fn max_degree(&self) -> usize {
        self.max_degree
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::StateDict;

    fn math(file: &str) -> Result<StateDict, Error> {
        StateDict::load(format!(
            "{}/../tests/reference/math/{file}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    fn get<'a>(sd: &'a StateDict, k: &str) -> Result<&'a [f64], Error> {
        sd.get(k)
            .map(|t| t.data.as_slice())
            .ok_or(Error::MissingKey {
                key: k.into(),
                expected: vec![],
            })
    }

    #[test]
    fn sh_se3t_matches_reference_up_to_degree_6() -> Result<(), Error> {
        let sd = math("spherical_harmonics")?;
        for (vk, prefix) in [
            ("vectors", ""),
            ("edge_vectors", "edge_"),
            ("zero_vector", "zero_"),
        ] {
            let v = get(&sd, vk)?;
            for (p, r) in v.chunks(3).enumerate() {
                let y = sh_se3t(6, [r[0], r[1], r[2]]);
                for (l, yl) in y.iter().enumerate() {
                    let want = get(&sd, &format!("{prefix}se3t_l{l}"))?;
                    for (m, val) in yl.iter().enumerate() {
                        let w = want[p * (2 * l + 1) + m];
                        assert!(
                            (val - w).abs() < 1e-12,
                            "{vk}[{p}] l={l} m={m}: {val} vs {w}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn wigner_3j_matches_e3nn_reference() -> Result<(), Error> {
        let sd = math("wigner_3j")?;
        for (k, t) in sd.iter() {
            let ls: Vec<usize> = k[4..].split('_').filter_map(|s| s.parse().ok()).collect();
            let w = wigner_3j(ls[0], ls[1], ls[2]);
            let err = w
                .iter()
                .zip(&t.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-12, "{k}: max abs error {err}");
        }
        Ok(())
    }

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
    fn kernel_basis_matches_get_basis() -> Result<(), Error> {
        let sd = math("se3t_basis")?;
        let rel = get(&sd, "rel_pos")?;
        let table = QTable::new(3)?;
        for (p, r) in rel.chunks(3).enumerate() {
            let b = table.basis([r[0], r[1], r[2]]);
            for di in 0..=3 {
                for d_o in 0..=3 {
                    let want = get(&sd, &format!("basis_{di}_{d_o}"))?;
                    let k = &b[di * 4 + d_o];
                    let sz = k.len();
                    for (x, w) in k.iter().zip(&want[p * sz..(p + 1) * sz]) {
                        assert!(
                            (x - w).abs() < 1e-12,
                            "pair {di},{d_o} point {p}: {x} vs {w}"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
