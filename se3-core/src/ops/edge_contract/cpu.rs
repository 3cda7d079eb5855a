//! CPU kernel of [`edge_contract_sum`](super::edge_contract_sum) and
//! [`edge_contract_logits`](super::edge_contract_logits): rayon-parallel over blocks of
//! destination nodes; per block, `Kx` of its edges, the per-node products with the radial
//! hidden values and the last-layer GEMM run on thread-local scratch that stays in cache.
//! Inner products use `matrixmultiply::sgemm` on strided slices of that scratch (no copies of
//! the weights).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::matmul::{gemm_rows, gemm_single as gemm};
use crate::exec::view::{buffer, dot8, View};

/// Which quantity the kernel computes (see the module doc of `edge_contract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractKind {
    /// `y_i = sum_j a_ij m_ij` per head: inputs `x, nbr, basis, h, w, b, a_0 .. a_{H-1}`;
    /// output `[n, H cnt, mo]`.
    Sum,
    /// `l_ij = q_i . m_ij` per head: inputs `x, nbr, basis, h, w, b, q_0 .. q_{H-1}`; output
    /// `[H, n, k]`.
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
    /// Output channels per head.
    cnt: usize,
    heads: usize,
}

impl Sizes {
    fn cf(&self) -> usize {
        self.c_in * self.nf
    }
    fn width(&self) -> usize {
        self.mo * self.cf()
    }
    /// Columns of `w` and `b`.
    fn cols(&self) -> usize {
        self.cnt * self.heads
    }
}

/// Nodes per block: 16 (so that `16 mo` rows fill whole GEMM tiles) unless the per-head
/// scratch `[nodes, F, hidden]` would pass 4 MiB.
fn block_nodes(s: &Sizes) -> usize {
    let per_node = s.width() * s.hd * 4;
    let mut nb = 16;
    while nb > 1 && nb * per_node > 4 << 20 {
        nb /= 2;
    }
    nb
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

/// Inputs of one call, as contiguous buffers; `per_head` holds `a_h [n, k]` or
/// `q_h [n, cnt, mo]`.
struct Data<'a> {
    x: &'a [f32],
    nbr: &'a [f32],
    basis: &'a [f32],
    h: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
    per_head: Vec<&'a [f32]>,
}

/// `Kx` of the nodes `i0..i0 + nb`, `[nb, k, F]`.
fn kx_block<'s>(s: &Sizes, d: &Data, i0: usize, nb: usize, buf: &'s mut Vec<f32>) -> &'s mut [f32] {
    let kfw = s.k * s.width();
    let kx = grow(buf, nb * kfw);
    for bi in 0..nb {
        kx_node(
            s,
            i0 + bi,
            d.x,
            d.nbr,
            d.basis,
            &mut kx[bi * kfw..(bi + 1) * kfw],
        );
    }
    kx
}

/// Weighted sums of one block of nodes `i0..i0 + nb` for every head: `out` is
/// `[nb, H cnt, mo]`.
fn sum_block(s: &Sizes, d: &Data, i0: usize, nb: usize, out: &mut [f32], sc: &mut Scratch) {
    let (k, hd, mo, cf, cnt, cols) = (s.k, s.hd, s.mo, s.cf(), s.cnt, s.cols());
    let fw = s.width();
    let Scratch {
        kx: kxb,
        big,
        small,
        rows,
    } = sc;
    let kx = kx_block(s, d, i0, nb, kxb);
    // per head: acc[b][(p, cf, hd)] = sum_kk a kx[kk][p, cf] h[kk][hd] and
    // bsum[b][(p, cf)] = sum_kk a kx[kk][p, cf]; then y = acc W_h + bsum b_h
    let acc = grow(big, nb * fw * hd);
    let scratch = grow(small, nb * fw + k * fw);
    let (bsum, akx) = scratch.split_at_mut(nb * fw);
    let y = grow(rows, nb * mo * cnt);
    for (hh, a_all) in d.per_head.iter().enumerate() {
        for bi in 0..nb {
            let i = i0 + bi;
            let a = &a_all[i * k..(i + 1) * k];
            let kxn = &kx[bi * k * fw..(bi + 1) * k * fw];
            let bs = &mut bsum[bi * fw..(bi + 1) * fw];
            // akx[r, kk] = a_kk kx[kk, r] (transposed: rows of A contiguous); bs = its row sums
            for (r, (row, t)) in akx.chunks_mut(k).zip(bs.iter_mut()).enumerate() {
                let mut sum = 0.0;
                for (kk, (o, &av)) in row.iter_mut().zip(a).enumerate() {
                    *o = av * kxn[kk * fw + r];
                    sum += *o;
                }
                *t = sum;
            }
            // acc[b] (fw x hd) = akx (fw x k) h_i (k x hd)
            let h = &d.h[i * k * hd..(i + 1) * k * hd];
            gemm_rows(
                fw,
                k,
                hd,
                akx,
                k,
                h,
                hd,
                &mut acc[bi * fw * hd..(bi + 1) * fw * hd],
                hd,
                0.0,
            );
        }
        // y[(b, p), o] = acc[(b, p), (cf, hd)] w[(cf, hd), o] + bsum[(b, p), cf] bias[cf, o]
        let c0 = hh * cnt;
        gemm_rows(
            nb * mo,
            cf * hd,
            cnt,
            acc,
            cf * hd,
            &d.w[c0..],
            cols,
            y,
            cnt,
            0.0,
        );
        gemm_rows(nb * mo, cf, cnt, bsum, cf, &d.b[c0..], cols, y, cnt, 1.0);
        for bi in 0..nb {
            for p in 0..mo {
                for o in 0..cnt {
                    out[(bi * cols + c0 + o) * mo + p] = y[(bi * mo + p) * cnt + o];
                }
            }
        }
    }
}

/// Logits of one block of nodes `i0..i0 + nb` for every head: `out` is `[H, nb, k]`.
fn logits_block(s: &Sizes, d: &Data, i0: usize, nb: usize, out: &mut [f32], sc: &mut Scratch) {
    let (k, hd, mo, cf, cnt, cols) = (s.k, s.hd, s.mo, s.cf(), s.cnt, s.cols());
    let fw = s.width();
    let Scratch {
        kx: kxb,
        big,
        small,
        rows,
    } = sc;
    let kx = kx_block(s, d, i0, nb, kxb);
    let folded = grow(big, nb * fw * hd);
    let buf = grow(rows, nb * mo * cnt + k * hd);
    let (qr, g) = buf.split_at_mut(nb * mo * cnt);
    let fb = grow(small, nb * fw);
    for (hh, q_all) in d.per_head.iter().enumerate() {
        // q rows [(b, p), o]
        for bi in 0..nb {
            let q = &q_all[(i0 + bi) * cnt * mo..(i0 + bi + 1) * cnt * mo];
            for p in 0..mo {
                for o in 0..cnt {
                    qr[(bi * mo + p) * cnt + o] = q[o * mo + p];
                }
            }
        }
        // folded[(b, p), (cf, hd)] = sum_o q[(b, p), o] w[(cf, hd), o]; fb likewise, bias
        let c0 = hh * cnt;
        gemm(
            nb * mo,
            cnt,
            cf * hd,
            qr,
            (cnt, 1),
            &d.w[c0..],
            (1, cols),
            folded,
            0.0,
        );
        gemm(
            nb * mo,
            cnt,
            cf,
            qr,
            (cnt, 1),
            &d.b[c0..],
            (1, cols),
            fb,
            0.0,
        );
        for bi in 0..nb {
            let i = i0 + bi;
            let kxn = &kx[bi * k * fw..(bi + 1) * k * fw];
            // g (k x hd) = kx (k x fw) folded[b] (fw x hd)
            gemm_rows(
                k,
                fw,
                hd,
                kxn,
                fw,
                &folded[bi * fw * hd..(bi + 1) * fw * hd],
                hd,
                g,
                hd,
                0.0,
            );
            let h = &d.h[i * k * hd..(i + 1) * k * hd];
            let fbb = &fb[bi * fw..(bi + 1) * fw];
            for kk in 0..k {
                let main = dot8(&g[kk * hd..(kk + 1) * hd], &h[kk * hd..(kk + 1) * hd]);
                let bias = dot8(&kxn[kk * fw..(kk + 1) * fw], fbb);
                out[(hh * nb + bi) * k + kk] = main + bias;
            }
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
        let (xs, bs, ws) = (views[0].shape(), views[2].shape(), views[4].shape());
        let (n, c_in, mi) = (xs[0], xs[1], xs[2]);
        let e = bs[0];
        let (mo, nf) = (bs[1], bs[3]);
        let k = e.checked_div(n).unwrap_or(0);
        let heads = mats.len().saturating_sub(6).max(1);
        let cnt = ws.get(1).copied().unwrap_or(0) / heads;
        let s = Sizes {
            n,
            k,
            c_in,
            mi,
            mo,
            nf,
            hd: self.hidden,
            cnt,
            heads,
        };
        let d = Data {
            x: &mats[0],
            nbr: &mats[1],
            basis: &mats[2],
            h: &mats[3],
            w: &mats[4],
            b: &mats[5],
            per_head: mats[6..].iter().map(|m| m.as_ref()).collect(),
        };
        let nb = block_nodes(&s);
        let blocks = n.div_ceil(nb);
        let out = match self.kind {
            ContractKind::Sum => {
                let per_node = s.cols() * mo;
                let mut out = crate::exec::pool::take(n * per_node);
                if per_node > 0 && k > 0 {
                    out.par_chunks_mut(nb * per_node)
                        .enumerate()
                        .for_each_init(Scratch::default, |sc, (blk, o)| {
                            sum_block(&s, &d, blk * nb, o.len() / per_node, o, sc)
                        });
                }
                out
            }
            ContractKind::Logits => {
                let mut out = crate::exec::pool::take(heads * n * k);
                if k > 0 && cnt > 0 {
                    let parts: Vec<Vec<f32>> = (0..blocks)
                        .into_par_iter()
                        .map_init(Scratch::default, |sc, blk| {
                            let i0 = blk * nb;
                            let m = nb.min(n - i0);
                            let mut o = vec![0.0; heads * m * k];
                            logits_block(&s, &d, i0, m, &mut o, sc);
                            o
                        })
                        .collect();
                    for (blk, part) in parts.iter().enumerate() {
                        let (i0, m) = (blk * nb, nb.min(n - blk * nb));
                        for hh in 0..heads {
                            out[(hh * n + i0) * k..(hh * n + i0 + m) * k]
                                .copy_from_slice(&part[hh * m * k..(hh + 1) * m * k]);
                        }
                    }
                }
                out
            }
        };
        drop(d);
        drop(mats);
        crate::exec::pool::finish(inp, out)
    }
}
