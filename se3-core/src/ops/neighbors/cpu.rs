//! CPU kernel of [`neighbors`](super::neighbors): below a few hundred points every pair is
//! compared; above, points are bucketed in a uniform grid and each query visits cells ring by
//! ring until no unvisited cell can hold a closer point (still exact). Candidates enter a
//! best-`k` list ordered by (distance, index), so the result equals the brute-force sort.
//! Queries run in parallel.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, tensor, View};

/// k-nearest / radius neighbours: inputs `coords (N, 3)`, then `mask (N,)` if `masked`, then
/// `batch (N,)` if `batched`; output `(N, k)` indices, `-1` where missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Knn {
    pub k: usize,
    pub radius: Option<f32>,
    pub exclude_self: bool,
    pub masked: bool,
    pub batched: bool,
}

/// Below this many points every pair is compared directly.
const BRUTE_MAX: usize = 384;

/// `(d, j) < (bd, bj)` lexicographically: distance first, then index.
#[inline]
fn before(d: f32, j: usize, bd: f32, bj: usize) -> bool {
    d < bd || (d == bd && j < bj)
}

/// Best-`k` list sorted by (distance, index).
struct Best<'a> {
    d: &'a mut [f32],
    j: &'a mut [usize],
    cnt: usize,
}

impl Best<'_> {
    #[inline]
    fn offer(&mut self, d: f32, j: usize) {
        let k = self.d.len();
        if self.cnt == k && !before(d, j, self.d[k - 1], self.j[k - 1]) {
            return;
        }
        let mut p = self.cnt.min(k - 1);
        while p > 0 && before(d, j, self.d[p - 1], self.j[p - 1]) {
            self.d[p] = self.d[p - 1];
            self.j[p] = self.j[p - 1];
            p -= 1;
        }
        self.d[p] = d;
        self.j[p] = j;
        self.cnt = (self.cnt + 1).min(k);
    }
}

/// A uniform grid over the valid points, points sorted by cell.
struct Grid {
    lo: [f32; 3],
    h: f32,
    dims: [usize; 3],
    start: Vec<usize>,
    points: Vec<usize>,
}

impl Grid {
    fn cell_of(&self, p: [f32; 3]) -> [usize; 3] {
        let mut c = [0usize; 3];
        for a in 0..3 {
            let v = ((p[a] - self.lo[a]) / self.h).floor();
            c[a] = if v.is_finite() && v > 0.0 {
                (v as usize).min(self.dims[a] - 1)
            } else {
                0
            };
        }
        c
    }

    fn flat(&self, c: [usize; 3]) -> usize {
        (c[0] * self.dims[1] + c[1]) * self.dims[2] + c[2]
    }

    fn new(pts: &[[f32; 3]], valid: &[usize]) -> Grid {
        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        for &i in valid {
            for a in 0..3 {
                if pts[i][a].is_finite() {
                    lo[a] = lo[a].min(pts[i][a]);
                    hi[a] = hi[a].max(pts[i][a]);
                }
            }
        }
        let ext: Vec<f32> = (0..3).map(|a| (hi[a] - lo[a]).max(0.0)).collect();
        let lo = [0, 1, 2].map(|a| if lo[a].is_finite() { lo[a] } else { 0.0 });
        let target_cells = (valid.len() / 8).max(1) as f32;
        let emax = ext.iter().fold(0.0f32, |m, v| m.max(*v));
        let mut h = (ext.iter().map(|e| e.max(emax * 1e-3)).product::<f32>() / target_cells).cbrt();
        if !(h.is_finite() && h > 0.0) {
            h = if emax > 0.0 { emax } else { 1.0 };
        }
        let dims_for = |h: f32| [0, 1, 2].map(|a| ((ext[a] / h).floor() as usize + 1).min(4096));
        let mut dims = dims_for(h);
        while dims.iter().product::<usize>() > 4 * valid.len() + 8 {
            h *= 1.5;
            dims = dims_for(h);
        }
        let mut g = Grid {
            lo,
            h,
            dims,
            start: vec![],
            points: vec![],
        };
        let ncell: usize = dims.iter().product();
        let cells: Vec<usize> = valid.iter().map(|&i| g.flat(g.cell_of(pts[i]))).collect();
        let mut start = vec![0usize; ncell + 1];
        for &c in &cells {
            start[c + 1] += 1;
        }
        for c in 0..ncell {
            start[c + 1] += start[c];
        }
        let mut fill = start.clone();
        let mut points = vec![0usize; valid.len()];
        for (&i, &c) in valid.iter().zip(&cells) {
            points[fill[c]] = i;
            fill[c] += 1;
        }
        g.start = start;
        g.points = points;
        g
    }
}

/// The neighbour lists of all points (row-major `(n, k)`, `-1` padded).
pub(crate) fn knn(
    x: &[f32],
    mask: Option<&[f32]>,
    batch: Option<&[f32]>,
    k: usize,
    radius: Option<f32>,
    exclude_self: bool,
) -> Vec<f32> {
    let n = x.len() / 3;
    let pts: Vec<[f32; 3]> = x.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    let r2 = radius.map(|r| r * r).unwrap_or(f32::INFINITY);
    let on = |j: usize| mask.map(|m| m[j] != 0.0).unwrap_or(true);
    let mut out = vec![-1.0f32; n * k];
    if k == 0 || n == 0 {
        return out;
    }
    // Points are searched within their batch item only: one candidate list (and grid) each.
    let mut group_of = vec![0usize; n];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut keys: rustc_hash::FxHashMap<u32, usize> = Default::default();
    for (j, g) in group_of.iter_mut().enumerate() {
        let key = batch.map(|b| b[j].to_bits()).unwrap_or(0);
        let next = keys.len();
        *g = *keys.entry(key).or_insert(next);
        if *g == groups.len() {
            groups.push(Vec::new());
        }
        if on(j) {
            groups[*g].push(j);
        }
    }
    let dist = |i: usize, j: usize| {
        let (p, q) = (pts[i], pts[j]);
        let (dx, dy, dz) = (q[0] - p[0], q[1] - p[1], q[2] - p[2]);
        dx * dx + dy * dy + dz * dz
    };
    let grids: Vec<Option<Grid>> = groups
        .iter()
        .map(|valid| (valid.len() > BRUTE_MAX).then(|| Grid::new(&pts, valid)))
        .collect();
    out.par_chunks_mut(k).enumerate().for_each_init(
        || (vec![0.0f32; k], vec![0usize; k]),
        |(bd, bj), (i, row)| {
            if !on(i) {
                return;
            }
            let mut best = Best {
                d: bd,
                j: bj,
                cnt: 0,
            };
            let consider = |best: &mut Best, j: usize| {
                if exclude_self && j == i {
                    return;
                }
                let d = dist(i, j);
                if d <= r2 {
                    best.offer(d, j);
                }
            };
            let valid = &groups[group_of[i]];
            match &grids[group_of[i]] {
                None => valid.iter().for_each(|&j| consider(&mut best, j)),
                Some(g) => {
                    let c = g.cell_of(pts[i]);
                    let max_ring = g.dims.iter().copied().max().unwrap_or(1);
                    for ring in 0..=max_ring {
                        let r = ring as i64;
                        for dx in -r..=r {
                            for dy in -r..=r {
                                let edge = dx.abs() == r || dy.abs() == r;
                                let mut dz = -r;
                                while dz <= r {
                                    let cell =
                                        [c[0] as i64 + dx, c[1] as i64 + dy, c[2] as i64 + dz];
                                    let inside =
                                        (0..3).all(|a| cell[a] >= 0 && cell[a] < g.dims[a] as i64);
                                    if inside {
                                        let f = g.flat(cell.map(|v| v as usize));
                                        for &j in &g.points[g.start[f]..g.start[f + 1]] {
                                            consider(&mut best, j);
                                        }
                                    }
                                    dz += if edge || r == 0 { 1 } else { 2 * r };
                                }
                            }
                        }
                        // Unvisited points lie at least ring * h away along some axis.
                        let reach = (ring as f32 * g.h * (1.0 - 1e-4)).max(0.0);
                        let bound = reach * reach;
                        let full = best.cnt == k && best.d[k - 1] < bound;
                        if full || bound > r2 {
                            break;
                        }
                    }
                }
            }
            for (o, &j) in row.iter_mut().zip(&best.j[..best.cnt]) {
                *o = j as f32;
            }
        },
    );
    out
}

impl Operator for Knn {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let xv = View::new(&inp[0].1, &empty);
        let x = xv.materialize(buffer(&inp[0].0));
        let read = |i: usize| {
            inp.get(i)
                .map(|(t, st)| View::new(st, &empty).materialize(buffer(t)).into_owned())
        };
        let mask = if self.masked { read(1) } else { None };
        let batch = if self.batched {
            read(1 + self.masked as usize)
        } else {
            None
        };
        vec![tensor(knn(
            &x,
            mask.as_deref(),
            batch.as_deref(),
            self.k,
            self.radius,
            self.exclude_self,
        ))]
    }
}

/// 1 where an index is present (>= 0), else 0.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexValid;

impl Operator for IndexValid {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let v = View::new(&inp[0].1, &Default::default());
        let idx = v.materialize(buffer(&inp[0].0));
        vec![tensor(
            idx.iter()
                .map(|i| if *i >= 0.0 { 1.0 } else { 0.0 })
                .collect(),
        )]
    }
}

/// Centre index of each flattened neighbour slot: `i` for slot `i * k + j` when that neighbour
/// is present, `-1` otherwise. Input `idx (N, k)`, output `(N * k,)`.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeCenters {
    pub k: usize,
}

impl Operator for EdgeCenters {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let v = View::new(&inp[0].1, &Default::default());
        let idx = v.materialize(buffer(&inp[0].0));
        let k = self.k.max(1);
        vec![tensor(
            idx.iter()
                .enumerate()
                .map(|(p, i)| if *i >= 0.0 { (p / k) as f32 } else { -1.0 })
                .collect(),
        )]
    }
}
