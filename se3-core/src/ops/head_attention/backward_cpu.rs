//! CPU kernel of the vector-Jacobian product of [`head_attention`](super::head_attention):
//! one fused operator per input gradient (`dq`, `dk` or `dv`), recomputing the attention
//! weights block by block of query rows as the forward does, so neither the `(heads, n, n)`
//! weights nor their gradients exist whole on the graph or in memory.
//!
//! Per batch element and head, with `Q`, `K`, `V`, `G = ∂L/∂O` the `(n, c dh)` head matrices,
//! `α = s` (dot logits) or `2 s` (L2 logits) and, per block of query rows,
//! `A = softmax(L)` (masked keys 0), `dA = G Vᵀ`, `r_i = Σ_j A_ij dA_ij`,
//! `dL = A ⊙ (dA - r)`:
//! - `dV += Aᵀ G`;
//! - `dQ = α dL K` (L2 logits: `- 2 q_i Σ_j dL_ij`, zero up to rounding since the rows of
//!   `dL` sum to 0, kept for exactness);
//! - `dK += α dLᵀ Q` (L2 logits: `- 2 k_j Σ_i dL_ij`).
//!
//! A batch element whose keys are all masked has weights independent of `q` and `k`: uniform
//! (`dV_j = Σ_i g_i / n`) or zero outputs with `zero_if_all_masked` (all gradients 0).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use super::cpu::{gemm, pack_heads, softmax_rows, HeadAttention, ROWS};
use super::HeadLogits;
use crate::exec::view::{buffer, View};

/// Which input of [`HeadAttention`] a [`HeadAttentionGrad`] node differentiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionInput {
    /// The queries `q`.
    Query,
    /// The keys `k`.
    Key,
    /// The values `v`.
    Value,
}

/// The gradient of one input of a [`HeadAttention`] node: inputs `q`, `k`, `v` (the forward's
/// views), `mask` `(b, n)` and `g` `(b, n, c, heads * dh)` (the output's gradient, row-major);
/// output the gradient of the chosen input's view, `(b, n, c, heads * dh)` row-major.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadAttentionGrad {
    /// The forward operator.
    pub forward: HeadAttention,
    /// The input differentiated.
    pub wrt: AttentionInput,
}

/// `c (m, n) += alpha a (m, k) b (k, n)` with row/column strides.
#[allow(clippy::too_many_arguments)]
fn gemm_acc(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: &[f32],
    (rsa, csa): (isize, isize),
    b: &[f32],
    (rsb, csb): (isize, isize),
    c: &mut [f32],
) {
    debug_assert!(c.len() >= m * n);
    // SAFETY: as `cpu::gemm`: callers pass slices holding exactly the strided matrices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            1.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Head matrices of one (batch element, head): `(n, d)` row-major each.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    g: &'a [f32],
    keep: &'a [bool],
}

impl HeadAttentionGrad {
    /// The packed `(n, d)` gradient of one head.
    fn head_gradient(&self, h: &Head<'_>, n: usize, d: usize) -> Vec<f32> {
        let f = &self.forward;
        let mut out = vec![0.0f32; n * d];
        let any = h.keep.iter().any(|&k| k);
        if !any {
            if !f.zero_if_all_masked && self.wrt == AttentionInput::Value {
                // uniform weights: every value row receives the mean of the output gradients
                let inv = 1.0 / n as f32;
                let mut mean = vec![0.0f32; d];
                for row in h.g.chunks(d) {
                    for (m, x) in mean.iter_mut().zip(row) {
                        *m += x * inv;
                    }
                }
                for row in out.chunks_mut(d) {
                    row.copy_from_slice(&mean);
                }
            }
            return out;
        }
        let l2 = f.logits == HeadLogits::L2Distance;
        let alpha = if l2 { 2.0 * f.scale } else { f.scale };
        let sq = |x: &[f32]| -> Vec<f32> {
            x.chunks(d).map(|r| r.iter().map(|v| v * v).sum()).collect()
        };
        let (qq, kk) = if l2 {
            (sq(h.q), sq(h.k))
        } else {
            (Vec::new(), Vec::new())
        };
        let mut col_sums = vec![0.0f32; n];
        for i0 in (0..n).step_by(ROWS) {
            let rows = ROWS.min(n - i0);
            let qb = &h.q[i0 * d..(i0 + rows) * d];
            let gb = &h.g[i0 * d..(i0 + rows) * d];
            let mut a = vec![0.0f32; rows * n];
            gemm(
                (rows, d, n),
                alpha,
                qb,
                (d as isize, 1),
                h.k,
                (1, d as isize),
                &mut a,
            );
            if l2 {
                for (r, row) in a.chunks_mut(n).enumerate() {
                    let qi = qq[i0 + r];
                    for (x, kj) in row.iter_mut().zip(&kk) {
                        *x -= qi + kj;
                    }
                }
            }
            softmax_rows(&mut a, n, h.keep);
            if self.wrt == AttentionInput::Value {
                // dV (n, d) += Aᵀ (n, rows) G_blk (rows, d)
                gemm_acc(
                    (n, rows, d),
                    1.0,
                    &a,
                    (1, n as isize),
                    gb,
                    (d as isize, 1),
                    &mut out,
                );
                continue;
            }
            // dA = G_blk Vᵀ, then dL = A ⊙ (dA - rowsum(A ⊙ dA)) in place
            let mut dl = vec![0.0f32; rows * n];
            gemm(
                (rows, d, n),
                1.0,
                gb,
                (d as isize, 1),
                h.v,
                (1, d as isize),
                &mut dl,
            );
            for (arow, drow) in a.chunks(n).zip(dl.chunks_mut(n)) {
                let r: f32 = arow.iter().zip(drow.iter()).map(|(x, y)| x * y).sum();
                for (x, y) in arow.iter().zip(drow.iter_mut()) {
                    *y = x * (*y - r);
                }
            }
            match self.wrt {
                AttentionInput::Query => {
                    let ob = &mut out[i0 * d..(i0 + rows) * d];
                    gemm_acc(
                        (rows, n, d),
                        alpha,
                        &dl,
                        (n as isize, 1),
                        h.k,
                        (d as isize, 1),
                        ob,
                    );
                    if l2 {
                        for (r, (orow, drow)) in ob.chunks_mut(d).zip(dl.chunks(n)).enumerate() {
                            let t = -2.0 * drow.iter().sum::<f32>();
                            let qi = &qb[r * d..(r + 1) * d];
                            for (o, x) in orow.iter_mut().zip(qi) {
                                *o += t * x;
                            }
                        }
                    }
                }
                _ => {
                    // dK (n, d) += α dLᵀ (n, rows) Q_blk (rows, d)
                    gemm_acc(
                        (n, rows, d),
                        alpha,
                        &dl,
                        (1, n as isize),
                        qb,
                        (d as isize, 1),
                        &mut out,
                    );
                    if l2 {
                        for drow in dl.chunks(n) {
                            for (c, x) in col_sums.iter_mut().zip(drow) {
                                *c += x;
                            }
                        }
                    }
                }
            }
        }
        if l2 && self.wrt == AttentionInput::Key {
            for (j, orow) in out.chunks_mut(d).enumerate() {
                let t = -2.0 * col_sums[j];
                for (o, x) in orow.iter_mut().zip(&h.k[j * d..(j + 1) * d]) {
                    *o += t * x;
                }
            }
        }
        out
    }
}

impl Operator for HeadAttentionGrad {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let qv = View::new(&inp[0].1, &empty);
        let shape = qv.shape();
        let (b, n, c, w) = (shape[0], shape[1], shape[2], shape[3]);
        let heads = self.forward.heads.max(1);
        let dh = w / heads;
        let d = c * dh;
        let pack = |i: usize| {
            let x = View::new(&inp[i].1, &empty).materialize(buffer(&inp[i].0));
            pack_heads(&x, n, c, heads, dh)
        };
        let (q, k, v, g) = (pack(0), pack(1), pack(2), pack(4));
        let mask = View::new(&inp[3].1, &empty).materialize(buffer(&inp[3].0));
        let keep: Vec<bool> = mask.iter().map(|&m| m != 0.0).collect();
        let op = *self;
        let grads: Vec<Vec<f32>> = (0..b * heads)
            .into_par_iter()
            .map(|bh| {
                let bi = bh / heads;
                let r = bh * n * d..(bh + 1) * n * d;
                let head = Head {
                    q: &q[r.clone()],
                    k: &k[r.clone()],
                    v: &v[r.clone()],
                    g: &g[r],
                    keep: &keep[bi * n..(bi + 1) * n],
                };
                op.head_gradient(&head, n, d)
            })
            .collect();
        for packed in [q, k, v, g] {
            crate::exec::pool::give(packed);
        }
        let mut out = crate::exec::pool::take(b * n * c * w);
        for (bh, packed) in grads.iter().enumerate() {
            let (bi, h) = (bh / heads, bh % heads);
            for j in 0..n {
                for cc in 0..c {
                    let to = ((bi * n + j) * c + cc) * w + h * dh;
                    let from = (j * c + cc) * dh;
                    out[to..to + dh].copy_from_slice(&packed[from..from + dh]);
                }
            }
        }
        drop(mask);
        crate::exec::pool::finish(inp, out)
    }
}
