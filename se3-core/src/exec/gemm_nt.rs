//! `C = A B^T + beta C` with both operands contiguous along the inner dimension, as dot
//! products vectorised along that dimension: for products with a narrow output (few columns,
//! long inner dimension, e.g. the last radial layer of an edge contraction, 16 output channels
//! against `chunk x hidden` inputs), where the broadcast form of
//! [`gemm_rows`](super::matmul::gemm_rows) would be bound by its broadcasts of `A`.

use super::view::dot8;

/// `C[i, j] = sum_l A[i, l] B[j, l] + beta C[i, j]` for `i < m`, `j < n`, `l < k`, with
/// `A[i, l]` at `a[i * lda + l]`, `B[j, l]` at `b[j * ldb + l]` and `C[i, j]` at
/// `c[i * ldc + j]`. On AVX-512, register tiles of 4 x 4 dot products accumulate 16 lanes of
/// the inner dimension each and are summed across lanes at the end (a different order of
/// additions from a sequential dot product, within float32 rounding of it); elsewhere
/// [`dot8`] per output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_nt(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || ((m - 1) * lda + k <= a.len() && (n - 1) * ldb + k <= b.len()));
    assert!((m - 1) * ldc + n <= c.len());
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::isa() == super::simd::Isa::Avx512 {
            // SAFETY: the CPU has AVX-512F; the asserts above bound every access.
            unsafe { nt_avx512::gemm(m, n, k, a, lda, b, ldb, c, ldc, beta) };
            return;
        }
    }
    for i in 0..m {
        let ra = &a[i * lda..i * lda + k];
        for j in 0..n {
            let v = dot8(ra, &b[j * ldb..j * ldb + k]);
            let dst = &mut c[i * ldc + j];
            *dst = if beta == 0.0 { v } else { beta * *dst + v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod nt_avx512 {
    use std::arch::x86_64::*;

    /// One tile of `R x O` outputs; index loops over the const sizes keep it in registers.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize, const O: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        beta: f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); O]; R];
        let full = k / 16 * 16;
        let mut l = 0;
        while l < full {
            let mut bv = [_mm512_setzero_ps(); O];
            for o in 0..O {
                bv[o] = _mm512_loadu_ps(b.add(o * ldb + l));
            }
            for r in 0..R {
                let av = _mm512_loadu_ps(a.add(r * lda + l));
                for o in 0..O {
                    acc[r][o] = _mm512_fmadd_ps(av, bv[o], acc[r][o]);
                }
            }
            l += 16;
        }
        if l < k {
            let mask = ((1u32 << (k - l)) - 1) as __mmask16;
            for r in 0..R {
                let av = _mm512_maskz_loadu_ps(mask, a.add(r * lda + l));
                for o in 0..O {
                    let bv = _mm512_maskz_loadu_ps(mask, b.add(o * ldb + l));
                    acc[r][o] = _mm512_fmadd_ps(av, bv, acc[r][o]);
                }
            }
        }
        for r in 0..R {
            for o in 0..O {
                let p = c.add(r * ldc + o);
                let v = _mm512_reduce_add_ps(acc[r][o]);
                *p = if beta == 0.0 { v } else { beta * *p + v };
            }
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn cols<const R: usize>(
        n: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        beta: f32,
    ) {
        let mut j = 0;
        while j + 4 <= n {
            tile::<R, 4>(k, a, lda, b.add(j * ldb), ldb, c.add(j), ldc, beta);
            j += 4;
        }
        while j < n {
            tile::<R, 1>(k, a, lda, b.add(j * ldb), ldb, c.add(j), ldc, beta);
            j += 1;
        }
    }

    /// See [`super::gemm_nt`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        beta: f32,
    ) {
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let mut i = 0;
        while i + 4 <= m {
            cols::<4>(n, k, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, beta);
            i += 4;
        }
        while i < m {
            cols::<1>(n, k, a.add(i * lda), lda, b, ldb, c.add(i * ldc), ldc, beta);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rel_err, rng};

    /// The tiled product against plain loops in float64, on random sizes (ragged rows,
    /// columns and inner lengths) with padded leading dimensions and both `beta`s.
    #[test]
    fn gemm_nt_matches_plain_loops() {
        let mut r = rng();
        for _ in 0..20 {
            let (m, n, k) = (
                r.gen_range(1..14),
                r.gen_range(1..11),
                r.gen_range(0..300),
            );
            let (lda, ldb, ldc) = (
                k + r.gen_range(0..5),
                k + r.gen_range(0..5),
                n + r.gen_range(0..5),
            );
            let a = rand_vec(&mut r, m * lda);
            let b = rand_vec(&mut r, n * ldb);
            let c0 = rand_vec(&mut r, m * ldc);
            let beta = if r.gen_bool(0.5) { 0.0 } else { 1.0 };
            let mut c = c0.clone();
            super::gemm_nt(m, n, k, &a, lda, &b, ldb, &mut c, ldc, beta);
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|l| a[i * lda + l] as f64 * b[j * ldb + l] as f64)
                        .sum();
                    want.push((beta as f64 * c0[i * ldc + j] as f64 + dot) as f32);
                    got.push(c[i * ldc + j]);
                }
            }
            let err = rel_err(&got, &want);
            assert!(
                err < 1e-5,
                "seed {}: {m}x{n}x{k}: rel err {err:e}",
                crate::testing::seed()
            );
        }
    }
}
