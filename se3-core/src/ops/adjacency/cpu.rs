//! CPU kernel of [`adjacency_degrees`](super::adjacency_degrees): boolean matrix squaring on
//! adjacency lists (sparse rows), parallel over rows.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, tensor, View};

/// Degree indices of an adjacency matrix; input `(N, N)`, output `(N, N)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdjacencyDegrees {
    pub degrees: usize,
}

impl Operator for AdjacencyDegrees {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let v = View::new(&inp[0].1, &Default::default());
        let a = v.materialize(buffer(&inp[0].0));
        let n = v.axes.first().map(|x| x.len).unwrap_or(0);
        let mut cur: Vec<bool> = a.iter().map(|x| *x != 0.0).collect();
        let mut out: Vec<f32> = cur.iter().map(|b| if *b { 1.0 } else { 0.0 }).collect();
        for d in 2..=self.degrees {
            let lists: Vec<Vec<usize>> = (0..n)
                .map(|i| (0..n).filter(|&k| cur[i * n + k]).collect())
                .collect();
            let next: Vec<bool> = (0..n)
                .into_par_iter()
                .flat_map_iter(|i| {
                    let mut row = vec![false; n];
                    for &k in &lists[i] {
                        for &j in &lists[k] {
                            row[j] = true;
                        }
                    }
                    row
                })
                .collect();
            for p in 0..n * n {
                if next[p] != cur[p] {
                    out[p] = d as f32;
                }
            }
            cur = next;
        }
        vec![tensor(out)]
    }
}
