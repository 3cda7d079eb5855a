//! CPU kernel of [`layer_norm_gelu`](super::layer_norm_gelu), parallel over blocks of rows,
//! and the row kernel itself ([`layer_norm_gelu_rows`]), which
//! [`radial_hidden`](crate::ops::radial_hidden()) shares. The row loop has no calls (exp by
//! range reduction and a polynomial), so it vectorises; it is compiled for AVX-512 / AVX2 +
//! FMA as well as the baseline and picked at run time.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::simd::{self, Isa};
use crate::exec::view::{buffer, View};

/// `gelu(LayerNorm(x + bias) * gamma + beta)` per row: inputs `x (R, W)`, `bias (W,)`,
/// `gamma (W,)`, `beta (W,)`; output `(R, W)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormGelu {
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// `a b + c`, fused (one rounding) where the instruction set has FMA (`F`), else two
/// operations (a software `fma` call would not vectorise).
#[inline(always)]
pub(super) fn mad<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` for `x <= 0` without a library call (vectorisable): `x = n ln 2 + r`, `|r| <=
/// ln 2 / 2`, `e^r` by its degree-6 Taylor polynomial (relative error < 2e-7), `2^n` from the
/// exponent bits; 0 below `-87`.
#[inline(always)]
pub(crate) fn exp_neg(x: f32) -> f32 {
    exp_neg_with::<false>(x)
}

/// [`exp_neg`] with its multiply-adds fused when `F`.
#[inline(always)]
pub(super) fn exp_neg_with<const F: bool>(x: f32) -> f32 {
    let x = x.max(-87.0);
    // round(x / ln 2) by the 1.5 * 2^23 trick (no call, exact for |n| < 2^22)
    let magic = 12_582_912.0f32;
    let shifted = mad::<F>(x, std::f32::consts::LOG2_E, magic);
    let n = shifted - magic;
    // n as an integer from the low mantissa bits of `shifted` (integer ops only, so the whole
    // function vectorises; a float-to-int cast would be done lane by lane)
    let n_int = (shifted.to_bits() as i32).wrapping_sub(magic.to_bits() as i32);
    let r = mad::<F>(-n, 1.428_606_8e-6, mad::<F>(-n, 0.693_145_75, x));
    // Horner from the highest coefficient: 1/720, 1/120, 1/24, 1/6, 1/2, 1, 1
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = mad::<F>(p, r, c);
    }
    p * f32::from_bits((n_int.wrapping_add(127) as u32) << 23)
}

/// Exact GELU `x Phi(x)`, erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), the
/// formula the unfused graph uses, so both give the same values (to rounding: with `F` the
/// multiply-adds are fused).
#[inline(always)]
fn gelu<const F: bool>(x: f32) -> f32 {
    let a = x.abs();
    let z = a * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / mad::<F>(0.327_591_1, z, 1.0);
    let mut poly = 1.061_405_4;
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        poly = mad::<F>(poly, t, c);
    }
    let poly = poly * t;
    let erf = mad::<F>(-poly, exp_neg_with::<F>(-(z * z)), 1.0);
    0.5 * mad::<F>(a, erf, x)
}

/// `GELU'(x) = Phi(x) + x phi(x)` (`phi` the normal density), with the erf of [`gelu`]:
/// `e = exp(-x^2 / 2)` serves both `erf(|x| / sqrt 2) = 1 - poly(t) e` and `phi(x) = e /
/// sqrt(2 pi)`.
#[inline(always)]
pub(super) fn gelu_derivative<const F: bool>(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / mad::<F>(0.327_591_1, z, 1.0);
    let mut poly = 1.061_405_4;
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        poly = mad::<F>(poly, t, c);
    }
    let poly = poly * t;
    let e = exp_neg_with::<F>(-(z * z));
    let erf = mad::<F>(-poly, e, 1.0);
    let cdf = mad::<F>(0.5, erf.copysign(x), 0.5);
    mad::<F>(x * 0.398_942_3, e, cdf)
}

/// `sum_k f(x[k])` in 16 independent lanes (vectorisable), then across the lanes.
#[inline(always)]
pub(super) fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let cx = x.chunks_exact(16);
    let rx = cx.remainder();
    for xc in cx {
        for k in 0..16 {
            acc[k] += f(xc[k]);
        }
    }
    acc.iter().sum::<f32>() + rx.iter().map(|v| f(*v)).sum::<f32>()
}

/// Rows of width `bias.len()` in place: `v <- gelu(LayerNorm(v + bias) * gamma + beta)`.
#[inline(always)]
fn rows_impl<const F: bool>(rows: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let w = bias.len().max(1);
    let inv_w = 1.0 / w as f32;
    for v in rows.chunks_mut(w) {
        for (x, b) in v.iter_mut().zip(bias) {
            *x += b;
        }
        let mean = lane_sum(v, |x| x) * inv_w;
        let var = lane_sum(v, |x| {
            let c = x - mean;
            c * c
        });
        let inv = 1.0 / (var * inv_w + eps).sqrt();
        for ((x, g), be) in v.iter_mut().zip(gamma).zip(beta) {
            *x = gelu::<F>(mad::<F>((*x - mean) * inv, *g, *be));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn rows_avx512(rows: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    rows_impl::<true>(rows, bias, gamma, beta, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2(rows: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    rows_impl::<true>(rows, bias, gamma, beta, eps);
}

/// The row kernel of radial networks, shared by [`layer_norm_gelu`](super::layer_norm_gelu)
/// and [`radial_hidden`](crate::ops::radial_hidden()): each row of `rows` (width
/// `bias.len()`), in place, `v <- gelu(LayerNorm(v + bias) * gamma + beta)`, on the best
/// instruction set of the CPU ([`simd::isa`]).
pub(crate) fn layer_norm_gelu_rows(
    rows: &mut [f32],
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    debug_assert!(gamma.len() == bias.len() && beta.len() == bias.len());
    match simd::isa() {
        // SAFETY: `simd::isa()` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { rows_avx512(rows, bias, gamma, beta, eps) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { rows_avx2(rows, bias, gamma, beta, eps) },
        Isa::Plain => rows_impl::<false>(rows, bias, gamma, beta, eps),
    }
}

/// Rows per parallel task.
pub(super) const ROWS_PER_TASK: usize = 64;

impl Operator for LayerNormGelu {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let xv = View::new(&inp[0].1, &empty);
        let shape = xv.shape();
        let w = shape.last().copied().unwrap_or(1).max(1);
        let x = xv.materialize(buffer(&inp[0].0));
        let vec_of = |i: usize| {
            View::new(&inp[i].1, &empty)
                .materialize(buffer(&inp[i].0))
                .into_owned()
        };
        let (bias, gamma, beta) = (vec_of(1), vec_of(2), vec_of(3));
        let eps = self.eps;
        let mut out = crate::exec::pool::take(x.len());
        out.par_chunks_mut(w * ROWS_PER_TASK)
            .zip(x.par_chunks(w * ROWS_PER_TASK))
            .for_each(|(o, xr)| {
                o.copy_from_slice(xr);
                layer_norm_gelu_rows(o, &bias, &gamma, &beta, eps);
            });
        drop(x);
        crate::exec::pool::finish(inp, out)
    }
}
