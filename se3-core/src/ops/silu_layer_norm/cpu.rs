//! CPU kernel of [`silu_layer_norm`](super::silu_layer_norm), parallel over blocks of rows; the
//! row loop is compiled for AVX-512 / AVX2 + FMA as well as the baseline and picked at run
//! time, SiLU a vector at a time ([`Simd::silu`]).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::simd::{self, Isa, Simd};
use crate::exec::view::{buffer, View};
use crate::ops::layer_norm_gelu::exp_neg;

/// `LayerNorm(silu(x + bias)) * gamma + beta` per row: inputs `x (R, W)`, `bias (W,)`,
/// `gamma (W,)`, `beta (W,)`; output `(R, W)`. With `linear`, a first input `f (R, F)` and
/// weights `w (F, W)` come before the others and `x = f w` is formed row by row (a layer of
/// a few inputs, e.g. the distance alone, is a broadcast product that luminal runs slowly).
#[derive(Debug, Clone, PartialEq)]
pub struct SiluLayerNorm {
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Whether the inputs start with `f` and `w` (else with `x`).
    pub linear: bool,
}

/// `sum_k f(x[k])` in 16 independent lanes (vectorisable), then across the lanes.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
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

/// Rows of width `bias.len()` in place: `v <- LayerNorm(silu(v + bias)) * gamma + beta`.
#[inline(always)]
fn rows_impl<S: Simd>(rows: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let w = bias.len().max(1);
    let inv_w = 1.0 / w as f32;
    for v in rows.chunks_mut(w) {
        for (x, b) in v.iter_mut().zip(bias) {
            *x += b;
        }
        let mut vectors = v.chunks_exact_mut(S::W);
        for c in &mut vectors {
            S::store(S::silu(S::load(c, 0)), c, 0);
        }
        for x in vectors.into_remainder() {
            let t = exp_neg(-x.abs());
            *x *= if *x >= 0.0 {
                1.0 / (1.0 + t)
            } else {
                t / (1.0 + t)
            };
        }
        let mean = lane_sum(v, |x| x) * inv_w;
        let var = lane_sum(v, |x| {
            let c = x - mean;
            c * c
        });
        let inv = 1.0 / (var * inv_w + eps).sqrt();
        for ((x, g), be) in v.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * inv * g + be;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn rows_avx512(rows: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    rows_impl::<simd::x86::Avx512>(rows, bias, gamma, beta, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2(rows: &mut [f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32) {
    rows_impl::<simd::x86::Avx2>(rows, bias, gamma, beta, eps);
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 64;

impl Operator for SiluLayerNorm {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let vec_of = |i: usize| {
            View::new(&inp[i].1, &empty)
                .materialize(buffer(&inp[i].0))
                .into_owned()
        };
        // bias, gamma, beta follow `x`, or `f` and `w`
        let first = usize::from(self.linear);
        let (bias, gamma, beta) = (vec_of(first + 1), vec_of(first + 2), vec_of(first + 3));
        let w = bias.len().max(1);
        let xv = View::new(&inp[0].1, &empty);
        let x = xv.materialize(buffer(&inp[0].0));
        // with `linear`, `x` is `f (R, F)` and the layer's input is `f w`
        let (weights, fw) = if self.linear {
            let fw = xv.shape().last().copied().unwrap_or(1).max(1);
            (Some(vec_of(1)), fw)
        } else {
            (None, w)
        };
        let rows = x.len() / fw;
        let eps = self.eps;
        let isa = simd::isa();
        let mut out = crate::exec::pool::take(rows * w);
        out.par_chunks_mut(w * ROWS_PER_TASK)
            .zip(x.par_chunks(fw * ROWS_PER_TASK))
            .for_each(|(o, xr)| {
                match &weights {
                    Some(wt) => {
                        for (orow, frow) in o.chunks_mut(w).zip(xr.chunks(fw)) {
                            orow.fill(0.0);
                            for (a, wrow) in frow.iter().zip(wt.chunks_exact(w)) {
                                for (y, v) in orow.iter_mut().zip(wrow) {
                                    *y += a * v;
                                }
                            }
                        }
                    }
                    None => o.copy_from_slice(xr),
                }
                match isa {
                    // SAFETY: `simd::isa()` detected these features on this CPU.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { rows_avx512(o, &bias, &gamma, &beta, eps) },
                    // SAFETY: as above.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { rows_avx2(o, &bias, &gamma, &beta, eps) },
                    Isa::Plain => rows_impl::<simd::Plain>(o, &bias, &gamma, &beta, eps),
                }
            });
        drop(x);
        crate::exec::pool::finish(inp, out)
    }
}
