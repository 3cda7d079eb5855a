//! Graph operators for point clouds, one op a folder: `mod.rs` holds the graph-level function
//! with its documentation and tests, `cpu.rs` the luminal `Operator` (a `cuda.rs` joins it
//! when the CUDA backend lands).
//!
//! - [`egnn_edge()`]: the fused edge stage of an EGNN layer (edge MLP, gate, coordinate
//!   weights, pooled sums per node in cache).
//! - [`gather()`]: rows of a table by index (`(N, C)`, `(E,)` → `(E, C)`).
//! - [`grad_scale()`]: identity forward, gradient scaled by a fraction backward.
//! - [`scatter_add()`]: segment sum of rows into destinations (`(E, C)`, `(E,)` → `(N, C)`).
//! - [`segment_softmax()`]: softmax over the edges that share a destination.
//! - [`relative_positions()`], [`distances()`]: per-edge geometry.
//! - [`neighbors()`]: exact k-nearest / radius neighbours with masks.
//! - [`top_k()`], [`take_along_rows()`]: best `K` entries per row of any score matrix.
//! - [`adjacency_degrees()`]: N-th degree neighbours of a sparse adjacency.
//! - [`head_attention()`]: multi-head softmax attention over all pairs, per block of query rows.
//! - [`layer_norm_gelu()`]: bias + LayerNorm + exact GELU per row in one pass (radial networks).
//! - [`silu_layer_norm()`]: bias + SiLU + LayerNorm per row in one pass (Equiformer's radial
//!   networks, inference).
//! - [`edge_contract_sum()`], [`edge_contract_logits()`]: the fused, reassociated ConvSE3
//!   contraction on edges grouped by node (neighbour sums and query logits without per-edge
//!   radial weights or whole-graph intermediates).
//! - [`table_contract()`]: per-edge products `h_e T_(idx[e])` against per-node tables (a
//!   radial network's last layer applied after the channel mixing, no per-edge weights).
//! - [`stack()`]: tensors of one shape stacked along a new first axis (stacked weights).
//! - [`radial_hidden()`]: the hidden layers (Linear, LayerNorm, GELU twice) of many radial
//!   networks on one edge input, per edge block in cache.
//! - [`edge_conv()`]: the fused edge kernel (gather · per-edge weights → scatter-add) and the
//!   compiler pass that swaps it in for the unfused pattern; [`radial_edge_conv()`]: one degree
//!   pair of a TFN convolution fused from the radial network's hidden layer to the pooled sums.
//!
//! Indices are stored as f32 (luminal tensors are f32), exact below 2^24; `-1` means "no
//! index" (a masked or missing neighbour): gathers read zeros, scatters skip it.
//!
//! Gradients (for the training issue): every op here has its adjoint among them, so a
//! backward pass is another graph of these ops: the vector-Jacobian product of `gather` is
//! `scatter_add` with the same indices and vice versa; that of `segment_softmax` is
//! `y * (g - scatter_add(g * y) gathered back)`; that of `edge_conv` is an `edge_conv` with the
//! transposed weights and `src`/`dst` swapped, plus a per-edge outer product for the weights.

use luminal::prelude::{symbolic::Expression, *};

pub mod adjacency;
pub mod edge_basis;
pub mod edge_contract;
pub mod edge_conv;
pub mod egnn_edge;
pub mod gather;
pub mod grad_scale;
pub mod head_attention;
pub mod layer_norm_gelu;
pub mod neighbors;
pub mod radial_hidden;
pub mod relative_positions;
pub mod scatter_add;
pub mod segment_softmax;
pub mod silu_layer_norm;
pub mod stack;
pub mod table_contract;
pub mod top_k;

pub use adjacency::adjacency_degrees;
pub use edge_contract::{
    edge_contract_logits, edge_contract_logits_heads, edge_contract_logits_unfused,
    edge_contract_sum, edge_contract_sum_heads, edge_contract_sum_unfused,
};
pub use edge_conv::{
    edge_conv, edge_conv_diag, edge_conv_diag_unfused, edge_conv_unfused, radial_edge_conv,
    radial_edge_conv_unfused, PairShape, RadialMode,
};
pub use egnn_edge::{egnn_edge, EgnnCoorsWeights, EgnnEdgeInputs, EgnnEdgeKernel};
pub use gather::{gather, gather3};
pub use grad_scale::grad_scale;
pub use head_attention::{head_attention, HeadLogits};
pub use layer_norm_gelu::layer_norm_gelu;
pub use neighbors::{neighbors, neighbors_in_batches, Edges, NeighborSpec, Neighbors};
pub use radial_hidden::{radial_hidden, radial_hidden_unfused, RadialHiddenWeights};
pub use relative_positions::{distances, relative_positions};
pub use scatter_add::{scatter_add, scatter_add3};
pub use segment_softmax::segment_softmax;
pub use silu_layer_norm::{linear_silu_layer_norm, silu_layer_norm};
pub use stack::stack;
pub use table_contract::{table_contract, table_contract_unfused, IndexedNodes};
pub use top_k::{take_along_rows, top_k, Selected};

/// Logical sizes of a view, as luminal's index expression reads them.
pub(crate) fn logical_dims(st: &ShapeTracker) -> Vec<Expression> {
    st.indexes
        .iter()
        .map(|&i| {
            (st.dims[i] + st.padding[i].0 + st.padding[i].1).min(st.slices[i].1) - st.slices[i].0
        })
        .collect()
}

/// Logical sizes of a view (public: for callers that declare inputs shaped like a tensor).
pub fn logical_dims_of(st: &ShapeTracker) -> Vec<Expression> {
    logical_dims(st)
}

/// An edge that carries only sizes: a view of `carrier` whose axes are all fake with the given
/// sizes, so an operator learns run-time sizes (resolved dynamic dimensions) without reading data.
pub(crate) fn size_view(sizes: &[Expression]) -> ShapeTracker {
    ShapeTracker::fake(sizes)
}
