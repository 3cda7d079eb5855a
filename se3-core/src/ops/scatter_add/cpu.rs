//! CPU kernel of [`scatter_add`](super::scatter_add): small outputs are summed in one serial
//! pass over the edges; large ones bucket edges by destination (a counting sort, O(E)) and
//! sum each destination's edges in parallel. Both sum in edge order, so the result does not
//! depend on the path or the thread count.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, View, PAR_MIN};

/// Scatter-add: inputs `src (E, C)`, `idx (E,)`, a size carrier `(N,)`; output `(N, C)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterAdd;

/// Outputs up to this many elements are summed in one serial pass.
const SERIAL_MAX: usize = 1 << 18;

/// Edges grouped by destination: `order[start[n]..start[n + 1]]` are the edges into `n`, in
/// edge order. Invalid indices are left out.
pub(crate) struct Buckets {
    pub start: Vec<usize>,
    pub order: Vec<usize>,
}

pub(crate) fn buckets(idx: &[f32], n: usize) -> Buckets {
    let mut start = vec![0usize; n + 1];
    for &i in idx {
        if i >= 0.0 && (i as usize) < n {
            start[i as usize + 1] += 1;
        }
    }
    for k in 0..n {
        start[k + 1] += start[k];
    }
    let mut fill = start.clone();
    let mut order = vec![0usize; start[n]];
    for (e, &i) in idx.iter().enumerate() {
        if i >= 0.0 && (i as usize) < n {
            let d = i as usize;
            order[fill[d]] = e;
            fill[d] += 1;
        }
    }
    Buckets { start, order }
}

/// Row-major scatter-add of `src (E, C)` into `out (N, C)`.
pub(crate) fn scatter_rows(src: &[f32], c: usize, idx: &[f32], out: &mut [f32]) {
    if c == 0 {
        return;
    }
    let n = out.len() / c;
    if out.len() <= SERIAL_MAX {
        // The output stays in cache: one pass in edge order (the same summation order as the
        // bucketed path, so results do not depend on which path runs).
        out.fill(0.0);
        for (e, &i) in idx.iter().enumerate() {
            if i >= 0.0 && (i as usize) < n {
                let d = i as usize;
                out[d * c..(d + 1) * c]
                    .iter_mut()
                    .zip(&src[e * c..(e + 1) * c])
                    .for_each(|(a, s)| *a += s);
            }
        }
        return;
    }
    let b = buckets(idx, n);
    let row = |(d, o): (usize, &mut [f32])| {
        o.fill(0.0);
        for &e in &b.order[b.start[d]..b.start[d + 1]] {
            o.iter_mut()
                .zip(&src[e * c..(e + 1) * c])
                .for_each(|(a, s)| *a += s);
        }
    };
    if src.len() >= PAR_MIN {
        out.par_chunks_mut(c).enumerate().for_each(row);
    } else {
        out.chunks_mut(c).enumerate().for_each(row);
    }
}

impl Operator for ScatterAdd {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let (sv, iv, nv) = (
            View::new(&inp[0].1, &empty),
            View::new(&inp[1].1, &empty),
            View::new(&inp[2].1, &empty),
        );
        // Rows are everything after the first axis (rank-2 and rank-3 sources).
        let (c, n) = (sv.axes[1..].iter().map(|a| a.len).product(), nv.axes[0].len);
        let src = sv.materialize(buffer(&inp[0].0));
        let idx = iv.materialize(buffer(&inp[1].0));
        let mut out = crate::exec::pool::take(n * c);
        scatter_rows(&src, c, &idx, &mut out);
        drop((src, idx));
        crate::exec::pool::finish(inp, out)
    }
}
