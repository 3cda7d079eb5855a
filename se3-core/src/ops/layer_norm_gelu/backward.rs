//! Vector-Jacobian product of [`layer_norm_gelu`](super::layer_norm_gelu()): one fused node,
//! [`LayerNormGeluGrad`] (kernels in `backward_cpu.rs` and `backward_cuda.rs`), that recomputes
//! the row statistics from the inputs (nothing is stored by the forward).
//!
//! Forward per row: `h = x + bias`, `μ = mean h`, `σ² = mean (h - μ)²`,
//! `r = 1 / sqrt(σ² + eps)`, `n = (h - μ) r`, `a = n γ + β`, `y = gelu(a) = a Φ(a)`.
//! Backward, with `g` the gradient of `y`:
//! `g_a = g (Φ(a) + a φ(a))` (φ the normal density, Φ its distribution function, from the same
//! Abramowitz & Stegun erf as the forward), `dβ = Σ_rows g_a`, `dγ = Σ_rows g_a n`,
//! `g_n = g_a γ`, `dx = r (g_n - mean g_n - n mean(g_n n))` (the LayerNorm Jacobian),
//! `d bias = Σ_rows dx`.
//!
//! The same formula as graph primitives ([`unfused_vjp`]) is the fused node's own
//! vector-Jacobian product (a second backward pass, e.g. training on forces, differentiates
//! it) and the reference of its tests.

use luminal::prelude::{symbolic::Expression, *};

use super::backward_cpu::LayerNormGeluGrad;
use crate::autodiff::emit::{
    add, copy, dims, exp, expand, filled, filled_expr, less_than, mul, plain, recip, scale, shift,
    sum_axis, Tensor,
};
use crate::autodiff::gradients;
use crate::Error;

/// `erf(z)` for `z >= 0` (Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7).
fn erf_nonnegative(z: Tensor) -> Tensor {
    let t = recip(shift(scale(z, 0.327_591_1), 1.0));
    let mut poly = scale(t, 1.061_405_4);
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        poly = mul(shift(poly, c), t);
    }
    let decay = exp(scale(mul(z, z), -1.0));
    shift(scale(mul(poly, decay), -1.0), 1.0)
}

/// `GELU'(a) = Φ(a) + a φ(a)`.
fn gelu_derivative(a: Tensor) -> Tensor {
    let d = dims(&a);
    // s = sign(a) (+1 at 0), |a| = s a, Φ(a) = (1 + s erf(|a| / √2)) / 2
    let negative = less_than(a, filled(a.graph_ref, 0.0, &d));
    let s = shift(scale(negative, -2.0), 1.0);
    let erf = erf_nonnegative(scale(mul(s, a), std::f32::consts::FRAC_1_SQRT_2));
    let cdf = shift(scale(mul(s, erf), 0.5), 0.5);
    let density = scale(exp(scale(mul(a, a), -0.5)), 0.398_942_3);
    add(cdf, mul(a, density))
}

/// Gradients of the views `[x, bias, gamma, beta]` of a `LayerNormGelu { eps }` node from
/// its gradient buffer `g_id`: the fused [`LayerNormGeluGrad`] node, its rows taken apart.
pub(crate) fn vjp(
    inputs: &[Tensor],
    eps: f32,
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    if !wanted.iter().take(4).any(|&w| w) {
        return vec![None; 4];
    }
    let x = inputs[0];
    let gref = x.graph_ref;
    let d = dims(&x);
    let (rows, width) = (d[0], d[1]);
    let g = plain(g_id, &d, gref);
    let id = x
        .graph()
        .add_op(LayerNormGeluGrad { eps })
        .input(x.id, 0, x.shape)
        .input(inputs[1].id, 0, inputs[1].shape)
        .input(inputs[2].id, 0, inputs[2].shape)
        .input(inputs[3].id, 0, inputs[3].shape)
        .input(g.id, 0, g.shape)
        .finish();
    let all = plain(id, &[rows + 3, width], gref);
    // rows `r0 .. r0 + len` of the fused node's output, copied (gradients are plain buffers)
    let rows_of = |r0: Expression, len: Expression, out: &[Expression]| -> Tensor {
        let mut st = all.shape;
        st.slice(&[(r0, r0 + len), (0.into(), i32::MAX.into())]);
        let c = copy(GraphTensor::from_id(all.id, st, gref));
        plain(c.id, out, gref)
    };
    let vector = |k: usize| rows_of(rows + k, 1.into(), &[width]);
    vec![
        wanted[0].then(|| rows_of(0.into(), rows, &d)),
        wanted[1].then(|| vector(0)),
        wanted[2].then(|| vector(1)),
        wanted[3].then(|| vector(2)),
    ]
}

/// Gradients of the views `[x, bias, gamma, beta, g]` of a [`LayerNormGeluGrad`] node from its
/// gradient buffer `gg_id` (`[R + 3, W]`): [`unfused_vjp`] recomputed from plain copies of the
/// inputs and differentiated.
///
/// # Errors
/// As [`gradients`].
pub(crate) fn grad_vjp(
    inputs: &[Tensor],
    eps: f32,
    gg_id: NodeIndex,
    wanted: &[bool],
) -> Result<Vec<Option<Tensor>>, Error> {
    let c: Vec<Tensor> = inputs.iter().map(|t| copy(*t)).collect();
    let gref = c[0].graph_ref;
    let d = dims(&c[0]);
    let (rows, width) = (d[0], d[1]);
    let gg = plain(gg_id, &[rows + 3, width], gref);
    let part = |r0: Expression, len: Expression, out: &[Expression]| -> Tensor {
        let mut st = gg.shape;
        st.slice(&[(r0, r0 + len), (0.into(), i32::MAX.into())]);
        let p = copy(GraphTensor::from_id(gg.id, st, gref));
        plain(p.id, out, gref)
    };
    let parts = unfused_vjp(&c[..4], eps, c[4], &[true; 4]);
    let mut pairs = vec![];
    for (k, p) in parts.into_iter().enumerate() {
        if let Some(p) = p {
            let cot = match k {
                0 => part(0.into(), rows, &d),
                _ => part(rows + (k - 1), 1.into(), &[width]),
            };
            pairs.push((p, cot));
        }
    }
    let wrt: Vec<Tensor> = c
        .iter()
        .zip(wanted)
        .filter(|(_, &w)| w)
        .map(|(t, _)| *t)
        .collect();
    let mut grads = gradients(&pairs, &wrt)?.into_iter();
    Ok(wanted
        .iter()
        .map(|&w| if w { grads.next() } else { None })
        .collect())
}

/// [`vjp`] as graph primitives, for the output gradient `g` (a plain `[R, W]` tensor).
pub(crate) fn unfused_vjp(
    inputs: &[Tensor],
    eps: f32,
    g: Tensor,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let (x, bias, gamma, beta) = (inputs[0], inputs[1], inputs[2], inputs[3]);
    let gref = x.graph_ref;
    let d = dims(&x);
    let (rows, width) = (d[0], d[1]);
    let per_row = |v: Tensor| expand(v, 1, width);
    let per_col = |v: Tensor| expand(v, 0, rows);
    // 1 / width as a scalar buffer, broadcast over the rows
    let inv_width = expand(recip(filled_expr(gref, width, &[])), 0, rows);
    let row_mean = |v: Tensor| mul(sum_axis(v, 1), inv_width);
    let h = add(x, per_col(bias));
    let mu = row_mean(h);
    let centered = add(h, per_row(scale(mu, -1.0)));
    let var = row_mean(mul(centered, centered));
    let r = recip(unary_sqrt(shift(var, eps)));
    let n = mul(centered, per_row(r));
    let a = add(mul(n, per_col(gamma)), per_col(beta));
    let g_a = mul(g, gelu_derivative(a));
    let d_beta = wanted[3].then(|| sum_axis(g_a, 0));
    let d_gamma = wanted[2].then(|| sum_axis(mul(g_a, n), 0));
    let (d_x, d_bias) = if wanted[0] || wanted[1] {
        let g_n = mul(g_a, per_col(gamma));
        let m1 = row_mean(g_n);
        let m2 = row_mean(mul(g_n, n));
        let inner = add(
            add(g_n, per_row(scale(m1, -1.0))),
            scale(mul(n, per_row(m2)), -1.0),
        );
        // `1 / sqrt(var + eps)` recomputed: reusing `r` here read row 0's value in every
        // row (seen under both the compiled and the interpreted graph; not yet explained)
        let dx = mul(inner, per_row(recip(unary_sqrt(shift(var, eps)))));
        (wanted[0].then_some(dx), wanted[1].then(|| sum_axis(dx, 0)))
    } else {
        (None, None)
    };
    vec![d_x, d_bias, d_gamma, d_beta]
}

fn unary_sqrt(a: Tensor) -> Tensor {
    crate::autodiff::emit::unary(luminal::op::Sqrt, crate::autodiff::emit::contiguous(a))
}
