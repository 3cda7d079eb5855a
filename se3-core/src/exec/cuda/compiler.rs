//! [`CudaCompiler`]: the pass that moves a compiled CPU graph onto a CUDA device.
//!
//! 1. Every op with a CUDA kernel is swapped for it in place (ids stay): the lowerings are
//!    listed in [`LOWERINGS`], one function per op folder (`ops/<op>/cuda.rs`) plus the
//!    primitives of `exec/cuda/primitives.rs`.
//! 2. Every edge whose producer writes on one side and whose consumer reads on the other gets a copy
//!    ([`ToDevice`] or [`ToHost`], one per producer output and direction); edges that read no
//!    data (size carriers: all axes fake) need none. Running the pass again (a recompile after
//!    adding nodes) adds nothing twice: copies count as writing on their target side.
//!    A copy of a resident weight (listed with [`CudaCompiler::with_resident`]) uploads once
//!    and hands the same device buffer to every later run until the weights change.
//! 3. Retrieved device results get a [`ToHost`] that takes over their id, so
//!    `Session::get` reads host memory.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use luminal::op::Operator;
use luminal::prelude::{
    petgraph::{
        visit::{EdgeRef, IntoEdgeReferences},
        Direction,
    },
    *,
};
use rustc_hash::{FxHashMap, FxHashSet};

use super::{BackendRef, CudaBackend, Resident, ToDevice, ToHost};
use crate::device::{expected_location, reads_no_data};
pub use crate::ops::scatter_add::cuda::ScatterMode;
use crate::Location;

/// A lowering: the CUDA operator for a host operator, if the op has a CUDA kernel.
pub type Lowering = fn(&dyn Operator, &LowerCtx) -> Option<Box<dyn Operator>>;

/// What a lowering needs: the device and the compiler's choices.
#[derive(Debug, Clone)]
pub struct LowerCtx {
    pub backend: BackendRef,
    /// How scatter-adds (and so the backward of gathers) sum.
    pub scatter: ScatterMode,
}

/// Every op with a CUDA kernel (a new op adds its `cuda::lower` here).
pub const LOWERINGS: &[Lowering] = &[
    crate::ops::gather::cuda::lower,
    crate::ops::scatter_add::cuda::lower,
    crate::ops::segment_softmax::cuda::lower,
    crate::ops::layer_norm_gelu::cuda::lower,
    crate::ops::layer_norm_gelu::backward_cuda::lower,
    crate::ops::silu_layer_norm::cuda::lower,
    crate::ops::top_k::cuda::lower,
    crate::ops::edge_conv::cuda::lower,
    crate::ops::neighbors::cuda::lower,
    crate::ops::radial_hidden::cuda::lower,
    crate::ops::edge_contract::cuda::lower,
    crate::ops::edge_conv::radial_cuda::lower,
    crate::ops::adjacency::cuda::lower,
    crate::ops::egnn_edge::cuda::lower,
    crate::ops::head_attention::cuda::lower,
    crate::ops::neighbors::cuda::lower_index_rows,
    crate::ops::top_k::cuda::lower_take_along_rows,
    crate::ops::stack::cuda::lower,
    crate::ops::grad_scale::cuda::lower,
    crate::ops::edge_contract::backward_cuda::lower,
    crate::ops::head_attention::backward_cuda::lower,
    crate::ops::egnn_edge::backward_cuda::lower,
    super::primitives::lower_matmul,
    super::primitives::lower_reduce,
    super::primitives::lower_elementwise,
    super::primitives::lower_materialize,
];

/// The CUDA pass (see the module documentation).
#[derive(Debug, Clone)]
pub struct CudaCompiler {
    backend: BackendRef,
    scatter: ScatterMode,
    /// Host nodes holding resident weights: their uploads are cached across runs.
    resident: FxHashSet<NodeIndex>,
    /// The weight epoch those caches follow.
    epoch: Arc<AtomicU64>,
}

impl CudaCompiler {
    /// The pass for an opened device.
    pub fn new(backend: Arc<CudaBackend>) -> CudaCompiler {
        CudaCompiler {
            backend: BackendRef(backend),
            scatter: ScatterMode::Deterministic,
            resident: FxHashSet::default(),
            epoch: Arc::default(),
        }
    }

    /// The same pass with the weights `nodes` uploaded once and kept on the device until
    /// `epoch` changes ([`Resident`]).
    pub fn with_resident(
        mut self,
        nodes: impl IntoIterator<Item = NodeIndex>,
        epoch: Arc<AtomicU64>,
    ) -> CudaCompiler {
        self.resident = nodes.into_iter().collect();
        self.epoch = epoch;
        self
    }

    /// The same pass with scatter-adds summing in `mode` (deterministic by default).
    pub fn with_scatter_mode(mut self, mode: ScatterMode) -> CudaCompiler {
        self.scatter = mode;
        self
    }
}

/// Where node `n` reads its inputs and where it leaves its output (`true`: on the device).
/// Copies read on one side and write on the other; every other op writes where it reads.
fn sides(graph: &mut Graph, n: NodeIndex) -> (bool, bool) {
    let reads = graph
        .graph
        .node_weight_mut(n)
        .and_then(|op| expected_location(op.as_mut()))
        .is_some_and(|l| matches!(l, Location::Cuda { .. }));
    let op = graph.graph.node_weight(n).map(|op| op.as_any());
    let writes = match op {
        Some(a) if a.is::<ToDevice>() => true,
        Some(a) if a.is::<ToHost>() => false,
        _ => reads,
    };
    (reads, writes)
}

impl Compiler for CudaCompiler {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        // 1. swap kernels in place
        let cx = LowerCtx {
            backend: self.backend.clone(),
            scatter: self.scatter,
        };
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for n in &nodes {
            let Some(op) = graph.graph.node_weight(*n) else {
                continue;
            };
            if let Some(new) = LOWERINGS.iter().find_map(|l| l(op.as_ref(), &cx)) {
                if let Some(w) = graph.graph.node_weight_mut(*n) {
                    *w = new;
                }
            }
        }
        let side: FxHashMap<NodeIndex, (bool, bool)> =
            nodes.iter().map(|&n| (n, sides(graph, n))).collect();
        // 2. copies on crossing edges
        let mut copies: FxHashMap<(NodeIndex, u8, bool), NodeIndex> = FxHashMap::default();
        let edges: Vec<_> = (&graph.graph)
            .edge_references()
            .filter_map(|e| {
                e.weight()
                    .as_data()
                    .map(|d| (e.id(), e.source(), e.target(), d))
            })
            .collect();
        for (id, src, dst, (input, output, st)) in edges {
            let (Some(&(_, from)), Some(&(to, _))) = (side.get(&src), side.get(&dst)) else {
                continue;
            };
            if from == to || reads_no_data(&st) {
                continue;
            }
            let copy = *copies.entry((src, output, to)).or_insert_with(|| {
                let b = self.backend.clone();
                let c = if to {
                    let resident = self
                        .resident
                        .contains(&src)
                        .then(|| Resident::new(self.epoch.clone()));
                    graph.add_op(ToDevice {
                        backend: b,
                        resident,
                    })
                } else {
                    graph.add_op(ToHost { backend: b })
                };
                c.input(src, output, st).finish()
            });
            graph.graph.remove_edge(id);
            graph.graph.add_edge(
                copy,
                dst,
                Dependency::Data {
                    input_order: input,
                    output_order: 0,
                    shape: st,
                },
            );
        }
        // 3. retrieved device results are read on the host
        let retrieved: Vec<NodeIndex> = graph
            .to_retrieve
            .iter()
            .copied()
            .filter(|n| side.get(n).is_some_and(|s| s.1))
            .collect();
        for n in retrieved {
            let st = graph
                .graph
                .edges_directed(n, Direction::Outgoing)
                .find_map(|e| e.weight().as_data().map(|d| d.2))
                .unwrap_or_else(|| ShapeTracker::new(&[]));
            let host = graph
                .add_op(ToHost {
                    backend: self.backend.clone(),
                })
                .input(n, 0, st)
                .finish();
            move_references(
                &mut remap,
                &mut graph.no_delete,
                &mut graph.to_retrieve,
                n,
                host,
            );
        }
    }
}
