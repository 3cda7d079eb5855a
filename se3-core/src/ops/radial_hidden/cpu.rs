//! CPU kernel of [`radial_hidden`](super::radial_hidden): one rayon task per network and
//! block of [`EDGE_BLOCK`] edges, whose two layers run in cache (first layer as a rank-`n_in`
//! update, second as an unpacked register-tiled GEMM, `gemm_rows`, whose
//! `W3` of 64 KiB stays in L1/L2 over the block), each followed by LayerNorm + GELU in place (the
//! row kernel of [`layer_norm_gelu`](crate::ops::layer_norm_gelu())).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::matmul::gemm_rows;
use crate::exec::view::{buffer, View};
use crate::ops::layer_norm_gelu::layer_norm_gelu_rows;

/// Padding (floats) after each row of the copy of `W3` the products read.
const W3_PAD: usize = 16;

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

impl Operator for RadialHidden {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
        let m: Vec<crate::exec::view::Materialized> = inp
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
            // one task per network and block of edges (load balance over the cores for any
            // number of networks)
            // W3 with rows `hd + W3_PAD` apart: rows 512 bytes apart (hd = 128) would fill only
            // a quarter of the L1 cache's sets, so a tile's columns of W3 would not stay in it
            let ldw = hd + W3_PAD;
            let mut w3p = vec![0.0f32; np * hd * ldw];
            for (dst, src) in w3p.chunks_exact_mut(ldw).zip(w3.chunks_exact(hd)) {
                dst[..hd].copy_from_slice(src);
            }
            let w3 = &w3p;
            let tasks: Vec<(usize, usize, &mut [f32])> = out
                .chunks_mut(e * hd)
                .enumerate()
                .flat_map(|(p, o)| {
                    o.chunks_mut(EDGE_BLOCK * hd)
                        .enumerate()
                        .map(move |(b, d)| (p, b * EDGE_BLOCK, d))
                })
                .collect();
            tasks
                .into_par_iter()
                .for_each_init(Vec::new, |z1: &mut Vec<f32>, (p, e0, dst)| {
                    let eb = dst.len() / hd;
                    z1.resize(eb * hd, 0.0);
                    let z = &mut z1[..eb * hd];
                    let r = p * hd..(p + 1) * hd;
                    let w0 = &w0[p * n_in * hd..(p + 1) * n_in * hd];
                    for (rr, row) in z.chunks_mut(hd).enumerate() {
                        row.fill(0.0);
                        for i in 0..n_in {
                            let xv = x[(e0 + rr) * n_in + i];
                            for (z, w) in row.iter_mut().zip(&w0[i * hd..(i + 1) * hd]) {
                                *z += xv * w;
                            }
                        }
                    }
                    layer_norm_gelu_rows(z, &b0[r.clone()], &g1[r.clone()], &be1[r.clone()], eps);
                    let w3 = &w3[p * hd * ldw..(p + 1) * hd * ldw];
                    gemm_rows(eb, hd, hd, z, hd, w3, ldw, dst, hd, 0.0);
                    layer_norm_gelu_rows(dst, &b3[r.clone()], &g4[r.clone()], &be4[r], eps);
                });
        }
        drop(m);
        crate::exec::pool::finish(inp, out)
    }
}
