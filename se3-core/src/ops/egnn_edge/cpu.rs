//! CPU kernel of [`egnn_edge`](super::egnn_edge): per destination node, in cache, its `k`
//! edges in blocks of [`EDGE_BLOCK`] (gather, edge MLP, gate, coordinate weight, sums),
//! parallel over blocks of nodes. The two MLPs of a block are small GEMMs with one register
//! accumulator per edge and weight vector; the kernel is compiled for AVX-512 / AVX2 + FMA as
//! well as the baseline, picked at run time.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::simd::{self, Isa, Simd};
use crate::exec::view::{buffer, View};
use crate::ops::layer_norm_gelu::exp_neg;

/// The weights of the EGNN edge stage, transposed so that every per-edge product runs over a
/// contiguous row (`*_t[input][output]`).
#[derive(Debug, Clone, PartialEq)]
pub struct EgnnEdgeKernel {
    /// Hidden width `H` of the edge MLP.
    pub hidden: usize,
    /// Message width `M`.
    pub m_dim: usize,
    /// Fourier features `F` of the squared distance (`phi(d)` has `2 F + 1` columns).
    pub fourier_features: usize,
    /// `phi(d)` columns of the first edge layer, `(2 F + 1, H)`.
    pub phi_t: Vec<f32>,
    /// Second edge layer `(H, M)` and its bias `(M,)`.
    pub edge_out_t: Vec<f32>,
    pub edge_out_bias: Vec<f32>,
    /// Soft-edge gate `(M,)` and bias, if `soft_edges`.
    pub gate: Option<(Vec<f32>, f32)>,
    /// Coordinate MLP: `(M, 4M)`, `(4M,)`, `(4M,)`, bias; `None` without `update_coors`.
    pub coors: Option<EgnnCoorsWeights>,
    /// Learned scale of unit relative vectors (`norm_coors`).
    pub coors_scale: Option<f32>,
    /// Clamp of the coordinate weights.
    pub clamp: Option<f32>,
    /// Whether the pooled messages are wanted (`update_feats`).
    pub pool_messages: bool,
    /// Whether a per-edge term `(rows k, H)` of the first layer is an extra input.
    pub edge_term: bool,
}

/// The coordinate MLP of the EGNN edge stage, transposed.
#[derive(Debug, Clone, PartialEq)]
pub struct EgnnCoorsWeights {
    /// `(M, 4M)`.
    pub hidden_t: Vec<f32>,
    /// `(4M,)`.
    pub hidden_bias: Vec<f32>,
    /// `(4M,)`.
    pub out: Vec<f32>,
    /// Output bias.
    pub out_bias: f32,
}

/// `sigmoid(x)` without a library call: `t = e^-|x|`, `1 / (1 + t)` or `t / (1 + t)`.
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    let t = exp_neg(-x.abs());
    let s = 1.0 / (1.0 + t);
    if x >= 0.0 {
        s
    } else {
        t * s
    }
}

/// `v <- v sigmoid(v)` (SiLU) over a row, a vector at a time by [`Simd::silu`] (no vector
/// division); the values past the last full vector as [`sigmoid`].
#[inline(always)]
fn silu_in_place<S: Simd>(v: &mut [f32]) {
    let mut vectors = v.chunks_exact_mut(S::W);
    for g in &mut vectors {
        S::store(S::silu(S::load(g, 0)), g, 0);
    }
    for x in vectors.into_remainder() {
        *x *= sigmoid(*x);
    }
}

/// `sum_q x[q] w[q]` over two rows of equal length, a vector at a time.
#[inline(always)]
fn dot<S: Simd>(x: &[f32], w: &[f32]) -> f32 {
    let n = x.len().min(w.len());
    let mut acc = S::zero();
    let mut at = 0;
    while at + S::W <= n {
        acc = S::fmadd(S::load(x, at), S::load(w, at), acc);
        at += S::W;
    }
    let tail: f32 = x[at..n].iter().zip(&w[at..n]).map(|(a, b)| a * b).sum();
    S::sum(acc) + tail
}

/// `y += a * w` over a row.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, w: &[f32]) {
    for (y, w) in y.iter_mut().zip(w) {
        *y += a * w;
    }
}

/// `y = bias + sum_q x[q] w[q]` (rows `w[q]` of width `y.len()`); for the common widths the
/// accumulator is a fixed-size array the compiler keeps in registers.
#[inline(always)]
pub(super) fn affine_rows(y: &mut [f32], bias: &[f32], x: &[f32], w: &[f32]) {
    #[inline(always)]
    fn fixed<const W: usize>(y: &mut [f32], bias: &[f32], x: &[f32], w: &[f32]) {
        let mut acc = [0.0f32; W];
        acc.copy_from_slice(&bias[..W]);
        for (a, row) in x.iter().zip(w.chunks_exact(W)) {
            for (s, v) in acc.iter_mut().zip(row) {
                *s += a * v;
            }
        }
        y[..W].copy_from_slice(&acc);
    }
    match y.len() {
        8 => fixed::<8>(y, bias, x, w),
        16 => fixed::<16>(y, bias, x, w),
        32 => fixed::<32>(y, bias, x, w),
        64 => fixed::<64>(y, bias, x, w),
        width => {
            y.copy_from_slice(bias);
            for (a, row) in x.iter().zip(w.chunks_exact(width.max(1))) {
                axpy(y, *a, row);
            }
        }
    }
}

/// Per-call inputs of the kernel, row-major.
struct Inputs<'a> {
    hi: &'a [f32],
    hj: &'a [f32],
    coors: &'a [f32],
    src: &'a [f32],
    valid: &'a [f32],
    edge_term: Option<&'a [f32]>,
    rows: usize,
    k: usize,
}

/// Edges of one node processed together: the two MLPs of a block run as small GEMMs whose
/// weight rows are loaded once for all its edges, with one independent accumulator an edge.
const EDGE_BLOCK: usize = 8;

/// `y[b][c] = bias[c] + sum_q x[b][q] w[q][c]` for the `B` rows of a block: `x` `(B, Q)`,
/// `w` `(Q, C)` and `y` `(B, C)` row-major. Each output adds its products in increasing `q`,
/// starting from the bias, by fused multiply-adds (as the CUDA kernel's contracted
/// `acc += x * w`); columns past the last full vector add rounded products.
#[inline(always)]
fn block_affine<S: Simd, const B: usize>(y: &mut [f32], bias: &[f32], x: &[f32], w: &[f32]) {
    let width = bias.len();
    if width == 0 {
        return;
    }
    let nq = w.len() / width;
    assert!(
        x.len() >= B * nq,
        "block_affine: {} inputs for {B} x {nq}",
        x.len()
    );
    let xr: [&[f32]; B] = std::array::from_fn(|b| &x[b * nq..(b + 1) * nq]);
    let mut c0 = 0;
    while c0 + S::W <= width {
        let mut acc = [S::load(bias, c0); B];
        for q in 0..nq {
            let wv = S::load(w, q * width + c0);
            for (b, a) in acc.iter_mut().enumerate() {
                // SAFETY: b < B and q < nq, so b nq + q < B nq <= x.len() (asserted above);
                // unchecked because the eight bounds checks a step outnumbered the products
                let xq = unsafe { *x.get_unchecked(b * nq + q) };
                *a = S::fmadd(S::splat(xq), wv, *a);
            }
        }
        for (b, a) in acc.iter().enumerate() {
            S::store(*a, y, b * width + c0);
        }
        c0 += S::W;
    }
    for c in c0..width {
        let mut acc = [bias[c]; B];
        for (q, row) in w.chunks_exact(width).enumerate() {
            for (a, xb) in acc.iter_mut().zip(&xr) {
                *a += xb[q] * row[c];
            }
        }
        for (b, a) in acc.iter().enumerate() {
            y[b * width + c] = *a;
        }
    }
}

/// Nodes `first..first + out.len() / (M + 3)`: their pooled messages and coordinate shifts.
///
/// Every edge's values are computed by the per-edge formula (module doc of `egnn_edge`):
/// blocking only interleaves independent edges, so the results do not depend on
/// [`EDGE_BLOCK`]; the sums over a node's edges run in edge order.
#[inline(always)]
fn nodes_impl<S: Simd>(kern: &EgnnEdgeKernel, inp: &Inputs, first: usize, out: &mut [f32]) {
    const B: usize = EDGE_BLOCK;
    let (h, m_dim, f) = (kern.hidden, kern.m_dim, kern.fourier_features);
    let width = m_dim + 3;
    let four_m = kern.coors.as_ref().map_or(0, |c| c.out.len());
    // block inputs and outputs, one row an edge
    let mut pre = vec![0.0f32; B * h];
    let mut m = vec![0.0f32; B * m_dim];
    let mut c = vec![0.0f32; B * four_m];
    let mut rel = [[0.0f32; 3]; B];
    let mut dist = [0.0f32; B];
    for (r, o) in out.chunks_mut(width).enumerate() {
        let i = first + r;
        o.fill(0.0);
        let xi = &inp.coors[i * 3..i * 3 + 3];
        let hi = &inp.hi[i * h..(i + 1) * h];
        let mut e0 = 0;
        while e0 < inp.k {
            let nb = B.min(inp.k - e0);
            for (b, pre) in pre.chunks_exact_mut(h.max(1)).enumerate() {
                if b >= nb {
                    // padding edges of the last block: finite inputs, results unused
                    pre.fill(0.0);
                    continue;
                }
                let edge = i * inp.k + e0 + b;
                let jf = inp.src[edge];
                let j = (jf >= 0.0 && (jf as usize) < inp.rows).then_some(jf as usize);
                let xj = j.map_or([0.0; 3], |j| {
                    [inp.coors[j * 3], inp.coors[j * 3 + 1], inp.coors[j * 3 + 2]]
                });
                let rl = [xi[0] - xj[0], xi[1] - xj[1], xi[2] - xj[2]];
                let d = rl[0] * rl[0] + rl[1] * rl[1] + rl[2] * rl[2];
                (rel[b], dist[b]) = (rl, d);
                // a_i + b_j + d w_d in one pass, then the other terms
                let wd = &kern.phi_t[2 * f * h..(2 * f + 1) * h];
                match j {
                    Some(j) => {
                        let hj = &inp.hj[j * h..(j + 1) * h];
                        for (((p, a), b), w) in pre.iter_mut().zip(hi).zip(hj).zip(wd) {
                            *p = a + b + d * w;
                        }
                    }
                    None => {
                        for ((p, a), w) in pre.iter_mut().zip(hi).zip(wd) {
                            *p = a + d * w;
                        }
                    }
                }
                if let Some(t) = inp.edge_term {
                    for (p, v) in pre.iter_mut().zip(&t[edge * h..(edge + 1) * h]) {
                        *p += v;
                    }
                }
                let mut scale = 1.0f32;
                for q in 0..f {
                    let (sn, cs) = (d * scale).sin_cos();
                    axpy(pre, sn, &kern.phi_t[q * h..(q + 1) * h]);
                    axpy(pre, cs, &kern.phi_t[(f + q) * h..(f + q + 1) * h]);
                    scale *= 0.5;
                }
            }
            silu_in_place::<S>(&mut pre);
            block_affine::<S, B>(&mut m, &kern.edge_out_bias, &pre, &kern.edge_out_t);
            silu_in_place::<S>(&mut m);
            if let Some((wg, bg)) = &kern.gate {
                let mut s = [0.0f32; B];
                for (q, &wq) in wg.iter().enumerate() {
                    for (b, sb) in s.iter_mut().enumerate() {
                        *sb += m[b * m_dim + q] * wq;
                    }
                }
                for (b, mb) in m.chunks_exact_mut(m_dim.max(1)).enumerate() {
                    let g = sigmoid(bg + s[b]);
                    for v in mb.iter_mut() {
                        *v *= g;
                    }
                }
            }
            let mut wsum = [0.0f32; B];
            if let Some(cw) = &kern.coors {
                block_affine::<S, B>(&mut c, &cw.hidden_bias, &m, &cw.hidden_t);
                silu_in_place::<S>(&mut c);
                for (ws, cb) in wsum.iter_mut().zip(c.chunks_exact(four_m.max(1))) {
                    *ws = cw.out_bias + dot::<S>(cb, &cw.out);
                }
            }
            for b in 0..nb {
                let edge = i * inp.k + e0 + b;
                let valid = inp.valid[edge];
                if kern.pool_messages {
                    axpy(&mut o[..m_dim], valid, &m[b * m_dim..(b + 1) * m_dim]);
                }
                if kern.coors.is_some() {
                    let mut w = wsum[b] * valid;
                    if let Some(cl) = kern.clamp {
                        w = w.max(-cl).min(cl);
                    }
                    if let Some(sc) = kern.coors_scale {
                        w *= sc / dist[b].sqrt().max(1e-8);
                    }
                    for a in 0..3 {
                        o[m_dim + a] += w * rel[b][a];
                    }
                }
            }
            e0 += nb;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn nodes_avx512(kern: &EgnnEdgeKernel, inp: &Inputs, first: usize, out: &mut [f32]) {
    nodes_impl::<simd::x86::Avx512>(kern, inp, first, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn nodes_avx2(kern: &EgnnEdgeKernel, inp: &Inputs, first: usize, out: &mut [f32]) {
    nodes_impl::<simd::x86::Avx2>(kern, inp, first, out);
}

/// Nodes per parallel task.
const NODES_PER_TASK: usize = 8;

impl Operator for EgnnEdgeKernel {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let read = |i: usize| View::new(&inp[i].1, &empty).materialize(buffer(&inp[i].0));
        let valid_view = View::new(&inp[4].1, &empty);
        let vshape = valid_view.shape();
        let (rows, k) = (
            vshape.first().copied().unwrap_or(0),
            vshape.get(1).copied().unwrap_or(0),
        );
        let (hi, hj, coors, src, valid) = (read(0), read(1), read(2), read(3), read(4));
        let edge_term = self.edge_term.then(|| read(5));
        let inputs = Inputs {
            hi: &hi,
            hj: &hj,
            coors: &coors,
            src: &src,
            valid: &valid,
            edge_term: edge_term.as_deref(),
            rows,
            k,
        };
        let width = self.m_dim + 3;
        let mut out = crate::exec::pool::take(rows * width);
        let kern = &*self;
        let isa = simd::isa();
        out.par_chunks_mut(width * NODES_PER_TASK)
            .enumerate()
            .for_each(|(t, o)| {
                let first = t * NODES_PER_TASK;
                match isa {
                    // SAFETY: `simd::isa()` detected these features on this CPU.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { nodes_avx512(kern, &inputs, first, o) },
                    // SAFETY: as above.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => unsafe { nodes_avx2(kern, &inputs, first, o) },
                    Isa::Plain => nodes_impl::<simd::Plain>(kern, &inputs, first, o),
                }
            });
        drop((hi, hj, coors, src, valid, edge_term));
        crate::exec::pool::finish(inp, out)
    }
}
