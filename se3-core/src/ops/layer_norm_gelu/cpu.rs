//! CPU kernel of [`layer_norm_gelu`](super::layer_norm_gelu), parallel over rows. The row
//! loop has no calls (exp by range reduction and a polynomial), so it vectorises; it is
//! compiled for AVX-512 / AVX2 + FMA as well as the baseline and picked at run time.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, View};

/// `gelu(LayerNorm(x + bias) * gamma + beta)` per row: inputs `x (R, W)`, `bias (W,)`,
/// `gamma (W,)`, `beta (W,)`; output `(R, W)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormGelu {
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// `e^x` for `x <= 0` without a library call (vectorisable): `x = n ln 2 + r`, `|r| <=
/// ln 2 / 2`, `e^r` by its degree-6 Taylor polynomial (relative error < 2e-7), `2^n` from the
/// exponent bits; 0 below `-87`.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    // round(x / ln 2) by the 1.5 * 2^23 trick (no call, exact for |n| < 2^22)
    let magic = 12_582_912.0f32;
    let n = (x * std::f32::consts::LOG2_E + magic) - magic;
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), the formula the unfused graph
/// uses, so both give the same values.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    let a = x.abs();
    let z = a * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let erf = 1.0 - poly * exp_neg(-(z * z));
    0.5 * (x + a * erf)
}

/// `sum_k f(x[k], b[k])` in 16 independent lanes (vectorisable), then across the lanes.
#[inline(always)]
fn lane_sum(x: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (cx, cb) = (x.chunks_exact(16), b.chunks_exact(16));
    let (rx, rb) = (cx.remainder(), cb.remainder());
    for (xc, bc) in cx.zip(cb) {
        for k in 0..16 {
            acc[k] += f(xc[k], bc[k]);
        }
    }
    acc.iter().sum::<f32>() + rx.iter().zip(rb).map(|(v, w)| f(*v, *w)).sum::<f32>()
}

/// One row: `o = gelu(LayerNorm(x + bias) * gamma + beta)`.
#[inline(always)]
fn row(o: &mut [f32], xr: &[f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let w = o.len();
    let mean = lane_sum(xr, bias, |v, b| v + b) / w as f32;
    let var = lane_sum(xr, bias, |v, b| {
        let c = v + b - mean;
        c * c
    });
    let inv = 1.0 / (var / w as f32 + eps).sqrt();
    for ((((ov, x), b), g), be) in o.iter_mut().zip(xr).zip(bias).zip(gamma).zip(beta) {
        *ov = gelu((x + b - mean) * inv * g + be);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn row_avx512(o: &mut [f32], xr: &[f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    row(o, xr, bias, gamma, beta, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2(o: &mut [f32], xr: &[f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    row(o, xr, bias, gamma, beta, eps);
}

/// Instruction set of the row kernel: 2 = AVX-512, 1 = AVX2 + FMA, 0 = baseline.
fn isa() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            return 2;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return 1;
        }
    }
    0
}

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
        let level = isa();
        out.par_chunks_mut(w)
            .zip(x.par_chunks(w))
            .with_min_len(64)
            .for_each(|(o, xr)| match level {
                // SAFETY: `isa()` detected these features on this CPU.
                #[cfg(target_arch = "x86_64")]
                2 => unsafe { row_avx512(o, xr, &bias, &gamma, &beta, eps) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                1 => unsafe { row_avx2(o, xr, &bias, &gamma, &beta, eps) },
                _ => row(o, xr, &bias, &gamma, &beta, eps),
            });
        crate::exec::pool::finish(inp, out)
    }
}
