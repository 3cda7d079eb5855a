//! Parity of se3-core's SO(3) math with every tensor in `tests/reference/math/`.
//!
//! Every test walks *all* keys of its file and fails on a key it does not know, so a tensor
//! added to the reference cannot be silently skipped. Float64 truth is compared at
//! `TOL_EXACT` (1e-12 relative), float32 library output at `TOL_F32`. Each test prints the
//! max relative error it reached per file (`cargo test --test parity -- --nocapture`).

use std::collections::BTreeMap;

use nalgebra::{Matrix3, Rotation3, Vector3};
use se3_core::basis::{equiformer_zbasis, pair_shape, q_j, qj_sign, KernelBasis, QjPrecision};
use se3_core::so3::edge_align::{equiformer_edge_rotation, equiformer_euler_angles};
use se3_core::so3::rotation::{euler_e3nn, euler_zyz};
use se3_core::so3::wigner_d::se3t_j_matrix;
use se3_core::so3::{
    clebsch_gordan, equiformer_edge_wigner_d, sh_len, sh_offset, spherical_harmonics_batch,
    spherical_harmonics_unnormalized, wigner_d_from_euler, Convention, Normalization,
};
use se3_core::testing::{check_close, TOL_EXACT};

use crate::reference::{get, load, rows3, tol_for, Tensor, TestResult};

/// Max relative error per file, and where it was reached.
struct Report {
    file: &'static str,
    worst: (f64, String),
    worst_f32: (f64, String),
    compared: usize,
}

impl Report {
    fn new(file: &'static str) -> Self {
        Report {
            file,
            worst: (0.0, String::new()),
            worst_f32: (0.0, String::new()),
            compared: 0,
        }
    }

    /// Compares `found` with tensor `key`, at the tolerance of its dtype.
    fn check(&mut self, key: &str, found: &[f64], expected: &Tensor) -> TestResult {
        let tol = tol_for(expected, TOL_EXACT);
        let e = check_close(
            &format!("{} `{key}`", self.file),
            found,
            &expected.data,
            tol,
        )?;
        // Float32 tensors carry their own rounding; only f64 truth counts toward "exactness".
        if tol == TOL_EXACT && e >= self.worst.0 {
            self.worst = (e, key.to_string());
        }
        if tol != TOL_EXACT && e >= self.worst_f32.0 {
            self.worst_f32 = (e, key.to_string());
        }
        self.compared += 1;
        Ok(())
    }

    fn finish(&self) {
        eprintln!(
            "parity {}: {} tensors, max relative error vs f64 truth {:.2e} ({}), vs float32 output {:.2e} ({})",
            self.file, self.compared, self.worst.0, self.worst.1, self.worst_f32.0, self.worst_f32.1
        );
    }
}

fn unknown(file: &str, key: &str) -> Box<dyn std::error::Error> {
    format!("{file}: tensor `{key}` is not covered by a parity check").into()
}

/// Degree-l slice of every row of a batched harmonics buffer.
fn degree_slice(all: &[f64], lmax: usize, l: usize) -> Vec<f64> {
    let len = sh_len(lmax);
    all.chunks_exact(len)
        .flat_map(|row| row[sh_offset(l)..sh_offset(l) + 2 * l + 1].iter().copied())
        .collect()
}

#[test]
fn spherical_harmonics_match_e3nn_and_se3_transformer() -> TestResult {
    const FILE: &str = "math/spherical_harmonics.safetensors";
    let f = load(FILE)?;
    let mut rep = Report::new(FILE);
    let inputs = [
        "vectors",
        "vectors_f32",
        "edge_vectors",
        "edge_vectors_f32",
        "zero_vector",
    ];
    for (key, t) in &f {
        if inputs.contains(&key.as_str()) {
            continue;
        }
        let (prefix, rest) = if let Some(r) = key.strip_prefix("edge_") {
            ("edge_vectors", r)
        } else if let Some(r) = key.strip_prefix("zero_") {
            ("zero_vector", r)
        } else {
            ("vectors", key.as_str())
        };
        let (rest, f32_out) = match rest.strip_suffix("_f32") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let input_key = if f32_out && prefix != "zero_vector" {
            format!("{prefix}_f32")
        } else {
            prefix.to_string()
        };
        let vs = rows3(get(&f, FILE, &input_key)?);
        let (lib, l) = rest.rsplit_once("_l").ok_or_else(|| unknown(FILE, key))?;
        let l: usize = l.parse().map_err(|_| unknown(FILE, key))?;
        let found: Vec<f64> = match lib {
            "e3nn" | "se3t" => {
                let (conv, norm) = if lib == "e3nn" {
                    (Convention::E3nn, Normalization::Component)
                } else {
                    (Convention::Se3TransformerPytorch, Normalization::Integral)
                };
                degree_slice(&spherical_harmonics_batch(l, &vs, conv, norm)?, l, l)
            }
            "e3nn_raw" => {
                let mut out = Vec::new();
                for v in &vs {
                    let y = spherical_harmonics_unnormalized(
                        l,
                        &Vector3::from(*v),
                        Normalization::Component,
                    )?;
                    out.extend(y.iter());
                }
                out
            }
            _ => return Err(unknown(FILE, key)),
        };
        rep.check(key, &found, t)?;
    }
    rep.finish();
    Ok(())
}

fn matrix_rows(m: &Matrix3<f64>) -> Vec<f64> {
    (0..3)
        .flat_map(|i| (0..3).map(move |j| (i, j)))
        .map(|(i, j)| m[(i, j)])
        .collect()
}

fn dmatrix_rows(m: &nalgebra::DMatrix<f64>) -> Vec<f64> {
    (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| (i, j)))
        .map(|(i, j)| m[(i, j)])
        .collect()
}

#[test]
fn wigner_d_matches_e3nn_and_se3_transformer() -> TestResult {
    const FILE: &str = "math/wigner_d.safetensors";
    let f = load(FILE)?;
    let mut rep = Report::new(FILE);
    let (a, b, g) = (
        get(&f, FILE, "alpha")?.data.clone(),
        get(&f, FILE, "beta")?.data.clone(),
        get(&f, FILE, "gamma")?.data.clone(),
    );
    for (key, t) in &f {
        let found: Vec<f64> = match key.as_str() {
            "alpha" | "beta" | "gamma" => continue,
            "R" => (0..a.len())
                .flat_map(|n| matrix_rows(euler_e3nn(a[n], b[n], g[n]).matrix()))
                .collect(),
            "se3t_rot_zyz" => (0..a.len())
                .flat_map(|n| matrix_rows(euler_zyz(a[n], b[n], g[n]).matrix()))
                .collect(),
            k => {
                let k = k.strip_suffix("_f32").unwrap_or(k);
                let l = k
                    .strip_prefix("e3nn_D_l")
                    .or_else(|| k.strip_prefix("se3t_D_l"))
                    .and_then(|l| l.parse::<usize>().ok())
                    .ok_or_else(|| unknown(FILE, key))?;
                let mut out = Vec::new();
                for n in 0..a.len() {
                    out.extend(dmatrix_rows(&wigner_d_from_euler(l, a[n], b[n], g[n])?));
                }
                out
            }
        };
        rep.check(key, &found, t)?;
    }
    rep.finish();
    Ok(())
}

#[test]
fn clebsch_gordan_matches_e3nn_wigner_3j_with_sign() -> TestResult {
    const FILE: &str = "math/wigner_3j.safetensors";
    let f = load(FILE)?;
    let mut rep = Report::new(FILE);
    for (key, t) in &f {
        let ls: Vec<usize> = key
            .strip_prefix("w3j_")
            .ok_or_else(|| unknown(FILE, key))?
            .split('_')
            .map(|s| s.parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| unknown(FILE, key))?;
        let [l1, l2, l3] = ls[..] else {
            return Err(unknown(FILE, key));
        };
        rep.check(key, &clebsch_gordan(l1, l2, l3)?.data, t)?;
    }
    if rep.compared != 65 {
        return Err(format!("{FILE}: expected 65 triples, found {}", rep.compared).into());
    }
    rep.finish();
    Ok(())
}

/// Parses `..._J{j}_in{a}_out{b}`.
fn parse_qj(key: &str) -> Option<(usize, usize, usize)> {
    let (_, rest) = key.split_once("_J")?;
    let (j, rest) = rest.split_once("_in")?;
    let (a, b) = rest.split_once("_out")?;
    Some((j.parse().ok()?, a.parse().ok()?, b.parse().ok()?))
}

#[test]
fn q_j_matches_se3_transformer_including_sign() -> TestResult {
    const FILE: &str = "math/se3t_qj.safetensors";
    let f = load(FILE)?;
    let mut rep = Report::new(FILE);
    for (key, t) in &f {
        let (j, d_in, d_out) = parse_qj(key).ok_or_else(|| unknown(FILE, key))?;
        let precision = if key.starts_with("qj64_") {
            QjPrecision::Exact
        } else if key.starts_with("qj_") {
            QjPrecision::RoundedF32
        } else {
            return Err(unknown(FILE, key));
        };
        let q = q_j(j, d_in, d_out, precision)?;
        rep.check(key, &dmatrix_rows(&q), t)?;
    }
    rep.finish();
    Ok(())
}

#[test]
fn kernel_basis_matches_se3_transformer_get_basis() -> TestResult {
    const FILE: &str = "math/se3t_basis.safetensors";
    let f = load(FILE)?;
    let mut rep = Report::new(FILE);
    let pos = rows3(get(&f, FILE, "rel_pos")?);
    let pos32: Vec<[f32; 3]> = rows3(get(&f, FILE, "rel_pos_f32")?)
        .iter()
        .map(|v| [v[0] as f32, v[1] as f32, v[2] as f32])
        .collect();
    let rounded = KernelBasis::new(3, QjPrecision::RoundedF32)?;
    let exact = KernelBasis::new(3, QjPrecision::Exact)?;
    let k_rounded = rounded.compute(&pos)?;
    let k_exact = exact.compute(&pos)?;
    let k_f32 = rounded.compute_f32(&pos32)?;
    for (key, t) in &f {
        if key == "rel_pos" || key == "rel_pos_f32" {
            continue;
        }
        let (stem, is_f32) = match key.strip_suffix("_f32") {
            Some(s) => (s, true),
            None => (key.as_str(), false),
        };
        let (pair, is_exact) = match stem.strip_prefix("basis_exactq_") {
            Some(p) => (p, true),
            None => (
                stem.strip_prefix("basis_")
                    .ok_or_else(|| unknown(FILE, key))?,
                false,
            ),
        };
        let (d_in, d_out) = pair
            .split_once('_')
            .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
            .ok_or_else(|| unknown(FILE, key))?;
        let [no, ni, nf] = pair_shape(d_in, d_out);
        if t.shape != [pos.len(), 1, no, 1, ni, nf] {
            return Err(format!("{FILE} `{key}`: shape {:?} differs from ours", t.shape).into());
        }
        let found: Vec<f64> = if is_f32 {
            k_f32
                .block(d_in, d_out)?
                .iter()
                .map(|&x| x as f64)
                .collect()
        } else if is_exact {
            k_exact.block(d_in, d_out)?.to_vec()
        } else {
            k_rounded.block(d_in, d_out)?.to_vec()
        };
        rep.check(key, &found, t)?;
    }
    rep.finish();
    Ok(())
}

#[test]
fn se3_transformer_j_matrices_are_d_of_the_axis_swap() -> TestResult {
    const FILE: &str = "math/se3t_J_dense.safetensors";
    let f = load(FILE)?;
    let mut rep = Report::new(FILE);
    for (key, t) in &f {
        let l: usize = key
            .strip_prefix("J_l")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| unknown(FILE, key))?;
        rep.check(key, &dmatrix_rows(&se3t_j_matrix(l)?), t)?;
    }
    rep.finish();
    Ok(())
}

#[test]
fn equiformer_edge_alignment_matches() -> TestResult {
    const FILE: &str = "math/equiformer_zbasis.safetensors";
    let f = load(FILE)?;
    let mut rep = Report::new(FILE);
    let pos = rows3(get(&f, FILE, "rel_pos")?);
    let rotations: Vec<Rotation3<f64>> = pos
        .iter()
        .map(|v| equiformer_edge_rotation(&Vector3::from(*v)))
        .collect::<Result<_, _>>()?;
    let mut seen = BTreeMap::new();
    for (key, t) in &f {
        let found: Vec<f64> = match key.as_str() {
            "rel_pos" => continue,
            "R_to_y" => rotations
                .iter()
                .flat_map(|r| matrix_rows(r.matrix()))
                .collect(),
            "euler_angles" => rotations.iter().flat_map(equiformer_euler_angles).collect(),
            k if k.starts_with("zbasis_") => {
                let (a, b) = k["zbasis_".len()..]
                    .split_once('_')
                    .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                    .ok_or_else(|| unknown(FILE, key))?;
                dmatrix_rows(&equiformer_zbasis(a, b, QjPrecision::RoundedF32)?)
            }
            k if k.starts_with("D_l") => {
                let l: usize = k["D_l".len()..]
                    .trim_end_matches("_f32")
                    .parse()
                    .map_err(|_| unknown(FILE, key))?;
                let mut out = Vec::new();
                for v in &pos {
                    out.extend(dmatrix_rows(&equiformer_edge_wigner_d(
                        l,
                        &Vector3::from(*v),
                    )?));
                }
                out
            }
            _ => return Err(unknown(FILE, key)),
        };
        rep.check(key, &found, t)?;
        seen.insert(key.clone(), ());
    }
    rep.finish();
    Ok(())
}

#[test]
fn q_j_sign_table_matches_the_reference_json() -> TestResult {
    const FILE: &str = "math/se3t_qj_signs.json";
    let text = std::fs::read_to_string(crate::reference::reference_path(FILE))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let rows = json["rows"]
        .as_array()
        .ok_or_else(|| format!("{FILE}: no `rows` array"))?;
    for row in rows {
        let field = |k: &str| {
            row[k]
                .as_i64()
                .ok_or_else(|| format!("{FILE}: row {row} has no integer `{k}`"))
        };
        let (j, d_in, d_out, sign) = (
            field("J")? as usize,
            field("d_in")? as usize,
            field("d_out")? as usize,
            field("sign")?,
        );
        if qj_sign(j, d_in, d_out) != Some(sign as i8) {
            return Err(format!(
                "{FILE}: sign of Q_J(J={j}, d_in={d_in}, d_out={d_out}) is {sign}, ours {:?}",
                qj_sign(j, d_in, d_out)
            )
            .into());
        }
        // The stated relation: Q_J = sign * wigner_3j(d_out, d_in, J) reshaped.
        let q = q_j(j, d_in, d_out, QjPrecision::Exact)?;
        let c = clebsch_gordan(d_out, d_in, j)?;
        let expected: Vec<f64> = c.data.iter().map(|x| sign as f64 * x).collect();
        check_close(FILE, &dmatrix_rows(&q), &expected, TOL_EXACT)?;
    }
    eprintln!("parity {FILE}: {} sign rows agree", rows.len());
    Ok(())
}
