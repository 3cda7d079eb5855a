//! CPU kernel of [`radial_hidden`](super::radial_hidden): one rayon task per network, edges in
//! blocks of [`EDGE_BLOCK`] rows whose two layers run in cache (first layer as a rank-`n_in`
//! update, second as a single-threaded GEMM), each followed by LayerNorm + GELU in place.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::matmul::gemm_single;
use crate::exec::view::{buffer, View};

/// Edges per block.
pub(crate) const EDGE_BLOCK: usize = 64;

/// The hidden layers of `P` radial networks (inputs `x [e, n_in]`, `w0 [P, n_in, hd]`,
/// `b0, g1, be1 [P, hd]`, `w3 [P, hd, hd]` (in x out), `b3, g4, be4 [P, hd]`); output
/// `[P, e, hd]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RadialHidden {
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// `e^x` for `x <= 0` by range reduction to `[-ln 2 / 2, ln 2 / 2]` and a degree-6 Taylor
/// polynomial (relative error below 3e-7), branch-free so that loops over it vectorise;
/// arguments below -87 give 0 up to f32's smallest normal.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * std::f32::consts::LN_2;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from the bits of n + 1.5 * 2^23 (its low mantissa bits hold n): integer operations
    // only, which vectorise (a saturating `as i32` does not)
    let t = n + 12_582_912.0;
    let e = t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127);
    let scale = f32::from_bits(e << 23);
    p * scale
}

/// Exact GELU with erf by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7), the
/// formula of the unfused graph and of `layer_norm_gelu`.
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

/// `row <- gelu(LayerNorm(row + bias) gamma + beta)`.
#[inline(always)]
fn ln_gelu_impl(row: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let w = row.len() as f32;
    for (v, b) in row.iter_mut().zip(bias) {
        *v += b;
    }
    let mean = crate::exec::view::sum8(row) / w;
    let mut acc = [0.0f32; 8];
    for c in row.chunks(8) {
        for (a, v) in acc.iter_mut().zip(c) {
            let d = v - mean;
            *a += d * d;
        }
    }
    let var: f32 = acc.iter().sum();
    let inv = 1.0 / (var / w + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = gelu((*v - mean) * inv * g + b);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn ln_gelu_avx512(row: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    ln_gelu_impl(row, bias, gamma, beta, eps)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn ln_gelu_avx2(row: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    ln_gelu_impl(row, bias, gamma, beta, eps)
}

/// `row <- gelu(LayerNorm(row + bias) gamma + beta)`, on AVX-512 or AVX2 when the CPU has it.
fn ln_gelu(row: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { ln_gelu_avx512(row, bias, gamma, beta, eps) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { ln_gelu_avx2(row, bias, gamma, beta, eps) };
            return;
        }
    }
    ln_gelu_impl(row, bias, gamma, beta, eps)
}

impl Operator for RadialHidden {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
        let m: Vec<std::borrow::Cow<[f32]>> = inp
            .iter()
            .zip(&views)
            .map(|((t, _), v)| v.materialize(buffer(t)))
            .collect();
        let (xs, w0s) = (views[0].shape(), views[1].shape());
        let (e, n_in) = (xs[0], xs[1]);
        let (np, hd) = (w0s[0], w0s[2]);
        let eps = self.eps;
        let mut out = crate::exec::pool::take(np * e * hd);
        if e > 0 && hd > 0 {
            let (x, w0, b0, g1, be1, w3, b3, g4, be4) = (
                &m[0], &m[1], &m[2], &m[3], &m[4], &m[5], &m[6], &m[7], &m[8],
            );
            out.par_chunks_mut(e * hd).enumerate().for_each_init(
                Vec::new,
                |z1: &mut Vec<f32>, (p, o)| {
                    z1.resize(EDGE_BLOCK * hd, 0.0);
                    let r = p * hd..(p + 1) * hd;
                    let (b0, g1, be1) = (&b0[r.clone()], &g1[r.clone()], &be1[r.clone()]);
                    let (b3, g4, be4) = (&b3[r.clone()], &g4[r.clone()], &be4[r]);
                    let w0 = &w0[p * n_in * hd..(p + 1) * n_in * hd];
                    let w3 = &w3[p * hd * hd..(p + 1) * hd * hd];
                    for e0 in (0..e).step_by(EDGE_BLOCK) {
                        let eb = EDGE_BLOCK.min(e - e0);
                        for rr in 0..eb {
                            let row = &mut z1[rr * hd..(rr + 1) * hd];
                            row.fill(0.0);
                            for i in 0..n_in {
                                let xv = x[(e0 + rr) * n_in + i];
                                for (z, w) in row.iter_mut().zip(&w0[i * hd..(i + 1) * hd]) {
                                    *z += xv * w;
                                }
                            }
                            ln_gelu(row, b0, g1, be1, eps);
                        }
                        let dst = &mut o[e0 * hd..(e0 + eb) * hd];
                        gemm_single(eb, hd, hd, z1, (hd, 1), w3, (hd, 1), dst, 0.0);
                        for row in dst.chunks_mut(hd) {
                            ln_gelu(row, b3, g4, be4, eps);
                        }
                    }
                },
            );
        }
        drop(m);
        crate::exec::pool::finish(inp, out)
    }
}
