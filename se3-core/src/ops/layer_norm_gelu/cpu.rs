//! CPU kernel of [`layer_norm_gelu`](super::layer_norm_gelu), parallel over rows.

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

/// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), the formula the unfused graph
/// uses, so both give the same values.
fn gelu(x: f32) -> f32 {
    let a = x.abs();
    let z = a * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let erf = 1.0 - poly * (-(z * z)).exp();
    0.5 * (x + a * erf)
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
        out.par_chunks_mut(w)
            .zip(x.par_chunks(w))
            .with_min_len(64)
            .for_each(|(o, xr)| {
                let mut mean = 0.0f32;
                for (v, b) in xr.iter().zip(&bias) {
                    mean += v + b;
                }
                mean /= w as f32;
                let mut var = 0.0f32;
                for (v, b) in xr.iter().zip(&bias) {
                    let c = v + b - mean;
                    var += c * c;
                }
                let inv = 1.0 / (var / w as f32 + eps).sqrt();
                for (k, ov) in o.iter_mut().enumerate() {
                    let y = (xr[k] + bias[k] - mean) * inv * gamma[k] + beta[k];
                    *ov = gelu(y);
                }
            });
        crate::exec::pool::finish(inp, out)
    }
}
