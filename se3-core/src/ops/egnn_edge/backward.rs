//! Vector-Jacobian product of [`egnn_edge`](super::egnn_edge()) with respect to its tensor
//! inputs (`a = dst_term`, `b = src_term`, coordinates, the per-edge term `t`); the weights
//! are part of the operator, so their gradients come from the unfused layer
//! ([`EgnnPath::Unfused`](crate::layers::EgnnPath)).
//!
//! One fused kernel ([`EgnnEdgeBackward`]) re-runs each node's edges in cache, as the forward
//! does, and takes the chain rule back through them. With `g = [g_m, g_x]` the gradient of the
//! node's output row, per edge (notation of the module doc of `egnn_edge`, `σ` the sigmoid,
//! `SiLU'(u) = σ(u) (1 + u (1 - σ(u)))`):
//!
//! ```text
//! w = clamp(v w0) s ι       (ι = 1 / max(|r|, 1e-8) with norm_coors, 0 for r = 0; else s ι = 1)
//! δr   = w g_x,  δw = g_x . r,  δ(clamp) = δw s ι,  δw0 = v δ(clamp) [inside the clamp]
//! δc   = δw0 w4 ⊙ SiLU'(c_pre),   δm = W3ᵀ δc + v g_m
//! gate γ = σ(u): δm0 = γ δm + (δm . m0) γ (1 - γ) w_g
//! δz   = δm0 ⊙ SiLU'(z),  δpre = W2ᵀ δz ⊙ SiLU'(pre)
//! δd   = δpre . φ'(d) - δw w2 s ι³ / 2   (φ'(d) = [cos(d/2^f)/2^f, -sin(d/2^f)/2^f, 1] of W_phi)
//! δr  += 2 δd r
//! ```
//!
//! and `δa_i = Σ_e δpre_e`, `δx_i = Σ_e δr_e`, `δb_j = Σ_{e: src e = j} δpre_e`,
//! `δx_j = -Σ_{e: src e = j} δr_e`, `δt_e = δpre_e`. The kernel writes `[δpre_e, δr_e]` for
//! every edge and `[δa_i, δx_i]` for every node (one buffer `(R k + R, H + 3)`); the scatters
//! to the neighbours are [`scatter_add`](crate::ops::scatter_add()) ops (the per-edge rows are
//! the only per-edge tensor, as wide as the edge-feature input `t` itself).
//! A self edge (`r = 0`) has no direction: its unit vector's derivative is taken as 0 (the
//! unfused layer does the same; the `1e8` of the clamp would cancel only in exact arithmetic).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::{symbolic::Expression, *};
use rayon::prelude::*;

use super::cpu::{affine_rows, sigmoid};
use super::EgnnEdgeKernel;
use crate::autodiff::emit::{add, copy, dims, plain, scale, Tensor};
use crate::exec::view::{buffer, View};
use crate::ops::scatter_add::ScatterAdd;
use crate::ops::size_view;

/// The backward kernel of [`egnn_edge`](super::egnn_edge()): inputs as the forward's, then the
/// gradient `(R, M + 3)` of its output; output `(R k + R, H + 3)` (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct EgnnEdgeBackward(pub EgnnEdgeKernel);

fn silu_grad(u: f32) -> f32 {
    let s = sigmoid(u);
    s * (1.0 + u * (1.0 - s))
}

/// Per-call inputs, row-major.
struct Inputs<'a> {
    hi: &'a [f32],
    hj: &'a [f32],
    coors: &'a [f32],
    src: &'a [f32],
    valid: &'a [f32],
    edge_term: Option<&'a [f32]>,
    grad: &'a [f32],
    rows: usize,
    k: usize,
}

/// Node `i`: its edges' rows `[δpre, δr]` into `edge_out` (`k (H + 3)`) and its own row
/// `[δa, δx]` into `node_out` (`H + 3`).
fn node_backward(
    kern: &EgnnEdgeKernel,
    inp: &Inputs,
    i: usize,
    edge_out: &mut [f32],
    node_out: &mut [f32],
) {
    let (h, m_dim, f) = (kern.hidden, kern.m_dim, kern.fourier_features);
    let width = h + 3;
    let four_m = kern.coors.as_ref().map_or(0, |c| c.out.len());
    let (mut pre, mut hid, mut z, mut m0, mut m) = (
        vec![0.0f32; h],
        vec![0.0f32; h],
        vec![0.0f32; m_dim],
        vec![0.0f32; m_dim],
        vec![0.0f32; m_dim],
    );
    let (mut c_pre, mut dc) = (vec![0.0f32; four_m], vec![0.0f32; four_m]);
    let (mut dm, mut dz, mut dh) = (vec![0.0f32; m_dim], vec![0.0f32; m_dim], vec![0.0f32; h]);
    edge_out.fill(0.0);
    node_out.fill(0.0);
    let xi = &inp.coors[i * 3..i * 3 + 3];
    let g_m = &inp.grad[i * (m_dim + 3)..i * (m_dim + 3) + m_dim];
    let g_x = &inp.grad[i * (m_dim + 3) + m_dim..(i + 1) * (m_dim + 3)];
    for e in 0..inp.k {
        let edge = i * inp.k + e;
        let jf = inp.src[edge];
        let j = (jf >= 0.0 && (jf as usize) < inp.rows).then_some(jf as usize);
        let xj = j.map_or([0.0; 3], |j| {
            [inp.coors[j * 3], inp.coors[j * 3 + 1], inp.coors[j * 3 + 2]]
        });
        let rel = [xi[0] - xj[0], xi[1] - xj[1], xi[2] - xj[2]];
        let d = rel[0] * rel[0] + rel[1] * rel[1] + rel[2] * rel[2];
        // forward, keeping what the backward reads
        pre.copy_from_slice(&inp.hi[i * h..(i + 1) * h]);
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
        let mut sc = 1.0f32;
        for q in 0..f {
            let (sn, cs) = (d * sc).sin_cos();
            let (ws, wc) = (
                &kern.phi_t[q * h..(q + 1) * h],
                &kern.phi_t[(f + q) * h..(f + q + 1) * h],
            );
            for ((p, a), b) in pre.iter_mut().zip(ws).zip(wc) {
                *p += sn * a + cs * b;
            }
            sc *= 0.5;
        }
        for (p, w) in pre.iter_mut().zip(&kern.phi_t[2 * f * h..(2 * f + 1) * h]) {
            *p += d * w;
        }
        for (o, &u) in hid.iter_mut().zip(&pre) {
            *o = u * sigmoid(u);
        }
        affine_rows(&mut z, &kern.edge_out_bias, &hid, &kern.edge_out_t);
        for (o, &u) in m0.iter_mut().zip(&z) {
            *o = u * sigmoid(u);
        }
        let gamma = kern
            .gate
            .as_ref()
            .map(|(wg, bg)| sigmoid(bg + m0.iter().zip(wg).map(|(a, b)| a * b).sum::<f32>()));
        for (o, &u) in m.iter_mut().zip(&m0) {
            *o = gamma.map_or(u, |g| g * u);
        }
        let valid = inp.valid[edge];
        // backward
        let mut d_rel = [0.0f32; 3];
        let mut d_d = 0.0f32;
        for (o, &g) in dm.iter_mut().zip(g_m) {
            *o = if kern.pool_messages { valid * g } else { 0.0 };
        }
        if let Some(cw) = &kern.coors {
            affine_rows(&mut c_pre, &cw.hidden_bias, &m, &cw.hidden_t);
            let mut w0 = cw.out_bias;
            for (a, b) in c_pre.iter().zip(&cw.out) {
                w0 += a * sigmoid(*a) * b;
            }
            let w1 = w0 * valid;
            let w2 = kern.clamp.map_or(w1, |c| w1.max(-c).min(c));
            let inside = kern.clamp.is_none_or(|c| (-c..=c).contains(&w1));
            let (factor, iota) = match kern.coors_scale {
                Some(s) => {
                    let iota = if d > 0.0 {
                        1.0 / d.sqrt().max(1e-8)
                    } else {
                        0.0
                    };
                    (s * iota, iota)
                }
                None => (1.0, 0.0),
            };
            let w = w2 * factor;
            let d_w = g_x[0] * rel[0] + g_x[1] * rel[1] + g_x[2] * rel[2];
            for a in 0..3 {
                d_rel[a] += w * g_x[a];
            }
            if let Some(s) = kern.coors_scale {
                // ι = d^(-1/2) where |r| > 1e-8: dι/dd = -ι³ / 2
                if d.sqrt() > 1e-8 {
                    d_d -= d_w * w2 * s * iota * iota * iota * 0.5;
                }
            }
            let d_w0 = if inside { d_w * factor * valid } else { 0.0 };
            for ((o, &u), &w4) in dc.iter_mut().zip(&c_pre).zip(&cw.out) {
                *o = d_w0 * w4 * silu_grad(u);
            }
            // δm += W3ᵀ δc: hidden_t is (M, 4M)
            for (q, o) in dm.iter_mut().enumerate() {
                let row = &cw.hidden_t[q * four_m..(q + 1) * four_m];
                *o += row.iter().zip(&dc).map(|(a, b)| a * b).sum::<f32>();
            }
        }
        match (&kern.gate, gamma) {
            (Some((wg, _)), Some(g)) => {
                let du = dm.iter().zip(&m0).map(|(a, b)| a * b).sum::<f32>() * g * (1.0 - g);
                for ((o, &dmv), &w) in dz.iter_mut().zip(&dm).zip(wg) {
                    *o = g * dmv + du * w;
                }
            }
            _ => dz.copy_from_slice(&dm),
        }
        for (o, &u) in dz.iter_mut().zip(&z) {
            *o *= silu_grad(u);
        }
        // δh = W2ᵀ δz: edge_out_t is (H, M)
        for (p, o) in dh.iter_mut().enumerate() {
            let row = &kern.edge_out_t[p * m_dim..(p + 1) * m_dim];
            *o = row.iter().zip(&dz).map(|(a, b)| a * b).sum::<f32>() * silu_grad(pre[p]);
        }
        let mut sc = 1.0f32;
        for q in 0..f {
            let (sn, cs) = (d * sc).sin_cos();
            let (ws, wc) = (
                &kern.phi_t[q * h..(q + 1) * h],
                &kern.phi_t[(f + q) * h..(f + q + 1) * h],
            );
            for ((g, a), b) in dh.iter().zip(ws).zip(wc) {
                d_d += g * sc * (cs * a - sn * b);
            }
            sc *= 0.5;
        }
        for (g, w) in dh.iter().zip(&kern.phi_t[2 * f * h..(2 * f + 1) * h]) {
            d_d += g * w;
        }
        for a in 0..3 {
            d_rel[a] += 2.0 * d_d * rel[a];
        }
        let row = &mut edge_out[e * width..(e + 1) * width];
        row[..h].copy_from_slice(&dh);
        row[h..].copy_from_slice(&d_rel);
        for (o, v) in node_out[..h].iter_mut().zip(&dh) {
            *o += v;
        }
        for a in 0..3 {
            node_out[h + a] += d_rel[a];
        }
    }
}

impl Operator for EgnnEdgeBackward {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<luminal::prelude::Tensor> {
        let kern = &self.0;
        let empty = Default::default();
        let read = |i: usize| View::new(&inp[i].1, &empty).materialize(buffer(&inp[i].0));
        let vshape = View::new(&inp[4].1, &empty).shape();
        let (rows, k) = (
            vshape.first().copied().unwrap_or(0),
            vshape.get(1).copied().unwrap_or(0),
        );
        let (hi, hj, coors, src, valid) = (read(0), read(1), read(2), read(3), read(4));
        let edge_term = kern.edge_term.then(|| read(5));
        let grad = read(if kern.edge_term { 6 } else { 5 });
        let inputs = Inputs {
            hi: &hi,
            hj: &hj,
            coors: &coors,
            src: &src,
            valid: &valid,
            edge_term: edge_term.as_deref(),
            grad: &grad,
            rows,
            k,
        };
        let width = kern.hidden + 3;
        let mut out = crate::exec::pool::take((rows * k + rows) * width);
        let (edges, nodes) = out.split_at_mut(rows * k * width);
        edges
            .par_chunks_mut((k * width).max(1))
            .zip(nodes.par_chunks_mut(width))
            .enumerate()
            .for_each(|(i, (e, n))| node_backward(kern, &inputs, i, e, n));
        drop((hi, hj, coors, src, valid, edge_term, grad));
        crate::exec::pool::finish(inp, out)
    }
}

/// Rows `r0..r1`, columns `c0..c1` of the plain `(rows, cols)` tensor `t`, as a new buffer.
fn block(t: Tensor, r: (Expression, Expression), c: (usize, usize)) -> Tensor {
    let mut v = t;
    v.shape
        .slice(&[(r.0, r.1), (Expression::from(c.0), Expression::from(c.1))]);
    copy(v)
}

/// `Σ_{e: idx e = n} src_e` into `rows` rows (`-1` indices skipped).
fn scatter(src: Tensor, idx: Tensor, rows: Expression) -> Tensor {
    let width = dims(&src)[1];
    let id = src
        .graph()
        .add_op(ScatterAdd)
        .input(src.id, 0, src.shape)
        .input(idx.id, 0, idx.shape)
        .input(idx.id, 0, size_view(&[rows]))
        .finish();
    plain(id, &[rows, width], src.graph_ref)
}

/// Gradients of the views `[dst_term, src_term, coors, src, valid, (edge_term)]` of an
/// [`EgnnEdgeKernel`] node from its gradient buffer `g_id` (indices and validity: none).
pub(crate) fn vjp(
    kernel: &EgnnEdgeKernel,
    inputs: &[Tensor],
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let (a, coors, src) = (inputs[0], inputs[2], inputs[3]);
    let gref = a.graph_ref;
    let rows = dims(&coors)[0];
    let edges = dims(&src)[0];
    let g = plain(g_id, &[rows, (kernel.m_dim + 3).into()], gref);
    let mut op = a.graph().add_op(EgnnEdgeBackward(kernel.clone()));
    for t in inputs {
        op = op.input(t.id, 0, t.shape);
    }
    let id = op.input(g.id, 0, g.shape).finish();
    let h = kernel.hidden;
    let out = plain(id, &[edges + rows, (h + 3).into()], gref);
    let d_pre = || block(out, (0.into(), edges), (0, h));
    let d_a = wanted[0].then(|| block(out, (edges, edges + rows), (0, h)));
    let d_b = wanted[1].then(|| scatter(d_pre(), src, rows));
    let d_x = wanted[2].then(|| {
        let own = block(out, (edges, edges + rows), (h, h + 3));
        let sent = scatter(block(out, (0.into(), edges), (h, h + 3)), src, rows);
        add(own, scale(sent, -1.0))
    });
    let mut grads = vec![d_a, d_b, d_x, None, None];
    if kernel.edge_term {
        grads.push(wanted.get(5).copied().unwrap_or(false).then(d_pre));
    }
    grads
}
