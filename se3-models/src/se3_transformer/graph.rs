//! Neighbour selection of se3-transformer-pytorch (CONVENTIONS 2.6) and the per-edge data every layer
//! shares: relative positions, distances, edge features and the kernel basis.

use se3_core::basis::KernelBasisValues;

use crate::se3_transformer::basis::Se3tBasis;
use crate::se3_transformer::oracle::reassociated::Contraction;
use crate::se3_transformer::torch_topk::topk_smallest;
use crate::Error;

/// The neighbourhood graph of one batch element.
#[derive(Debug, Clone)]
pub struct Graph {
    /// Nodes.
    pub n: usize,
    /// Selected neighbours per node.
    pub k: usize,
    /// Neighbour node index, `n * k`, ranked by modified distance.
    pub nbr: Vec<usize>,
    /// Whether the selected neighbour counts (within radius and both nodes unmasked).
    pub valid: Vec<bool>,
    /// `coors[i] - coors[j]` per selected edge.
    pub rel: Vec<[f64; 3]>,
    /// `|rel|` per selected edge.
    pub dist: Vec<f64>,
    /// Edge features (edge embedding, then adjacency embedding), `n * k * edge_dim`.
    pub edge_feat: Vec<f64>,
    /// Width of `edge_feat` rows.
    pub edge_dim: usize,
    /// Kernel basis of every edge, one block per degree pair `[d_in * (max_degree + 1) + d_out]`,
    /// layout `[edge][o][i][f]`.
    pub basis: KernelBasisValues<f64>,
    /// Highest degree in `basis`.
    pub max_degree: usize,
    /// How layers contract messages over this graph.
    pub contraction: Contraction,
}

/// What neighbour selection needs from the config.
#[derive(Debug, Clone)]
pub struct SelectionParams {
    /// `num_neighbors` (None = infinity).
    pub num_neighbors: Option<usize>,
    /// `valid_radius`.
    pub valid_radius: f64,
    /// Causal: node i only sees j < i.
    pub causal: bool,
    /// Bonded pairs are ranked first (`attend_sparse_neighbors`).
    pub attend_sparse: bool,
    /// `max_sparse_neighbors` (None = infinity).
    pub max_sparse_neighbors: Option<usize>,
    /// `num_adj_degrees` (bond-distance labels).
    pub num_adj_degrees: Option<usize>,
}

/// Per-batch dense inputs of the selection, all `n x n` row-major.
pub struct PairInputs<'a> {
    /// Coordinates, `n` rows.
    pub coors: &'a [[f64; 3]],
    /// Node mask (None = all valid).
    pub mask: Option<&'a [bool]>,
    /// Adjacency (n x n).
    pub adj: Option<&'a [bool]>,
    /// neighbor_mask (n x n).
    pub neighbor_mask: Option<&'a [bool]>,
    /// Edge features for every ordered pair (n x n x edge_dim), before adjacency embedding.
    pub edge_feat: Option<&'a [f64]>,
}

/// Bond-distance labels and the adjacency used for sparse neighbours after the `num_adj_degrees`
/// loop (the library overwrites `adj_mat` with the last power, a quirk reproduced here):
/// label 1 for bonded, d for pairs whose reachability changes at power d (`A^d > 0` differs from
/// `A^(d-1) > 0`), 0 otherwise.
pub fn adjacency_degrees(adj: &[bool], n: usize, num_adj_degrees: usize) -> (Vec<i64>, Vec<bool>) {
    let mut idx: Vec<i64> = adj.iter().map(|&a| i64::from(a)).collect();
    let mut cur = adj.to_vec();
    for deg in 2..=num_adj_degrees {
        let mut next = vec![false; n * n];
        for i in 0..n {
            for j in 0..n {
                next[i * n + j] = (0..n).any(|t| cur[i * n + t] && cur[t * n + j]);
            }
        }
        for p in 0..n * n {
            if next[p] != cur[p] {
                idx[p] = deg as i64;
            }
        }
        cur = next;
    }
    (idx, cur)
}

/// Sparse (bonded) neighbours: how many to fetch, and which pairs are bonded per batch element.
///
/// The count is the largest bonded count of any row of any batch element (self excluded), capped by
/// `max_sparse_neighbors`. Below the cap every bond is kept. Above it the library adds U(-0.01, 0.01)
/// noise to the 0/1 adjacency and keeps the top `cap` entries that are bonds, i.e. a uniformly random
/// subset of each node's bonds; here the noise comes from `seed` (the distribution is the library's,
/// the draws are not torch's).
pub fn sparse_selection(
    adjs: &[Vec<bool>],
    n: usize,
    max_sparse: Option<usize>,
    seed: u64,
) -> (usize, Vec<Vec<bool>>) {
    use rand::{Rng, SeedableRng};
    let mut max_count = 0;
    for a in adjs {
        for i in 0..n {
            let c = (0..n).filter(|&j| j != i && a[i * n + j]).count();
            max_count = max_count.max(c);
        }
    }
    let strip_self =
        |a: &Vec<bool>| -> Vec<bool> { (0..n * n).map(|p| p / n != p % n && a[p]).collect() };
    match max_sparse {
        Some(cap) if cap < max_count => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let masks = adjs
                .iter()
                .map(|a| {
                    let mut m = vec![false; n * n];
                    for i in 0..n {
                        let mut vals: Vec<(f64, usize)> = (0..n)
                            .filter(|&j| j != i)
                            .map(|j| {
                                (
                                    f64::from(u8::from(a[i * n + j])) + rng.gen_range(-0.01..0.01),
                                    j,
                                )
                            })
                            .collect();
                        vals.sort_by(|x, y| y.0.total_cmp(&x.0));
                        for &(v, j) in vals.iter().take(cap) {
                            m[i * n + j] = v > 0.5;
                        }
                    }
                    m
                })
                .collect();
            (cap, masks)
        }
        _ => (max_count, adjs.iter().map(strip_self).collect()),
    }
}

/// The selected neighbours of every node of one batch element: row `i` holds `k` neighbours
/// (`nbr[i * k + s]`, ranked as [`build_graph`] documents) and whether each counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Nodes.
    pub n: usize,
    /// Neighbours per node.
    pub k: usize,
    /// Neighbour node index, `n * k`.
    pub nbr: Vec<usize>,
    /// Within radius and both nodes unmasked, `n * k`.
    pub valid: Vec<bool>,
}

/// Neighbours per node and the validity radius of [`select_neighbors`].
fn selection_size(p: &SelectionParams, n: usize, num_sparse: usize) -> (usize, f64) {
    let neighbors = p
        .num_neighbors
        .unwrap_or(usize::MAX)
        .min(n.saturating_sub(1));
    let k = (neighbors + num_sparse).min(n.saturating_sub(1));
    let radius = if p.num_neighbors == Some(0) {
        0.0
    } else {
        p.valid_radius
    };
    (k, radius)
}

/// The `k` nearest other nodes of every node by float64 distance, in ascending order, exactly as
/// the dense selection picks them (ranking every pair, ties as PyTorch's `topk`) when no pair is
/// modified (no neighbor_mask, bonds or causality): a cell-grid search (se3-core
/// [`nearest_neighbors`](se3_core::ops::neighbors::nearest_neighbors), about O(n k) time) finds
/// the `k + 1` nearest; where two of them share a distance (after the square root the dense path
/// ranks by) the order PyTorch picks is not the index order, and that row is ranked densely.
fn nearest_plain(coors: &[[f64; 3]], k: usize) -> Vec<usize> {
    use se3_core::ops::neighbors::{nearest_neighbors, SearchSpec};
    let n = coors.len();
    let spec = SearchSpec {
        k: k + 1,
        radius2: f64::INFINITY,
        exclude_self: true,
        mask: None,
        batch: None,
    };
    let lists = nearest_neighbors(coors, &spec);
    let mut nbr = Vec::with_capacity(n * k);
    for i in 0..n {
        let row: Vec<(usize, f64)> = lists.row(i).map(|(j, d2)| (j, d2.sqrt())).collect();
        let tied = row.windows(2).any(|w| w[0].1 == w[1].1);
        if tied {
            let md: Vec<f64> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let r = [
                        coors[i][0] - coors[j][0],
                        coors[i][1] - coors[j][1],
                        coors[i][2] - coors[j][2],
                    ];
                    (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt()
                })
                .collect();
            nbr.extend(
                topk_smallest(&md, k)
                    .into_iter()
                    .map(|p| if p < i { p } else { p + 1 }),
            );
        } else {
            nbr.extend(row.iter().take(k).map(|&(j, _)| j));
        }
    }
    nbr
}

/// Selects the neighbours of one batch element (the ranking of [`build_graph`]); without
/// neighbor_mask, bonds or causality by the grid search of `nearest_plain` (same result, about
/// O(n k)), else by ranking every pair.
pub fn select_neighbors(
    p: &SelectionParams,
    inp: &PairInputs<'_>,
    sparse_adj: Option<&[bool]>,
    num_sparse: usize,
) -> Selection {
    let n = inp.coors.len();
    let (k, radius) = selection_size(p, n, num_sparse);
    let dist = |i: usize, j: usize| {
        let r = [
            inp.coors[i][0] - inp.coors[j][0],
            inp.coors[i][1] - inp.coors[j][1],
            inp.coors[i][2] - inp.coors[j][2],
        ];
        (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt()
    };
    let plain = inp.neighbor_mask.is_none() && sparse_adj.is_none() && !p.causal;
    let mut sel = Selection {
        n,
        k,
        nbr: Vec::with_capacity(n * k),
        valid: Vec::with_capacity(n * k),
    };
    if plain {
        sel.nbr = nearest_plain(inp.coors, k);
    } else {
        for i in 0..n {
            let mut cand: Vec<(f64, usize)> = Vec::with_capacity(n);
            for j in (0..n).filter(|&j| j != i) {
                let mut md = dist(i, j);
                if let Some(nm) = inp.neighbor_mask {
                    if !nm[i * n + j] {
                        md = f64::MAX;
                    }
                }
                if let Some(sa) = sparse_adj {
                    if sa[i * n + j] {
                        md = 0.0;
                    }
                }
                if p.causal && j > i {
                    md = f64::MAX;
                }
                cand.push((md, j));
            }
            let md_row: Vec<f64> = cand.iter().map(|c| c.0).collect();
            sel.nbr
                .extend(topk_smallest(&md_row, k).into_iter().map(|p| cand[p].1));
        }
    }
    // validity reads the modified distance of the ranking
    for (e, &j) in sel.nbr.iter().enumerate() {
        let i = e / k.max(1);
        let mut md = dist(i, j);
        if inp.neighbor_mask.is_some_and(|nm| !nm[i * n + j]) {
            md = f64::MAX;
        }
        if sparse_adj.is_some_and(|sa| sa[i * n + j]) {
            md = 0.0;
        }
        if p.causal && j > i {
            md = f64::MAX;
        }
        let masked = inp.mask.is_some_and(|m| !(m[i] && m[j]));
        sel.valid.push(md <= radius && !masked);
    }
    sel
}

/// The per-edge data of the rows `rows` (global node ids, in the order of the returned graph's
/// nodes) of a selection: relative positions, distances, edge features and the kernel basis from
/// the global coordinates and pair inputs; neighbour indices renumbered to positions in `rows`,
/// a neighbour outside `rows` replaced by a stand-in node of `rows` not otherwise in the row
/// (its geometry and validity kept: the caller must not need that centre's result). The float64
/// oracle's per-edge data.
/// With `rows = 0..n` this is the whole graph.
///
/// # Errors
/// `Core(NonFinite)` if a relative position is not finite (inputs are validated before).
pub fn edge_graph(
    sel: &Selection,
    inp: &PairInputs<'_>,
    rows: &[usize],
    adj_labels: Option<(&[i64], &[f64], usize)>,
    edge_dim_in: usize,
    table: &Se3tBasis,
) -> Result<Graph, Error> {
    let (n, k) = (sel.n, sel.k);
    let adj_dim = adj_labels.map_or(0, |(_, _, d)| d);
    let edge_dim = edge_dim_in + adj_dim;
    let e = rows.len() * k;
    let mut g = Graph {
        n: rows.len(),
        k,
        nbr: Vec::with_capacity(e),
        valid: Vec::with_capacity(e),
        rel: Vec::with_capacity(e),
        dist: Vec::with_capacity(e),
        edge_feat: Vec::with_capacity(e * edge_dim),
        edge_dim,
        basis: KernelBasisValues {
            max_degree: table.max_degree(),
            edges: 0,
            blocks: Vec::new(),
        },
        max_degree: table.max_degree(),
        contraction: Contraction::Direct,
    };
    let whole = rows.len() == n && rows.iter().enumerate().all(|(p, &i)| p == i);
    let mut local = Vec::new();
    if !whole {
        local = vec![usize::MAX; n];
        for (p, &i) in rows.iter().enumerate() {
            local[i] = p;
        }
    }
    let mut row_nbr = vec![0usize; k];
    for (p, &i) in rows.iter().enumerate() {
        // renumbered neighbours; slots leaving `rows` take distinct stand-ins not otherwise in the
        // row (the graph's kernels expect a row without repeated neighbours)
        for (slot, &j) in row_nbr.iter_mut().zip(&sel.nbr[i * k..(i + 1) * k]) {
            *slot = match local.get(j) {
                None => j,
                Some(&q) => q,
            };
        }
        let mut stand_in = 0;
        for s in 0..k {
            if row_nbr[s] == usize::MAX {
                while stand_in == p || row_nbr.contains(&stand_in) {
                    stand_in += 1;
                }
                row_nbr[s] = stand_in;
                stand_in += 1;
            }
        }
        for (s, &local_j) in row_nbr.iter().enumerate() {
            let j = sel.nbr[i * k + s];
            let r = [
                inp.coors[i][0] - inp.coors[j][0],
                inp.coors[i][1] - inp.coors[j][1],
                inp.coors[i][2] - inp.coors[j][2],
            ];
            g.nbr.push(local_j);
            g.valid.push(sel.valid[i * k + s]);
            g.rel.push(r);
            g.dist
                .push((r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt());
            if let Some(ef) = inp.edge_feat {
                g.edge_feat.extend_from_slice(
                    &ef[(i * n + j) * edge_dim_in..(i * n + j + 1) * edge_dim_in],
                );
            }
            if let Some((labels, emb, dim)) = adj_labels {
                let lab = labels[i * n + j] as usize;
                g.edge_feat
                    .extend_from_slice(&emb[lab * dim..(lab + 1) * dim]);
            }
        }
    }
    g.basis = table.compute(&g.rel)?;
    Ok(g)
}

/// Builds the graph of one batch element.
///
/// Self is excluded; pairs are ranked by distance with neighbor_mask-excluded and causal (j > i) pairs
/// at `f64::MAX` and bonded pairs at 0; the `k = min(min(num_neighbors, n-1) + num_sparse, n-1)`
/// smallest are kept (ties picked as PyTorch's CPU `topk` picks them, see `torch_topk`), valid if
/// the modified distance is within the radius (0 when num_neighbors = 0) and both nodes are unmasked.
/// Plain selections (no neighbor_mask, bonds or causality) find the same neighbours by a grid
/// search ([`select_neighbors`]).
///
/// # Errors
/// `Core(NonFinite)` if a relative position is not finite (inputs are validated before).
pub fn build_graph(
    p: &SelectionParams,
    inp: &PairInputs<'_>,
    sparse_adj: Option<&[bool]>,
    num_sparse: usize,
    adj_labels: Option<(&[i64], &[f64], usize)>,
    edge_dim_in: usize,
    table: &Se3tBasis,
) -> Result<Graph, Error> {
    let sel = select_neighbors(p, inp, sparse_adj, num_sparse);
    let rows: Vec<usize> = (0..sel.n).collect();
    edge_graph(&sel, inp, &rows, adj_labels, edge_dim_in, table)
}

impl Graph {
    /// Kernel basis block `[o][i][f]` of edge `e` for the pair `(d_in, d_out)`.
    pub fn basis_block(&self, e: usize, d_in: usize, d_out: usize) -> &[f64] {
        let size = (2 * d_out + 1) * (2 * d_in + 1) * (2 * d_in.min(d_out) + 1);
        let block = &self.basis.blocks[d_in * (self.max_degree + 1) + d_out];
        &block[e * size..(e + 1) * size]
    }
}
