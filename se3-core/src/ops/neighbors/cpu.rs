//! CPU kernel of [`neighbors`](super::neighbors): coordinates in structure-of-arrays form, a
//! vectorisable distance row per query, then a bounded insertion into the sorted best `k`;
//! queries run in parallel.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, tensor, View};

/// k-nearest / radius neighbours: inputs `coords (N, 3)` and optionally `mask (N,)`; output
/// `(N, k)` indices, `-1` where missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Knn {
    pub k: usize,
    pub radius: Option<f32>,
    pub exclude_self: bool,
}

/// The neighbour lists of all points (row-major `(n, k)`, `-1` padded).
pub(crate) fn knn(
    x: &[f32],
    mask: Option<&[f32]>,
    k: usize,
    radius: Option<f32>,
    exclude_self: bool,
) -> Vec<f32> {
    let n = x.len() / 3;
    let (xs, ys, zs): (Vec<f32>, Vec<f32>, Vec<f32>) = (
        x.chunks_exact(3).map(|p| p[0]).collect(),
        x.chunks_exact(3).map(|p| p[1]).collect(),
        x.chunks_exact(3).map(|p| p[2]).collect(),
    );
    let r2 = radius.map(|r| r * r).unwrap_or(f32::INFINITY);
    let on = |j: usize| mask.map(|m| m[j] != 0.0).unwrap_or(true);
    let mut out = vec![-1.0f32; n * k];
    if k == 0 {
        return out;
    }
    out.par_chunks_mut(k).enumerate().for_each_init(
        || (vec![0.0f32; n], vec![0.0f32; k], vec![0usize; k]),
        |(dist, bd, bj), (i, row)| {
            if !on(i) {
                return;
            }
            let (px, py, pz) = (xs[i], ys[i], zs[i]);
            for (j, d) in dist.iter_mut().enumerate() {
                let (dx, dy, dz) = (xs[j] - px, ys[j] - py, zs[j] - pz);
                *d = dx * dx + dy * dy + dz * dz;
            }
            let mut cnt = 0usize;
            for (j, &d) in dist.iter().enumerate() {
                if d > r2 || (cnt == k && d >= bd[k - 1]) || (exclude_self && j == i) || !on(j) {
                    continue;
                }
                // Insert after every entry <= d: ties keep increasing index order.
                let mut p = cnt.min(k - 1);
                while p > 0 && bd[p - 1] > d {
                    if p < k {
                        bd[p] = bd[p - 1];
                        bj[p] = bj[p - 1];
                    }
                    p -= 1;
                }
                bd[p] = d;
                bj[p] = j;
                cnt = (cnt + 1).min(k);
            }
            for (o, &j) in row.iter_mut().zip(&bj[..cnt]) {
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
        let mask = inp
            .get(1)
            .map(|(t, st)| View::new(st, &empty).materialize(buffer(t)).into_owned());
        vec![tensor(knn(
            &x,
            mask.as_deref(),
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
