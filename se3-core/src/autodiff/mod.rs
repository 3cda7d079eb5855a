//! Reverse-mode automatic differentiation of luminal graphs: [`gradients`] emits the backward
//! graph as more graph ops, so one compiled graph computes outputs and gradients together,
//! on every input size, for as many steps as it runs.
//!
//! Given outputs `o_k` with cotangents `c_k` (tensors of the same logical shapes), the pass
//! computes `∂L/∂w` for `L = Σ_k <o_k, c_k>` and every tensor `w` asked for. It visits the
//! nodes between the `w` and the `o_k` in reverse topological order; each node's gradient is
//! the sum of what its consumers send back. A consumer reads its input through a view (a
//! luminal `ShapeTracker`: permute, broadcast, pad, slice, reshape), so every contribution is
//! first taken through the operator's vector-Jacobian product (in the view's logical shape:
//! [`primitives`] for luminal's primitives, `ops/<op>/backward.rs` for ours) and then through
//! the adjoint of the view ([`view`]: permute back, sum broadcast axes, undo pad and slice).
//! Gradients are row-major buffers of their node's element count.
//!
//! Differentiable: luminal's primitives (add, mul, sum/max reduce, exp2, log2, sin, sqrt,
//! recip, contiguous; mod and less-than carry no gradient), and the ops gather, scatter-add,
//! segment softmax and gradient scaling (so relative positions and distances, built from gather
//! and primitives, too), the fused row kernel layer norm + GELU, the fused multi-head attention
//! `head_attention`, the fused radial and edge kernels (`radial_hidden`, `edge_contract` sum
//! and logits, `edge_conv`, `radial_edge_conv`) and the fused EGNN edge stage (with respect to
//! its tensor inputs; its weights are constants of the operator), each with a fused backward in
//! its folder's `backward.rs`; indices (neighbour lists, top-k) are constants of the backward
//! pass.
//! A fused op without a backward gives [`Error::NoGradient`]: build that layer unfused.
//!
//! ```
//! use luminal::prelude::*;
//! use se3_core::autodiff;
//! use se3_core::exec::{InputKind, Session};
//! let mut s = Session::new();
//! let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Values);
//! let loss = (x * x).sum_reduce::<R0, _>(); // L = |x|², dL/dx = 2x
//! let g = autodiff::grad(loss.no_shape(), &[x.no_shape()])?;
//! s.output("dx", g[0]);
//! s.set("x", vec![1.0, 2.0, 3.0], &[1, 3])?;
//! s.run()?;
//! assert_eq!(s.get("dx")?.data, vec![2.0, 4.0, 6.0]);
//! # Ok::<(), se3_core::Error>(())
//! ```

pub(crate) mod emit;
mod forces;
mod loss;
pub(crate) mod primitives;
mod view;

#[cfg(test)]
mod attention_tests;
#[cfg(test)]
pub(crate) mod check;
#[cfg(test)]
mod conv_tests;
#[cfg(test)]
mod fused_tests;
#[cfg(test)]
mod tests;

use luminal::op::Operator;
use luminal::prelude::petgraph::{self, visit::EdgeRef, Direction};
use luminal::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};

pub use emit::Tensor;
use emit::{add, dims, filled, is_plain, plain, zeros};
pub use forces::forces;
pub use loss::{add_losses, pairing, squared_error};
use primitives::{InputGrad, Primitive};

use crate::ops::logical_dims;
use crate::ops::{
    adjacency, edge_contract, edge_conv, egnn_edge, gather, grad_scale, head_attention,
    layer_norm_gelu, neighbors, radial_hidden, scatter_add, segment_softmax, stack, top_k,
};
use crate::Error;

/// The backward rule of an operator.
#[derive(Debug, Clone)]
enum Rule {
    Primitive(Primitive),
    Gather,
    ScatterAdd,
    SegmentSoftmax,
    HeadAttention(head_attention::HeadAttention),
    GradScale {
        frac: f32,
    },
    LayerNormGelu {
        eps: f32,
    },
    LayerNormGeluGrad {
        eps: f32,
    },
    RadialHidden {
        eps: f32,
    },
    EdgeContract {
        kind: edge_contract::ContractKind,
        hidden: usize,
    },
    EdgeConv {
        diagonal: bool,
    },
    RadialEdgeConv(edge_conv::PairShape),
    Stack,
    /// An operator whose output is indices or a validity mask (neighbour search, top-k,
    /// adjacency): piecewise constant, no gradient to its inputs.
    Indices,
    EgnnEdge(Box<egnn_edge::EgnnEdgeKernel>),
}

fn rule(o: &dyn Operator) -> Option<Rule> {
    if let Some(p) = primitives::classify(o) {
        return Some(Rule::Primitive(p));
    }
    let a = o.as_any();
    if a.is::<gather::GatherRows>() {
        Some(Rule::Gather)
    } else if a.is::<scatter_add::ScatterAdd>() {
        Some(Rule::ScatterAdd)
    } else if a.is::<segment_softmax::SegmentSoftmax>() {
        Some(Rule::SegmentSoftmax)
    } else if let Some(op) = a.downcast_ref::<head_attention::HeadAttention>() {
        Some(Rule::HeadAttention(*op))
    } else if let Some(op) = a.downcast_ref::<grad_scale::GradScale>() {
        Some(Rule::GradScale { frac: op.frac })
    } else if let Some(op) = a.downcast_ref::<layer_norm_gelu::LayerNormGelu>() {
        Some(Rule::LayerNormGelu { eps: op.eps })
    } else if let Some(op) = a.downcast_ref::<layer_norm_gelu::LayerNormGeluGrad>() {
        Some(Rule::LayerNormGeluGrad { eps: op.eps })
    } else if a.is::<neighbors::Knn>()
        || a.is::<neighbors::IndexValid>()
        || a.is::<neighbors::EdgeCenters>()
        || a.is::<top_k::TopK>()
        || a.is::<adjacency::AdjacencyDegrees>()
    {
        Some(Rule::Indices)
    } else if a.is::<stack::Stack>() {
        Some(Rule::Stack)
    } else if let Some(op) = a.downcast_ref::<radial_hidden::RadialHidden>() {
        Some(Rule::RadialHidden { eps: op.eps })
    } else if let Some(op) = a.downcast_ref::<edge_contract::EdgeContract>() {
        Some(Rule::EdgeContract {
            kind: op.kind,
            hidden: op.hidden,
        })
    } else if let Some(op) = a.downcast_ref::<edge_conv::EdgeConv>() {
        Some(Rule::EdgeConv {
            diagonal: op.diagonal,
        })
    } else if let Some(k) = a.downcast_ref::<egnn_edge::EgnnEdgeKernel>() {
        Some(Rule::EgnnEdge(Box::new(k.clone())))
    } else {
        a.downcast_ref::<edge_conv::RadialEdgeConv>()
            .map(|op| Rule::RadialEdgeConv(op.shape))
    }
}

/// The gradient of `L = sum of the elements of loss` with respect to each of `wrt`
/// ([`gradients`] with a cotangent of ones).
///
/// # Errors
/// As [`gradients`].
pub fn grad(loss: Tensor, wrt: &[Tensor]) -> Result<Vec<Tensor>, Error> {
    let ones = filled(loss.graph_ref, 1.0, &dims(&loss));
    gradients(&[(loss, ones)], wrt)
}

/// The gradients `∂L/∂w` of `L = Σ_k <outputs_k, cotangents_k>` with respect to each `w` of
/// `wrt`, emitted as graph ops; each has the logical shape of its `w` (zeros where `L` does
/// not depend on `w`). Retrieve them as session outputs.
///
/// # Errors
/// `GradientOfView` if a `w` is a view rather than a node's own tensor, `CotangentRank` if a
/// cotangent's rank differs from its output's, `NoGradient` if the path from a `w` to an
/// output crosses an operator without a vector-Jacobian product.
pub fn gradients(cotangents: &[(Tensor, Tensor)], wrt: &[Tensor]) -> Result<Vec<Tensor>, Error> {
    let Some(gref) = wrt.first().map(|w| w.graph_ref) else {
        return Ok(vec![]);
    };
    for (index, w) in wrt.iter().enumerate() {
        if !is_plain(&w.shape) {
            return Err(Error::GradientOfView { index });
        }
    }
    for (index, (o, c)) in cotangents.iter().enumerate() {
        if o.shape.len() != c.shape.len() {
            return Err(Error::CotangentRank {
                index,
                output: o.shape.len(),
                cotangent: c.shape.len(),
            });
        }
    }
    // SAFETY: every tensor handed in points at the live graph being built.
    let graph = unsafe { &*gref };
    let live = live_nodes(
        graph,
        cotangents.iter().map(|(o, _)| o.id),
        wrt.iter().map(|w| w.id),
    );
    let order = petgraph::algo::toposort(&graph.graph, None)
        .map_err(|c| Error::CyclicGraph {
            node: c.node_id().index(),
        })?
        .into_iter()
        .filter(|n| live.contains(n))
        .collect::<Vec<_>>();
    let mut grads: FxHashMap<NodeIndex, Tensor> = FxHashMap::default();
    for (o, c) in cotangents {
        if live.contains(&o.id) {
            accumulate(&mut grads, o.id, view::unview(*c, &o.shape));
        }
    }
    for &y in order.iter().rev() {
        let Some(g) = grads.get(&y).copied() else {
            continue;
        };
        // SAFETY: as above; the reference is dropped before ops are added.
        let (sources, op_rule, op_name) = {
            let graph = unsafe { &*gref };
            let node = &graph.graph[y];
            (
                graph.get_sources(y),
                rule(node.as_ref()),
                format!("{node:?}"),
            )
        };
        let wanted: Vec<bool> = sources.iter().map(|(s, ..)| live.contains(s)).collect();
        if !wanted.iter().any(|&w| w) {
            continue;
        }
        if sources.iter().any(|(_, out, _)| *out != 0) {
            return Err(Error::NoGradient { op: op_name });
        }
        let inputs: Vec<Tensor> = sources
            .iter()
            .map(|&(s, _, st)| GraphTensor::from_id(s, st, gref))
            .collect();
        if let Some(Rule::Primitive(Primitive::SumReduce(axis))) = op_rule {
            if let Some(product) = product_of(gref, &inputs, &grads) {
                // a matrix product in luminal's form: the factors' gradients are products too
                // SAFETY: as above; the reference is dropped before ops are added.
                let sources = unsafe { &*gref }.get_sources(product);
                let factors: Vec<Tensor> = sources
                    .iter()
                    .map(|&(s, _, st)| GraphTensor::from_id(s, st, gref))
                    .collect();
                let mut reduced = dims(&inputs[0]);
                reduced.remove(axis);
                let g = plain(g.id, &reduced, gref);
                for (i, &(s, _, _)) in sources.iter().enumerate() {
                    if live.contains(&s) {
                        let (d, st) = primitives::product_factor_vjp(axis, g, &factors, i);
                        accumulate(&mut grads, s, view::unview(d, &st));
                    }
                }
                continue;
            }
        }
        let as_views = |v: Vec<Option<Tensor>>| v.into_iter().map(|d| d.map(InputGrad::View));
        let input_grads: Vec<Option<InputGrad>> = match op_rule {
            Some(Rule::Primitive(p)) => primitives::vjp(p, y, &inputs, g, &wanted)?,
            Some(Rule::Gather) => as_views(gather::backward::vjp(&inputs, g.id, &wanted)).collect(),
            Some(Rule::ScatterAdd) => {
                as_views(scatter_add::backward::vjp(&inputs, g.id, &wanted)).collect()
            }
            Some(Rule::SegmentSoftmax) => {
                as_views(segment_softmax::backward::vjp(&inputs, y, g.id, &wanted)).collect()
            }
            Some(Rule::LayerNormGelu { eps }) => {
                as_views(layer_norm_gelu::backward::vjp(&inputs, eps, g.id, &wanted)).collect()
            }
            Some(Rule::LayerNormGeluGrad { eps }) => as_views(layer_norm_gelu::backward::grad_vjp(
                &inputs, eps, g.id, &wanted,
            )?)
            .collect(),
            Some(Rule::HeadAttention(op)) => {
                as_views(head_attention::backward::vjp(&inputs, op, g.id, &wanted)).collect()
            }
            Some(Rule::GradScale { frac }) => {
                as_views(grad_scale::backward::vjp(&inputs, frac, g.id, &wanted)).collect()
            }
            Some(Rule::RadialHidden { eps }) => {
                as_views(radial_hidden::backward::vjp(&inputs, eps, g.id, &wanted)?).collect()
            }
            Some(Rule::EdgeContract { kind, hidden }) => as_views(edge_contract::backward::vjp(
                &inputs, kind, hidden, g.id, &wanted,
            ))
            .collect(),
            Some(Rule::EdgeConv { diagonal }) => as_views(edge_conv::backward::edge_conv_vjp(
                &inputs, diagonal, g.id, &wanted,
            ))
            .collect(),
            Some(Rule::RadialEdgeConv(shape)) => as_views(
                edge_conv::backward::radial_edge_conv_vjp(&inputs, shape, g.id, &wanted),
            )
            .collect(),
            Some(Rule::Indices) => vec![None; inputs.len()],
            Some(Rule::Stack) => as_views(stack::backward::vjp(&inputs, g.id, &wanted)).collect(),
            Some(Rule::EgnnEdge(kernel)) => {
                as_views(egnn_edge::backward::vjp(&kernel, &inputs, g.id, &wanted)).collect()
            }
            None => return Err(Error::NoGradient { op: op_name }),
        };
        for ((&(s, _, st), w), d) in sources.iter().zip(&wanted).zip(input_grads) {
            match (*w, d) {
                (true, Some(InputGrad::View(d))) => accumulate(&mut grads, s, view::unview(d, &st)),
                (true, Some(InputGrad::Buffer(d))) => accumulate(&mut grads, s, d),
                _ => {}
            }
        }
    }
    Ok(wrt
        .iter()
        .map(|w| match grads.get(&w.id) {
            Some(g) => plain(g.id, &dims(w), gref),
            None => zeros(gref, &dims(w)),
        })
        .collect())
}

/// The `Mul` node that `inputs` (a `SumReduce`'s one input) reads plain, if that product has
/// no other consumer and no gradient of its own (not an output), so the reduction and the
/// product can be differentiated together ([`primitives::product_factor_vjp`]).
fn product_of(
    gref: *mut Graph,
    inputs: &[Tensor],
    grads: &FxHashMap<NodeIndex, Tensor>,
) -> Option<NodeIndex> {
    let [x] = inputs else { return None };
    if !is_plain(&x.shape) || grads.contains_key(&x.id) {
        return None;
    }
    // SAFETY: `gref` points at the live graph being differentiated; no ops are added here.
    let graph = unsafe { &*gref };
    let node = graph.graph.node_weight(x.id)?;
    if !node.as_any().is::<luminal::op::Mul>() {
        return None;
    }
    let consumers = graph
        .graph
        .edges_directed(x.id, Direction::Outgoing)
        .filter(|e| e.weight().as_data().is_some())
        .count();
    // the reduction must read the product in the product's own shape (not reshaped)
    let sources = graph.get_sources(x.id);
    let same_shape = sources.iter().all(|(_, _, st)| logical_dims(st) == dims(x));
    (consumers == 1 && sources.len() == 2 && same_shape).then_some(x.id)
}

/// Adds `d`, a row-major gradient of `node`'s buffer, to what `node` has received so far.
fn accumulate(grads: &mut FxHashMap<NodeIndex, Tensor>, node: NodeIndex, d: Tensor) {
    let total = match grads.get(&node) {
        Some(prev) => add(*prev, plain(d.id, &dims(prev), d.graph_ref)),
        None => d,
    };
    grads.insert(node, total);
}

/// Nodes on a path from one of `sources` to one of `sinks` (both ends included).
fn live_nodes(
    graph: &Graph,
    sinks: impl Iterator<Item = NodeIndex>,
    sources: impl Iterator<Item = NodeIndex>,
) -> FxHashSet<NodeIndex> {
    let walk = |start: Vec<NodeIndex>, dir: Direction, within: Option<&FxHashSet<NodeIndex>>| {
        let mut seen = FxHashSet::default();
        let mut stack = start;
        while let Some(n) = stack.pop() {
            if within.is_some_and(|w| !w.contains(&n)) || !seen.insert(n) {
                continue;
            }
            for e in graph.graph.edges_directed(n, dir) {
                if e.weight().as_data().is_some() {
                    stack.push(match dir {
                        Direction::Incoming => e.source(),
                        Direction::Outgoing => e.target(),
                    });
                }
            }
        }
        seen
    };
    let upstream = walk(sinks.collect(), Direction::Incoming, None);
    walk(sources.collect(), Direction::Outgoing, Some(&upstream))
}
