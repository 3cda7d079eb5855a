//! A fused row kernel of radial networks: `gelu(LayerNorm(x + bias) * gamma + beta)` over the
//! last axis, exact-erf GELU (to f32 precision, as `torch.nn.GELU()`), biased variance,
//! LayerNorm epsilon `eps`: the bias of a linear layer, its LayerNorm and activation in one
//! pass instead of a chain of broadcasts, reductions and elementwise passes.
//!
//! Adjoint: [`LayerNormGeluGrad`], the LayerNorm and GELU derivatives per row in one pass
//! (`backward.rs`); the unfused graph of `layers::graph` (`layer_norm`, `gelu`) is the reference
//! the forward is tested against.

pub(crate) mod backward;
mod backward_cpu;
#[cfg(feature = "cuda")]
pub(crate) mod backward_cuda;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use backward_cpu::LayerNormGeluGrad;
pub use cpu::LayerNormGelu;
pub(crate) use cpu::{exp_neg, layer_norm_gelu_rows};
use luminal::prelude::*;

use super::logical_dims;

/// `gelu(LayerNorm(x + bias) * gamma + beta)` per row of `x (R, W)`; `bias`, `gamma`, `beta`
/// of shape `(W,)`.
pub fn layer_norm_gelu<R: Dimension, W: Dimension>(
    x: GraphTensor<(R, W)>,
    bias: GraphTensor<(W,)>,
    gamma: GraphTensor<(W,)>,
    beta: GraphTensor<(W,)>,
    eps: f32,
) -> GraphTensor<(R, W)> {
    let dims = logical_dims(&x.shape);
    let id = x
        .graph()
        .add_op(LayerNormGelu { eps })
        .input(x.id, 0, x.shape)
        .input(bias.id, 0, bias.shape)
        .input(gamma.id, 0, gamma.shape)
        .input(beta.id, 0, beta.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), x.graph_ref)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::{symbolic::Expression, *};
    use rand::Rng;

    use crate::exec::tests::rng;
    use crate::exec::{InputKind, Session};
    use crate::layers::graph::{gelu, layer_norm, X};
    use crate::Error;

    #[test]
    fn fused_kernel_matches_the_unfused_graph_and_plain_rust() -> Result<(), Error> {
        let mut r = rng();
        let (rows, w) = (r.gen_range(1..40), r.gen_range(2..70));
        let mut s = Session::new();
        // the unfused layer norm needs the width as a number, as in the radial networks
        let wd = [Expression::from(w)];
        let x = s.input_with_shape::<(X, X)>("x", InputKind::Values, &['r'.into(), w.into()]);
        let b = s.input_with_shape::<(X,)>("b", InputKind::Values, &wd);
        let g = s.input_with_shape::<(X,)>("g", InputKind::Values, &wd);
        let be = s.input_with_shape::<(X,)>("be", InputKind::Values, &wd);
        s.output("fused", super::layer_norm_gelu(x, b, g, be, 1e-5));
        let xb: GraphTensor<(X, X)> = x + crate::layers::graph::expand_at::<_, (X, X)>(b, 0, 'r');
        let un = gelu(layer_norm(
            xb,
            crate::layers::graph::retype(g),
            crate::layers::graph::retype(be),
            1e-5,
        ));
        s.output("unfused", un);
        let v = |n: usize, r: &mut rand::rngs::StdRng| {
            (0..n).map(|_| r.gen_range(-3.0..3.0)).collect::<Vec<f32>>()
        };
        let (xs, bs, gs, bes) = (
            v(rows * w, &mut r),
            v(w, &mut r),
            v(w, &mut r),
            v(w, &mut r),
        );
        s.set("x", xs.clone(), &[rows, w])?;
        s.set("b", bs.clone(), &[w])?;
        s.set("g", gs.clone(), &[w])?;
        s.set("be", bes.clone(), &[w])?;
        s.run()?;
        let (f, u) = (s.get("fused")?.data, s.get("unfused")?.data);
        for (row, (fr, ur)) in f.chunks(w).zip(u.chunks(w)).enumerate() {
            let xr: Vec<f64> = (0..w).map(|k| f64::from(xs[row * w + k] + bs[k])).collect();
            let mean = xr.iter().sum::<f64>() / w as f64;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / w as f64;
            for k in 0..w {
                let y = (xr[k] - mean) / (var + 1e-5).sqrt() * f64::from(gs[k]) + f64::from(bes[k]);
                let want = 0.5 * y * (1.0 + erf(y / std::f64::consts::SQRT_2));
                let tol = 1e-5 * (1.0 + want.abs());
                assert!(
                    (f64::from(fr[k]) - want).abs() < tol,
                    "fused {} vs {want}",
                    fr[k]
                );
                assert!(
                    (f64::from(ur[k]) - want).abs() < tol,
                    "unfused {} vs {want}",
                    ur[k]
                );
            }
        }
        Ok(())
    }

    /// erf by its Taylor series (|x| < 3) or continued fraction tail: an independent check.
    fn erf(x: f64) -> f64 {
        if x.abs() > 5.0 {
            return x.signum();
        }
        let mut sum = 0.0f64;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
