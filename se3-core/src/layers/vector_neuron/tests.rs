//! The vector-neuron layers against plain float64 loops of their formulas, and their
//! equivariance under an orthogonal map of all components.

use std::collections::HashMap;

use luminal::prelude::*;
use nalgebra::DMatrix;
use rand::Rng;

use super::*;
use crate::exec::{F32Tensor, InputKind, Session};
use crate::testing::{normal, rel_error, rng};

const B: usize = 2;
const N: usize = 5;
const K: usize = 4;

type Source = HashMap<String, F32Tensor>;

fn put(src: &mut Source, key: &str, shape: &[usize], r: &mut impl Rng) -> Vec<f64> {
    let data: Vec<f32> = (0..shape.iter().product())
        .map(|_| normal(r) as f32 / (shape[shape.len() - 1] as f32).sqrt())
        .collect();
    src.insert(
        key.into(),
        F32Tensor {
            shape: shape.to_vec(),
            data: data.clone(),
        },
    );
    data.iter().map(|&v| f64::from(v)).collect()
}

/// Builds `layer` on an input `[B, N, K, c_in]` (and a mask `[B, N]`), runs it on `x`.
fn run(
    c_in: usize,
    x: &[f64],
    mask: &[f64],
    layer: impl Fn(
        &mut Session,
        VnTensor,
        GraphTensor<(X, X)>,
    ) -> Result<GraphTensor<(X, X, X, X)>, Error>,
) -> Result<Vec<f64>, Error> {
    let mut s = Session::new();
    let xt: VnTensor = s.input_with_shape(
        "x",
        InputKind::Values,
        &[B.into(), N.into(), K.into(), c_in.into()],
    );
    let mt: GraphTensor<(X, X)> =
        s.input_with_shape("mask", InputKind::Mask, &[B.into(), N.into()]);
    let y = layer(&mut s, xt, mt)?;
    s.output("y", y);
    s.set("x", x.iter().map(|&v| v as f32).collect(), &[B, N, K, c_in])?;
    s.set("mask", mask.iter().map(|&v| v as f32).collect(), &[B, N])?;
    s.run()?;
    Ok(s.get("y")?.data.iter().map(|&v| f64::from(v)).collect())
}

/// `x[row, k, c]` as rows of `(k, c)` matrices.
fn at(x: &[f64], c: usize, row: usize, k: usize, ch: usize) -> f64 {
    x[(row * K + k) * c + ch]
}

/// `y[row, k, o] = sum_i w[o, i] x[row, k, i]`.
fn mix(x: &[f64], c_in: usize, w: &[f64], c_out: usize) -> Vec<f64> {
    let mut y = vec![0.0; B * N * K * c_out];
    for row in 0..B * N {
        for k in 0..K {
            for o in 0..c_out {
                y[(row * K + k) * c_out + o] = (0..c_in)
                    .map(|i| w[o * c_in + i] * at(x, c_in, row, k, i))
                    .sum();
            }
        }
    }
    y
}

#[test]
fn vn_linear_relu_and_layer_norm_follow_their_formulas() -> Result<(), Error> {
    let (mut r, seed) = rng();
    let (ci, co) = (3, 6);
    let mut src = Source::new();
    let w = put(&mut src, "lin.weight", &[co, ci], &mut r);
    let b = put(&mut src, "lin.bias", &[co], &mut r);
    let wr = put(&mut src, "relu.W", &[ci, ci], &mut r);
    let ur = put(&mut src, "relu.U", &[ci, ci], &mut r);
    let g = put(&mut src, "norm.ln.gamma", &[ci], &mut r);
    let be = put(&mut src, "norm.ln.beta", &[ci], &mut r);
    let x: Vec<f64> = (0..B * N * K * ci).map(|_| normal(&mut r)).collect();
    let ones = vec![1.0; B * N];
    let eps = 0.25;

    let lin = VnLinear::load(&mut src, "lin.", ci, co, eps)?;
    let got = run(ci, &x, &ones, |s, x, _| lin.build(s, "lin.", x))?;
    let blen = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    let mut want = mix(&x, ci, &w, co);
    for (i, v) in want.iter_mut().enumerate() {
        *v += eps * b[i % co] / blen;
    }
    assert!(rel_error(&got, &want) < 1e-5, "seed {seed}: VN linear");

    let relu = VnRelu::load(&mut src, "relu.", ci)?;
    let got = run(ci, &x, &ones, |s, x, _| relu.build(s, "relu.", x))?;
    let (q, u) = (mix(&x, ci, &wr, ci), mix(&x, ci, &ur, ci));
    let mut want = q.clone();
    for row in 0..B * N {
        for c in 0..ci {
            let dot: f64 = (0..K)
                .map(|k| at(&q, ci, row, k, c) * at(&u, ci, row, k, c))
                .sum();
            let un = (0..K)
                .map(|k| at(&u, ci, row, k, c).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-6);
            if dot < 0.0 {
                for k in 0..K {
                    want[(row * K + k) * ci + c] -= dot / un * at(&u, ci, row, k, c);
                }
            }
        }
    }
    assert!(rel_error(&got, &want) < 1e-5, "seed {seed}: VN ReLU");

    let norm = VnLayerNorm::load(&mut src, "norm.", ci)?;
    let got = run(ci, &x, &ones, |s, x, _| norm.build(s, "norm.", x))?;
    let mut want = x.clone();
    for row in 0..B * N {
        let rn: Vec<f64> = (0..ci)
            .map(|c| {
                (0..K)
                    .map(|k| at(&x, ci, row, k, c).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .collect();
        let mean = rn.iter().sum::<f64>() / ci as f64;
        let var = rn.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / ci as f64;
        for c in 0..ci {
            let ln = (rn[c] - mean) / (var + 1e-5).sqrt() * g[c] + be[c];
            for k in 0..K {
                want[(row * K + k) * ci + c] *= ln / rn[c].max(1e-6);
            }
        }
    }
    assert!(rel_error(&got, &want) < 1e-5, "seed {seed}: VN layer norm");
    Ok(())
}

#[test]
fn vn_attention_and_feed_forward_commute_with_orthogonal_maps_of_the_components(
) -> Result<(), Error> {
    let (mut r, seed) = rng();
    let (dim, heads, dh) = (4, 2, 3);
    let mut src = Source::new();
    for p in ["to_q", "to_k", "to_v"] {
        put(
            &mut src,
            &format!("attn.{p}.weight"),
            &[heads * dh, dim],
            &mut r,
        );
    }
    put(&mut src, "attn.to_out.weight", &[dim, heads * dh], &mut r);
    put(&mut src, "ff.0.weight", &[8, dim], &mut r);
    put(&mut src, "ff.1.W", &[8, 8], &mut r);
    put(&mut src, "ff.1.U", &[8, 8], &mut r);
    put(&mut src, "ff.2.weight", &[dim, 8], &mut r);
    put(&mut src, "inv.mlp.0.weight", &[K, dim], &mut r);
    put(&mut src, "inv.mlp.1.W", &[K, K], &mut r);
    put(&mut src, "inv.mlp.1.U", &[K, K], &mut r);
    let ff = VnFeedForward::load(&mut src, "ff.", dim, 8, 0.0)?;
    let inv = VnInvariant::load(&mut src, "inv.", dim, K)?;
    // a random orthogonal map of the K components (QR of a Gaussian matrix)
    let g = DMatrix::from_fn(K, K, |_, _| normal(&mut r));
    let q = g.qr().q();
    let apply = |x: &[f64], c: usize| -> Vec<f64> {
        let mut y = vec![0.0; x.len()];
        for row in 0..B * N {
            for k in 0..K {
                for ch in 0..c {
                    y[(row * K + k) * c + ch] =
                        (0..K).map(|j| q[(k, j)] * at(x, c, row, j, ch)).sum();
                }
            }
        }
        y
    };
    let x: Vec<f64> = (0..B * N * K * dim).map(|_| normal(&mut r)).collect();
    let mask: Vec<f64> = (0..B * N)
        .map(|i| {
            if i % N == 0 || r.gen_bool(0.6) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    for kind in [
        VnAttentionKind::DotProduct,
        VnAttentionKind::L2Distance,
        VnAttentionKind::FusedDotProduct,
    ] {
        let attn = VnAttention::load(&mut src, "attn.", dim, heads, dh, 0.0, kind)?;
        let block = |s: &mut Session, x: VnTensor, m: GraphTensor<(X, X)>| {
            let a = attn.build(s, "attn.", x, m)?;
            ff.build(s, "ff.", a)
        };
        let y = run(dim, &x, &mask, block)?;
        let yq = run(dim, &apply(&x, dim), &mask, block)?;
        let e = rel_error(&yq, &apply(&y, dim));
        assert!(e < 1e-4, "seed {seed} {kind:?}: {e:.2e}");
    }
    // the invariant readout does not move
    let readout = |s: &mut Session, x: VnTensor, _m: GraphTensor<(X, X)>| {
        let y = inv.build(s, "inv.", x)?;
        let d = crate::layers::graph::dims(y);
        Ok(crate::layers::graph::reshape(
            y,
            &[d[0], d[1], d[2], 1.into()],
        ))
    };
    let y = run(dim, &x, &mask, readout)?;
    let yq = run(dim, &apply(&x, dim), &mask, readout)?;
    assert!(rel_error(&yq, &y) < 1e-4, "seed {seed}: invariant readout");
    Ok(())
}
