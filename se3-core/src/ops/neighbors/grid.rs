//! The exact neighbour search behind [`neighbors`](super::neighbors), on the host, in float32 (the
//! graph op) or float64 (hosts that select in double precision, e.g. the SE(3)-Transformer's
//! selection on large clouds): below a few hundred candidates every pair is compared; above,
//! candidates are bucketed in a uniform cell grid and each query visits cells ring by ring until
//! no unvisited cell can hold a closer point. Candidates enter a best-`k` list ordered by
//! (distance, index), so the result equals the brute-force sort of all pairs (the module rules).
//! Time about O(n k) on clouds of roughly uniform density, memory O(n + k) per query.

use std::ops::{Add, Mul, Sub};

use rayon::prelude::*;

/// Below this many candidates every pair is compared directly.
const BRUTE_MAX: usize = 384;

/// A coordinate type the search runs in: distances are `dx² + dy² + dz²` in this type.
pub trait Real:
    Copy + PartialOrd + Send + Sync + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    /// Positive infinity (no radius).
    const INFINITY: Self;
    /// The value as f64 (exact for f32 and f64), for the cell grid.
    fn to_f64(self) -> f64;
}

impl Real for f32 {
    const INFINITY: Self = f32::INFINITY;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Real for f64 {
    const INFINITY: Self = f64::INFINITY;
    fn to_f64(self) -> f64 {
        self
    }
}

/// Which points take part and how neighbours are chosen.
#[derive(Debug, Clone, Copy)]
pub struct SearchSpec<'a, T> {
    /// Neighbours per point.
    pub k: usize,
    /// Squared radius: a neighbour needs `d² <= radius2` (infinity: no limit).
    pub radius2: T,
    /// A point is never its own neighbour (a duplicate point still is).
    pub exclude_self: bool,
    /// `false` for a point that is neither a centre nor a neighbour (None: all take part).
    pub mask: Option<&'a [bool]>,
    /// Cloud id of each point (compared by bits); neighbours never cross clouds.
    pub batch: Option<&'a [u32]>,
}

/// Neighbour lists of every point: row `i` holds `count[i] <= k` neighbours in (distance, index)
/// order, `idx[i * k + s]` and their squared distances `dist2[i * k + s]`; slots past the count
/// hold `usize::MAX` and infinity.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighborLists<T> {
    /// Neighbours per row (the row width).
    pub k: usize,
    /// Neighbour indices, `n * k`.
    pub idx: Vec<usize>,
    /// Squared distances, `n * k`.
    pub dist2: Vec<T>,
    /// Neighbours found per row.
    pub count: Vec<usize>,
}

impl<T: Copy> NeighborLists<T> {
    /// The neighbours of point `i`: `(index, squared distance)` in order.
    pub fn row(&self, i: usize) -> impl Iterator<Item = (usize, T)> + '_ {
        let r = i * self.k..i * self.k + self.count[i];
        self.idx[r.clone()]
            .iter()
            .copied()
            .zip(self.dist2[r].iter().copied())
    }
}

/// `(d, j) < (bd, bj)` lexicographically: distance first, then index.
#[inline]
fn before<T: Real>(d: T, j: usize, bd: T, bj: usize) -> bool {
    d < bd || (d == bd && j < bj)
}

/// Best-`k` list sorted by (distance, index).
struct Best<'a, T> {
    d: &'a mut [T],
    j: &'a mut [usize],
    cnt: usize,
}

impl<T: Real> Best<'_, T> {
    #[inline]
    fn offer(&mut self, d: T, j: usize) {
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

/// A uniform grid over the candidate points (in f64), points sorted by cell.
struct Grid {
    lo: [f64; 3],
    h: f64,
    dims: [usize; 3],
    start: Vec<usize>,
    points: Vec<usize>,
}

impl Grid {
    fn cell_of<T: Real>(&self, p: [T; 3]) -> [usize; 3] {
        let mut c = [0usize; 3];
        for a in 0..3 {
            let v = ((p[a].to_f64() - self.lo[a]) / self.h).floor();
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

    fn new<T: Real>(pts: &[[T; 3]], valid: &[usize]) -> Grid {
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for &i in valid {
            for a in 0..3 {
                let v = pts[i][a].to_f64();
                if v.is_finite() {
                    lo[a] = lo[a].min(v);
                    hi[a] = hi[a].max(v);
                }
            }
        }
        let ext: Vec<f64> = (0..3).map(|a| (hi[a] - lo[a]).max(0.0)).collect();
        let lo = [0, 1, 2].map(|a| if lo[a].is_finite() { lo[a] } else { 0.0 });
        // about 8 points a cell
        let target_cells = (valid.len() / 8).max(1) as f64;
        let emax = ext.iter().fold(0.0f64, |m, v| m.max(*v));
        let mut h = (ext.iter().map(|e| e.max(emax * 1e-3)).product::<f64>() / target_cells).cbrt();
        if !(h.is_finite() && h > 0.0) {
            h = if emax > 0.0 { emax } else { 1.0 };
        }
        let dims_for = |h: f64| [0, 1, 2].map(|a| ((ext[a] / h).floor() as usize + 1).min(4096));
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

/// The neighbour lists of all points of `pts` under `spec` (module rules; exact).
pub fn nearest_neighbors<T: Real>(pts: &[[T; 3]], spec: &SearchSpec<'_, T>) -> NeighborLists<T> {
    let n = pts.len();
    let k = spec.k;
    let mut lists = NeighborLists {
        k,
        idx: vec![usize::MAX; n * k],
        dist2: vec![T::INFINITY; n * k],
        count: vec![0; n],
    };
    if k == 0 || n == 0 {
        return lists;
    }
    let on = |j: usize| spec.mask.is_none_or(|m| m[j]);
    // Points are searched within their batch item only: one candidate list (and grid) each.
    let mut group_of = vec![0usize; n];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut keys: rustc_hash::FxHashMap<u32, usize> = Default::default();
    for (j, g) in group_of.iter_mut().enumerate() {
        let key = spec.batch.map_or(0, |b| b[j]);
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
        .map(|valid| (valid.len() > BRUTE_MAX).then(|| Grid::new(pts, valid)))
        .collect();
    let r2 = spec.radius2;
    let r2_f64 = r2.to_f64();
    lists
        .idx
        .par_chunks_mut(k)
        .zip(lists.dist2.par_chunks_mut(k))
        .zip(lists.count.par_iter_mut())
        .enumerate()
        .for_each(|(i, ((row_j, row_d), count))| {
            if !on(i) {
                return;
            }
            let mut best = Best {
                d: row_d,
                j: row_j,
                cnt: 0,
            };
            let consider = |best: &mut Best<T>, j: usize| {
                if spec.exclude_self && j == i {
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
                        let reach = (ring as f64 * g.h * (1.0 - 1e-4)).max(0.0);
                        let bound = reach * reach;
                        let full = best.cnt == k && best.d[k - 1].to_f64() < bound;
                        if full || bound > r2_f64 {
                            break;
                        }
                    }
                }
            }
            *count = best.cnt;
        });
    lists
}
