//! The SE(3)-Transformer on large clouds in bounded memory, and memory estimates made before a
//! forward runs.
//!
//! A model with `L` message-passing layers (conv_in, the conv stack, each attention or EGNN
//! block, conv_out; [`NetSession::message_hops`]) gives node `i` an output that depends only on
//! the nodes within `L` hops of `i` along the selected neighbour lists. So for a block `C` of
//! centres the graph runs on `H` = `C` and every node within `L` hops of it, each node of `H`
//! keeping its neighbour list of the whole cloud; an edge that leaves `H` (only from nodes `L`
//! hops out, whose input features alone are read) is dropped. By induction the features of a
//! node `d` hops out are exact up to layer `L - d`, so the centres' outputs equal those of the
//! whole forward (up to float32 summation order). Per-node data of the whole cloud (the
//! selection, inputs, outputs) stays on the host; per-edge data exists for the running block's
//! `|H| k` edges only. Blocks are runs of the nodes in Morton (Z-curve) order of their
//! coordinates, so each block is spatially compact and its halo thin. Positions, rotary angles,
//! bond labels, edge tokens and global tokens are taken from each node's place in its whole
//! cloud, so every option runs blocked.

use se3_core::fiber::DegreeTensor;

use super::{FlatInputs, NetSession, Prepared};
use crate::checkpoint::StateDict;
use crate::inputs::ModelInputs;
use crate::se3_transformer::Se3TransformerForward;
use crate::Error;

/// What a blocked forward ran: blocks, and the largest block with its neighbourhood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockStats {
    /// Blocks run (over all batch elements).
    pub blocks: usize,
    /// Most nodes of one run of the graph (centres and their `L`-hop neighbourhood).
    pub max_nodes: usize,
    /// Nodes run over all blocks (centres counted once each, halo nodes once per block).
    pub total_nodes: usize,
}

/// What [`NetSession::estimate_memory`] expects one forward to hold, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The weights (float32, resident in the graph).
    pub weights: usize,
    /// The host's per-edge data of one cloud (neighbour lists, per-edge inputs: edge features,
    /// rotary angles), counted once per batch element in [`MemoryEstimate::total`].
    pub host_graph: usize,
    /// The most graph inputs and intermediates alive at once in one graph run (the whole
    /// batch, or one block with its neighbourhood).
    pub graph_peak: usize,
    /// Neighbours per node assumed.
    pub neighbours: usize,
}

impl MemoryEstimate {
    /// Weights, the host data of `batch` clouds and one graph run's peak.
    pub fn total(&self, batch: usize) -> usize {
        self.weights + self.host_graph * batch + self.graph_peak
    }
}

/// Node ids `base + i` of the points `pts`, sorted along the Morton (Z-order) curve of their
/// coordinates (21 bits an axis over the cloud's bounding box).
fn morton_order(pts: &[[f64; 3]], base: usize) -> Vec<usize> {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for p in pts {
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a]);
        }
    }
    let spread = |v: u64| {
        // interleave the low 21 bits with two zero bits each
        let mut x = v & 0x1f_ffff;
        x = (x | (x << 32)) & 0x1f00000000ffff;
        x = (x | (x << 16)) & 0x1f0000ff0000ff;
        x = (x | (x << 8)) & 0x100f00f00f00f00f;
        x = (x | (x << 4)) & 0x10c30c30c30c30c3;
        (x | (x << 2)) & 0x1249249249249249
    };
    let max = f64::from((1u32 << 21) - 1);
    let code = |p: &[f64; 3]| {
        let q = |a: usize| {
            let ext = hi[a] - lo[a];
            let t = if ext > 0.0 { (p[a] - lo[a]) / ext } else { 0.0 };
            (t * max).clamp(0.0, max) as u64
        };
        spread(q(0)) | (spread(q(1)) << 1) | (spread(q(2)) << 2)
    };
    let mut order: Vec<(u64, usize)> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| (code(p), base + i))
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, i)| i).collect()
}

/// `centres` followed by every node within `hops` hops of them along the edges of `p`
/// (breadth first). `mark` is all false on entry and on return.
fn with_neighbourhood(
    p: &Prepared<'_>,
    centres: &[usize],
    hops: usize,
    mark: &mut [bool],
) -> Vec<usize> {
    let mut rows = centres.to_vec();
    for &c in centres {
        mark[c] = true;
    }
    let mut frontier = 0..rows.len();
    for _ in 0..hops {
        let end = rows.len();
        for q in frontier {
            let i = rows[q];
            for &j in &p.src[i * p.k..(i + 1) * p.k] {
                if j >= 0.0 && !mark[j as usize] {
                    mark[j as usize] = true;
                    rows.push(j as usize);
                }
            }
        }
        frontier = end..rows.len();
    }
    for &r in &rows {
        mark[r] = false;
    }
    rows
}

/// What [`for_each_block`] does with a block: `(centres, block, statistics so far)`.
type BlockRun<'a> = dyn FnMut(&[usize], &[usize], &BlockStats) -> Result<(), Error> + 'a;

/// Calls `run(centres, block, stats so far)` for every block of `block_nodes` centres of each of
/// the `b` clouds of `n` nodes (runs of their Morton order), `block` the centres followed by their
/// `hops`-hop neighbourhood along the edges of `p`; returns the statistics of all blocks.
fn for_each_block(
    p: &Prepared<'_>,
    coords: &[[f64; 3]],
    (b, n, block_nodes, hops): (usize, usize, usize, usize),
    run: &mut BlockRun<'_>,
) -> Result<BlockStats, Error> {
    let mut stats = BlockStats::default();
    let mut mark = vec![false; b * n];
    for bi in 0..b {
        let order = morton_order(&coords[bi * n..(bi + 1) * n], bi * n);
        for centres in order.chunks(block_nodes) {
            let block = with_neighbourhood(p, centres, hops, &mut mark);
            stats.blocks += 1;
            stats.max_nodes = stats.max_nodes.max(block.len());
            stats.total_nodes += block.len();
            run(centres, &block, &stats)?;
        }
    }
    Ok(stats)
}

impl NetSession {
    /// Layers that pass messages along edges (each widens the set of nodes an output depends
    /// on by one hop): conv_in, the conv stack, each attention or EGNN block, conv_out.
    pub fn message_hops(&self) -> usize {
        self.hops
    }

    /// [`NetSession::forward_inputs`] with the graph run on blocks of `block_nodes` centre
    /// nodes and their neighbourhoods (module doc): the same outputs, with per-edge memory
    /// bounded by the largest block's neighbourhood instead of the whole batch.
    ///
    /// # Errors
    /// Those of [`NetSession::forward_inputs`]; `EmptyGraph` for `block_nodes = 0`.
    pub fn forward_blocked(
        &mut self,
        inputs: &ModelInputs,
        fwd: &Se3TransformerForward,
        block_nodes: usize,
    ) -> Result<(StateDict, BlockStats), Error> {
        self.forward_blocked_with_progress(inputs, fwd, block_nodes, &mut |_| {})
    }

    /// [`NetSession::forward_blocked`], calling `after_block` with the statistics so far after
    /// each block has run (for progress reports of long runs).
    ///
    /// # Errors
    /// As [`NetSession::forward_blocked`].
    pub fn forward_blocked_with_progress(
        &mut self,
        inputs: &ModelInputs,
        fwd: &Se3TransformerForward,
        block_nodes: usize,
        after_block: &mut dyn FnMut(&BlockStats),
    ) -> Result<(StateDict, BlockStats), Error> {
        if block_nodes == 0 {
            return Err(Error::EmptyGraph { batch: 1, nodes: 0 });
        }
        let (b, n) = (inputs.batch(), inputs.nodes());
        let flat = FlatInputs::of(inputs, &self.input)?;
        let x = flat.nodes(&self.options)?;
        let prepared = self.prepare(&flat.coords, b, flat.mask, x, flat.extra)?;
        let rows = b * n;
        let degrees = self.output.degrees().to_vec();
        let mut out: Vec<Vec<f32>> = degrees
            .iter()
            .map(|d| vec![0.0; rows * d.channels * d.width()])
            .collect();
        let stats = for_each_block(
            &prepared,
            &flat.coords,
            (b, n, block_nodes, self.hops),
            &mut |centres, block, stats| {
                self.feed(&prepared, block)?;
                self.session.run()?;
                for (d, o) in degrees.iter().zip(&mut out) {
                    let y = self.session.get(&format!("y.{}", d.l))?.data;
                    let w = d.channels * d.width();
                    for (q, &i) in centres.iter().enumerate() {
                        o[i * w..(i + 1) * w].copy_from_slice(&y[q * w..(q + 1) * w]);
                    }
                }
                after_block(stats);
                Ok(())
            },
        )?;
        let y = degrees
            .iter()
            .zip(out)
            .map(|(d, data)| DegreeTensor::from_vec([rows, d.channels, d.width()], data))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((self.outputs(y, flat.mask, fwd, b, n)?, stats))
    }

    /// Neighbour slots per node of a cloud of `nodes`: `min(num_neighbors +
    /// max_sparse_neighbors, nodes - 1)` (bonds counted at their cap, or all other nodes
    /// without one).
    fn slots(&self, nodes: usize) -> usize {
        let others = nodes.saturating_sub(1);
        let o = &self.options;
        let sparse = if o.attend_sparse_neighbors {
            o.max_sparse_neighbors.unwrap_or(others)
        } else {
            0
        };
        o.num_neighbors
            .unwrap_or(others)
            .min(others)
            .saturating_add(sparse)
            .min(others)
            .max(1)
    }

    /// An estimate of the memory of one forward on `batch` clouds of `nodes` nodes, made before
    /// anything of the forward is allocated: the graph's schedule at those sizes walked with
    /// every tensor's size from its shape ([`se3_core::exec::Session::estimate_peak_bytes`]),
    /// the host's per-edge data of one cloud and the weights. Neighbours per node as
    /// [`NetSession::forward_inputs`] selects them at most.
    ///
    /// # Errors
    /// `EmptyGraph` below 2 nodes; session errors.
    pub fn estimate_memory(&mut self, batch: usize, nodes: usize) -> Result<MemoryEstimate, Error> {
        if nodes < 2 || batch == 0 {
            return Err(Error::EmptyGraph { batch, nodes });
        }
        let k = self.slots(nodes);
        let rows = batch * nodes;
        let mut dims = vec![('n', rows), ('e', rows * k), ('k', k)];
        if self.options.global_feats_dim.is_some() {
            dims.push(('g', 1));
        }
        let graph_peak = self.session.estimate_peak_bytes(&dims)?;
        let weights: usize = self
            .session
            .weights()
            .iter()
            .map(|(_, shape)| 4 * shape.iter().map(|d| d.unwrap_or(1)).product::<usize>())
            .sum();
        // per edge on the host: source, destination and validity (4 bytes each), the edge
        // features and rotary angles (float32)
        let rotary = if self.rotary.is_some() {
            2 * self.options.dim_head
        } else {
            0
        };
        let per_edge = 12 + 4 * (self.options.edge_input_width() + rotary);
        Ok(MemoryEstimate {
            weights,
            host_graph: nodes * k * per_edge,
            graph_peak,
            neighbours: k,
        })
    }

    /// The memory of [`NetSession::forward_blocked`] on `inputs`, before any block runs: the
    /// neighbour selection is made (O(n k)) to size the largest block with its neighbourhood,
    /// whose run is estimated as [`NetSession::estimate_memory`] of a cloud of that many
    /// nodes; the whole batch's host data (inputs, selection, outputs) is added to
    /// `host_graph`.
    ///
    /// # Errors
    /// Those of the selection and of [`NetSession::estimate_memory`].
    pub fn estimate_blocked_memory(
        &mut self,
        inputs: &ModelInputs,
        block_nodes: usize,
    ) -> Result<(MemoryEstimate, BlockStats), Error> {
        if block_nodes == 0 {
            return Err(Error::EmptyGraph { batch: 1, nodes: 0 });
        }
        let (b, n) = (inputs.batch(), inputs.nodes());
        let flat = FlatInputs::of(inputs, &self.input)?;
        let x = flat.nodes(&self.options)?;
        let prepared = self.prepare(&flat.coords, b, flat.mask, x, flat.extra)?;
        let rows = b * n;
        let stats = for_each_block(
            &prepared,
            &flat.coords,
            (b, n, block_nodes, self.hops),
            &mut |_, _, _| Ok(()),
        )?;
        let k = prepared.k;
        let feats: usize = flat.blocks.iter().map(|t| t.data().len()).sum();
        let out_width: usize = self
            .output
            .degrees()
            .iter()
            .map(|d| d.channels * d.width())
            .sum();
        // the selection (source, destination, validity: 4 bytes a slot), points (f64 input and
        // stacked), features in (f64 input and f32 blocks), Morton order, outputs (f32 and the
        // assembled f64), the mask
        let node_bytes = rows * k * 12
            + rows * 48
            + 12 * feats
            + rows * 16
            + 12 * rows * out_width
            + inputs.mask.as_ref().map_or(0, |m| m.data.len());
        drop(prepared);
        let mut e = self.estimate_memory(1, stats.max_nodes.max(2))?;
        e.host_graph += node_bytes;
        Ok((e, stats))
    }
}
