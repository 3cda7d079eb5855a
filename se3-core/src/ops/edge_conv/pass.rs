//! [`EdgeConvFusion`]: finds `scatter_add(sum_k(expand(gather(x, src)) * w), dst)` and
//! `scatter_add(gather(x, src) * w, dst)` and replaces them by the fused [`EdgeConv`].
//! Intermediates are only removed when nothing else reads them and they are not kept or
//! retrieved. Runs after `GenericCompiler`, before elementwise fusion (it matches luminal's
//! stock `Mul` and `SumReduce`).

use luminal::prelude::{petgraph::Direction, *};

use super::cpu::EdgeConv;
use crate::exec::elementwise::{is_plain, replace_node, sources};
use crate::ops::gather::GatherRows;
use crate::ops::scatter_add::ScatterAdd;

/// Compiler pass swapping the fused edge kernel in (see the module documentation).
#[derive(Debug, Default)]
pub struct EdgeConvFusion;

fn is<T: 'static>(graph: &Graph, n: NodeIndex) -> bool {
    graph
        .graph
        .node_weight(n)
        .map(|o| o.as_any().is::<T>())
        .unwrap_or(false)
}

fn single_consumer(graph: &Graph, n: NodeIndex) -> bool {
    !graph.no_delete.contains(&n) && graph.graph.edges_directed(n, Direction::Outgoing).count() == 1
}

/// An input edge: source node, its output index, the view.
type Source = (NodeIndex, u8, ShapeTracker);

/// The gather among the two inputs of `mul`, given the view it must be read through.
fn split_gather(
    graph: &Graph,
    mul: NodeIndex,
    gather_view_ok: impl Fn(&ShapeTracker) -> bool,
) -> Option<(Source, Source)> {
    let ms = sources(graph, mul);
    if ms.len() != 2 {
        return None;
    }
    for (g, w) in [(0, 1), (1, 0)] {
        if is::<GatherRows>(graph, ms[g].0) && gather_view_ok(&ms[g].2) {
            return Some((ms[g], ms[w]));
        }
    }
    None
}

impl Compiler for EdgeConvFusion {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for scatter in nodes {
            if !is::<ScatterAdd>(graph, scatter) {
                continue;
            }
            let ss = sources(graph, scatter);
            if ss.len() != 3 || !is_plain(&ss[0].2) {
                continue;
            }
            let prod = ss[0].0;
            if !single_consumer(graph, prod) {
                continue;
            }
            // Matrix form: SumReduce(2) over a rank-3 Mul.
            let (diagonal, mul) = if is::<luminal::op::SumReduce>(graph, prod) {
                let axis = graph
                    .graph
                    .node_weight(prod)
                    .and_then(|o| o.as_any().downcast_ref::<luminal::op::SumReduce>())
                    .map(|s| s.0);
                let rs = sources(graph, prod);
                if axis != Some(2) || rs.len() != 1 || rs[0].2.len() != 3 || !is_plain(&rs[0].2) {
                    continue;
                }
                (false, rs[0].0)
            } else {
                (true, prod)
            };
            if !is::<luminal::op::Mul>(graph, mul) || (!diagonal && !single_consumer(graph, mul)) {
                continue;
            }
            let found = if diagonal {
                split_gather(graph, mul, |st| st.len() == 2 && is_plain(st))
            } else {
                split_gather(graph, mul, |st| {
                    st.len() == 3
                        && !st.is_padded()
                        && !st.is_sliced()
                        && st.indexes[0] < st.indexes[2]
                        && st.fake[st.indexes[1]]
                        && !st.fake[st.indexes[0]]
                        && !st.fake[st.indexes[2]]
                })
            };
            let Some((g, w)) = found else {
                continue;
            };
            if w.2.len() != if diagonal { 2 } else { 3 } {
                continue;
            }
            let gs = sources(graph, g.0);
            if gs.len() != 2 {
                continue;
            }
            let inputs = [gs[0], w, gs[1], ss[1], ss[2]];
            replace_node(graph, &mut remap, scatter, EdgeConv { diagonal }, &inputs);
            // Remove the now unread intermediates.
            let mut dead = vec![prod];
            if !diagonal {
                dead.push(mul);
            }
            dead.push(g.0);
            for d in dead {
                if graph.graph.contains_node(d)
                    && !graph.no_delete.contains(&d)
                    && graph
                        .graph
                        .edges_directed(d, Direction::Outgoing)
                        .next()
                        .is_none()
                {
                    graph.graph.remove_node(d);
                }
            }
        }
    }
}
