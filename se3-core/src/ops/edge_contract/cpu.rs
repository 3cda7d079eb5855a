//! CPU kernel of [`edge_contract_sum`](super::edge_contract_sum) and
//! [`edge_contract_logits`](super::edge_contract_logits): rayon-parallel over blocks of
//! destination nodes; per block, `Kx` of its edges, the per-node products with the radial
//! hidden values and the last-layer GEMM run on thread-local scratch that stays in cache.
//! Inner products use `matrixmultiply::sgemm` on strided slices of that scratch (no copies of
//! the weights).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::matmul::gemm_single as gemm;
use crate::exec::view::{buffer, View};

/// Which quantity the kernel computes (see the module doc of `edge_contract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractKind {
    /// `y_i = sum_j a_ij m_ij`: inputs `x, nbr, basis, h, a, w, b`; output `[n, cnt, mo]`.
    Sum,
    /// `l_ij = q_i . m_ij`: inputs `x, nbr, basis, h, q, w, b`; output `[n, k]`.
    Logits,
}

/// The fused edge contraction operator (inputs in the order of the graph functions).
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeContract {
    /// Sum or logits.
    pub kind: ContractKind,
    /// Width of the radial hidden layer.
    pub hidden: usize,
}

/// Sizes of one call, read from the input views.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    n: usize,
    k: usize,
    c_in: usize,
    mi: usize,
    mo: usize,
    nf: usize,
    hd: usize,
    cnt: usize,
}

impl Sizes {
    fn cf(&self) -> usize {
        self.c_in * self.nf
    }
    fn width(&self) -> usize {
        self.mo * self.cf()
    }
}

/// Nodes per block: enough rows for the last-layer GEMM, scratch small enough for L2.
fn block_nodes(s: &Sizes) -> usize {
    let per_node = s.width() * s.hd * 4;
    (1_500_000 / per_node.max(1)).clamp(1, 16)
}

/// `Kx` of the edges of node `i`: `kx[kk, p, c, f] = sum_q basis[e, p, q, f] x[j, c, q]`
/// (`j = nbr[e]`, zeros for `-1`).
fn kx_node(s: &Sizes, i: usize, x: &[f32], nbr: &[f32], basis: &[f32], kx: &mut [f32]) {
    let (mi, mo, nf, c_in) = (s.mi, s.mo, s.nf, s.c_in);
    let f_w = s.width();
    let bsz = mo * mi * nf;
    for kk in 0..s.k {
        let e = i * s.k + kk;
        let row = &mut kx[kk * f_w..(kk + 1) * f_w];
        let j = nbr[e];
        if !(j >= 0.0 && (j as usize) < s.n) {
            row.fill(0.0);
            continue;
        }
        let xj = &x[j as usize * c_in * mi..(j as usize + 1) * c_in * mi];
        let b = &basis[e * bsz..(e + 1) * bsz];
        for p in 0..mo {
            for c in 0..c_in {
                let xr = &xj[c * mi..(c + 1) * mi];
                let out = &mut row[(p * c_in + c) * nf..(p * c_in + c + 1) * nf];
                for (f, o) in out.iter_mut().enumerate() {
                    let mut acc = 0.0f32;
                    for (q, xv) in xr.iter().enumerate() {
                        acc += b[(p * mi + q) * nf + f] * xv;
                    }
                    *o = acc;
                }
            }
        }
    }
}

#[derive(Default)]
struct Scratch {
    kx: Vec<f32>,
    big: Vec<f32>,
    small: Vec<f32>,
    rows: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Inputs of one call, as contiguous buffers.
struct Data<'a> {
    x: &'a [f32],
    nbr: &'a [f32],
    basis: &'a [f32],
    h: &'a [f32],
    aq: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
}

/// Weighted sums of one block of nodes `i0..i0 + nb`: `out` is `[nb, cnt, mo]`.
fn sum_block(s: &Sizes, d: &Data, i0: usize, nb: usize, out: &mut [f32], sc: &mut Scratch) {
    let (k, hd, mo, cf, cnt) = (s.k, s.hd, s.mo, s.cf(), s.cnt);
    let fw = s.width();
    let kx = grow(&mut sc.kx, k * fw);
    // acc[b][p][(cf, hd)] = sum_kk a kx[kk][p, cf] h[kk][hd]; bsum[b][p][cf] = sum_kk a kx
    let acc = grow(&mut sc.big, nb * fw * hd);
    let bsum = grow(&mut sc.small, nb * fw);
    for bi in 0..nb {
        let i = i0 + bi;
        kx_node(s, i, d.x, d.nbr, d.basis, kx);
        let a = &d.aq[i * k..(i + 1) * k];
        for (kk, &av) in a.iter().enumerate() {
            kx[kk * fw..(kk + 1) * fw].iter_mut().for_each(|v| *v *= av);
        }
        let bs = &mut bsum[bi * fw..(bi + 1) * fw];
        bs.fill(0.0);
        for kk in 0..k {
            for (o, v) in bs.iter_mut().zip(&kx[kk * fw..(kk + 1) * fw]) {
                *o += v;
            }
        }
        // acc[b] (fw x hd) = (a kx)^T (fw x k) h_i (k x hd)
        let h = &d.h[i * k * hd..(i + 1) * k * hd];
        gemm(
            fw,
            k,
            hd,
            kx,
            (1, fw),
            h,
            (hd, 1),
            &mut acc[bi * fw * hd..(bi + 1) * fw * hd],
            0.0,
        );
    }
    // y[(b, p), o] = acc[(b, p), (cf, hd)] w[(cf, hd), o] + bsum[(b, p), cf] bias[cf, o]
    let rows = grow(&mut sc.rows, nb * mo * cnt);
    gemm(
        nb * mo,
        cf * hd,
        cnt,
        acc,
        (cf * hd, 1),
        d.w,
        (cnt, 1),
        rows,
        0.0,
    );
    gemm(nb * mo, cf, cnt, bsum, (cf, 1), d.b, (cnt, 1), rows, 1.0);
    for bi in 0..nb {
        for p in 0..mo {
            for o in 0..cnt {
                out[(bi * cnt + o) * mo + p] = rows[(bi * mo + p) * cnt + o];
            }
        }
    }
}

/// Logits of one block of nodes `i0..i0 + nb`: `out` is `[nb, k]`.
fn logits_block(s: &Sizes, d: &Data, i0: usize, nb: usize, out: &mut [f32], sc: &mut Scratch) {
    let (k, hd, mo, cf, cnt) = (s.k, s.hd, s.mo, s.cf(), s.cnt);
    let fw = s.width();
    // q rows [(b, p), o]
    let qr = grow(&mut sc.rows, nb * mo * cnt + k * hd);
    for bi in 0..nb {
        let q = &d.aq[(i0 + bi) * cnt * mo..(i0 + bi + 1) * cnt * mo];
        for p in 0..mo {
            for o in 0..cnt {
                qr[(bi * mo + p) * cnt + o] = q[o * mo + p];
            }
        }
    }
    let (qr, g) = qr.split_at_mut(nb * mo * cnt);
    // folded[(b, p), (cf, hd)] = sum_o q[(b, p), o] w[(cf, hd), o]; fb likewise with the bias
    let folded = grow(&mut sc.big, nb * fw * hd);
    gemm(
        nb * mo,
        cnt,
        cf * hd,
        qr,
        (cnt, 1),
        d.w,
        (1, cnt),
        folded,
        0.0,
    );
    let fb = grow(&mut sc.small, nb * fw);
    gemm(nb * mo, cnt, cf, qr, (cnt, 1), d.b, (1, cnt), fb, 0.0);
    let kx = grow(&mut sc.kx, k * fw);
    for bi in 0..nb {
        let i = i0 + bi;
        kx_node(s, i, d.x, d.nbr, d.basis, kx);
        // g (k x hd) = kx (k x fw) folded[b] (fw x hd)
        gemm(
            k,
            fw,
            hd,
            kx,
            (fw, 1),
            &folded[bi * fw * hd..(bi + 1) * fw * hd],
            (hd, 1),
            g,
            0.0,
        );
        let h = &d.h[i * k * hd..(i + 1) * k * hd];
        let fbb = &fb[bi * fw..(bi + 1) * fw];
        for kk in 0..k {
            let main =
                crate::exec::view::dot8(&g[kk * hd..(kk + 1) * hd], &h[kk * hd..(kk + 1) * hd]);
            let bias = crate::exec::view::dot8(&kx[kk * fw..(kk + 1) * fw], fbb);
            out[bi * k + kk] = main + bias;
        }
    }
}

impl Operator for EdgeContract {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
        let mats: Vec<std::borrow::Cow<[f32]>> = inp
            .iter()
            .zip(&views)
            .map(|((t, _), v)| v.borrow_or_copy(buffer(t)))
            .collect();
        let (xs, bs, ws) = (views[0].shape(), views[2].shape(), views[5].shape());
        let (n, c_in, mi) = (xs[0], xs[1], xs[2]);
        let e = bs[0];
        let (mo, nf) = (bs[1], bs[3]);
        let k = e.checked_div(n).unwrap_or(0);
        let cnt = ws.get(1).copied().unwrap_or(0);
        let s = Sizes {
            n,
            k,
            c_in,
            mi,
            mo,
            nf,
            hd: self.hidden,
            cnt,
        };
        let d = Data {
            x: &mats[0],
            nbr: &mats[1],
            basis: &mats[2],
            h: &mats[3],
            aq: &mats[4],
            w: &mats[5],
            b: &mats[6],
        };
        let per_node = match self.kind {
            ContractKind::Sum => cnt * mo,
            ContractKind::Logits => k,
        };
        let mut out = crate::exec::pool::take(n * per_node);
        if per_node > 0 && k > 0 {
            let nb = block_nodes(&s);
            out.par_chunks_mut(nb * per_node).enumerate().for_each_init(
                Scratch::default,
                |sc, (blk, o)| {
                    let i0 = blk * nb;
                    let cnt_here = o.len() / per_node;
                    match self.kind {
                        ContractKind::Sum => sum_block(&s, &d, i0, cnt_here, o, sc),
                        ContractKind::Logits => logits_block(&s, &d, i0, cnt_here, o, sc),
                    }
                },
            );
        }
        drop(mats);
        crate::exec::pool::finish(inp, out)
    }
}
