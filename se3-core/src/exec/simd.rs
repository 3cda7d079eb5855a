//! The instruction set of the CPU kernels that are compiled several times (AVX-512 + FMA,
//! AVX2 + FMA, portable) and picked at run time: one detection, cached, for every kernel.
//!
//! A kernel writes its body once as an `#[inline(always)]` function, wraps it in one
//! `#[target_feature]` function per instruction set, and dispatches on [`isa()`]; the
//! wrappers may only be called on the instruction set [`isa()`] reported.

use std::sync::OnceLock;

/// Instruction sets a kernel can be compiled for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The baseline of the target.
    Plain,
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Plain
}

impl Isa {
    /// What the kernels use, in words.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "AVX-512F + FMA",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "AVX2 + FMA",
            Isa::Plain => "the target's baseline (no AVX2/AVX-512 kernels)",
        }
    }
}

/// The best instruction set of this CPU (detected once).
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

/// The few vector operations of hand-vectorised kernels, one implementation per instruction
/// set. The functions are `#[inline(always)]` and may only be called (inlined) inside
/// `#[target_feature]` functions of the matching instruction set, after [`isa()`] reported it.
pub(crate) trait Simd: Copy {
    /// Lanes per vector.
    const W: usize;
    type V: Copy;
    fn zero() -> Self::V;
    fn splat(x: f32) -> Self::V;
    /// Loads `W` values from `s[at..]` (`at + W <= s.len()`, checked).
    fn load(s: &[f32], at: usize) -> Self::V;
    fn store(v: Self::V, s: &mut [f32], at: usize);
    /// `a b + c`.
    fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn add(a: Self::V, b: Self::V) -> Self::V;
    fn sum(v: Self::V) -> f32;
    /// `1 / x` for `x` in `[1, 2]` (no division instruction: the hardware estimate and one
    /// Newton step `r (2 - x r)`, relative error below `1e-6`; exact on [`Plain`]).
    fn recip(x: Self::V) -> Self::V;
    /// SiLU `x sigmoid(x)` lane by lane: `t = e^-|x|` (`-|x|` clamped at `-87`, `n = round(-|x|
    /// / ln 2)`, the remainder's degree-6 Taylor polynomial times `2^n`), then `x / (1 + t)`
    /// or `x t / (1 + t)` by the sign of `x`, the reciprocal by [`Simd::recip`]; relative
    /// error below `1e-6`.
    fn silu(x: Self::V) -> Self::V;
}

/// `ln 2` split in a part exact in few bits and the rest (range reduction of `e^x`).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// `1 / k!` for `k = 2 ..= 6`, the Taylor coefficients of `e^r` past `1 + r`.
const EXP_TAYLOR: [f32; 5] = [0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0];

/// Portable fallback: 8 lanes as an array (vectorised by the compiler for the baseline ISA).
#[derive(Clone, Copy)]
pub(crate) struct Plain;

impl Simd for Plain {
    const W: usize = 8;
    type V = [f32; 8];
    #[inline(always)]
    fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    fn splat(x: f32) -> [f32; 8] {
        [x; 8]
    }
    #[inline(always)]
    fn load(s: &[f32], at: usize) -> [f32; 8] {
        std::array::from_fn(|k| s[at + k])
    }
    #[inline(always)]
    fn store(v: [f32; 8], s: &mut [f32], at: usize) {
        s[at..at + 8].copy_from_slice(&v);
    }
    #[inline(always)]
    fn fmadd(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|k| a[k] * b[k] + c[k])
    }
    #[inline(always)]
    fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|k| a[k] + b[k])
    }
    #[inline(always)]
    fn sum(v: [f32; 8]) -> f32 {
        v.iter().sum()
    }
    #[inline(always)]
    fn recip(x: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|k| 1.0 / x[k])
    }
    #[inline(always)]
    fn silu(x: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|k| {
            let t = crate::ops::layer_norm_gelu::exp_neg(-x[k].abs());
            let num = if x[k] >= 0.0 { x[k] } else { x[k] * t };
            num / (1.0 + t)
        })
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{Simd, EXP_TAYLOR, LN2_HI, LN2_LO};

    /// `e^r` for `|r| <= ln 2 / 2` by Horner's rule on the degree-6 Taylor polynomial.
    macro_rules! exp_taylor {
        ($r:expr, $set1:ident, $fmadd:ident) => {{
            let r = $r;
            let mut p = $set1(EXP_TAYLOR[4]);
            p = $fmadd(p, r, $set1(EXP_TAYLOR[3]));
            p = $fmadd(p, r, $set1(EXP_TAYLOR[2]));
            p = $fmadd(p, r, $set1(EXP_TAYLOR[1]));
            p = $fmadd(p, r, $set1(EXP_TAYLOR[0]));
            p = $fmadd(p, r, $set1(1.0));
            $fmadd(p, r, $set1(1.0))
        }};
    }

    /// AVX2 + FMA, 8 lanes.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2;

    // SAFETY (every `unsafe` block of both impls): kernels only run these inside
    // `#[target_feature(enable = "avx2,fma")]` / `"avx512f,fma"` functions called after
    // `isa()` confirmed the features; loads and stores are bounds-checked
    // on the slice first.
    impl Simd for Avx2 {
        const W: usize = 8;
        type V = __m256;
        #[inline(always)]
        fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        fn splat(x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        fn load(s: &[f32], at: usize) -> __m256 {
            let s = &s[at..at + 8];
            unsafe { _mm256_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn store(v: __m256, s: &mut [f32], at: usize) {
            let s = &mut s[at..at + 8];
            unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sum(v: __m256) -> f32 {
            let mut t = [0.0f32; 8];
            unsafe { _mm256_storeu_ps(t.as_mut_ptr(), v) };
            t.iter().sum()
        }
        #[inline(always)]
        fn recip(x: __m256) -> __m256 {
            // estimate (relative error < 1.5 2^-12), one Newton step: error ~ its square
            unsafe {
                let r = _mm256_rcp_ps(x);
                let e = _mm256_fnmadd_ps(x, r, _mm256_set1_ps(1.0));
                _mm256_fmadd_ps(r, e, r)
            }
        }
        #[inline(always)]
        fn silu(x: __m256) -> __m256 {
            unsafe {
                let abs = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
                let z = _mm256_max_ps(
                    _mm256_sub_ps(_mm256_setzero_ps(), abs),
                    _mm256_set1_ps(-87.0),
                );
                let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm256_mul_ps(z, _mm256_set1_ps(std::f32::consts::LOG2_E)),
                );
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), z);
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
                let p = exp_taylor!(r, _mm256_set1_ps, _mm256_fmadd_ps);
                // 2^n from the exponent bits (n >= -126 after the clamp)
                let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
                    _mm256_cvtps_epi32(n),
                    _mm256_set1_epi32(127),
                ));
                let t = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
                let inv = Self::recip(_mm256_add_ps(_mm256_set1_ps(1.0), t));
                // x t where the sign bit of x is set, else x
                let num = _mm256_blendv_ps(x, _mm256_mul_ps(x, t), x);
                _mm256_mul_ps(num, inv)
            }
        }
    }

    /// AVX-512F + FMA, 16 lanes.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx512;

    impl Simd for Avx512 {
        const W: usize = 16;
        type V = __m512;
        #[inline(always)]
        fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        fn splat(x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        fn load(s: &[f32], at: usize) -> __m512 {
            let s = &s[at..at + 16];
            unsafe { _mm512_loadu_ps(s.as_ptr()) }
        }
        #[inline(always)]
        fn store(v: __m512, s: &mut [f32], at: usize) {
            let s = &mut s[at..at + 16];
            unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
        }
        #[inline(always)]
        fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn add(a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn sum(v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
        #[inline(always)]
        fn recip(x: __m512) -> __m512 {
            // estimate (relative error < 2^-14), one Newton step: error ~ its square
            unsafe {
                let r = _mm512_rcp14_ps(x);
                let e = _mm512_fnmadd_ps(x, r, _mm512_set1_ps(1.0));
                _mm512_fmadd_ps(r, e, r)
            }
        }
        #[inline(always)]
        fn silu(x: __m512) -> __m512 {
            unsafe {
                let z = _mm512_max_ps(
                    _mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)),
                    _mm512_set1_ps(-87.0),
                );
                let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    _mm512_mul_ps(z, _mm512_set1_ps(std::f32::consts::LOG2_E)),
                );
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), z);
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
                let p = exp_taylor!(r, _mm512_set1_ps, _mm512_fmadd_ps);
                let t = _mm512_scalef_ps(p, n);
                let inv = Self::recip(_mm512_add_ps(_mm512_set1_ps(1.0), t));
                let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
                let num = _mm512_mask_mul_ps(x, negative, x, t);
                _mm512_mul_ps(num, inv)
            }
        }
    }
}
