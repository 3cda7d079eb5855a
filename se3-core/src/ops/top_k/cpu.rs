//! CPU kernels of [`top_k`](super::top_k) and [`take_along_rows`](super::take_along_rows),
//! parallel over rows.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, tensor, View};

/// Top-k per row: inputs `scores (N, M)` and, if `masked`, `mask (N, M)`; output `(N, k)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    pub k: usize,
    pub largest: bool,
    pub masked: bool,
}

impl Operator for TopK {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let sv = View::new(&inp[0].1, &empty);
        let (n, m) = (sv.axes[0].len, sv.axes[1].len);
        let scores = sv.materialize(buffer(&inp[0].0));
        let mask = if self.masked {
            inp.get(1)
                .map(|(t, st)| View::new(st, &empty).materialize(buffer(t)).into_owned())
        } else {
            None
        };
        let (k, largest) = (self.k, self.largest);
        let mut out = vec![-1.0f32; n * k];
        if k == 0 {
            return vec![tensor(out)];
        }
        // Keys are negated for `largest`, so "smaller key, then smaller index" is always best.
        out.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            let mut best: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
            for j in 0..m {
                if mask
                    .as_ref()
                    .map(|mk| mk[i * m + j] == 0.0)
                    .unwrap_or(false)
                {
                    continue;
                }
                let v = scores[i * m + j];
                let key = if largest { -v } else { v };
                if key.is_nan() {
                    continue;
                }
                if best.len() == k && key >= best[k - 1].0 {
                    continue;
                }
                let p = best.partition_point(|(b, _)| *b <= key);
                best.insert(p, (key, j));
                best.truncate(k);
            }
            for (o, (_, j)) in row.iter_mut().zip(&best) {
                *o = *j as f32;
            }
        });
        vec![tensor(out)]
    }
}

/// `out[i, k] = values[i, idx[i, k]]`, 0 for `-1`: inputs `values (N, M)`, `idx (N, K)`.
#[derive(Debug, Clone, PartialEq)]
pub struct TakeAlongRows;

impl Operator for TakeAlongRows {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let (vv, iv) = (View::new(&inp[0].1, &empty), View::new(&inp[1].1, &empty));
        let m = vv.axes[1].len;
        let k = iv.axes[1].len.max(1);
        let values = vv.materialize(buffer(&inp[0].0));
        let idx = iv.materialize(buffer(&inp[1].0));
        let out = idx
            .iter()
            .enumerate()
            .map(|(p, &j)| {
                let i = p / k;
                if j >= 0.0 && (j as usize) < m {
                    values[i * m + j as usize]
                } else {
                    0.0
                }
            })
            .collect();
        vec![tensor(out)]
    }
}
