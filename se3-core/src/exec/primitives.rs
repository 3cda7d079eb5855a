//! Native kernels for luminal's non-elementwise primitives: `SumReduce`, `MaxReduce` and
//! `Contiguous`, reading their input through a resolved `View`.
//!
//! A reduction's consumers read its output through the input's view minus the reduced axis
//! (luminal keeps the tracker). luminal 0.2 writes the result in logical order regardless,
//! which is wrong when that view is permuted (see `luminal_regressions`); [`Reduce`] writes
//! the result where that view reads it, which is the logical order whenever the view is plain.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use super::elementwise::{replace_node, sources};
use super::view::{buffer, sum8, tensor, View, PAR_MIN};

/// Which reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceFn {
    /// Sum (0 over an empty axis).
    Sum,
    /// Maximum (-inf over an empty axis).
    Max,
}

/// Reduction over one axis: output shape is the input's logical shape without `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reduce {
    pub f: ReduceFn,
    pub axis: usize,
}

impl Reduce {
    /// Reduces a row-major `[front, len, back]` buffer into `[front, back]`.
    pub(crate) fn run(&self, x: &[f32], front: usize, len: usize, back: usize) -> Vec<f32> {
        let init = match self.f {
            ReduceFn::Sum => 0.0,
            ReduceFn::Max => f32::NEG_INFINITY,
        };
        let mut out = vec![init; front * back];
        if back == 0 || front == 0 {
            return out;
        }
        let f = self.f;
        let one = |(fi, o): (usize, &mut [f32])| {
            let rows = &x[fi * len * back..(fi + 1) * len * back];
            if back == 1 {
                o[0] = match f {
                    ReduceFn::Sum => sum8(rows),
                    ReduceFn::Max => rows.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)),
                };
            } else {
                for row in rows.chunks_exact(back) {
                    match f {
                        ReduceFn::Sum => o.iter_mut().zip(row).for_each(|(a, b)| *a += b),
                        ReduceFn::Max => o.iter_mut().zip(row).for_each(|(a, b)| *a = a.max(*b)),
                    }
                }
            }
        };
        if front * len * back >= PAR_MIN && front > 1 {
            out.par_chunks_mut(back).enumerate().for_each(one);
        } else {
            out.chunks_mut(back).enumerate().for_each(one);
        }
        out
    }
}

impl Operator for Reduce {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let view = View::new(&inp[0].1, &empty);
        let shape = view.shape();
        let x = view.materialize(buffer(&inp[0].0));
        let front: usize = shape[..self.axis].iter().product();
        let len = shape.get(self.axis).copied().unwrap_or(1);
        let back: usize = shape[(self.axis + 1).min(shape.len())..].iter().product();
        let logical = self.run(&x, front, len, back);
        let mut rest = inp[0].1;
        if self.axis < rest.len() {
            rest.remove_dim(self.axis);
        }
        let out_view = View::new(&rest, &empty);
        if out_view.plain || out_view.n != logical.len() {
            return vec![tensor(logical)];
        }
        let mut out = super::pool::take(out_view.physical_len());
        out_view.scatter(&logical, &mut out);
        drop(x);
        super::pool::finish(inp, out)
    }
}

/// Materialises a view into a contiguous buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Materialize;

/// Whether a view's sizes are all numbers (no dynamic dimension): a [`Materialize`] of a
/// weight through such a view makes the same copy every run, which a session folds into the
/// weight's stored layout (`Session::fold_weight_layouts`).
pub(crate) fn is_fixed_size(st: &ShapeTracker) -> bool {
    st.shape().iter().all(|d| d.to_usize().is_some())
        && st.dims.iter().all(|d| d.to_usize().is_some())
}

impl Operator for Materialize {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let view = View::new(&inp[0].1, &Default::default());
        let out = view.materialize(buffer(&inp[0].0)).into_owned();
        super::pool::finish(inp, out)
    }
}

/// Compiler pass: `SumReduce`, `MaxReduce` and `Contiguous` become [`Reduce`] and
/// [`Materialize`].
#[derive(Debug, Default)]
pub struct NativePrimitives;

impl Compiler for NativePrimitives {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for node in nodes {
            let Some(op) = graph.graph.node_weight(node) else {
                continue;
            };
            let a = op.as_any();
            let srcs = sources(graph, node);
            if let Some(r) = a.downcast_ref::<luminal::op::SumReduce>() {
                let axis = r.0;
                replace_node(
                    graph,
                    &mut remap,
                    node,
                    Reduce {
                        f: ReduceFn::Sum,
                        axis,
                    },
                    &srcs,
                );
            } else if let Some(r) = a.downcast_ref::<luminal::op::MaxReduce>() {
                let axis = r.0;
                replace_node(
                    graph,
                    &mut remap,
                    node,
                    Reduce {
                        f: ReduceFn::Max,
                        axis,
                    },
                    &srcs,
                );
            } else if a.is::<luminal::op::Contiguous>() {
                replace_node(graph, &mut remap, node, Materialize, &srcs);
            }
        }
    }
}
