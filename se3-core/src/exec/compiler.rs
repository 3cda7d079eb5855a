//! [`CpuCompiler`]: our CPU compiler, a tuple of passes run after luminal's `GenericCompiler`.
//!
//! Order matters: matrix products are matched on the stock `Mul`/`SumReduce` pattern first,
//! then the fused edge kernel on its unfused pattern, then elementwise chains are fused, then
//! the remaining reductions and copies get native kernels. Luminal's own `CPUCompiler` is
//! never used (its gather gives wrong results, its matmul passes do not fire and a retrieved
//! `arange` panics; see `luminal_regressions`).

use luminal::prelude::{petgraph::Direction, *};

use super::elementwise::ElementwiseFusion;
use super::matmul::MatMulPass;
use super::primitives::NativePrimitives;
use crate::ops::edge_conv::EdgeConvFusion;

/// Compiler pass: removes operators whose results nobody reads (no consumer, not kept, not
/// retrieved), repeatedly, so a layer may build tensors it ends up not using (e.g. `Kx` of a
/// pair whose sums run on the fused kernel). Source nodes (inputs, weights, constants) stay:
/// the session sets their tensors by id.
#[derive(Debug, Default)]
pub struct DeadNodes;

impl Compiler for DeadNodes {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, _: T) {
        loop {
            let dead: Vec<NodeIndex> = graph
                .graph
                .node_indices()
                .filter(|&n| {
                    graph.graph.edges_directed(n, Direction::Outgoing).count() == 0
                        && graph.graph.edges_directed(n, Direction::Incoming).count() > 0
                        && !graph.no_delete.contains(&n)
                        && !graph.to_retrieve.contains(&n)
                })
                .collect();
            if dead.is_empty() {
                break;
            }
            for n in dead {
                graph.graph.remove_node(n);
            }
        }
    }
}

/// The CPU compiler of se3 (see the module documentation).
pub type CpuCompiler = (
    DeadNodes,
    GenericCompiler,
    MatMulPass,
    EdgeConvFusion,
    ElementwiseFusion,
    NativePrimitives,
);
