//! Tests of [`gemm_rows`](super::gemm_rows): against a plain float64 triple loop on random
//! shapes (every row tail of the register tiles, every masked column tail, several column panels,
//! `k` from 0 to past the `k` blocks, padded `lda`/`ldb`/`ldc`, `beta` 0, 1 and neither), and
//! against `matrixmultiply::sgemm` at the shapes of the fused kernels, printing both rates
//! (single-threaded GFLOP/s, multiply-add = 2; read with `--nocapture`).

use std::time::Instant;

use rand::{rngs::StdRng, Rng, SeedableRng};

use super::gemm_rows;

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Value C must keep outside the product (`ldc` padding) and, for `beta = 0`, a value the
/// product must not read.
const SENTINEL: f32 = 7.25;

/// Checks `gemm_rows` on one shape against the float64 loop; `c0` is the C before the call.
#[allow(clippy::too_many_arguments)]
fn check(
    (m, k, n): (usize, usize, usize),
    (lda, ldb, ldc): (usize, usize, usize),
    beta: f32,
    a: &[f32],
    b: &[f32],
    c0: &[f32],
    seed: u64,
) {
    let mut c = c0.to_vec();
    gemm_rows(m, k, n, a, lda, b, ldb, &mut c, ldc, beta);
    for i in 0..m {
        for j in 0..ldc.min(c.len() - i * ldc) {
            let got = c[i * ldc + j];
            if j >= n {
                assert_eq!(
                    got.to_bits(),
                    c0[i * ldc + j].to_bits(),
                    "padding C[{i}, {j}] changed (m {m} k {k} n {n} ldc {ldc}, SE3_SEED={seed})"
                );
                continue;
            }
            let (mut want, mut scale) = (0.0f64, 0.0f64);
            for l in 0..k {
                let p = a[i * lda + l] as f64 * b[l * ldb + j] as f64;
                want += p;
                scale += p.abs();
            }
            if beta != 0.0 {
                let old = beta as f64 * c0[i * ldc + j] as f64;
                want += old;
                scale += old.abs();
            }
            assert!(
                (got as f64 - want).abs() <= 1e-5 * scale + 1e-30,
                "C[{i}, {j}] = {got}, want {want} (m {m} k {k} n {n} lda {lda} ldb {ldb} \
                 ldc {ldc} beta {beta}, SE3_SEED={seed})"
            );
        }
    }
}

#[test]
fn gemm_rows_matches_plain_loop() {
    let seed = crate::testing::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // every m up to past two tiles of the tallest tile, every n tail over three panels
    let mut shapes = Vec::new();
    for m in 1..=17 {
        shapes.push((m, rng.gen_range(0..=24), rng.gen_range(1..=200)));
    }
    for n in 1..=200 {
        shapes.push((rng.gen_range(1..=20), rng.gen_range(1..=24), n));
    }
    // long k (past the k blocks of every panel width: 64 + 16, 48, 32 columns), tall m
    shapes.extend([(13, 600, 80), (7, 300, 48), (9, 300, 32), (1, 1100, 16)]);
    for _ in 0..12 {
        let m = rng.gen_range(1..=80);
        shapes.push((m, rng.gen_range(100..=700), rng.gen_range(1..=160)));
    }
    for (m, k, n) in shapes {
        let (lda, ldb, ldc) = match rng.gen_range(0..3) {
            0 => (k, n, n),
            _ => (
                k + rng.gen_range(0..=17),
                n + rng.gen_range(0..=17),
                n + rng.gen_range(0..=17),
            ),
        };
        // exact lengths: the last row of each operand ends at its last element
        let a = rand_vec(&mut rng, if k == 0 { 0 } else { (m - 1) * lda + k });
        let b = rand_vec(&mut rng, if k == 0 { 0 } else { (k - 1) * ldb + n });
        let beta = [0.0f32, 1.0, -0.5][rng.gen_range(0..3)];
        let mut c0 = rand_vec(&mut rng, (m - 1) * ldc + n);
        for (p, v) in c0.iter_mut().enumerate() {
            if p % ldc >= n || (beta == 0.0 && p % 3 == 0) {
                *v = if p % ldc >= n { SENTINEL } else { f32::NAN };
            }
        }
        check((m, k, n), (lda, ldb, ldc), beta, &a, &b, &c0, seed);
    }
}

/// Seconds of the fastest of `reps` runs of `f`.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Name, `m`, `k`, `n`, `lda`, `ldb`, `ldc`, `beta` of one product.
type KernelShape = (&'static str, usize, usize, usize, usize, usize, usize, f32);

#[test]
fn gemm_rows_agrees_with_sgemm_at_kernel_shapes() {
    let seed = crate::testing::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // (name, m, k, n, lda, ldb, ldc, beta) of `se3 bench se3-transformer --case se3t_deg2_n128`:
    // radial_hidden's second layer; edge_contract's products of Kx with the radial hidden
    // values, the last layer, the query fold and its product with Kx; and a larger square
    let shapes: &[KernelShape] = &[
        ("radial_hidden W3", 64, 128, 128, 128, 144, 128, 0.0),
        ("contract Kx h", 48, 16, 128, 16, 128, 128, 0.0),
        ("contract last layer", 48, 2048, 16, 2048, 16, 16, 1.0),
        ("logits query fold", 48, 16, 2048, 16, 12304, 2048, 0.0),
        ("logits Kx fold", 16, 48, 128, 48, 128, 128, 1.0),
        ("square 256", 256, 256, 256, 256, 256, 256, 0.0),
    ];
    for &(name, m, k, n, lda, ldb, ldc, beta) in shapes {
        let a = rand_vec(&mut rng, (m - 1) * lda + k);
        let b = rand_vec(&mut rng, (k - 1) * ldb + n);
        let c0 = rand_vec(&mut rng, (m - 1) * ldc + n);
        let mut ours = c0.clone();
        gemm_rows(m, k, n, &a, lda, &b, ldb, &mut ours, ldc, beta);
        let mut theirs = c0.clone();
        // SAFETY: the slices hold every element the strides address.
        let sgemm = |c: &mut [f32]| unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                lda as isize,
                1,
                b.as_ptr(),
                ldb as isize,
                1,
                beta,
                c.as_mut_ptr(),
                ldc as isize,
                1,
            )
        };
        sgemm(&mut theirs);
        let scale = (k as f64).sqrt() + 1.0;
        for (p, (x, y)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                ((x - y).abs() as f64) <= 1e-5 * scale,
                "{name}: C[{p}] = {x}, sgemm {y} (SE3_SEED={seed})"
            );
        }
        // rates, interleaved, best of several batches of about 10 ms each
        let flops = 2.0 * (m * k * n) as f64;
        let inner = ((1e7 / flops) as usize).max(1);
        let (mut t_ours, mut t_sgemm) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..5 {
            let mut c = c0.clone();
            t_ours = t_ours.min(best_of(1, || {
                for _ in 0..inner {
                    gemm_rows(m, k, n, &a, lda, &b, ldb, &mut c, ldc, beta);
                }
            }));
            t_sgemm = t_sgemm.min(best_of(1, || {
                for _ in 0..inner {
                    sgemm(&mut c);
                }
            }));
        }
        let rate = |t: f64| flops * inner as f64 / t / 1e9;
        println!(
            "gemm_rows {name:<20} {m:>4} x {k:>4} x {n:>4}: {:>6.1} GFLOP/s, sgemm {:>6.1} GFLOP/s",
            rate(t_ours),
            rate(t_sgemm)
        );
    }
}
