//! CPU kernel of [`stack`](super::stack()): each input's view copied row-major into its slot.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use crate::exec::view::{buffer, View};

/// Stacks its inputs (all of one logical shape) along a new first axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack;

impl Operator for Stack {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
        let len = views.first().map_or(0, |v| v.n);
        let mut out = crate::exec::pool::take(len * views.len());
        for (((t, _), v), slot) in inp.iter().zip(&views).zip(out.chunks_mut(len.max(1))) {
            debug_assert_eq!(v.n, len, "stacked tensors of different sizes");
            slot.copy_from_slice(&v.materialize(buffer(t))[..len]);
        }
        crate::exec::pool::finish(inp, out)
    }
}
