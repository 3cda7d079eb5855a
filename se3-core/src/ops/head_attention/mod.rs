//! Multi-head softmax attention over all pairs of nodes, fused: logits, key mask, softmax and
//! the weighted sum of values per block of query rows, without the `(heads, n, n)` logits,
//! weights or their broadcast products on the graph.
//!
//! Inputs are channel-last, as vector-neuron features: `q`, `k`, `v` `(b, n, c, H * dh)` (`c`
//! components, `H` heads of `dh` channels, head-major: channel `h * dh + e` belongs to head `h`).
//! Head `h`'s vector of node `i` is the `c x dh` block `q[b, i, :, h dh .. (h+1) dh]`, flattened.
//! Per batch element and head:
//! `L_ij = s <q_i, k_j>` ([`HeadLogits::Dot`]) or `2 s <q_i, k_j> - |q_i|^2 - |k_j|^2`
//! ([`HeadLogits::L2Distance`]); keys with `mask_j = 0` are left out of the softmax,
//! `A_ij = softmax_j(L_ij)`, `out_i = sum_j A_ij v_j`, written back in the input layout.
//! A batch element whose keys are all masked gets uniform weights over all keys (the
//! `-finfo.max` fill of VN-transformer's own attention), or zero outputs with
//! `zero_if_all_masked` (torch's `scaled_dot_product_attention`).
//!
//! Adjoint ([`backward`]): `dV = A^T dO`, `dA = dO V^T`,
//! `dL = A * (dA - rowsum(A * dA))`, `dQ = s dL K`, `dK = s dL^T Q` (plus the `-2 q`, `-2 k`
//! terms of the L2 logits), fused: recomputing `A` per block as the forward does.

pub(crate) mod backward;
mod backward_cpu;
#[cfg(feature = "cuda")]
pub(crate) mod backward_cuda;
#[cfg(test)]
mod backward_tests;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use backward_cpu::{AttentionInput, HeadAttentionGrad};
pub use cpu::HeadAttention;
use luminal::prelude::*;

use super::logical_dims;

/// How [`head_attention`] forms its logits from query and key head vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLogits {
    /// `s <q_i, k_j>`.
    Dot,
    /// `2 s <q_i, k_j> - |q_i|^2 - |k_j|^2`.
    L2Distance,
}

/// Softmax attention of every query node over every key node, per head (module docs):
/// `q`, `k`, `v` `(b, n, c, heads * dh)`, `mask` `(b, n)`; output `(b, n, c, heads * dh)`.
#[allow(clippy::too_many_arguments)]
pub fn head_attention<S: Shape>(
    q: GraphTensor<S>,
    k: GraphTensor<S>,
    v: GraphTensor<S>,
    mask: GraphTensor<(Dyn<'-'>, Dyn<'-'>)>,
    heads: usize,
    scale: f32,
    logits: HeadLogits,
    zero_if_all_masked: bool,
) -> GraphTensor<S> {
    let dims = logical_dims(&q.shape);
    let id = q
        .graph()
        .add_op(HeadAttention {
            heads,
            scale,
            logits,
            zero_if_all_masked,
        })
        .input(q.id, 0, q.shape)
        .input(k.id, 0, k.shape)
        .input(v.id, 0, v.shape)
        .input(mask.id, 0, mask.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), q.graph_ref)
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::HeadLogits;
    use crate::exec::tests::rng;
    use crate::exec::{InputKind, Session};
    use crate::layers::graph::X;
    use crate::Error;

    /// The module formula in float64 loops.
    #[allow(clippy::too_many_arguments)]
    fn attention_f64(
        (q, k, v, mask): (&[f32], &[f32], &[f32], &[f32]),
        (b, n, c, heads, dh): (usize, usize, usize, usize, usize),
        scale: f64,
        logits: HeadLogits,
        zero_if_all_masked: bool,
    ) -> Vec<f64> {
        let w = heads * dh;
        let at = |x: &[f32], bi: usize, i: usize, cc: usize, h: usize, e: usize| {
            f64::from(x[((bi * n + i) * c + cc) * w + h * dh + e])
        };
        let mut out = vec![0.0; b * n * c * w];
        for bi in 0..b {
            let keep: Vec<bool> = (0..n).map(|j| mask[bi * n + j] != 0.0).collect();
            let any = keep.iter().any(|&x| x);
            for h in 0..heads {
                for i in 0..n {
                    let mut l = vec![0.0f64; n];
                    for (j, lj) in l.iter_mut().enumerate() {
                        let (mut dot, mut qq, mut kk) = (0.0, 0.0, 0.0);
                        for cc in 0..c {
                            for e in 0..dh {
                                let (a, bb) = (at(q, bi, i, cc, h, e), at(k, bi, j, cc, h, e));
                                dot += a * bb;
                                qq += a * a;
                                kk += bb * bb;
                            }
                        }
                        *lj = match logits {
                            HeadLogits::Dot => scale * dot,
                            HeadLogits::L2Distance => 2.0 * scale * dot - qq - kk,
                        };
                    }
                    let weights: Vec<f64> = if !any {
                        if zero_if_all_masked {
                            vec![0.0; n]
                        } else {
                            vec![1.0 / n as f64; n]
                        }
                    } else {
                        let mx = (0..n)
                            .filter(|&j| keep[j])
                            .map(|j| l[j])
                            .fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = (0..n)
                            .map(|j| if keep[j] { (l[j] - mx).exp() } else { 0.0 })
                            .collect();
                        let s: f64 = e.iter().sum();
                        e.iter().map(|x| x / s).collect()
                    };
                    for cc in 0..c {
                        for e in 0..dh {
                            out[((bi * n + i) * c + cc) * w + h * dh + e] =
                                (0..n).map(|j| weights[j] * at(v, bi, j, cc, h, e)).sum();
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn fused_attention_matches_the_formula_in_float64() -> Result<(), Error> {
        let mut r = rng();
        for (logits, zero, nodes) in [
            (HeadLogits::Dot, false, 65..150),
            (HeadLogits::Dot, true, 65..150),
            (HeadLogits::L2Distance, false, 65..150),
            (HeadLogits::Dot, false, 513..600),
            (HeadLogits::L2Distance, false, 513..600),
        ] {
            // n above the backward's row block, not a multiple of it, and above 512 (forward
            // blocks of query rows); one batch element with random masked keys, one with every
            // key masked
            let (b, n, c, heads, dh) = (3, r.gen_range(nodes), r.gen_range(1..6), 2, 3);
            let w = heads * dh;
            let scale = 1.0 / ((c * dh) as f32).sqrt();
            let mut s = Session::new();
            let sh = ['b'.into(), 'n'.into(), c.into(), w.into()];
            let q = s.input_with_shape::<(X, X, X, X)>("q", InputKind::Values, &sh);
            let k = s.input_with_shape::<(X, X, X, X)>("k", InputKind::Values, &sh);
            let v = s.input_with_shape::<(X, X, X, X)>("v", InputKind::Values, &sh);
            let m = s.input_with_shape::<(X, X)>("m", InputKind::Values, &['b'.into(), 'n'.into()]);
            s.output(
                "o",
                super::head_attention(q, k, v, m, heads, scale, logits, zero),
            );
            s.compile();
            let len = b * n * c * w;
            let mut draw = || {
                (0..len)
                    .map(|_| r.gen_range(-1.5f32..1.5))
                    .collect::<Vec<_>>()
            };
            let (qs, ks, vs) = (draw(), draw(), draw());
            let mut mask: Vec<f32> = (0..b * n)
                .map(|_| f32::from(u8::from(r.gen_bool(0.7))))
                .collect();
            mask[n..2 * n].fill(0.0);
            mask[0] = 1.0;
            for (name, x) in [("q", &qs), ("k", &ks), ("v", &vs)] {
                s.set(name, x.clone(), &[b, n, c, w])?;
            }
            s.set("m", mask.clone(), &[b, n])?;
            s.run()?;
            let got = s.get("o")?.data;
            let want = attention_f64(
                (&qs, &ks, &vs, &mask),
                (b, n, c, heads, dh),
                f64::from(scale),
                logits,
                zero,
            );
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (f64::from(*g) - w).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-4, "{logits:?} zero {zero}: worst error {worst}");
        }
        Ok(())
    }
}
