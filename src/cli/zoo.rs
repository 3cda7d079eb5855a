//! `se3` (no subcommand): the zoo. Each section runs on built-in or random data and prints a
//! small table. For now it checks the SO(3) math on fresh random rotations and vectors; model
//! sections are added to [`SECTIONS`] as they exist.

use nalgebra::{DMatrix, DVector, Quaternion, Rotation3, UnitQuaternion, Vector3};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3_core::basis::{pair_shape, KernelBasis, QjPrecision};
use se3_core::so3::{clebsch_gordan, spherical_harmonics, wigner_d_all, Convention, Normalization};

/// One section of the zoo: prints its table, fails with a one-line error.
type Section = fn(&mut StdRng) -> Result<(), super::CliError>;

/// The sections, in the order they run.
const SECTIONS: &[(&str, Section)] = &[
    ("spherical harmonics and Wigner D", sh_and_wigner_d),
    ("Clebsch-Gordan (e3nn wigner_3j)", clebsch_gordan_checks),
    (
        "kernel basis (se3-transformer get_basis)",
        kernel_basis_checks,
    ),
    ("model zoo", super::zoo_models::models),
];

/// Largest degree of the harmonics table.
const ZOO_LMAX: usize = 10;
/// Largest degree of the Clebsch-Gordan table.
const ZOO_CG_LMAX: usize = 8;

/// Runs every section with one seed (`SE3_SEED` if set, else fresh and printed).
pub fn run() -> Result<(), super::CliError> {
    let seed = std::env::var("SE3_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("se3 zoo (SE3_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    for (name, section) in SECTIONS {
        println!("\n## {name}");
        section(&mut rng)?;
    }
    Ok(())
}

/// A Haar-random rotation: a uniform point of the 4-ball, normalised.
fn random_rotation(rng: &mut StdRng) -> Rotation3<f64> {
    loop {
        let q = Quaternion::new(
            rng.gen_range(-1.0..1.0),
            rng.gen_range(-1.0..1.0),
            rng.gen_range(-1.0..1.0),
            rng.gen_range(-1.0..1.0),
        );
        let n = q.norm();
        if n > 1e-3 && n <= 1.0 {
            return UnitQuaternion::from_quaternion(q).to_rotation_matrix();
        }
    }
}

fn random_vector(rng: &mut StdRng) -> Vector3<f64> {
    Vector3::new(
        rng.gen_range(-2.0..2.0),
        rng.gen_range(-2.0..2.0),
        rng.gen_range(-2.0..2.0),
    )
}

/// Max |a - b| / max |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn sh_and_wigner_d(rng: &mut StdRng) -> Result<(), super::CliError> {
    const ROTATIONS: usize = 8;
    const VECTORS: usize = 32;
    let mut eq = [[0.0f64; ZOO_LMAX + 1]; 2];
    let mut hom = [0.0f64; ZOO_LMAX + 1];
    let mut orth = [0.0f64; ZOO_LMAX + 1];
    let conventions = [
        (Convention::E3nn, Normalization::Component),
        (Convention::Se3TransformerPytorch, Normalization::Integral),
    ];
    for _ in 0..ROTATIONS {
        let (r1, r2) = (random_rotation(rng), random_rotation(rng));
        let d1 = wigner_d_all(ZOO_LMAX, &r1)?;
        let d2 = wigner_d_all(ZOO_LMAX, &r2)?;
        let d12 = wigner_d_all(ZOO_LMAX, &(r1 * r2))?;
        for l in 0..=ZOO_LMAX {
            let prod = &d1[l] * &d2[l];
            hom[l] = hom[l].max(rel_err(d12[l].as_slice(), prod.as_slice()));
            let id = DMatrix::<f64>::identity(2 * l + 1, 2 * l + 1);
            let dd = &d1[l] * d1[l].transpose();
            orth[l] = orth[l].max(rel_err(dd.as_slice(), id.as_slice()));
        }
        for _ in 0..VECTORS / ROTATIONS {
            let v = random_vector(rng);
            for (c, (conv, norm)) in conventions.iter().enumerate() {
                for l in 0..=ZOO_LMAX {
                    let lhs = spherical_harmonics(l, &(r1 * v), *conv, *norm)?;
                    let rhs: DVector<f64> = &d1[l] * spherical_harmonics(l, &v, *conv, *norm)?;
                    eq[c][l] = eq[c][l].max(rel_err(lhs.as_slice(), rhs.as_slice()));
                }
            }
        }
    }
    println!("max relative errors over {ROTATIONS} random rotations x {VECTORS} random vectors");
    println!(
        "{:>3} {:>22} {:>22} {:>20} {:>16}",
        "l", "Y(Rx)=D Y(x) e3nn", "Y(Rx)=D Y(x) se3t", "D(R1R2)=D(R1)D(R2)", "D D^T = I"
    );
    for l in 0..=ZOO_LMAX {
        println!(
            "{:>3} {:>22.2e} {:>22.2e} {:>20.2e} {:>16.2e}",
            l, eq[0][l], eq[1][l], hom[l], orth[l]
        );
    }
    Ok(())
}

fn clebsch_gordan_checks(rng: &mut StdRng) -> Result<(), super::CliError> {
    let r = random_rotation(rng);
    let ds = wigner_d_all(2 * ZOO_CG_LMAX, &r)?;
    println!("max relative intertwining error |C(D1 x D2 x D3) - C| / |C| per l1, over l2 <= l1 and all J");
    println!("{:>3} {:>10} {:>14}", "l1", "triples", "max error");
    for l1 in 0..=ZOO_CG_LMAX {
        let mut worst = 0.0f64;
        let mut count = 0;
        for l2 in 0..=l1 {
            for j in (l1 - l2)..=(l1 + l2) {
                let c = clebsch_gordan(l1, l2, j)?;
                let [n1, n2, n3] = c.shape;
                let (a, b, cc) = (&ds[l1], &ds[l2], &ds[j]);
                // rotated[l, m, n] = sum_ijk C[i, j, k] a[i, l] b[j, m] cc[k, n]
                let mut t1 = vec![0.0; n1 * n2 * n3];
                for i in 0..n1 {
                    for ll in 0..n1 {
                        let w = a[(i, ll)];
                        for jk in 0..n2 * n3 {
                            t1[ll * n2 * n3 + jk] += w * c.data[i * n2 * n3 + jk];
                        }
                    }
                }
                let mut t2 = vec![0.0; n1 * n2 * n3];
                for ll in 0..n1 {
                    for jj in 0..n2 {
                        for m in 0..n2 {
                            let w = b[(jj, m)];
                            for k in 0..n3 {
                                t2[(ll * n2 + m) * n3 + k] += w * t1[(ll * n2 + jj) * n3 + k];
                            }
                        }
                    }
                }
                let mut t3 = vec![0.0; n1 * n2 * n3];
                for lm in 0..n1 * n2 {
                    for nn in 0..n3 {
                        t3[lm * n3 + nn] = (0..n3).map(|k| t2[lm * n3 + k] * cc[(k, nn)]).sum();
                    }
                }
                worst = worst.max(rel_err(&t3, &c.data));
                count += 1;
            }
        }
        println!("{:>3} {:>10} {:>14.2e}", l1, count, worst);
    }
    Ok(())
}

fn kernel_basis_checks(rng: &mut StdRng) -> Result<(), super::CliError> {
    const MAX_DEGREE: usize = 3;
    const EDGES: usize = 64;
    let kb = KernelBasis::new(MAX_DEGREE, QjPrecision::Exact)?;
    let r = random_rotation(rng);
    let ds = wigner_d_all(MAX_DEGREE, &r)?;
    let edges: Vec<[f64; 3]> = (0..EDGES)
        .map(|_| {
            let v = random_vector(rng);
            [v.x, v.y, v.z]
        })
        .collect();
    let rotated: Vec<[f64; 3]> = edges
        .iter()
        .map(|e| {
            let v = r * Vector3::from(*e);
            [v.x, v.y, v.z]
        })
        .collect();
    let (k, kr) = (kb.compute(&edges)?, kb.compute(&rotated)?);
    println!("max relative error of K(Rr) = D_out K(r) D_in^T over {EDGES} random edges");
    print!("{:>12}", "d_in \\ d_out");
    for d_out in 0..=MAX_DEGREE {
        print!(" {:>10}", d_out);
    }
    println!();
    for d_in in 0..=MAX_DEGREE {
        print!("{:>12}", d_in);
        for d_out in 0..=MAX_DEGREE {
            let [no, ni, nf] = pair_shape(d_in, d_out);
            let (blk, blk_r) = (k.block(d_in, d_out)?, kr.block(d_in, d_out)?);
            let (mut lhs, mut rhs) = (Vec::new(), Vec::new());
            for e in 0..EDGES {
                for f in 0..nf {
                    let at = |b: &[f64]| {
                        DMatrix::from_fn(no, ni, |o, i| b[((e * no + o) * ni + i) * nf + f])
                    };
                    lhs.extend(at(blk_r).iter().copied());
                    rhs.extend(
                        (&ds[d_out] * at(blk) * ds[d_in].transpose())
                            .iter()
                            .copied(),
                    );
                }
            }
            print!(" {:>10.2e}", rel_err(&lhs, &rhs));
        }
        println!();
    }
    Ok(())
}
