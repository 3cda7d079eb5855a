//! CPU kernel of [`table_contract`](super::table_contract()): for each `(x, idx)` pair the
//! edges are taken in order of their node (counting sort); nodes run in parallel, each forms
//! its table `T_j = x_j^T W` (`[G, K F]`) in thread-local scratch and contracts it with the
//! hidden units of its edges (results accumulated in registers over `k`), then the rows are
//! added into the output (transposed to `[F, G]`).

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

/// Vectors accumulated in registers at once (edge contraction).
const EDGE_VECTORS: usize = 4;

/// Sizes of one contraction: `K`, `F`, `G`, `C`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    k: usize,
    f: usize,
    g: usize,
    c: usize,
}

/// Orders `g0..g0 + GB` of one node's table, columns `col..col + 2W`:
/// `table[g][col..] = sum_c x[c G + g] w[c][col..]`.
#[inline(always)]
fn table_block<S: Simd, const GB: usize>(
    x: &[f32],
    w: &[f32],
    sz: Sizes,
    (g0, col): (usize, usize),
    table: &mut [f32],
) {
    let kf = sz.k * sz.f;
    let mut acc = [[S::zero(); 2]; GB];
    for ci in 0..sz.c {
        let w0 = S::load(w, ci * kf + col);
        let w1 = S::load(w, ci * kf + col + S::W);
        for (gg, a) in acc.iter_mut().enumerate() {
            let xv = S::splat(x[ci * sz.g + g0 + gg]);
            a[0] = S::fmadd(xv, w0, a[0]);
            a[1] = S::fmadd(xv, w1, a[1]);
        }
    }
    for (gg, a) in acc.iter().enumerate() {
        let at = (g0 + gg) * kf + col;
        S::store(a[0], table, at);
        S::store(a[1], table, at + S::W);
    }
}

/// `table[g][kf] = sum_c x[c G + g] w[c][kf]` (`x`: one node's `[C, G]` features).
#[inline(always)]
fn table_impl<S: Simd>(x: &[f32], w: &[f32], sz: Sizes, table: &mut [f32]) {
    let kf = sz.k * sz.f;
    let wide = kf - kf % (2 * S::W);
    let mut g0 = 0;
    while g0 < sz.g {
        let gb = 4.min(sz.g - g0);
        for col in (0..wide).step_by(2 * S::W) {
            match gb {
                1 => table_block::<S, 1>(x, w, sz, (g0, col), table),
                2 => table_block::<S, 2>(x, w, sz, (g0, col), table),
                3 => table_block::<S, 3>(x, w, sz, (g0, col), table),
                _ => table_block::<S, 4>(x, w, sz, (g0, col), table),
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

/// `row[g F + f] = sum_k h[k] table[g K F + k F + f]` for one edge.
#[inline(always)]
fn edge_impl<S: Simd>(h: &[f32], table: &[f32], sz: Sizes, row: &mut [f32]) {
    let Sizes { k, f, g, .. } = sz;
    let block = EDGE_VECTORS * S::W;
    for gi in 0..g {
        let tab = &table[gi * k * f..(gi + 1) * k * f];
        let out = &mut row[gi * f..(gi + 1) * f];
        let mut f0 = 0;
        while f0 + block <= f {
            let mut acc = [S::zero(); EDGE_VECTORS];
            for (kk, &hk) in h.iter().enumerate() {
                let hv = S::splat(hk);
                for (q, a) in acc.iter_mut().enumerate() {
                    *a = S::fmadd(hv, S::load(tab, kk * f + f0 + q * S::W), *a);
                }
            }
            for (q, a) in acc.iter().enumerate() {
                S::store(*a, out, f0 + q * S::W);
            }
            f0 += block;
        }
        while f0 + S::W <= f {
            let mut acc = S::zero();
            for (kk, &hk) in h.iter().enumerate() {
                acc = S::fmadd(S::splat(hk), S::load(tab, kk * f + f0), acc);
            }
            S::store(acc, out, f0);
            f0 += S::W;
        }
        if f0 < f {
            let o = &mut out[f0..];
            o.fill(0.0);
            for (kk, &hk) in h.iter().enumerate() {
                for (a, &v) in o.iter_mut().zip(&tab[kk * f + f0..(kk + 1) * f]) {
                    *a += hk * v;
                }
            }
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
    let gf = sz.g * sz.f;
    for (&e, row) in edges.iter().zip(rows.chunks_mut(gf)) {
        edge_impl::<S>(&h[e * sz.k..(e + 1) * sz.k], table, sz, row);
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
        drop((h, w));
        crate::exec::pool::finish(inp, out)
    }
}
