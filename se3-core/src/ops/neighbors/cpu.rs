//! CPU kernel of [`neighbors`](super::neighbors): the exact cell-grid search of
//! [`grid`](super::grid) in float32, queries in parallel.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::grid::{nearest_neighbors, SearchSpec};
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

/// The neighbour lists of all points (row-major `(n, k)`, `-1` padded): the search of
/// [`grid`](super::grid) in float32, mask entries `!= 0` taking part, batch ids compared exactly.
pub(crate) fn knn(
    x: &[f32],
    mask: Option<&[f32]>,
    batch: Option<&[f32]>,
    k: usize,
    radius: Option<f32>,
    exclude_self: bool,
) -> Vec<f32> {
    let pts: Vec<[f32; 3]> = x.chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
    let mask: Option<Vec<bool>> = mask.map(|m| m.iter().map(|&v| v != 0.0).collect());
    let batch: Option<Vec<u32>> = batch.map(|b| b.iter().map(|v| v.to_bits()).collect());
    let spec = SearchSpec {
        k,
        radius2: radius.map_or(f32::INFINITY, |r| r * r),
        exclude_self,
        mask: mask.as_deref(),
        batch: batch.as_deref(),
    };
    let lists = nearest_neighbors(&pts, &spec);
    lists
        .idx
        .iter()
        .map(|&j| if j == usize::MAX { -1.0 } else { j as f32 })
        .collect()
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
