//! The compiled SE(3)-Transformer on large clouds in bounded memory: the graph runs on blocks of
//! centre nodes with their neighbourhoods, and the centres' outputs are stitched together.
//!
//! A model with `L` message-passing layers (conv_in, the conv stack, one per attention or EGNN
//! block, conv_out; [`Se3TransformerOracle::message_hops`]) gives node `i` an output that depends only
//! on the nodes within `L` hops of `i` along the selected neighbour lists. So for a block `C` of
//! centres the graph is run on `H` = `C` and every node within `L` hops of it (all selected slots
//! followed, valid or not, so every value a needed node reads is real), each node of `H` keeping
//! its neighbour list of the whole cloud; slots that leave `H` (only from nodes `L` hops out,
//! whose features are needed at the input layer only) read stand-in nodes. By induction, the
//! features of a node `d` hops out are exact up to layer `L - d`, so the centres' outputs equal
//! those of the unblocked forward (up to float32 summation order of the graph's kernels).
//! `L` is counted on the full model when the graph is built: the host model kept beside the
//! compiled graph has its layers stripped (conv stack and trunk emptied), so counting on it gave 2
//! (conv_in and conv_out) whatever the depth, which is why blocks once needed "two hops more".
//!
//! The neighbour selection of the whole cloud (about O(n k), [`select_neighbors`]) and the node
//! features are held for all nodes; per-edge data (geometry, kernel basis, radial activations)
//! exists only for the running block's `|H| k` edges. Blocks are runs of the nodes in Morton
//! (Z-curve) order of their coordinates, so each block is spatially compact and its halo thin.
//!
//! [`select_neighbors`]: crate::se3_transformer::graph::select_neighbors

use crate::inputs::{ModelInputs, NodeFeats};
use crate::se3_transformer::features::{Block, Feats};
use crate::se3_transformer::graph::Selection;
use crate::se3_transformer::oracle::{Prepared, Se3TransformerOracle, Trunk};
use crate::se3_transformer::Se3TransformerForward;
use crate::Error;

use super::{MemoryEstimate, Se3Transformer};

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

impl Se3TransformerOracle {
    /// Layers that pass messages along edges (each widens the set of nodes an output depends on
    /// by one hop): conv_in, the conv stack, each attention or EGNN block, conv_out. Counted on
    /// the full model (a compiled model's host copy has its layers stripped).
    pub fn message_hops(&self) -> usize {
        let trunk = match &self.trunk {
            Trunk::Sequential(b) | Trunk::Reversible(b) => b.len(),
            Trunk::Egnn(net) => net.layers.len(),
        };
        1 + self.convs.len() + trunk + usize::from(self.conv_out.is_some())
    }
}

/// Node ids sorted along the Morton (Z-order) curve of their coordinates (21 bits an axis over
/// the cloud's bounding box).
fn morton_order(pts: &[[f64; 3]]) -> Vec<usize> {
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
    let mut order: Vec<(u64, usize)> = pts.iter().enumerate().map(|(i, p)| (code(p), i)).collect();
    order.sort_unstable();
    order.into_iter().map(|(_, i)| i).collect()
}

/// `centres` followed by every node within `hops` hops of them along the selected neighbour
/// lists (breadth first). `mark` is all false on entry and on return.
fn with_neighbourhood(
    sel: &Selection,
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
        for p in frontier {
            let i = rows[p];
            for &j in &sel.nbr[i * sel.k..(i + 1) * sel.k] {
                if !mark[j] {
                    mark[j] = true;
                    rows.push(j);
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

/// The rows `rows` of node features `x` (one block of rows a degree).
fn gather_rows(x: &Feats, rows: &[usize]) -> Feats {
    x.iter()
        .map(|(&l, b)| {
            let w = b.channels * b.m;
            let mut data = Vec::with_capacity(rows.len() * w);
            for &i in rows {
                data.extend_from_slice(&b.data[i * w..(i + 1) * w]);
            }
            (
                l,
                Block {
                    channels: b.channels,
                    m: b.m,
                    data,
                },
            )
        })
        .collect()
}

impl Se3Transformer {
    /// [`Se3TransformerOracle::message_hops`] of the model this graph was built from: the hops of
    /// neighbourhood a block of [`Se3Transformer::forward_blocked`] takes.
    pub fn message_hops(&self) -> usize {
        self.message_hops
    }

    fn check_blockable(&self, block_nodes: usize) -> Result<(), Error> {
        if block_nodes == 0 {
            return Err(Error::EmptyGraph { batch: 1, nodes: 0 });
        }
        if self.coors.is_some() {
            return Err(Error::NotCompiled {
                option: "a blocked forward with differentiable_coors",
            });
        }
        if self.host()?.rotary.is_some() {
            // rotary angles read each node's position in the whole cloud
            return Err(Error::NotCompiled {
                option: "a blocked forward with rotary embeddings",
            });
        }
        Ok(())
    }

    /// [`Se3Transformer::forward`] with the graph run on blocks of about `block_nodes`
    /// centre nodes and their neighbourhoods (module doc): the same outputs, with per-edge memory
    /// bounded by the largest block's neighbourhood instead of the whole cloud.
    ///
    /// # Errors
    /// Those of [`Se3Transformer::forward`]; `NotCompiled` with differentiable_coors or
    /// rotary embeddings; `EmptyGraph` for `block_nodes = 0`.
    pub fn forward_blocked(
        &mut self,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
        block_nodes: usize,
    ) -> Result<(crate::checkpoint::StateDict, BlockStats), Error> {
        self.forward_blocked_with_progress(inp, fwd, block_nodes, &mut |_| {})
    }

    /// [`Se3Transformer::forward_blocked`], calling `after_block` with the statistics so
    /// far after each block has run (for progress reports of long runs).
    ///
    /// # Errors
    /// As [`Se3Transformer::forward_blocked`].
    pub fn forward_blocked_with_progress(
        &mut self,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
        block_nodes: usize,
        after_block: &mut dyn FnMut(&BlockStats),
    ) -> Result<(crate::checkpoint::StateDict, BlockStats), Error> {
        self.check_blockable(block_nodes)?;
        let (b, n) = (inp.batch(), inp.nodes());
        let t0 = std::time::Instant::now();
        let (selected, hops) = {
            let host = self.host()?;
            (host.select(inp)?, self.message_hops)
        };
        let t1 = std::time::Instant::now();
        let mut stats = BlockStats::default();
        let mut per_batch = Vec::with_capacity(b);
        let mut mark = vec![false; n];
        let out_degrees = self.out_degrees.clone();
        for (bi, item) in selected.items.iter().enumerate() {
            let mut out: Feats = out_degrees
                .iter()
                .map(|&(l, c)| {
                    let m = 2 * l + 1;
                    (
                        l,
                        Block {
                            channels: c,
                            m,
                            data: vec![0.0; n * c * m],
                        },
                    )
                })
                .collect();
            let order = morton_order(&item.pts);
            for centres in order.chunks(block_nodes) {
                let rows = with_neighbourhood(&item.sel, centres, hops, &mut mark);
                stats.blocks += 1;
                stats.max_nodes = stats.max_nodes.max(rows.len());
                stats.total_nodes += rows.len();
                let prepared = Prepared {
                    x0: gather_rows(&item.x0, &rows),
                    graph: self.host()?.edge_graph_of(&selected, bi, &rows)?,
                    global: item.global.clone(),
                    // the labels pick embedding rows on the host for training only
                    adj_labels: None,
                };
                let y = self.run_one(&prepared, &[])?;
                drop(prepared);
                for (l, blk) in &mut out {
                    let got = y.get(l).ok_or(Error::MissingInput { name: "output" })?;
                    let w = blk.channels * blk.m;
                    for (p, &i) in centres.iter().enumerate() {
                        blk.data[i * w..(i + 1) * w].copy_from_slice(&got.data[p * w..(p + 1) * w]);
                    }
                }
                after_block(&stats);
            }
            per_batch.push(out);
        }
        let t2 = std::time::Instant::now();
        self.timings = vec![
            (
                "select (neighbours, node features)",
                (t1 - t0).as_secs_f64(),
            ),
            ("blocks (edge data + graph)", (t2 - t1).as_secs_f64()),
        ];
        Ok((self.host()?.assemble(per_batch, inp, fwd, b, n)?, stats))
    }

    /// The memory of [`Se3Transformer::forward_blocked`] on `inp`, before any block runs:
    /// the neighbour selection is made (O(n k)) to size the largest block with its
    /// neighbourhood, whose run is estimated as [`Se3Transformer::estimate_memory`] of a
    /// cloud of that many nodes; the whole-cloud host data (the inputs, the selection and the
    /// search's lists, points, node features in and out, float64) is added to `host_graph`.
    ///
    /// # Errors
    /// Those of [`Se3Transformer::forward_blocked`]'s selection and of
    /// [`Se3Transformer::estimate_memory`].
    pub fn estimate_blocked_memory(
        &mut self,
        inp: &ModelInputs,
        block_nodes: usize,
    ) -> Result<(MemoryEstimate, BlockStats), Error> {
        self.check_blockable(block_nodes)?;
        let n = inp.nodes();
        let (selected, hops) = {
            let host = self.host()?;
            (host.select(inp)?, self.message_hops)
        };
        let mut stats = BlockStats::default();
        let mut mark = vec![false; n];
        let mut node_bytes = 0;
        for item in &selected.items {
            for centres in morton_order(&item.pts).chunks(block_nodes) {
                let rows = with_neighbourhood(&item.sel, centres, hops, &mut mark);
                stats.blocks += 1;
                stats.max_nodes = stats.max_nodes.max(rows.len());
                stats.total_nodes += rows.len();
            }
            let feats: usize = item.x0.values().map(|b| b.data.len()).sum();
            let k = item.sel.k;
            // selection (index 8 + valid 1 a slot), the grid search's lists while selecting
            // (k + 1 indices and distances, 16 bytes each), points, features in, Morton order
            node_bytes += n * k * 9 + n * (k + 1) * 16 + n * 24 + 8 * feats + n * 16;
        }
        // the stitched outputs and their assembled copy, float64
        let out_width: usize = self.out_degrees.iter().map(|&(l, c)| c * (2 * l + 1)).sum();
        node_bytes += 2 * 8 * n * out_width * selected.items.len();
        // the inputs themselves (float64 features and coordinates, one byte a mask entry)
        let feats_in = match &inp.feats {
            NodeFeats::Dense(t) => t.data.len(),
            NodeFeats::Tokens { ids, .. } => ids.len(),
            NodeFeats::Degrees(d) => d.values().map(|t| t.data.len()).sum(),
        };
        node_bytes +=
            8 * (feats_in + inp.coors.data.len()) + inp.mask.as_ref().map_or(0, |m| m.data.len());
        drop(selected);
        let mut e = self.estimate_memory(1, stats.max_nodes.max(2))?;
        e.host_graph += node_bytes;
        Ok((e, stats))
    }
}
