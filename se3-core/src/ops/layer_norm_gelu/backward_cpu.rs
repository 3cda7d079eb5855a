//! CPU kernel of the vector-Jacobian product of [`layer_norm_gelu`](super::layer_norm_gelu()):
//! one pass over the rows that recomputes each row's statistics (nothing is stored by the
//! forward) and writes the input's gradient and the column sums of the three vectors'
//! gradients, instead of the ~30 elementwise passes, row reductions and column reductions of
//! the same formula as graph primitives.
//!
//! Per row, with `g` the output's gradient (the formula of [`super::backward`]):
//! `h = x + bias`, `μ = mean h`, `r = 1 / sqrt(mean (h - μ)² + eps)`, `n = (h - μ) r`,
//! `a = n γ + β`, `g_a = g GELU'(a)`, `g_n = g_a γ`,
//! `dx = r (g_n - mean g_n - n mean(g_n n))`; over all rows `d bias = Σ dx`, `dγ = Σ g_a n`,
//! `dβ = Σ g_a`.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use super::cpu::{gelu_derivative, lane_sum, mad, ROWS_PER_TASK};
use crate::exec::simd::{self, Isa};
use crate::exec::view::{buffer, View};

/// The gradient of a [`LayerNormGelu`](super::LayerNormGelu) node: inputs `x (R, W)`,
/// `bias`, `gamma`, `beta (W,)` (the forward's inputs) and `g (R, W)` (the output's
/// gradient); output `(R + 3, W)` row-major: rows `0 .. R` the gradient of `x`, then the
/// gradients of `bias`, `gamma` and `beta`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormGeluGrad {
    /// LayerNorm epsilon (the forward's).
    pub eps: f32,
}

/// The vectors of one call and their gradients' partial sums.
struct Columns<'a> {
    bias: &'a [f32],
    gamma: &'a [f32],
    beta: &'a [f32],
    eps: f32,
}

/// Rows of `x` and `g` (width `bias.len()`): `dx` into `out`, and `d bias`, `dγ`, `dβ` added to
/// `sums` (`3 W`, in that order); `scratch` holds `n` and `g_n` of a row.
#[inline(always)]
fn grad_rows_impl<const F: bool>(
    x: &[f32],
    g: &[f32],
    out: &mut [f32],
    c: &Columns,
    sums: &mut [f32],
    scratch: &mut [f32],
) {
    let w = c.bias.len().max(1);
    let inv_w = 1.0 / w as f32;
    let (d_bias, rest) = sums.split_at_mut(w);
    let (d_gamma, d_beta) = rest.split_at_mut(w);
    let (ns, gns) = scratch.split_at_mut(w);
    for ((xr, gr), o) in x.chunks(w).zip(g.chunks(w)).zip(out.chunks_mut(w)) {
        // o <- h = x + bias (the row's buffer until dx is written)
        for ((o, &xv), &b) in o.iter_mut().zip(xr).zip(c.bias) {
            *o = xv + b;
        }
        let mean = lane_sum(o, |v| v) * inv_w;
        let var = lane_sum(o, |v| (v - mean) * (v - mean)) * inv_w;
        let r = 1.0 / (var + c.eps).sqrt();
        for k in 0..w {
            let n = (o[k] - mean) * r;
            let ga = gr[k] * gelu_derivative::<F>(mad::<F>(n, c.gamma[k], c.beta[k]));
            d_beta[k] += ga;
            d_gamma[k] = mad::<F>(ga, n, d_gamma[k]);
            let gn = ga * c.gamma[k];
            ns[k] = n;
            gns[k] = gn;
            // o <- g_n n (h is no longer needed)
            o[k] = gn * n;
        }
        let m1 = lane_sum(gns, |v| v) * inv_w;
        let m2 = lane_sum(o, |v| v) * inv_w;
        for k in 0..w {
            let dx = r * mad::<F>(-ns[k], m2, gns[k] - m1);
            o[k] = dx;
            d_bias[k] += dx;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn grad_rows_avx512(
    x: &[f32],
    g: &[f32],
    out: &mut [f32],
    c: &Columns,
    sums: &mut [f32],
    s: &mut [f32],
) {
    grad_rows_impl::<true>(x, g, out, c, sums, s);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn grad_rows_avx2(
    x: &[f32],
    g: &[f32],
    out: &mut [f32],
    c: &Columns,
    sums: &mut [f32],
    s: &mut [f32],
) {
    grad_rows_impl::<true>(x, g, out, c, sums, s);
}

/// [`grad_rows_impl`] on the best instruction set of the CPU ([`simd::isa`]).
fn grad_rows(x: &[f32], g: &[f32], out: &mut [f32], c: &Columns, sums: &mut [f32], s: &mut [f32]) {
    match simd::isa() {
        // SAFETY: `simd::isa()` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { grad_rows_avx512(x, g, out, c, sums, s) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { grad_rows_avx2(x, g, out, c, sums, s) },
        _ => grad_rows_impl::<false>(x, g, out, c, sums, s),
    }
}

impl Operator for LayerNormGeluGrad {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let read = |i: usize| View::new(&inp[i].1, &empty).materialize(buffer(&inp[i].0));
        let w = View::new(&inp[1].1, &empty).n;
        let (x, bias, gamma, beta, g) = (read(0), read(1), read(2), read(3), read(4));
        let mut out = crate::exec::pool::take(x.len() + 3 * w);
        if w > 0 {
            let cols = Columns {
                bias: &bias,
                gamma: &gamma,
                beta: &beta,
                eps: self.eps,
            };
            let (dx, sums) = out.split_at_mut(x.len());
            sums.fill(0.0);
            let block = w * ROWS_PER_TASK;
            // per block of rows its partial column sums, added in block order (the same
            // result on any number of threads)
            let partials: Vec<Vec<f32>> = dx
                .par_chunks_mut(block)
                .zip(x.par_chunks(block))
                .zip(g.par_chunks(block))
                .map(|((o, xr), gr)| {
                    let mut part = vec![0.0f32; 3 * w];
                    let mut scratch = vec![0.0f32; 2 * w];
                    grad_rows(xr, gr, o, &cols, &mut part, &mut scratch);
                    part
                })
                .collect();
            for part in &partials {
                for (s, p) in sums.iter_mut().zip(part) {
                    *s += p;
                }
            }
        }
        drop((x, bias, gamma, beta, g));
        crate::exec::pool::finish(inp, out)
    }
}
