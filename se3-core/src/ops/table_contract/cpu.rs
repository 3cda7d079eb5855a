//! CPU kernel of [`table_contract`](super::table_contract()): for each `(x, idx)` pair the
//! edges are taken in order of their node (counting sort); nodes run in parallel, each forms
//! its table `T_j = x_j^T W` (`[G, K, F]`, rows padded to whole vectors) in thread-local
//! scratch and contracts it with the hidden units of its edges as a small GEMM (register
//! blocks of 4 edges by 3 vectors, accumulated over `k`), then the rows are added into the
//! output (transposed to `[F, G]`).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::simd::{self, Isa, Plain, Simd};
use crate::exec::view::{buffer, View};

/// `out[e, f, g] = sum_r sum_k h[e, k] sum_c x_r[idx_r[e], c, g] W[c, k F + f]`; inputs `h`,
/// `W`, then `(x_r, idx_r)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableContract {
    /// The contracted width `K` (columns of `h`).
    pub k: usize,
}

/// Edges of one node contracted at once (rows of the edge product's register block).
const EDGE_BLOCK: usize = 4;
/// Vectors of table columns contracted at once (columns of the register block).
const COLUMN_VECTORS: usize = 3;
/// The tables' rows are padded to a multiple of this many columns (a multiple of every
/// vector width), so the edge product runs on whole vectors.
const PAD: usize = 16;

/// Sizes of one contraction: `K`, `F`, `G`, `C`, and `F` padded to [`PAD`] (`fp`), the
/// tables' row width.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    k: usize,
    f: usize,
    fp: usize,
    g: usize,
    c: usize,
}

/// Orders `g0..g0 + GB` of one node's table, columns `col..col + VB W`:
/// `table[g][col..] = sum_c x[c G + g] w[c][col..]` (`GB VB` accumulators).
#[inline(always)]
fn table_block<S: Simd, const GB: usize, const VB: usize>(
    x: &[f32],
    w: &[f32],
    sz: Sizes,
    (g0, col): (usize, usize),
    table: &mut [f32],
) {
    let kf = sz.k * sz.fp;
    let mut acc = [[S::zero(); VB]; GB];
    for ci in 0..sz.c {
        let mut wv = [S::zero(); VB];
        for (q, v) in wv.iter_mut().enumerate() {
            *v = S::load(w, ci * kf + col + q * S::W);
        }
        for (gg, a) in acc.iter_mut().enumerate() {
            let xv = S::splat(x[ci * sz.g + g0 + gg]);
            for (q, v) in a.iter_mut().enumerate() {
                *v = S::fmadd(xv, wv[q], *v);
            }
        }
    }
    for (gg, a) in acc.iter().enumerate() {
        for (q, v) in a.iter().enumerate() {
            S::store(*v, table, (g0 + gg) * kf + col + q * S::W);
        }
    }
}

/// `table[g][kf] = sum_c x[c G + g] w[c][kf]` (`x`: one node's `[C, G]` features; `w` with
/// rows padded to `K fp`): blocks of up to 4 orders by enough vectors for 8 or more
/// independent accumulators, then single vectors, then a scalar tail.
#[inline(always)]
fn table_impl<S: Simd>(x: &[f32], w: &[f32], sz: Sizes, table: &mut [f32]) {
    let kf = sz.k * sz.fp;
    let vectors = kf / S::W;
    let wide = vectors * S::W;
    let mut g0 = 0;
    while g0 < sz.g {
        let gb = 4.min(sz.g - g0);
        let vb = match gb {
            1 => 8,
            2 => 4,
            3 => 3,
            _ => 2,
        };
        let mut v0 = 0;
        while v0 < vectors {
            let at = (g0, v0 * S::W);
            if v0 + vb <= vectors {
                match gb {
                    1 => table_block::<S, 1, 8>(x, w, sz, at, table),
                    2 => table_block::<S, 2, 4>(x, w, sz, at, table),
                    3 => table_block::<S, 3, 3>(x, w, sz, at, table),
                    _ => table_block::<S, 4, 2>(x, w, sz, at, table),
                }
                v0 += vb;
            } else {
                match gb {
                    1 => table_block::<S, 1, 1>(x, w, sz, at, table),
                    2 => table_block::<S, 2, 1>(x, w, sz, at, table),
                    3 => table_block::<S, 3, 1>(x, w, sz, at, table),
                    _ => table_block::<S, 4, 1>(x, w, sz, at, table),
                }
                v0 += 1;
            }
        }
        for gg in g0..g0 + gb {
            let t = &mut table[gg * kf + wide..(gg + 1) * kf];
            t.fill(0.0);
            for ci in 0..sz.c {
                let xv = x[ci * sz.g + gg];
                for (s, &v) in t.iter_mut().zip(&w[ci * kf + wide..(ci + 1) * kf]) {
                    *s += xv * v;
                }
            }
        }
        g0 += gb;
    }
}

/// `rows[i][g F + f] = sum_k h[e_i, k] table[g K fp + k fp + f]` for `EB` edges `e_i` and
/// the `VB` vectors of columns from `col`: one register block (`EB VB` accumulators, each
/// table vector loaded once per `k` for all the edges).
#[inline(always)]
fn edge_block<S: Simd, const EB: usize, const VB: usize>(
    h: &[f32],
    edges: &[usize],
    tab: &[f32],
    sz: Sizes,
    (gi, col): (usize, usize),
    rows: &mut [f32],
) {
    let (k, f, fp) = (sz.k, sz.f, sz.fp);
    let mut acc = [[S::zero(); VB]; EB];
    for kk in 0..k {
        let mut t = [S::zero(); VB];
        for (q, v) in t.iter_mut().enumerate() {
            *v = S::load(tab, kk * fp + col + q * S::W);
        }
        for (i, a) in acc.iter_mut().enumerate() {
            let hv = S::splat(h[edges[i] * k + kk]);
            for (q, v) in a.iter_mut().enumerate() {
                *v = S::fmadd(hv, t[q], *v);
            }
        }
    }
    let gf = sz.g * f;
    let width = (f - col).min(VB * S::W);
    let mut lane = [0.0f32; 64];
    for (i, a) in acc.iter().enumerate() {
        for (q, v) in a.iter().enumerate() {
            S::store(*v, &mut lane, q * S::W);
        }
        let at = i * gf + gi * f + col;
        rows[at..at + width].copy_from_slice(&lane[..width]);
    }
}

/// The rows (`[G, F]` each) of a node's edges from its table (`[G, K, fp]`): blocks of up to
/// [`EDGE_BLOCK`] edges by [`COLUMN_VECTORS`] vectors.
#[inline(always)]
fn edges_impl<S: Simd>(h: &[f32], edges: &[usize], table: &[f32], sz: Sizes, rows: &mut [f32]) {
    let gf = sz.g * sz.f;
    let vectors = sz.fp / S::W;
    for gi in 0..sz.g {
        let tab = &table[gi * sz.k * sz.fp..(gi + 1) * sz.k * sz.fp];
        let mut e0 = 0;
        while e0 < edges.len() {
            let eb = EDGE_BLOCK.min(edges.len() - e0);
            let block = &edges[e0..e0 + eb];
            let out = &mut rows[e0 * gf..(e0 + eb) * gf];
            let mut v0 = 0;
            while v0 < vectors {
                let vb = COLUMN_VECTORS.min(vectors - v0);
                let col = v0 * S::W;
                if col < sz.f {
                    let at = (gi, col);
                    match (eb, vb) {
                        (4, 3) => edge_block::<S, 4, 3>(h, block, tab, sz, at, out),
                        (4, 2) => edge_block::<S, 4, 2>(h, block, tab, sz, at, out),
                        (4, _) => edge_block::<S, 4, 1>(h, block, tab, sz, at, out),
                        (3, 3) => edge_block::<S, 3, 3>(h, block, tab, sz, at, out),
                        (3, 2) => edge_block::<S, 3, 2>(h, block, tab, sz, at, out),
                        (3, _) => edge_block::<S, 3, 1>(h, block, tab, sz, at, out),
                        (2, 3) => edge_block::<S, 2, 3>(h, block, tab, sz, at, out),
                        (2, 2) => edge_block::<S, 2, 2>(h, block, tab, sz, at, out),
                        (2, _) => edge_block::<S, 2, 1>(h, block, tab, sz, at, out),
                        (_, 3) => edge_block::<S, 1, 3>(h, block, tab, sz, at, out),
                        (_, 2) => edge_block::<S, 1, 2>(h, block, tab, sz, at, out),
                        _ => edge_block::<S, 1, 1>(h, block, tab, sz, at, out),
                    }
                }
                v0 += vb;
            }
            e0 += eb;
        }
    }
}

/// One node: its table from `x` (`[C, G]`), then the rows (`[G, F]` each) of its edges `edges`.
#[inline(always)]
fn node_impl<S: Simd>(
    x: &[f32],
    w: &[f32],
    h: &[f32],
    edges: &[usize],
    sz: Sizes,
    table: &mut [f32],
    rows: &mut [f32],
) {
    table_impl::<S>(x, w, sz, table);
    edges_impl::<S>(h, edges, table, sz, rows);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn node_avx512(
    x: &[f32],
    w: &[f32],
    h: &[f32],
    edges: &[usize],
    sz: Sizes,
    table: &mut [f32],
    rows: &mut [f32],
) {
    node_impl::<simd::x86::Avx512>(x, w, h, edges, sz, table, rows);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn node_avx2(
    x: &[f32],
    w: &[f32],
    h: &[f32],
    edges: &[usize],
    sz: Sizes,
    table: &mut [f32],
    rows: &mut [f32],
) {
    node_impl::<simd::x86::Avx2>(x, w, h, edges, sz, table, rows);
}

fn node(
    x: &[f32],
    w: &[f32],
    h: &[f32],
    edges: &[usize],
    sz: Sizes,
    table: &mut [f32],
    rows: &mut [f32],
) {
    match simd::isa() {
        // SAFETY: `simd::isa()` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { node_avx512(x, w, h, edges, sz, table, rows) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { node_avx2(x, w, h, edges, sz, table, rows) },
        Isa::Plain => node_impl::<Plain>(x, w, h, edges, sz, table, rows),
    }
}

/// The valid edges ordered by node (stable counting sort over `n` nodes) and each node's
/// first position (`n + 1` entries).
fn by_node(idx: &[f32], n: usize) -> (Vec<usize>, Vec<usize>) {
    let node = |v: f32| (v >= 0.0 && (v as usize) < n).then_some(v as usize);
    let mut start = vec![0usize; n + 1];
    for j in idx.iter().filter_map(|&v| node(v)) {
        start[j + 1] += 1;
    }
    for j in 0..n {
        start[j + 1] += start[j];
    }
    let mut next = start.clone();
    let mut order = vec![0; start[n]];
    for (e, j) in idx
        .iter()
        .enumerate()
        .filter_map(|(e, &v)| node(v).map(|j| (e, j)))
    {
        order[next[j]] = e;
        next[j] += 1;
    }
    (order, start)
}

/// Adds the contraction of one `(x [n, C, G], idx)` pair into `out [E, F, G]`.
fn contract_into(
    h: &[f32],
    w: &[f32],
    x: &[f32],
    n: usize,
    idx: &[f32],
    sz: Sizes,
    out: &mut [f32],
) {
    let (gf, cg) = (sz.g * sz.f, sz.c * sz.g);
    if gf == 0 || sz.k == 0 {
        return;
    }
    let (order, start) = by_node(idx, n);
    let mut rows = crate::exec::pool::take(order.len() * gf);
    let mut chunks: Vec<(usize, &mut [f32])> = Vec::with_capacity(n);
    let mut rest: &mut [f32] = &mut rows;
    for j in 0..n {
        let (mine, tail) = rest.split_at_mut((start[j + 1] - start[j]) * gf);
        if !mine.is_empty() {
            chunks.push((j, mine));
        }
        rest = tail;
    }
    chunks.into_par_iter().for_each_init(
        || vec![0.0f32; sz.g * sz.k * sz.fp],
        |table, (j, r)| {
            let edges = &order[start[j]..start[j + 1]];
            node(&x[j * cg..(j + 1) * cg], w, h, edges, sz, table, r);
        },
    );
    for (&e, row) in order.iter().zip(rows.chunks(gf)) {
        let dst = &mut out[e * gf..(e + 1) * gf];
        for gi in 0..sz.g {
            for fi in 0..sz.f {
                dst[fi * sz.g + gi] += row[gi * sz.f + fi];
            }
        }
    }
    crate::exec::pool::give(rows);
}

impl Operator for TableContract {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let hv = View::new(&inp[0].1, &empty);
        let wv = View::new(&inp[1].1, &empty);
        let e = hv.axes.first().map_or(0, |a| a.len);
        let k = self.k;
        let c = wv.axes.first().map_or(0, |a| a.len);
        let f = wv.axes.get(1).map_or(0, |a| a.len) / k.max(1);
        let g = inp.get(2).map_or(0, |(_, st)| {
            View::new(st, &empty).axes.get(2).map_or(0, |a| a.len)
        });
        let fp = f.div_ceil(PAD) * PAD;
        let sz = Sizes { k, f, fp, g, c };
        let h = hv.materialize(buffer(&inp[0].0));
        // `W [C, K F]` with each `k`'s `F` columns padded with zeros to `fp`
        let mut w = crate::exec::pool::take(c * k * fp);
        w.fill(0.0);
        if !w.is_empty() {
            let src = wv.materialize(buffer(&inp[1].0));
            for (row, from) in w.chunks_mut(k * fp).zip(src.chunks(k * f.max(1))) {
                for (dst, part) in row.chunks_mut(fp).zip(from.chunks(f.max(1))) {
                    dst[..part.len()].copy_from_slice(part);
                }
            }
        }
        let mut out = crate::exec::pool::take(e * f * g);
        out.fill(0.0);
        for pair in inp[2..].chunks(2) {
            let [(x, xst), (i, ist)] = pair else { break };
            let xv = View::new(xst, &empty);
            let n = xv.axes.first().map_or(0, |a| a.len);
            debug_assert_eq!(xv.n, n * c * g, "node features of different shapes");
            let xs = xv.materialize(buffer(x));
            let idx = View::new(ist, &empty).materialize(buffer(i));
            contract_into(&h, &w, &xs, n, &idx, sz, &mut out);
        }
        drop(h);
        crate::exec::pool::give(w);
        crate::exec::pool::finish(inp, out)
    }
}
