//! CPU kernel of [`edge_contract_sum`](super::edge_contract_sum) and
//! [`edge_contract_logits`](super::edge_contract_logits): rayon-parallel over blocks of
//! destination nodes; per block, `Kx` of its edges, the per-node products with the radial
//! hidden values and the last-layer GEMM run on thread-local scratch that stays in cache.
//! Inner products are register-tiled AVX-512 kernels on that scratch, without packing:
//! [`gemm_rows`] (broadcast form) for the products with the radial hidden values, the query
//! fold and the last radial layer. The last layer's weights are rearranged once per call so
//! that each head's part is one contiguous stream: `W_h [nf c_in hidden, cnt]` per head for the
//! sums, `W^T [H cnt, nf c_in hidden]` for the query fold of the logits. The block scratch and
//! the rearranged weights are thread-local buffers kept across calls (no fresh pages, no
//! zero-filling per call).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use std::cell::RefCell;

use crate::exec::matmul::gemm_rows;
#[cfg(target_arch = "x86_64")]
use crate::exec::simd::{self, Isa};
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

/// Nodes per block: 16, so that `16 mo` rows fill whole GEMM tiles and each chunk of `W` is
/// read once for many rows.
fn block_nodes(_s: &Sizes) -> usize {
    16
}

/// `Kx` of the edges of node `i`: `kx[kk, p, f, c] = sum_q basis[e, p, q, f] x[j, c, q]`
/// (`j = nbr[e]`, zeros for `-1`), from `xt [n, mi, c_in]` (the node features transposed so the
/// inner loop runs over channels).
#[inline(always)]
fn kx_node_impl(s: &Sizes, i: usize, xt: &[f32], nbr: &[f32], basis: &[f32], kx: &mut [f32]) {
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
        let xj = &xt[j as usize * c_in * mi..(j as usize + 1) * c_in * mi];
        let b = &basis[e * bsz..(e + 1) * bsz];
        for p in 0..mo {
            for f in 0..nf {
                let out = &mut row[(p * nf + f) * c_in..(p * nf + f + 1) * c_in];
                out.fill(0.0);
                for q in 0..mi {
                    let coef = b[(p * mi + q) * nf + f];
                    for (o, xv) in out.iter_mut().zip(&xj[q * c_in..(q + 1) * c_in]) {
                        *o += coef * xv;
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn kx_node_avx512(
    s: &Sizes,
    i: usize,
    xt: &[f32],
    nbr: &[f32],
    basis: &[f32],
    kx: &mut [f32],
) {
    kx_node_impl(s, i, xt, nbr, basis, kx)
}

/// [`kx_node_impl`] on AVX-512 when the CPU has it.
fn kx_node(s: &Sizes, i: usize, xt: &[f32], nbr: &[f32], basis: &[f32], kx: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd::isa() == Isa::Avx512 {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { kx_node_avx512(s, i, xt, nbr, basis, kx) };
            return;
        }
    }
    kx_node_impl(s, i, xt, nbr, basis, kx)
}

#[derive(Default)]
struct Scratch {
    kx: Vec<f32>,
    /// `Kx` of one chunk of `(f, c)`, `[nb, k, (p, chunk)]`.
    kxa: Vec<f32>,
    big: Vec<f32>,
    small: Vec<f32>,
    rows: Vec<f32>,
    /// The edge gradients' `h^T` of each node of the block and one product `[(p, r), k]`.
    ht: Vec<f32>,
    tmp: Vec<f32>,
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
    b: &'a [f32],
    /// Sums: `W` per head, `[H, nf c_in hidden, cnt]`; logits: `W^T [H cnt, nf c_in hidden]`
    /// with rows [`WT_PAD`] apart beyond their length.
    wt: &'a [f32],
    /// Logits: `b^T [H cnt, nf c_in]` (empty for sums).
    bt: &'a [f32],
    per_head: Vec<&'a [f32]>,
    /// The gradient jobs' per-head edge weights `u_h [n, k]` (empty otherwise).
    edge_weights: Vec<&'a [f32]>,
}

/// What one call of [`contract`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Job {
    /// [`ContractKind::Sum`].
    Sum,
    /// [`ContractKind::Logits`].
    Logits,
    /// Per-edge gradients (`super::backward_cpu`), `[e, width]`: with `hidden`, the radial
    /// hidden values' `dh_e = sum_h u_h,e Kx_e . (W_h r_h,i)` (`hidden` columns); with `kx`,
    /// the messages' `dKx_e[p, fc] = sum_h u_h,e (h_e . (W_h r_h,i)[p, fc, :] + (b_h r_h,i)[p,
    /// fc])` (`mo nf c_in` columns, after those of `dh`).
    EdgeGrad {
        /// Whether `dh` is computed.
        hidden: bool,
        /// Whether `dKx` is computed.
        kx: bool,
    },
    /// The last layer's gradients: `dW_h = sum_i A_i^T r_h,i` and `db_h = sum_i S_i^T r_h,i`
    /// (`A_i`, `S_i` of the sums with weights `u_h`), `[nf c_in hidden + nf c_in, cols]`.
    WeightGrad,
}

impl From<ContractKind> for Job {
    fn from(k: ContractKind) -> Job {
        match k {
            ContractKind::Sum => Job::Sum,
            ContractKind::Logits => Job::Logits,
        }
    }
}

/// `Kx` of the nodes `i0..i0 + nb`, `[nb, k, F]`.
fn kx_block<'s>(s: &Sizes, d: &Data, i0: usize, nb: usize, buf: &'s mut Vec<f32>) -> &'s mut [f32] {
    let t0 = crate::exec::profile::enabled().then(std::time::Instant::now);
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
    if let Some(t0) = t0 {
        crate::exec::profile::detail("edge_contract.gather_kx", t0.elapsed().as_secs_f64());
    }
    kx
}

/// Input channels `c f` per chunk: the per-chunk scratch `[nb mo, chunk, hidden]` stays near
/// 384 KiB (in L2), so the products of a chunk and its rows of `W` run in cache; a multiple of
/// 4 when it can be, so that `mo chunk` rows fill whole 4-row register tiles.
fn cf_chunk(s: &Sizes, nb: usize) -> usize {
    let c = 98_304 / (nb * s.mo * s.hd).max(1);
    let c = if c >= 4 { c / 4 * 4 } else { c };
    c.clamp(1, s.cf().max(1))
}

/// `kxt[b][(p, r), kk] = kx[b][kk, (p, c0 + r)]` for the block's `nb` nodes and the chunk
/// `(c0, cc)` of `(f, c)` columns: each row of the chunk contiguous over the neighbours.
fn chunk_transposed(s: &Sizes, kx: &[f32], nb: usize, (c0, cc): (usize, usize), kxt: &mut [f32]) {
    let (k, mo, cf, fw) = (s.k, s.mo, s.cf(), s.width());
    let rows = mo * cc;
    for bi in 0..nb {
        let kxn = &kx[bi * k * fw..(bi + 1) * k * fw];
        let kt = &mut kxt[bi * rows * k..(bi + 1) * rows * k];
        for (kk, src) in kxn.chunks_exact(fw).enumerate() {
            for p in 0..mo {
                for (r, &v) in src[p * cf + c0..p * cf + c0 + cc].iter().enumerate() {
                    kt[(p * cc + r) * k + kk] = v;
                }
            }
        }
    }
}

/// One node's weighted factors of the sums: `ah[kk, :] = w_kk h[kk, :]` and `bsc[(p, r)] =
/// sum_kk w_kk kt[(p, r), kk]` (`kt` the node's rows of [`chunk_transposed`]).
fn weighted(h: &[f32], w: &[f32], kt: &[f32], ah: &mut [f32], bsc: &mut [f32]) {
    if w.is_empty() {
        return;
    }
    let hd = ah.len() / w.len();
    for ((dst, src), &wv) in ah.chunks_exact_mut(hd).zip(h.chunks_exact(hd)).zip(w) {
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = wv * v;
        }
    }
    for (t, row) in bsc.iter_mut().zip(kt.chunks_exact(w.len())) {
        *t = dot8(row, w);
    }
}

/// Weighted sums of one block of nodes `i0..i0 + nb` for every head: `out` is
/// `[nb, H cnt, mo]`. Reassociated and chunked over `(f, c)`: per chunk and head,
/// `acc[(b, p), (cf, hd)] = sum_kk kx[kk][p, cf] (a_kk h[kk][hd])` (one product per node over
/// all `p`, from `Kx` of the chunk transposed once for all heads) then `y_h += acc W_h[chunk]`
/// (and the bias term likewise), so neither `acc` of the block nor `W` leaves the cache.
fn sum_block(s: &Sizes, d: &Data, i0: usize, nb: usize, out: &mut [f32], sc: &mut Scratch) {
    let (k, hd, mo, cf, cnt, cols) = (s.k, s.hd, s.mo, s.cf(), s.cnt, s.cols());
    let kw = cf * hd;
    let Scratch {
        kx: kxb,
        kxa,
        big,
        small,
        rows,
        ..
    } = sc;
    let kx = kx_block(s, d, i0, nb, kxb);
    let cfc = cf_chunk(s, nb);
    let kxt = grow(kxa, nb * mo * cfc * k);
    let accc = grow(big, nb * mo * cfc * hd);
    let scratch = grow(small, k * hd + nb * mo * cfc);
    let (ah, bsc) = scratch.split_at_mut(k * hd);
    let y = grow(rows, s.heads * nb * mo * cnt);
    y.fill(0.0);
    let mut cf0 = 0;
    while cf0 < cf {
        let cc = cfc.min(cf - cf0);
        let rows_b = mo * cc;
        chunk_transposed(s, kx, nb, (cf0, cc), kxt);
        for (hh, a_all) in d.per_head.iter().enumerate() {
            for bi in 0..nb {
                let i = i0 + bi;
                let a = &a_all[i * k..(i + 1) * k];
                let h = &d.h[i * k * hd..(i + 1) * k * hd];
                let kt = &kxt[bi * rows_b * k..(bi + 1) * rows_b * k];
                weighted(h, a, kt, ah, &mut bsc[bi * rows_b..(bi + 1) * rows_b]);
                gemm_rows(
                    rows_b,
                    k,
                    hd,
                    kt,
                    k,
                    ah,
                    hd,
                    &mut accc[bi * rows_b * hd..(bi + 1) * rows_b * hd],
                    hd,
                    0.0,
                );
            }
            let c0 = hh * cnt;
            let yh = &mut y[hh * nb * mo * cnt..(hh + 1) * nb * mo * cnt];
            // W_h's rows of the chunk, contiguous [cc hd, cnt]
            gemm_rows(
                nb * mo,
                cc * hd,
                cnt,
                &accc[..nb * mo * cc * hd],
                cc * hd,
                &d.wt[(hh * kw + cf0 * hd) * cnt..],
                cnt,
                yh,
                cnt,
                1.0,
            );
            gemm_rows(
                nb * mo,
                cc,
                cnt,
                &bsc[..nb * mo * cc],
                cc,
                &d.b[cf0 * cols + c0..],
                cols,
                yh,
                cnt,
                1.0,
            );
        }
        cf0 += cc;
    }
    for hh in 0..s.heads {
        let c0 = hh * cnt;
        let yh = &y[hh * nb * mo * cnt..(hh + 1) * nb * mo * cnt];
        for bi in 0..nb {
            for p in 0..mo {
                for o in 0..cnt {
                    out[(bi * cols + c0 + o) * mo + p] = yh[(bi * mo + p) * cnt + o];
                }
            }
        }
    }
}

/// Padding (floats) after each row of the weight gradient's `acc`.
const ACC_PAD: usize = 16;

/// The last layer's gradients from the nodes `i0..i0 + nb`, added to `dwt`, `[cols, cf hidden +
/// cf]` (`dW^T` then `db^T`, [`Job::WeightGrad`]). Chunked over `(f, c)` as [`sum_block`]: per
/// chunk and head, `acc[(b, p), (r, hd)]` and `S[(b, p), r]` as the sums form them with the
/// weights `u_h`, then `dW_h^T[:, chunk] += r_h^T acc` and `db_h^T[:, chunk] += r_h^T S` (`r_h^T
/// [o, (b, p)]` the block's rows), so `A_i` of the graph and the per-edge `dR_e` never exist.
fn weight_grad_block(
    s: &Sizes,
    d: &Data,
    (i0, nb): (usize, usize),
    dwt: &mut [f32],
    sc: &mut Scratch,
) {
    let (k, hd, mo, cf, cnt) = (s.k, s.hd, s.mo, s.cf(), s.cnt);
    let ld = cf * hd + cf;
    let Scratch {
        kx: kxb,
        kxa,
        big,
        small,
        rows,
        ..
    } = sc;
    let kx = kx_block(s, d, i0, nb, kxb);
    let cfc = cf_chunk(s, nb);
    let kxt = grow(kxa, nb * mo * cfc * k);
    // acc's rows `(b, p)` padded: rows a multiple of 4 KiB apart (e.g. 16 x 128 floats) would
    // share one set of the L1 cache, and the product with the rows reads 48 of them at once
    let lda = cfc * hd + ACC_PAD;
    let accc = grow(big, nb * mo * lda);
    let scratch = grow(small, k * hd + nb * mo * cfc);
    let (ah, bsc) = scratch.split_at_mut(k * hd);
    // rt[h][o, (b, p)] = r_h[i0 + b][o, p]
    let nbm = nb * mo;
    let rt = grow(rows, s.heads * cnt * nbm);
    for (hh, r_all) in d.per_head.iter().enumerate() {
        for bi in 0..nb {
            let r = &r_all[(i0 + bi) * cnt * mo..(i0 + bi + 1) * cnt * mo];
            for o in 0..cnt {
                let dst = (hh * cnt + o) * nbm + bi * mo;
                rt[dst..dst + mo].copy_from_slice(&r[o * mo..(o + 1) * mo]);
            }
        }
    }
    let mut cf0 = 0;
    while cf0 < cf {
        let cc = cfc.min(cf - cf0);
        let rows_b = mo * cc;
        chunk_transposed(s, kx, nb, (cf0, cc), kxt);
        for (hh, u_all) in d.edge_weights.iter().enumerate() {
            for bi in 0..nb {
                let i = i0 + bi;
                let u = &u_all[i * k..(i + 1) * k];
                let h = &d.h[i * k * hd..(i + 1) * k * hd];
                let kt = &kxt[bi * rows_b * k..(bi + 1) * rows_b * k];
                weighted(h, u, kt, ah, &mut bsc[bi * rows_b..(bi + 1) * rows_b]);
                for p in 0..mo {
                    let row = (bi * mo + p) * lda;
                    gemm_rows(
                        cc,
                        k,
                        hd,
                        &kt[p * cc * k..],
                        k,
                        ah,
                        hd,
                        &mut accc[row..row + cc * hd],
                        hd,
                        0.0,
                    );
                }
            }
            let rh = &rt[hh * cnt * nbm..(hh + 1) * cnt * nbm];
            let c0 = hh * cnt;
            gemm_rows(
                cnt,
                nbm,
                cc * hd,
                rh,
                nbm,
                &accc[..(nbm - 1) * lda + cc * hd],
                lda,
                &mut dwt[c0 * ld + cf0 * hd..],
                ld,
                1.0,
            );
            gemm_rows(
                cnt,
                nbm,
                cc,
                rh,
                nbm,
                &bsc[..nbm * cc],
                cc,
                &mut dwt[c0 * ld + cf * hd + cf0..],
                ld,
                1.0,
            );
        }
        cf0 += cc;
    }
}

/// Logits of one block of nodes `i0..i0 + nb` for every head: `out` is `[H, nb, k]`. Chunked
/// over `(f, c)` like [`sum_block`]: per chunk and head the query is folded into the chunk's
/// rows of `W` (`[(b, p), (cf, hd)]`), then `g[b][kk] += kx[kk][p, chunk] folded[(b, p)]`;
/// finally `l = g . h + bias`.
/// With `grad = Some((hidden, kx))`, `out` is `[nb k, width]` instead, the per-edge gradients
/// of [`Job::EdgeGrad`] with the rows `r_h` as the queries: `sum_h u_h,e g_h,e` (the radial
/// hidden values') and `sum_h u_h,e (h_e . folded + folded bias)` (the messages').
fn logits_block(
    s: &Sizes,
    d: &Data,
    (i0, nb): (usize, usize),
    out: &mut [f32],
    sc: &mut Scratch,
    grad: Option<(bool, bool)>,
) {
    let (k, hd, mo, cf, cnt) = (s.k, s.hd, s.mo, s.cf(), s.cnt);
    let fw = s.width();
    let kw = cf * hd;
    let kws = kw + WT_PAD;
    let heads = s.heads;
    let Scratch {
        kx: kxb,
        kxa,
        big,
        small,
        rows,
        ht,
        tmp,
    } = sc;
    let kx = kx_block(s, d, i0, nb, kxb);
    let cfc = cf_chunk(s, nb);
    let kxa = grow(kxa, nb * k * mo * cfc);
    let foldc = grow(big, nb * mo * cfc * hd);
    let (want_h, want_kx) = grad.unwrap_or((false, false));
    let width = if want_h { hd } else { 0 } + if want_kx { mo * cf } else { 0 };
    if grad.is_some() {
        out.fill(0.0);
    }
    // h^T [hd, k] of each node, for the messages' gradient
    let ht = grow(ht, if want_kx { nb * hd * k } else { 0 });
    if want_kx {
        for bi in 0..nb {
            let h = &d.h[(i0 + bi) * k * hd..(i0 + bi + 1) * k * hd];
            let t = &mut ht[bi * hd * k..(bi + 1) * hd * k];
            for (kk, row) in h.chunks_exact(hd).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    t[j * k + kk] = v;
                }
            }
        }
    }
    let tmp = grow(tmp, if want_kx { mo * cfc * k } else { 0 });
    let buf = grow(
        rows,
        heads * nb * mo * cnt + heads * nb * k * hd + heads * nb * k,
    );
    let (qr, rest) = buf.split_at_mut(heads * nb * mo * cnt);
    let (g, bl) = rest.split_at_mut(heads * nb * k * hd);
    g.fill(0.0);
    bl.fill(0.0);
    let fbc = grow(small, nb * mo * cfc);
    // q rows [h][(b, p), o]
    for (hh, q_all) in d.per_head.iter().enumerate() {
        for bi in 0..nb {
            let q = &q_all[(i0 + bi) * cnt * mo..(i0 + bi + 1) * cnt * mo];
            for p in 0..mo {
                for o in 0..cnt {
                    qr[((hh * nb + bi) * mo + p) * cnt + o] = q[o * mo + p];
                }
            }
        }
    }
    let mut cf0 = 0;
    while cf0 < cf {
        let cc = cfc.min(cf - cf0);
        let kw_c = mo * cc;
        // kxa[b][kk, (p, r)] = kx[b][kk, (p, cf0 + r)]: the chunk's columns of every p side by
        // side, so that one product per node runs over all of them
        for bi in 0..nb {
            for kk in 0..k {
                let src = &kx[(bi * k + kk) * fw..(bi * k + kk + 1) * fw];
                let dst = &mut kxa[(bi * k + kk) * kw_c..(bi * k + kk + 1) * kw_c];
                for p in 0..mo {
                    dst[p * cc..(p + 1) * cc]
                        .copy_from_slice(&src[p * cf + cf0..p * cf + cf0 + cc]);
                }
            }
        }
        for hh in 0..heads {
            let c0 = hh * cnt;
            let qh = &qr[hh * nb * mo * cnt..(hh + 1) * nb * mo * cnt];
            // folded[(b, p), (r, hd)] = sum_o q[(b, p), o] w[((cf0 + r), hd), o]
            gemm_rows(
                nb * mo,
                cnt,
                cc * hd,
                qh,
                cnt,
                &d.wt[c0 * kws + cf0 * hd..],
                kws,
                foldc,
                cc * hd,
                0.0,
            );
            gemm_rows(
                nb * mo,
                cnt,
                cc,
                qh,
                cnt,
                &d.bt[c0 * cf + cf0..],
                cf,
                fbc,
                cc,
                0.0,
            );
            for bi in 0..nb {
                let ka = &kxa[bi * k * kw_c..(bi + 1) * k * kw_c];
                let gb = &mut g[(hh * nb + bi) * k * hd..(hh * nb + bi + 1) * k * hd];
                let blb = &mut bl[(hh * nb + bi) * k..(hh * nb + bi + 1) * k];
                // the rows (b, p, r) of folded are contiguous over (p, r); g is read by the
                // logits and the hidden values' gradient, the bias logits by the logits only
                if grad.is_none() || want_h {
                    gemm_rows(
                        k,
                        kw_c,
                        hd,
                        ka,
                        kw_c,
                        &foldc[bi * kw_c * hd..(bi + 1) * kw_c * hd],
                        hd,
                        gb,
                        hd,
                        1.0,
                    );
                }
                let fb = &fbc[bi * kw_c..(bi + 1) * kw_c];
                if grad.is_none() {
                    for (kk, t) in blb.iter_mut().enumerate() {
                        *t += dot8(&ka[kk * kw_c..(kk + 1) * kw_c], fb);
                    }
                }
                if want_kx {
                    // tmp[(p, r), kk] = folded[(b, p, r), :] . h[kk, :]; then the messages'
                    // gradient of the chunk's columns, scaled by the edge weights
                    gemm_rows(
                        kw_c,
                        hd,
                        k,
                        &foldc[bi * kw_c * hd..(bi + 1) * kw_c * hd],
                        hd,
                        &ht[bi * hd * k..(bi + 1) * hd * k],
                        k,
                        tmp,
                        k,
                        0.0,
                    );
                    let u = &d.edge_weights[hh][(i0 + bi) * k..(i0 + bi + 1) * k];
                    let off = if want_h { hd } else { 0 };
                    for (kk, &uv) in u.iter().enumerate() {
                        let row = (bi * k + kk) * width + off + cf0;
                        for p in 0..mo {
                            let dst = &mut out[row + p * cf..row + p * cf + cc];
                            for (r, o) in dst.iter_mut().enumerate() {
                                let pr = p * cc + r;
                                *o += uv * (tmp[pr * k + kk] + fb[pr]);
                            }
                        }
                    }
                }
            }
        }
        cf0 += cc;
    }
    if grad.is_some() {
        if want_h {
            for (hh, u) in d.edge_weights.iter().enumerate() {
                for bi in 0..nb {
                    for kk in 0..k {
                        let uv = u[(i0 + bi) * k + kk];
                        let gi = ((hh * nb + bi) * k + kk) * hd;
                        let o = &mut out[(bi * k + kk) * width..(bi * k + kk) * width + hd];
                        for (o, &gv) in o.iter_mut().zip(&g[gi..gi + hd]) {
                            *o += uv * gv;
                        }
                    }
                }
            }
        }
        return;
    }
    for hh in 0..heads {
        for bi in 0..nb {
            let i = i0 + bi;
            let h = &d.h[i * k * hd..(i + 1) * k * hd];
            for kk in 0..k {
                let gi = ((hh * nb + bi) * k + kk) * hd;
                out[(hh * nb + bi) * k + kk] =
                    dot8(&g[gi..gi + hd], &h[kk * hd..(kk + 1) * hd]) + bl[(hh * nb + bi) * k + kk];
            }
        }
    }
}

/// Columns of a `[rows, cols]` weight view's shape (0 for another rank).
fn cols_of(shape: &[usize]) -> usize {
    if shape.len() == 2 {
        shape[1]
    } else {
        0
    }
}

/// Padding (floats) after each row of `W^T`: rows whose stride is a multiple of 4 KiB (e.g.
/// `nf c_in hidden = 96 x 128`) would share one set of the L1 cache, so the 16 rows that one
/// register tile reads would evict each other.
pub(crate) const WT_PAD: usize = 16;

thread_local! {
    /// Block scratch of the threads that run blocks, kept across calls.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// The calling thread's rearranged `W` and `b`, kept across calls.
    static WEIGHTS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `f` on this thread's kept [`Scratch`] (a fresh one if it is in use further up the stack).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut sc) => f(&mut sc),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// `m [rows, cols]` (row-major) as `[cols / cnt, rows, cnt]` into `t`: each block of `cnt`
/// columns contiguous.
fn head_blocks(m: &[f32], cols: usize, cnt: usize, t: &mut Vec<f32>) {
    t.resize(m.len(), 0.0);
    if cols == 0 || cnt == 0 || m.is_empty() {
        return;
    }
    let rows = m.len() / cols;
    if rows == 0 {
        return;
    }
    t.par_chunks_mut(rows * cnt)
        .enumerate()
        .for_each(|(h, dst)| {
            if (h + 1) * cnt > cols {
                return;
            }
            for (src, d) in m.chunks_exact(cols).zip(dst.chunks_exact_mut(cnt)) {
                d.copy_from_slice(&src[h * cnt..(h + 1) * cnt]);
            }
        });
}

/// `m [rows, cols]` (row-major) transposed to `[cols, rows + pad]` into `t`, in parallel over groups of
/// `group` output rows (each task reads one stretch of every input row).
fn transposed(m: &[f32], cols: usize, group: usize, pad: usize, t: &mut Vec<f32>) {
    let rows = m.len().checked_div(cols).unwrap_or(0);
    let ld = rows + pad;
    t.resize(cols * ld, 0.0);
    if rows == 0 {
        return;
    }
    t.par_chunks_mut(group * ld)
        .enumerate()
        .for_each(|(g, dst)| {
            let (c0, cw) = (g * group, dst.len() / ld);
            // tiles of 16 input rows, each output row written 16 contiguous values at a time
            // (rows whose stride is a multiple of 4 KiB would otherwise evict each other)
            let mut l0 = 0;
            while l0 < rows {
                let lw = 16.min(rows - l0);
                for o in 0..cw {
                    let out = &mut dst[o * ld + l0..o * ld + l0 + lw];
                    for (dl, v) in out.iter_mut().enumerate() {
                        *v = m[(l0 + dl) * cols + c0 + o];
                    }
                }
                l0 += lw;
            }
        });
}

/// [`EdgeContract`] with its last layer stored in the kernel's order (inputs as
/// [`EdgeContract`]'s but `w` and, for logits, `b`): sums `W [H, nf c_in hidden, cnt]` (each
/// head's columns contiguous), logits `W^T [H cnt, nf c_in hidden + WT_PAD]` (rows padded by
/// [`WT_PAD`] zeros) and `b^T [H cnt, nf c_in]`. An inference session swaps it in where the
/// last layer is a weight read by nothing else ([`super::arrange`]), and stores the weights
/// in that order once, instead of every call rearranging them.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrangedEdgeContract {
    /// Sum or logits.
    pub kind: ContractKind,
    /// Width of the radial hidden layer.
    pub hidden: usize,
}

impl Operator for EdgeContract {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        contract(self.kind.into(), self.hidden, false, inp)
    }
}

impl Operator for ArrangedEdgeContract {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        contract(self.kind.into(), self.hidden, true, inp)
    }
}

/// The kernel of [`EdgeContract`] (`arranged`: of [`ArrangedEdgeContract`]) and of the last
/// layer's gradients ([`Job::EdgeGrad`], [`Job::WeightGrad`]: inputs `x, nbr, basis, h, w, b`,
/// then the rows `r_0 .. r_{H-1}` (`[n, cnt, mo]`) and the edge weights `u_0 .. u_{H-1}`
/// (`[n, k]`)).
pub(super) fn contract(
    job: Job,
    hidden: usize,
    arranged: bool,
    inp: Vec<(InputTensor, ShapeTracker)>,
) -> Vec<Tensor> {
    let empty = Default::default();
    let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
    let mats: Vec<crate::exec::view::Materialized> = inp
        .iter()
        .zip(&views)
        .map(|((t, _), v)| v.borrow_or_copy(buffer(t)))
        .collect();
    let (xs, bs, ws) = (views[0].shape(), views[2].shape(), views[4].shape());
    let (n, c_in, mi) = (xs[0], xs[1], xs[2]);
    let e = bs[0];
    let (mo, nf) = (bs[1], bs[3]);
    let k = e.checked_div(n).unwrap_or(0);
    let grad = matches!(job, Job::EdgeGrad { .. } | Job::WeightGrad);
    let heads = if grad {
        mats.len().saturating_sub(6) / 2
    } else {
        mats.len().saturating_sub(6)
    }
    .max(1);
    let cnt = match (arranged, job, ws.len()) {
        (false, _, _) => ws.get(1).copied().unwrap_or(0) / heads,
        (true, Job::Sum, 3) => ws[2],
        (true, Job::Logits, 2) => ws[0] / heads,
        _ => 0,
    };
    let s = Sizes {
        n,
        k,
        c_in,
        mi,
        mo,
        nf,
        hd: hidden,
        cnt,
        heads,
    };
    // node features transposed to [n, mi, c_in]
    let mut xt = vec![0.0; n * mi * c_in];
    for (src, dst) in mats[0].chunks(c_in * mi).zip(xt.chunks_mut(c_in * mi)) {
        for c in 0..c_in {
            for q in 0..mi {
                dst[q * c_in + c] = src[c * mi + q];
            }
        }
    }
    // W [cf hd, cols] and b [cf, cols] transposed, each head's rows contiguous (stored so
    // already when arranged)
    let mut own = (Vec::new(), Vec::new());
    let mut kept = if arranged {
        None
    } else {
        WEIGHTS.with(|c| c.try_borrow_mut().ok().map(|mut v| std::mem::take(&mut *v)))
    };
    let (wt, bt) = kept.as_mut().unwrap_or(&mut own);
    let cols = cols_of(&ws);
    if !arranged {
        match job {
            Job::Sum => {
                head_blocks(&mats[4], cols, cnt, wt);
                bt.clear();
            }
            Job::Logits | Job::EdgeGrad { .. } => {
                transposed(&mats[4], cols, 16, WT_PAD, wt);
                transposed(&mats[5], cols, 16, 0, bt);
            }
            Job::WeightGrad => {
                wt.clear();
                bt.clear();
            }
        }
    }
    let (wt, bt): (&[f32], &[f32]) = match (arranged, job) {
        (true, Job::Sum) => (&mats[4], &[]),
        (true, Job::Logits) => (&mats[4], &mats[5]),
        _ => (wt, bt),
    };
    let (rows_of_heads, edge_weights) = if grad {
        (&mats[6..6 + heads], &mats[6 + heads..])
    } else {
        (&mats[6..], &mats[..0])
    };
    let d = Data {
        x: &xt,
        nbr: &mats[1],
        basis: &mats[2],
        h: &mats[3],
        b: &mats[5],
        wt,
        bt,
        per_head: rows_of_heads.iter().map(|m| m.as_ref()).collect(),
        edge_weights: edge_weights.iter().map(|m| m.as_ref()).collect(),
    };
    let nb = block_nodes(&s);
    let blocks = n.div_ceil(nb);
    let out = match job {
        Job::Sum => {
            let per_node = s.cols() * mo;
            let mut out = crate::exec::pool::take(n * per_node);
            if per_node > 0 && k > 0 {
                out.par_chunks_mut(nb * per_node)
                    .enumerate()
                    .for_each(|(blk, o)| {
                        let t0 = crate::exec::profile::enabled().then(std::time::Instant::now);
                        with_scratch(|sc| sum_block(&s, &d, blk * nb, o.len() / per_node, o, sc));
                        if let Some(t0) = t0 {
                            crate::exec::profile::detail(
                                "edge_contract.all",
                                t0.elapsed().as_secs_f64(),
                            );
                        }
                    });
            }
            out
        }
        Job::EdgeGrad { hidden: want_h, kx } => {
            let t0 = crate::exec::profile::enabled().then(std::time::Instant::now);
            let width = if want_h { hidden } else { 0 } + if kx { mo * s.cf() } else { 0 };
            let per_node = k * width;
            let mut out = crate::exec::pool::take(n * per_node);
            if per_node > 0 && cnt > 0 {
                out.par_chunks_mut(nb * per_node)
                    .enumerate()
                    .for_each(|(blk, o)| {
                        let m = o.len() / per_node;
                        with_scratch(|sc| {
                            logits_block(&s, &d, (blk * nb, m), o, sc, Some((want_h, kx)))
                        });
                    });
            } else {
                out.fill(0.0);
            }
            if let Some(t0) = t0 {
                crate::exec::profile::detail("edge_contract.edge_grad", t0.elapsed().as_secs_f64());
            }
            out
        }
        Job::WeightGrad => {
            let t0 = crate::exec::profile::enabled().then(std::time::Instant::now);
            let (cf, cols) = (s.cf(), s.cols());
            let ld = cf * hidden + cf;
            // per group of node blocks its own dW^T and db^T, added in group order (the same
            // result on every run of one machine)
            let groups = blocks.min(rayon::current_num_threads()).max(1);
            let parts: Vec<Vec<f32>> = (0..groups)
                .into_par_iter()
                .map(|g| {
                    // pooled: buffers of megabytes freed every call would be unmapped (and
                    // their pages faulted in again) each time
                    let mut dwt = crate::exec::pool::take(cols * ld);
                    dwt.fill(0.0);
                    if k > 0 && cnt > 0 {
                        for blk in g * blocks / groups..(g + 1) * blocks / groups {
                            let i0 = blk * nb;
                            let m = nb.min(n - i0);
                            with_scratch(|sc| weight_grad_block(&s, &d, (i0, m), &mut dwt, sc));
                        }
                    }
                    dwt
                })
                .collect();
            let mut parts = parts.into_iter();
            let mut sum = parts.next().unwrap_or_default();
            for part in parts {
                for (a, b) in sum.iter_mut().zip(&part) {
                    *a += b;
                }
                crate::exec::pool::give(part);
            }
            let mut out = crate::exec::pool::take(ld * cols);
            transposed(&sum, ld, 16, 0, &mut out);
            crate::exec::pool::give(sum);
            if let Some(t0) = t0 {
                crate::exec::profile::detail(
                    "edge_contract.weight_grad",
                    t0.elapsed().as_secs_f64(),
                );
            }
            out
        }
        Job::Logits => {
            let mut out = crate::exec::pool::take(heads * n * k);
            if k > 0 && cnt > 0 {
                let parts: Vec<Vec<f32>> = (0..blocks)
                    .into_par_iter()
                    .map(|blk| {
                        let i0 = blk * nb;
                        let m = nb.min(n - i0);
                        let mut o = vec![0.0; heads * m * k];
                        let t0 = crate::exec::profile::enabled().then(std::time::Instant::now);
                        with_scratch(|sc| logits_block(&s, &d, (i0, m), &mut o, sc, None));
                        if let Some(t0) = t0 {
                            crate::exec::profile::detail(
                                "edge_contract.all",
                                t0.elapsed().as_secs_f64(),
                            );
                        }
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
    if let Some(v) = kept {
        WEIGHTS.with(|c| {
            if let Ok(mut slot) = c.try_borrow_mut() {
                *slot = v;
            }
        });
    }
    drop(xt);
    drop(mats);
    crate::exec::pool::finish(inp, out)
}
