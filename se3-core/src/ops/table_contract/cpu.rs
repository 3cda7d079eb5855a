//! CPU kernel of [`table_contract`](super::table_contract()): for each `(table, idx)` pair the
//! edges are taken in order of their node (counting sort), blocks of them in parallel, each
//! edge's `[G, F]` result accumulated in registers over `k`, then added into the output
//! (transposed to `[F, G]`).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::simd::{self, Isa};
use crate::exec::view::{buffer, View};

/// `out[e, f, g] = sum_r sum_k h[e, k] T_r[idx_r[e], g, k, f]`; inputs `h`, then `(T_r, idx_r)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableContract {
    /// The contracted width `K` (columns of `h`).
    pub k: usize,
}

/// Output columns accumulated in registers at once.
const LANES: usize = 32;

/// Sorted edges per parallel task.
const EDGES_PER_TASK: usize = 32;

/// Sizes of one contraction: `K`, `F`, `G`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    k: usize,
    f: usize,
    g: usize,
}

/// `row[g F + f] = sum_k h[k] block[(g K + k) F + f]` for one edge (`block`: its node's table).
#[inline(always)]
fn edge_impl(h: &[f32], block: &[f32], sz: Sizes, row: &mut [f32]) {
    let Sizes { k, f, g } = sz;
    for gi in 0..g {
        let tab = &block[gi * k * f..(gi + 1) * k * f];
        let out = &mut row[gi * f..(gi + 1) * f];
        let mut f0 = 0;
        while f0 + LANES <= f {
            let mut acc = [0.0f32; LANES];
            for (kk, &hk) in h.iter().enumerate() {
                let t = &tab[kk * f + f0..kk * f + f0 + LANES];
                for (a, &v) in acc.iter_mut().zip(t) {
                    *a += hk * v;
                }
            }
            out[f0..f0 + LANES].copy_from_slice(&acc);
            f0 += LANES;
        }
        if f0 < f {
            let w = f - f0;
            let mut acc = [0.0f32; LANES];
            for (kk, &hk) in h.iter().enumerate() {
                let t = &tab[kk * f + f0..kk * f + f];
                for (a, &v) in acc[..w].iter_mut().zip(t) {
                    *a += hk * v;
                }
            }
            out[f0..f].copy_from_slice(&acc[..w]);
        }
    }
}

/// One task: the sorted edges `order` (with their node `node[p]`) into `rows` (`[G, F]` each).
#[inline(always)]
fn task_impl(h: &[f32], table: &[f32], order: &[(usize, usize)], sz: Sizes, rows: &mut [f32]) {
    let (gkf, gf) = (sz.g * sz.k * sz.f, sz.g * sz.f);
    for (&(e, j), row) in order.iter().zip(rows.chunks_mut(gf.max(1))) {
        edge_impl(
            &h[e * sz.k..(e + 1) * sz.k],
            &table[j * gkf..(j + 1) * gkf],
            sz,
            row,
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn task_avx512(h: &[f32], table: &[f32], order: &[(usize, usize)], sz: Sizes, rows: &mut [f32]) {
    task_impl(h, table, order, sz, rows);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn task_avx2(h: &[f32], table: &[f32], order: &[(usize, usize)], sz: Sizes, rows: &mut [f32]) {
    task_impl(h, table, order, sz, rows);
}

fn task(h: &[f32], table: &[f32], order: &[(usize, usize)], sz: Sizes, rows: &mut [f32]) {
    match simd::isa() {
        // SAFETY: `simd::isa()` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { task_avx512(h, table, order, sz, rows) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { task_avx2(h, table, order, sz, rows) },
        Isa::Plain => task_impl(h, table, order, sz, rows),
    }
}

/// The valid edges `(e, idx[e])` ordered by node (stable counting sort over `n` nodes).
fn by_node(idx: &[f32], n: usize) -> Vec<(usize, usize)> {
    let node = |v: f32| (v >= 0.0 && (v as usize) < n).then_some(v as usize);
    let mut start = vec![0usize; n + 1];
    for j in idx.iter().filter_map(|&v| node(v)) {
        start[j + 1] += 1;
    }
    for j in 0..n {
        start[j + 1] += start[j];
    }
    let mut order = vec![(0, 0); start[n]];
    for (e, j) in idx.iter().enumerate().filter_map(|(e, &v)| node(v).map(|j| (e, j))) {
        order[start[j]] = (e, j);
        start[j] += 1;
    }
    order
}

/// Adds the contraction of one `(table [n, G, K F], idx)` pair into `out [E, F, G]`.
fn contract_into(h: &[f32], table: &[f32], n: usize, idx: &[f32], sz: Sizes, out: &mut [f32]) {
    let gf = sz.g * sz.f;
    if gf == 0 || sz.k == 0 {
        return;
    }
    let order = by_node(idx, n);
    let mut rows = crate::exec::pool::take(order.len() * gf);
    rows.par_chunks_mut(EDGES_PER_TASK * gf)
        .zip(order.par_chunks(EDGES_PER_TASK))
        .for_each(|(r, o)| task(h, table, o, sz, r));
    for (&(e, _), row) in order.iter().zip(rows.chunks(gf)) {
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
        let e = hv.axes.first().map_or(0, |a| a.len);
        let k = self.k;
        let h = hv.materialize(buffer(&inp[0].0));
        let (mut f, mut g) = (0, 0);
        if let Some((_, st)) = inp.get(1) {
            let tv = View::new(st, &empty);
            g = tv.axes.get(1).map_or(0, |a| a.len);
            f = tv.axes.get(2).map_or(0, |a| a.len) / k.max(1);
        }
        let sz = Sizes { k, f, g };
        let mut out = crate::exec::pool::take(e * f * g);
        out.fill(0.0);
        for pair in inp[1..].chunks(2) {
            let [(t, tst), (i, ist)] = pair else { break };
            let tv = View::new(tst, &empty);
            let n = tv.axes.first().map_or(0, |a| a.len);
            debug_assert_eq!(tv.n, n * g * k * f, "tables of different shapes");
            let table = tv.materialize(buffer(t));
            let idx = View::new(ist, &empty).materialize(buffer(i));
            contract_into(&h, &table, n, &idx, sz, &mut out);
        }
        crate::exec::pool::finish(inp, out)
    }
}
