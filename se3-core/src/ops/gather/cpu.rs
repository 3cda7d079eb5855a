//! CPU kernel of [`gather`](super::gather).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::view::{buffer, View, PAR_MIN};

/// Gathers rows: inputs `table (N, ..)`, `idx (E,)`; output `(E, ..)` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct GatherRows;

/// `out[e] = table[idx[e]]` over row-major buffers, zero rows for invalid indices.
pub(crate) fn gather_rows(table: &[f32], n: usize, c: usize, idx: &[f32], out: &mut [f32]) {
    let row = |(e, o): (usize, &mut [f32])| {
        let i = idx[e];
        if i >= 0.0 && (i as usize) < n {
            let i = i as usize;
            o.copy_from_slice(&table[i * c..(i + 1) * c]);
        } else {
            o.fill(0.0);
        }
    };
    if c == 0 {
        return;
    }
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(c).enumerate().for_each(row);
    } else {
        out.chunks_mut(c).enumerate().for_each(row);
    }
}

impl Operator for GatherRows {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let (tv, iv) = (View::new(&inp[0].1, &empty), View::new(&inp[1].1, &empty));
        // Rows are everything after the first axis (rank-2 and rank-3 tables).
        let (n, c) = (tv.axes[0].len, tv.axes[1..].iter().map(|a| a.len).product());
        let table = tv.materialize(buffer(&inp[0].0));
        let idx = iv.materialize(buffer(&inp[1].0));
        let mut out = crate::exec::pool::take(iv.n * c);
        gather_rows(&table, n, c, &idx, &mut out);
        drop((table, idx));
        crate::exec::pool::finish(inp, out)
    }
}
