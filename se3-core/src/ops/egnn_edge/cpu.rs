//! CPU kernel of [`egnn_edge`](super::egnn_edge): per destination node, in cache, its `k`
//! edges one after another (gather, edge MLP, gate, coordinate weight, sums), parallel over
//! blocks of nodes. The per-edge loops run over contiguous weight rows, so they vectorise;
//! the kernel is compiled for AVX-512 / AVX2 + FMA as well as the baseline, picked at run time.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::simd::{self, Isa};
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

/// `v <- v sigmoid(v)` (SiLU) over a row, as a pass of its own so that it vectorises.
#[inline(always)]
fn silu_in_place(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x *= sigmoid(*x);
    }
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

/// Nodes `first..first + out.len() / (M + 3)`: their pooled messages and coordinate shifts.
#[inline(always)]
fn nodes_impl(kern: &EgnnEdgeKernel, inp: &Inputs, first: usize, out: &mut [f32]) {
    let (h, m_dim, f) = (kern.hidden, kern.m_dim, kern.fourier_features);
    let width = m_dim + 3;
    let mut pre = vec![0.0f32; h];
    let mut m = vec![0.0f32; m_dim];
    let four_m = kern.coors.as_ref().map_or(0, |c| c.out.len());
    let mut c = vec![0.0f32; four_m];
    for (r, o) in out.chunks_mut(width).enumerate() {
        let i = first + r;
        o.fill(0.0);
        let xi = &inp.coors[i * 3..i * 3 + 3];
        let hi = &inp.hi[i * h..(i + 1) * h];
        for e in 0..inp.k {
            let edge = i * inp.k + e;
            let jf = inp.src[edge];
            let j = (jf >= 0.0 && (jf as usize) < inp.rows).then_some(jf as usize);
            let xj = j.map_or([0.0; 3], |j| {
                [inp.coors[j * 3], inp.coors[j * 3 + 1], inp.coors[j * 3 + 2]]
            });
            let rel = [xi[0] - xj[0], xi[1] - xj[1], xi[2] - xj[2]];
            let d = rel[0] * rel[0] + rel[1] * rel[1] + rel[2] * rel[2];
            pre.copy_from_slice(hi);
            if let Some(j) = j {
                for (p, v) in pre.iter_mut().zip(&inp.hj[j * h..(j + 1) * h]) {
                    *p += v;
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
                axpy(&mut pre, sn, &kern.phi_t[q * h..(q + 1) * h]);
                axpy(&mut pre, cs, &kern.phi_t[(f + q) * h..(f + q + 1) * h]);
                scale *= 0.5;
            }
            axpy(&mut pre, d, &kern.phi_t[2 * f * h..(2 * f + 1) * h]);
            silu_in_place(&mut pre);
            affine_rows(&mut m, &kern.edge_out_bias, &pre, &kern.edge_out_t);
            silu_in_place(&mut m);
            if let Some((wg, bg)) = &kern.gate {
                let g = sigmoid(bg + m.iter().zip(wg).map(|(a, b)| a * b).sum::<f32>());
                for v in m.iter_mut() {
                    *v *= g;
                }
            }
            let valid = inp.valid[edge];
            if kern.pool_messages {
                axpy(&mut o[..m_dim], valid, &m);
            }
            if let Some(cw) = &kern.coors {
                affine_rows(&mut c, &cw.hidden_bias, &m, &cw.hidden_t);
                silu_in_place(&mut c);
                let mut w = cw.out_bias;
                for (a, b) in c.iter().zip(&cw.out) {
                    w += a * b;
                }
                w *= valid;
                if let Some(cl) = kern.clamp {
                    w = w.max(-cl).min(cl);
                }
                if let Some(sc) = kern.coors_scale {
                    w *= sc / d.sqrt().max(1e-8);
                }
                for a in 0..3 {
                    o[m_dim + a] += w * rel[a];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn nodes_avx512(kern: &EgnnEdgeKernel, inp: &Inputs, first: usize, out: &mut [f32]) {
    nodes_impl(kern, inp, first, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn nodes_avx2(kern: &EgnnEdgeKernel, inp: &Inputs, first: usize, out: &mut [f32]) {
    nodes_impl(kern, inp, first, out);
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
                    Isa::Plain => nodes_impl(kern, &inputs, first, o),
                }
            });
        crate::exec::pool::finish(inp, out)
    }
}
