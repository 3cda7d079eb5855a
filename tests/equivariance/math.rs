//! Equivariance properties of the SO(3)/O(3) math, on fresh random rotations, reflections and
//! vectors every run (seed printed; replay with `SE3_SEED`), beyond the reference's range:
//! harmonics and Wigner D up to `L_MAX`, Clebsch-Gordan up to l = 8, kernel bases up to
//! degree 4.

use nalgebra::{DMatrix, Matrix3, Vector3};
use se3_core::basis::{pair_shape, KernelBasis, QjPrecision};
use se3_core::so3::rotation::{euler_e3nn, euler_e3nn_angles};
use se3_core::so3::{
    clebsch_gordan, equiformer_edge_wigner_d, sh_len, sh_offset, sh_parity, spherical_harmonics,
    spherical_harmonics_batch, spherical_harmonics_grad, wigner_d, wigner_d_all,
    wigner_d_from_euler, wigner_d_from_quaternion, wigner_d_o3, ClebschGordan, Convention,
    Normalization, L_MAX,
};
use se3_core::testing::{
    assert_equivariant, check_close, random_mirror, random_quaternion, random_reflection,
    random_rotation, random_unit_vector, random_vector, random_vectors, rng, transform_points,
    TOL_EXACT,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CONVENTIONS: [(Convention, Normalization); 4] = [
    (Convention::E3nn, Normalization::Component),
    (Convention::E3nn, Normalization::Norm),
    (Convention::Se3TransformerPytorch, Normalization::Integral),
    (Convention::Se3TransformerPytorch, Normalization::Component),
];

fn entries(m: &DMatrix<f64>) -> Vec<f64> {
    m.iter().copied().collect()
}

#[test]
fn sh_rotates_with_wigner_d_in_both_conventions() -> TestResult {
    let (mut rng, seed) = rng();
    let lmax = L_MAX;
    let mut worst = 0.0f64;
    for _ in 0..4 {
        let r = random_rotation(&mut rng);
        let ds = wigner_d_all(lmax, &r)?;
        let xs = random_vectors(&mut rng, 16, 2.0);
        let rxs = transform_points(r.matrix(), &xs);
        for (conv, norm) in CONVENTIONS {
            let y = spherical_harmonics_batch(lmax, &xs, conv, norm)?;
            let yr = spherical_harmonics_batch(lmax, &rxs, conv, norm)?;
            for (l, d) in ds.iter().enumerate() {
                let (mut lhs, mut rhs) = (Vec::new(), Vec::new());
                for n in 0..xs.len() {
                    let at = |buf: &[f64]| {
                        let s = n * sh_len(lmax) + sh_offset(l);
                        nalgebra::DVector::from_column_slice(&buf[s..s + 2 * l + 1])
                    };
                    lhs.extend(at(&yr).iter());
                    rhs.extend((d * at(&y)).iter());
                }
                worst = worst.max(assert_equivariant(
                    &format!("Y_{l} ({conv:?}, {norm:?}, seed {seed})"),
                    &lhs,
                    &rhs,
                    TOL_EXACT,
                )?);
            }
        }
    }
    eprintln!("max relative error of Y(Rx) = D(R) Y(x), l <= {lmax}: {worst:.2e}");
    Ok(())
}

#[test]
fn d1_is_the_rotation_matrix() -> TestResult {
    let (mut rng, seed) = rng();
    for _ in 0..10 {
        let r = random_rotation(&mut rng);
        let d = wigner_d(1, &r)?;
        let m = DMatrix::from_column_slice(3, 3, r.matrix().as_slice());
        check_close(
            &format!("D^1(R) vs R (seed {seed})"),
            &entries(&d),
            &entries(&m),
            TOL_EXACT,
        )?;
    }
    Ok(())
}

#[test]
fn wigner_d_is_a_homomorphism() -> TestResult {
    let (mut rng, seed) = rng();
    let mut worst = 0.0f64;
    for _ in 0..3 {
        let (r1, r2) = (random_rotation(&mut rng), random_rotation(&mut rng));
        let d1 = wigner_d_all(L_MAX, &r1)?;
        let d2 = wigner_d_all(L_MAX, &r2)?;
        let d12 = wigner_d_all(L_MAX, &(r1 * r2))?;
        for l in 0..=L_MAX {
            worst = worst.max(check_close(
                &format!("D_{l}(R1 R2) vs D_{l}(R1) D_{l}(R2) (seed {seed})"),
                &entries(&d12[l]),
                &entries(&(&d1[l] * &d2[l])),
                TOL_EXACT,
            )?);
        }
    }
    eprintln!("max relative error of D(R1 R2) = D(R1) D(R2), l <= {L_MAX}: {worst:.2e}");
    Ok(())
}

#[test]
fn wigner_d_is_orthogonal_and_inverts_with_the_transpose() -> TestResult {
    let (mut rng, seed) = rng();
    let r = random_rotation(&mut rng);
    let ds = wigner_d_all(L_MAX, &r)?;
    let dts = wigner_d_all(L_MAX, &r.inverse())?;
    for l in 0..=L_MAX {
        let id = DMatrix::<f64>::identity(2 * l + 1, 2 * l + 1);
        check_close(
            &format!("D_{l} D_{l}^T vs I (seed {seed})"),
            &entries(&(&ds[l] * ds[l].transpose())),
            &entries(&id),
            TOL_EXACT,
        )?;
        check_close(
            &format!("D_{l}(R^T) vs D_{l}(R)^T (seed {seed})"),
            &entries(&dts[l]),
            &entries(&ds[l].transpose()),
            TOL_EXACT,
        )?;
    }
    Ok(())
}

#[test]
fn wigner_d_agrees_across_rotation_representations() -> TestResult {
    let (mut rng, seed) = rng();
    let q = random_quaternion(&mut rng);
    let r = q.to_rotation_matrix();
    let [a, b, g] = euler_e3nn_angles(&r);
    check_close(
        &format!("euler_e3nn(angles(R)) vs R (seed {seed})"),
        euler_e3nn(a, b, g).matrix().as_slice(),
        r.matrix().as_slice(),
        TOL_EXACT,
    )?;
    for l in [0, 2, 5, 10] {
        let d = wigner_d(l, &r)?;
        check_close(
            &format!("D_{l} from quaternion (seed {seed})"),
            &entries(&wigner_d_from_quaternion(l, &q)?),
            &entries(&d),
            TOL_EXACT,
        )?;
        check_close(
            &format!("D_{l} from e3nn Euler angles (seed {seed})"),
            &entries(&wigner_d_from_euler(l, a, b, g)?),
            &entries(&d),
            TOL_EXACT,
        )?;
    }
    Ok(())
}

/// `sum_ijk C_ijk D1_il D2_jm D3_kn`, mode by mode.
fn rotate_cg(c: &ClebschGordan, d: [&DMatrix<f64>; 3]) -> Vec<f64> {
    let [n1, n2, n3] = c.shape;
    let mut t = c.data.clone();
    let idx = |i: usize, j: usize, k: usize| (i * n2 + j) * n3 + k;
    // Mode 1.
    let mut u = vec![0.0; t.len()];
    for l in 0..n1 {
        for i in 0..n1 {
            let w = d[0][(i, l)];
            if w == 0.0 {
                continue;
            }
            for j in 0..n2 {
                for k in 0..n3 {
                    u[idx(l, j, k)] += w * t[idx(i, j, k)];
                }
            }
        }
    }
    t = u;
    let mut u = vec![0.0; t.len()];
    for i in 0..n1 {
        for m in 0..n2 {
            for j in 0..n2 {
                let w = d[1][(j, m)];
                for k in 0..n3 {
                    u[idx(i, m, k)] += w * t[idx(i, j, k)];
                }
            }
        }
    }
    t = u;
    let mut u = vec![0.0; t.len()];
    for i in 0..n1 {
        for j in 0..n2 {
            for n in 0..n3 {
                u[idx(i, j, n)] = (0..n3).map(|k| t[idx(i, j, k)] * d[2][(k, n)]).sum();
            }
        }
    }
    u
}

#[test]
fn clebsch_gordan_intertwines_up_to_degree_8() -> TestResult {
    let (mut rng, seed) = rng();
    let r = random_rotation(&mut rng);
    let ds = wigner_d_all(16, &r)?;
    let mut worst = 0.0f64;
    for l1 in 0..=8usize {
        for l2 in 0..=8usize {
            for l3 in l1.abs_diff(l2)..=(l1 + l2).min(8) {
                let c = clebsch_gordan(l1, l2, l3)?;
                let rotated = rotate_cg(&c, [&ds[l1], &ds[l2], &ds[l3]]);
                worst = worst.max(assert_equivariant(
                    &format!("wigner_3j({l1},{l2},{l3}) (seed {seed})"),
                    &rotated,
                    &c.data,
                    TOL_EXACT,
                )?);
            }
        }
    }
    eprintln!("max relative error of CG intertwining, l <= 8: {worst:.2e}");
    Ok(())
}

#[test]
fn clebsch_gordan_columns_are_orthogonal() -> TestResult {
    // For fixed (l1, l2): sum_ij C^J_ijk C^J'_ijk' = delta_JJ' delta_kk' / (2J + 1).
    for l1 in 0..=8usize {
        for l2 in 0..=8usize {
            let js: Vec<usize> = (l1.abs_diff(l2)..=(l1 + l2)).collect();
            let cs: Vec<_> = js
                .iter()
                .map(|&j| clebsch_gordan(l1, l2, j))
                .collect::<Result<_, _>>()?;
            for (a, ca) in cs.iter().enumerate() {
                for (b, cb) in cs.iter().enumerate() {
                    let (na, nb) = (ca.shape[2], cb.shape[2]);
                    let mut gram = vec![0.0; na * nb];
                    let mut want = vec![0.0; na * nb];
                    for ij in 0..ca.shape[0] * ca.shape[1] {
                        for k in 0..na {
                            for kk in 0..nb {
                                gram[k * nb + kk] += ca.data[ij * na + k] * cb.data[ij * nb + kk];
                            }
                        }
                    }
                    if a == b {
                        for k in 0..na {
                            want[k * nb + k] = 1.0 / na as f64;
                        }
                    }
                    let err = gram
                        .iter()
                        .zip(&want)
                        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
                    if err > 1e-13 {
                        return Err(format!(
                            "CG({l1},{l2}) columns J={} and J={}: Gram error {err:e}",
                            js[a], js[b]
                        )
                        .into());
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn kernel_basis_rotates_as_d_out_k_d_in_transposed() -> TestResult {
    let (mut rng, seed) = rng();
    let max_degree = 4;
    let kb = KernelBasis::new(max_degree, QjPrecision::Exact)?;
    let r = random_rotation(&mut rng);
    let ds = wigner_d_all(max_degree, &r)?;
    let xs = random_vectors(&mut rng, 8, 1.5);
    let rxs = transform_points(r.matrix(), &xs);
    let k = kb.compute(&xs)?;
    let kr = kb.compute(&rxs)?;
    for d_in in 0..=max_degree {
        for d_out in 0..=max_degree {
            let [no, ni, nf] = pair_shape(d_in, d_out);
            let (blk, blk_r) = (k.block(d_in, d_out)?, kr.block(d_in, d_out)?);
            let (mut lhs, mut rhs) = (Vec::new(), Vec::new());
            for e in 0..xs.len() {
                for f in 0..nf {
                    let at = |b: &[f64]| {
                        DMatrix::from_fn(no, ni, |o, i| b[((e * no + o) * ni + i) * nf + f])
                    };
                    lhs.extend(at(blk_r).iter());
                    rhs.extend((&ds[d_out] * at(blk) * ds[d_in].transpose()).iter());
                }
            }
            assert_equivariant(
                &format!("kernel basis ({d_in},{d_out}) (seed {seed})"),
                &lhs,
                &rhs,
                TOL_EXACT,
            )?;
        }
    }
    Ok(())
}

#[test]
fn kernel_basis_frequencies_have_parity_minus_one_to_the_j() -> TestResult {
    let (mut rng, seed) = rng();
    let kb = KernelBasis::new(3, QjPrecision::Exact)?;
    let xs = random_vectors(&mut rng, 8, 1.0);
    let neg: Vec<[f64; 3]> = xs.iter().map(|v| [-v[0], -v[1], -v[2]]).collect();
    let (k, kn) = (kb.compute(&xs)?, kb.compute(&neg)?);
    for d_in in 0..=3usize {
        for d_out in 0..=3usize {
            let nf = pair_shape(d_in, d_out)[2];
            let blk = k.block(d_in, d_out)?;
            let expected: Vec<f64> = blk
                .iter()
                .enumerate()
                .map(|(idx, &x)| {
                    let j = d_in.abs_diff(d_out) + idx % nf;
                    if j.is_multiple_of(2) {
                        x
                    } else {
                        -x
                    }
                })
                .collect();
            check_close(
                &format!("K({d_in},{d_out})(-r) vs (-1)^J K(r) (seed {seed})"),
                kn.block(d_in, d_out)?,
                &expected,
                TOL_EXACT,
            )?;
        }
    }
    Ok(())
}

#[test]
fn sh_have_parity_minus_one_to_the_l_under_reflections() -> TestResult {
    let (mut rng, seed) = rng();
    for m in [
        random_reflection(&mut rng),
        random_mirror(&mut rng),
        -Matrix3::identity(),
    ] {
        let v = random_vector(&mut rng, 1.0);
        for l in 0..=10 {
            let d = wigner_d_o3(l, sh_parity(l), &m)?;
            for (conv, norm) in CONVENTIONS {
                let lhs = spherical_harmonics(l, &(m * v), conv, norm)?;
                let rhs = &d * spherical_harmonics(l, &v, conv, norm)?;
                assert_equivariant(
                    &format!("Y_{l} under a reflection ({conv:?}, seed {seed})"),
                    lhs.as_slice(),
                    rhs.as_slice(),
                    TOL_EXACT,
                )?;
            }
        }
    }
    Ok(())
}

#[test]
fn sh_gradient_rotates_as_d_grad_r_transposed() -> TestResult {
    // Y(R v) = D Y(v)  =>  grad Y(R v) = D grad Y(v) R^T.
    let (mut rng, seed) = rng();
    let r = random_rotation(&mut rng);
    let v = random_vector(&mut rng, 1.0);
    let rm = DMatrix::from_column_slice(3, 3, r.matrix().as_slice());
    for l in 0..=10 {
        let d = wigner_d(l, &r)?;
        for (conv, norm) in CONVENTIONS {
            let g = spherical_harmonics_grad(l, &v, conv, norm)?;
            let gr = spherical_harmonics_grad(l, &(r * v), conv, norm)?;
            assert_equivariant(
                &format!("grad Y_{l} ({conv:?}, seed {seed})"),
                &entries(&gr),
                &entries(&(&d * g * rm.transpose())),
                TOL_EXACT,
            )?;
        }
    }
    Ok(())
}

#[test]
fn equiformer_edge_d_rotates_the_edge_harmonics_to_the_axis() -> TestResult {
    // D(edge)^T Y(u) = Y(e_y): the edge-aligned frame sees every edge along the m = 0 axis.
    let (mut rng, seed) = rng();
    for _ in 0..8 {
        let u = random_unit_vector(&mut rng);
        for l in 1..=6 {
            let d = equiformer_edge_wigner_d(l, &u)?;
            let y = spherical_harmonics(l, &u, Convention::E3nn, Normalization::Component)?;
            let ye =
                spherical_harmonics(l, &Vector3::y(), Convention::E3nn, Normalization::Component)?;
            check_close(
                &format!("D_{l}(edge)^T Y(u) vs Y(e) (seed {seed})"),
                (d.transpose() * y).as_slice(),
                ye.as_slice(),
                TOL_EXACT,
            )?;
        }
    }
    Ok(())
}
