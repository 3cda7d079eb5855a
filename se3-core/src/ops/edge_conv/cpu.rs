//! CPU kernel of the fused edge op: edges bucketed by destination, each destination row
//! accumulated in registers (no per-edge buffer), parallel over destinations; summation in
//! edge order, so results do not depend on the thread count.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, dot8, View, PAR_MIN};
use crate::ops::scatter_add::cpu_buckets;

/// Fused gather · weights → scatter-add. Inputs: `x (M, Ci)`, `w (E, Co, Ci)` or `(E, C)`,
/// `src (E,)`, `dst (E,)`, size carrier `(N,)`; output `(N, Co)`.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConv {
    /// Diagonal (per-channel) weights instead of a matrix per edge.
    pub diagonal: bool,
}

impl Operator for EdgeConv {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
        let (m, ci) = (views[0].axes[0].len, views[0].axes[1].len);
        let co = views[1].axes[1].len;
        let n = views[4].axes[0].len;
        let x = views[0].materialize(buffer(&inp[0].0));
        let w = views[1].materialize(buffer(&inp[1].0));
        let src = views[2].materialize(buffer(&inp[2].0));
        let dst = views[3].materialize(buffer(&inp[3].0));
        let b = cpu_buckets(&dst, n);
        let mut out = crate::exec::pool::take(n * co);
        if co == 0 {
            drop((x, w, src, dst));
            return crate::exec::pool::finish(inp, out);
        }
        let diagonal = self.diagonal;
        let row = |(d, acc): (usize, &mut [f32])| {
            for &e in &b.order[b.start[d]..b.start[d + 1]] {
                let s = src[e];
                if s < 0.0 || s as usize >= m {
                    continue;
                }
                let s = s as usize;
                if diagonal {
                    let (xs, we) = (&x[s * co..(s + 1) * co], &w[e * co..(e + 1) * co]);
                    acc.iter_mut()
                        .zip(xs.iter().zip(we))
                        .for_each(|(a, (p, q))| *a += p * q);
                } else {
                    let xs = &x[s * ci..(s + 1) * ci];
                    let we = &w[e * co * ci..(e + 1) * co * ci];
                    for (a, wr) in acc.iter_mut().zip(we.chunks_exact(ci.max(1))) {
                        *a += dot8(wr, xs);
                    }
                }
            }
        };
        if w.len() >= PAR_MIN {
            out.par_chunks_mut(co).enumerate().for_each(row);
        } else {
            out.chunks_mut(co).enumerate().for_each(row);
        }
        drop((x, w, src, dst));
        crate::exec::pool::finish(inp, out)
    }
}
