//! CPU kernel of [`grad_scale`](super::grad_scale): a row-major copy of the input's view.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use crate::exec::view::{buffer, View};

/// Identity forward, gradient times `frac` backward (`autodiff` reads `frac`).
#[derive(Debug, Clone, PartialEq)]
pub struct GradScale {
    /// The fraction of the gradient that flows back.
    pub frac: f32,
}

impl Operator for GradScale {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let v = View::new(&inp[0].1, &empty);
        let src = v.materialize(buffer(&inp[0].0));
        let mut out = crate::exec::pool::take(v.n);
        out.copy_from_slice(&src);
        drop(src);
        crate::exec::pool::finish(inp, out)
    }
}
