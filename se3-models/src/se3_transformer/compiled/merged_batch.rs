//! Several clouds of a batch in one graph run: their neighbourhood graphs laid side by side as
//! one disjoint graph.
//!
//! Every layer of the compiled graph acts per node (linear, norm, gate) or sums over a node's own
//! neighbour slots (convolution, attention), so clouds concatenated along the node axis, each
//! node's neighbour indices offset by the rows of the clouds before it, give every cloud the
//! outputs it gets alone (up to float32 rounding of the larger products), and the gradient of a
//! weight comes out summed over the clouds. One run replaces one per cloud, which is what a
//! batch of small clouds costs: the graph's per-operator overhead, not its arithmetic.
//!
//! Merged: runs of consecutive clouds with the same neighbour count `k`, up to
//! [`MERGE_EDGE_LIMIT`] edges together (a single larger cloud runs alone, so the peak memory of
//! a large cloud is unchanged). Not merged (one run per cloud as before): models with global
//! features, rotary embeddings (node positions), adjacency labels or the EGNN trunk.

use std::ops::Range;

use se3_core::basis::KernelBasisValues;

use crate::se3_transformer::features::{Block, Feats};
use crate::se3_transformer::graph::Graph;
use crate::se3_transformer::oracle::Prepared;

/// Most edges (nodes times neighbours) of clouds merged into one run.
pub(crate) const MERGE_EDGE_LIMIT: usize = 1 << 15;

/// Consecutive clouds `range` of a batch run together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunGroup {
    /// Batch elements in this run.
    pub items: Range<usize>,
}

/// The runs of `items` (clouds of `nodes` input rows each): merged groups where `mergeable`,
/// else one cloud a run. A cloud whose graph has fewer nodes than its input rows (masked
/// nodes left out) runs alone.
pub(crate) fn run_groups(items: &[Prepared], nodes: usize, mergeable: bool) -> Vec<RunGroup> {
    let mut groups: Vec<RunGroup> = Vec::new();
    let mut edges = 0usize;
    for (bi, item) in items.iter().enumerate() {
        let g = &item.graph;
        let e = g.n * g.k;
        let joins = mergeable
            && g.n == nodes
            && item.global.is_none()
            && item.adj_labels.is_none()
            && groups.last().is_some_and(|last| {
                let first = &items[last.items.start];
                first.global.is_none()
                    && first.graph.n == nodes
                    && first.adj_labels.is_none()
                    && first.graph.k == g.k
                    && first.graph.max_degree == g.max_degree
                    && first.graph.edge_dim == g.edge_dim
                    && first.graph.contraction == g.contraction
                    && edges + e <= MERGE_EDGE_LIMIT
            });
        match groups.last_mut() {
            Some(last) if joins => {
                last.items.end = bi + 1;
                edges += e;
            }
            _ => {
                groups.push(RunGroup { items: bi..bi + 1 });
                edges = e;
            }
        }
    }
    groups
}

/// The clouds `items` as one disjoint graph (module doc); `items` must come from
/// [`run_groups`] (equal `k`, degrees and edge widths, no global features or labels).
pub(crate) fn merge(items: &[Prepared]) -> Prepared {
    let (k, max_degree, edge_dim, contraction) = items
        .first()
        .map(|i| {
            let g = &i.graph;
            (g.k, g.max_degree, g.edge_dim, g.contraction)
        })
        .unwrap_or_default();
    let n: usize = items.iter().map(|i| i.graph.n).sum();
    let blocks = items.first().map_or(0, |i| i.graph.basis.blocks.len());
    let mut graph = Graph {
        n,
        k,
        nbr: Vec::with_capacity(n * k),
        valid: Vec::with_capacity(n * k),
        rel: Vec::with_capacity(n * k),
        dist: Vec::with_capacity(n * k),
        edge_feat: Vec::with_capacity(n * k * edge_dim),
        edge_dim,
        basis: KernelBasisValues {
            max_degree,
            edges: 0,
            blocks: vec![Vec::new(); blocks],
        },
        max_degree,
        contraction,
    };
    let mut x0 = Feats::new();
    let mut offset = 0;
    for item in items {
        let g = &item.graph;
        graph.nbr.extend(g.nbr.iter().map(|&j| j + offset));
        graph.valid.extend_from_slice(&g.valid);
        graph.rel.extend_from_slice(&g.rel);
        graph.dist.extend_from_slice(&g.dist);
        graph.edge_feat.extend_from_slice(&g.edge_feat);
        graph.basis.edges += g.basis.edges;
        for (all, part) in graph.basis.blocks.iter_mut().zip(&g.basis.blocks) {
            all.extend_from_slice(part);
        }
        for (&l, blk) in &item.x0 {
            x0.entry(l)
                .or_insert_with(|| Block {
                    channels: blk.channels,
                    m: blk.m,
                    data: Vec::new(),
                })
                .data
                .extend_from_slice(&blk.data);
        }
        offset += g.n;
    }
    Prepared {
        x0,
        graph,
        global: None,
        adj_labels: None,
    }
}

/// Splits the per-row values `data` of a merged run back into its clouds: `rows[i]` rows of
/// `width` values each.
pub(crate) fn split_rows<T: Clone>(data: &[T], rows: &[usize], width: usize) -> Vec<Vec<T>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut at = 0;
    for &r in rows {
        let end = (at + r * width).min(data.len());
        out.push(data[at.min(end)..end].to_vec());
        at = end;
    }
    out
}

/// Splits the outputs of a merged run into the outputs of its clouds (`nodes[i]` rows each).
pub(crate) fn split_feats(out: Feats, nodes: &[usize]) -> Vec<Feats> {
    let mut per: Vec<Feats> = vec![Feats::new(); nodes.len()];
    for (l, blk) in out {
        let width = blk.channels * blk.m;
        for (f, data) in per.iter_mut().zip(split_rows(&blk.data, nodes, width)) {
            f.insert(
                l,
                Block {
                    channels: blk.channels,
                    m: blk.m,
                    data,
                },
            );
        }
    }
    per
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rows_inverts_concatenation() {
        let parts = [vec![1, 2, 3, 4], vec![5, 6], vec![7, 8, 9, 10, 11, 12]];
        let all: Vec<i32> = parts.concat();
        assert_eq!(split_rows(&all, &[2, 1, 3], 2), parts.to_vec());
    }
}
