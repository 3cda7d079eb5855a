//! CPU kernel of [`segment_softmax`](super::segment_softmax), parallel over segments.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, View, PAR_MIN};
use crate::ops::scatter_add::cpu_buckets;

/// Segment softmax: inputs `logits (E, H)`, `seg (E,)`, size carrier `(N,)`; output `(E, H)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSoftmax;

impl Operator for SegmentSoftmax {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let (xv, sv, nv) = (
            View::new(&inp[0].1, &empty),
            View::new(&inp[1].1, &empty),
            View::new(&inp[2].1, &empty),
        );
        let (e, h, n) = (xv.axes[0].len, xv.axes[1].len, nv.axes[0].len);
        let x = xv.materialize(buffer(&inp[0].0));
        let seg = sv.materialize(buffer(&inp[1].0));
        let b = cpu_buckets(&seg, n);
        let mut out = crate::exec::pool::take(e * h);
        let per_segment = |d: usize| -> Vec<(usize, f32)> {
            let edges = &b.order[b.start[d]..b.start[d + 1]];
            let mut res = Vec::with_capacity(edges.len() * h);
            for k in 0..h {
                let m = edges
                    .iter()
                    .map(|&j| x[j * h + k])
                    .fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = edges.iter().map(|&j| (x[j * h + k] - m).exp()).sum();
                for &j in edges {
                    res.push((j * h + k, (x[j * h + k] - m).exp() / z));
                }
            }
            res
        };
        let parts: Vec<Vec<(usize, f32)>> = if e * h >= PAR_MIN {
            (0..n).into_par_iter().map(per_segment).collect()
        } else {
            (0..n).map(per_segment).collect()
        };
        for (p, v) in parts.into_iter().flatten() {
            out[p] = v;
        }
        drop((x, seg));
        crate::exec::pool::finish(inp, out)
    }
}
