//! A fused row kernel of Equiformer's radial networks: `LayerNorm(silu(x + bias)) * gamma +
//! beta` over the last axis (biased variance, LayerNorm epsilon `eps`), the bias of a linear
//! layer, its SiLU and the LayerNorm in one pass over each row instead of a chain of
//! broadcasts, reductions and elementwise passes over the whole `(E, W)` tensor.
//!
//! Inference only: it has no adjoint, so a graph that is differentiated builds the unfused
//! form (`layers::graph`'s `layer_norm` on `x * sigmoid(x)`), which is the reference it is
//! tested against. Kernels: `cpu.rs`, and `cuda.rs` with `silu_layer_norm.cu` (both forms, a
//! warp per row; checked against the CPU kernel through the CPU shim of `se3-cuda-check`).

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use cpu::SiluLayerNorm;
use luminal::prelude::*;

use super::logical_dims;

/// `LayerNorm(silu(x + bias)) * gamma + beta` per row of `x (R, W)`; `bias`, `gamma`, `beta`
/// of shape `(W,)`.
pub fn silu_layer_norm<R: Dimension, W: Dimension>(
    x: GraphTensor<(R, W)>,
    bias: GraphTensor<(W,)>,
    gamma: GraphTensor<(W,)>,
    beta: GraphTensor<(W,)>,
    eps: f32,
) -> GraphTensor<(R, W)> {
    let dims = logical_dims(&x.shape);
    let id = x
        .graph()
        .add_op(SiluLayerNorm { eps, linear: false })
        .input(x.id, 0, x.shape)
        .input(bias.id, 0, bias.shape)
        .input(gamma.id, 0, gamma.shape)
        .input(beta.id, 0, beta.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), x.graph_ref)
}

/// [`silu_layer_norm`] of `f w`: `LayerNorm(silu(f w + bias)) * gamma + beta` per row of
/// `f (R, F)` with `w (F, W)`, the product formed row by row in the kernel (for layers of a
/// few inputs).
pub fn linear_silu_layer_norm<R: Dimension, F: Dimension, W: Dimension>(
    f: GraphTensor<(R, F)>,
    w: GraphTensor<(F, W)>,
    bias: GraphTensor<(W,)>,
    gamma: GraphTensor<(W,)>,
    beta: GraphTensor<(W,)>,
    eps: f32,
) -> GraphTensor<(R, W)> {
    let rows = logical_dims(&f.shape)[0];
    let width = logical_dims(&bias.shape)[0];
    let id = f
        .graph()
        .add_op(SiluLayerNorm { eps, linear: true })
        .input(f.id, 0, f.shape)
        .input(w.id, 0, w.shape)
        .input(bias.id, 0, bias.shape)
        .input(gamma.id, 0, gamma.shape)
        .input(beta.id, 0, beta.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&[rows, width]), f.graph_ref)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::{symbolic::Expression, *};
    use rand::Rng;

    use crate::exec::tests::rng;
    use crate::exec::{InputKind, Session};
    use crate::layers::graph::{expand_at, layer_norm, retype, X};
    use crate::Error;

    /// `LayerNorm(silu(x + b)) g + be` of one row in float64.
    fn reference(x: &[f64], b: &[f32], g: &[f32], be: &[f32]) -> Vec<f64> {
        let h: Vec<f64> = x
            .iter()
            .zip(b)
            .map(|(x, b)| {
                let z = x + f64::from(*b);
                z / (1.0 + (-z).exp())
            })
            .collect();
        let w = h.len() as f64;
        let mean = h.iter().sum::<f64>() / w;
        let var = h.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / w;
        h.iter()
            .zip(g.iter().zip(be))
            .map(|(h, (g, be))| (h - mean) / (var + 1e-5).sqrt() * f64::from(*g) + f64::from(*be))
            .collect()
    }

    #[test]
    fn fused_kernel_matches_the_unfused_graph_and_float64() -> Result<(), Error> {
        let mut r = rng();
        for _ in 0..4 {
            // widths around the vector sizes and odd ones
            let (rows, w, fin) = (r.gen_range(1..40), r.gen_range(2..70), r.gen_range(1..4));
            let mut s = Session::new();
            let wd = [Expression::from(w)];
            let x = s.input_with_shape::<(X, X)>("x", InputKind::Values, &['r'.into(), w.into()]);
            let f = s.input_with_shape::<(X, X)>("f", InputKind::Values, &['r'.into(), fin.into()]);
            let wt = s.input_with_shape::<(X, X)>("w", InputKind::Values, &[fin.into(), w.into()]);
            let b = s.input_with_shape::<(X,)>("b", InputKind::Values, &wd);
            let g = s.input_with_shape::<(X,)>("g", InputKind::Values, &wd);
            let be = s.input_with_shape::<(X,)>("be", InputKind::Values, &wd);
            s.output("fused", super::silu_layer_norm(x, b, g, be, 1e-5));
            s.output(
                "fused_linear",
                super::linear_silu_layer_norm(f, wt, b, g, be, 1e-5),
            );
            let xb: GraphTensor<(X, X)> = x + expand_at::<_, (X, X)>(b, 0, 'r');
            let un = layer_norm(xb * xb.sigmoid(), retype(g), retype(be), 1e-5);
            s.output("unfused", un);
            // large arguments too: SiLU's exponential saturates both ways
            let v = |n: usize, a: f32, r: &mut rand::rngs::StdRng| {
                (0..n).map(|_| r.gen_range(-a..a)).collect::<Vec<f32>>()
            };
            let (xs, fs, ws) = (
                v(rows * w, 12.0, &mut r),
                v(rows * fin, 3.0, &mut r),
                v(fin * w, 3.0, &mut r),
            );
            let (bs, gs, bes) = (v(w, 1.0, &mut r), v(w, 2.0, &mut r), v(w, 1.0, &mut r));
            for (name, data, shape) in [
                ("x", &xs, [rows, w]),
                ("f", &fs, [rows, fin]),
                ("w", &ws, [fin, w]),
            ] {
                s.set(name, data.clone(), &shape)?;
            }
            s.set("b", bs.clone(), &[w])?;
            s.set("g", gs.clone(), &[w])?;
            s.set("be", bes.clone(), &[w])?;
            s.run()?;
            let (fused, linear, unfused) = (
                s.get("fused")?.data,
                s.get("fused_linear")?.data,
                s.get("unfused")?.data,
            );
            for row in 0..rows {
                let xr: Vec<f64> = xs[row * w..(row + 1) * w]
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                let fw: Vec<f64> = (0..w)
                    .map(|c| {
                        (0..fin)
                            .map(|q| f64::from(fs[row * fin + q]) * f64::from(ws[q * w + c]))
                            .sum()
                    })
                    .collect();
                for (what, got, want) in [
                    ("fused", &fused, reference(&xr, &bs, &gs, &bes)),
                    ("unfused", &unfused, reference(&xr, &bs, &gs, &bes)),
                    ("fused linear", &linear, reference(&fw, &bs, &gs, &bes)),
                ] {
                    for (k, want) in want.iter().enumerate() {
                        let got = f64::from(got[row * w + k]);
                        assert!(
                            (got - want).abs() < 2e-5 * (1.0 + want.abs()),
                            "{what} {got} vs {want} (row {row}, width {w})"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
