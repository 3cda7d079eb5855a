//! CPU kernel of [`table_contract`](super::table_contract()): for each `(x, idx)` pair the
//! edges are taken in order of their node (counting sort); nodes run in parallel, each forms
//! its table `T_j = x_j^T W` (`[G, K F]`) in thread-local scratch and contracts it with the
//! hidden units of its edges (results accumulated in registers over `k`), then the rows are
//! added into the output (transposed to `[F, G]`).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::simd::{self, Isa};
use crate::exec::view::{buffer, View};

/// `out[e, f, g] = sum_r sum_k h[e, k] sum_c x_r[idx_r[e], c, g] W[c, k F + f]`; inputs `h`,
/// `W`, then `(x_r, idx_r)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableContract {
    /// The contracted width `K` (columns of `h`).
    pub k: usize,
}

/// Output columns accumulated in registers at once (edge contraction).
const LANES: usize = 32;

/// Table columns per register block, and orders `g` per block (table formation).
const TABLE_LANES: usize = 16;
const TABLE_ORDERS: usize = 4;

/// Sizes of one contraction: `K`, `F`, `G`, `C`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    k: usize,
    f: usize,
    g: usize,
    c: usize,
}

/// `table[g][kf] = sum_c x[c G + g] w[c][kf]` (`x`: one node's `[C, G]` features).
#[inline(always)]
fn table_impl(x: &[f32], w: &[f32], sz: Sizes, table: &mut [f32]) {
    let Sizes { k, f, g, c } = sz;
    let kf = k * f;
    let mut g0 = 0;
    while g0 < g {
        let gb = TABLE_ORDERS.min(g - g0);
        let mut col = 0;
        while col < kf {
            let w_cols = TABLE_LANES.min(kf - col);
            let mut acc = [[0.0f32; TABLE_LANES]; TABLE_ORDERS];
            if w_cols == TABLE_LANES {
                for ci in 0..c {
                    let wr = &w[ci * kf + col..ci * kf + col + TABLE_LANES];
                    for (gg, a) in acc.iter_mut().enumerate().take(gb) {
                        let xv = x[ci * g + g0 + gg];
                        for (s, &v) in a.iter_mut().zip(wr) {
                            *s += xv * v;
                        }
                    }
                }
            } else {
                for ci in 0..c {
                    let wr = &w[ci * kf + col..ci * kf + col + w_cols];
                    for (gg, a) in acc.iter_mut().enumerate().take(gb) {
                        let xv = x[ci * g + g0 + gg];
                        for (s, &v) in a.iter_mut().zip(wr) {
                            *s += xv * v;
                        }
                    }
                }
            }
            for (gg, a) in acc.iter().enumerate().take(gb) {
                let at = (g0 + gg) * kf + col;
                table[at..at + w_cols].copy_from_slice(&a[..w_cols]);
            }
            col += w_cols;
        }
        g0 += gb;
    }
}

/// `row[g F + f] = sum_k h[k] table[g K F + k F + f]` for one edge.
#[inline(always)]
fn edge_impl(h: &[f32], table: &[f32], sz: Sizes, row: &mut [f32]) {
    let Sizes { k, f, g, .. } = sz;
    for gi in 0..g {
        let tab = &table[gi * k * f..(gi + 1) * k * f];
        let out = &mut row[gi * f..(gi + 1) * f];
        let mut f0 = 0;
        while f0 < f {
            let w = LANES.min(f - f0);
            let mut acc = [0.0f32; LANES];
            if w == LANES {
                for (kk, &hk) in h.iter().enumerate() {
                    let t = &tab[kk * f + f0..kk * f + f0 + LANES];
                    for (a, &v) in acc.iter_mut().zip(t) {
                        *a += hk * v;
                    }
                }
            } else {
                for (kk, &hk) in h.iter().enumerate() {
                    let t = &tab[kk * f + f0..kk * f + f0 + w];
                    for (a, &v) in acc.iter_mut().zip(t) {
                        *a += hk * v;
                    }
                }
            }
            out[f0..f0 + w].copy_from_slice(&acc[..w]);
            f0 += w;
        }
    }
}

/// One node: its table from `x` (`[C, G]`), then the rows (`[G, F]` each) of its edges `edges`.
#[inline(always)]
fn node_impl(
    x: &[f32],
    w: &[f32],
    h: &[f32],
    edges: &[usize],
    sz: Sizes,
    table: &mut [f32],
    rows: &mut [f32],
) {
    table_impl(x, w, sz, table);
    let gf = sz.g * sz.f;
    for (&e, row) in edges.iter().zip(rows.chunks_mut(gf)) {
        edge_impl(&h[e * sz.k..(e + 1) * sz.k], table, sz, row);
    }
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
    node_impl(x, w, h, edges, sz, table, rows);
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
    node_impl(x, w, h, edges, sz, table, rows);
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
        Isa::Plain => node_impl(x, w, h, edges, sz, table, rows),
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
        || vec![0.0f32; sz.g * sz.k * sz.f],
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
        let sz = Sizes { k, f, g, c };
        let h = hv.materialize(buffer(&inp[0].0));
        let w = wv.materialize(buffer(&inp[1].0));
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
        crate::exec::pool::finish(inp, out)
    }
}
