//! The neighbour slots of every node and their edge frames, chosen on the host exactly as
//! equiformer-pytorch 0.5.4's `Equiformer.forward` chooses them.

use se3_core::so3::equiformer_edge_wigner_d_batch;

use super::config::EquiformerConfig;
use crate::inputs::{EdgeInput, ModelInputs};
use crate::se3_transformer::torch_topk::topk_smallest;
use crate::Error;

/// The host inputs of [`se3_core::layers::AlignedEdges`] plus the per-edge embedding indices.
///
/// Selection (per batch element, node `i`, candidates `j != i` in ascending order): the key is
/// `|x_i - x_j|`, `f64::MAX` if `mask_i & mask_j` is false, then `0` for bonded pairs (with
/// `attend_sparse_neighbors`); the `k = min(min(num_neighbors, n-1) + s, n-1)` smallest keys in
/// torch's CPU `topk` order (ties included; `s` the most bonds of any node in the batch) are the
/// slots. A slot is valid if its key is at most `valid_radius` (0 if `num_neighbors = 0`) and
/// the pair is unmasked. With `num_adj_degrees_embed = K`, `adj_mat` is first replaced K - 1
/// times by `A A > 0` (walks of length two, the library's update) while labelling new pairs
/// 2, 3, ..; those labels (0 unbonded, 1 bonded) index the bond-distance embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct HostEdges {
    /// Slots per node.
    pub k: usize,
    /// Neighbour row `bi n + j` per edge (`b n k`).
    pub src: Vec<f32>,
    /// Node row `bi n + i` per edge.
    pub dst: Vec<f32>,
    /// Valid slot (0/1).
    pub mask: Vec<f32>,
    /// `mask / max(valid slots of the node, 1)`.
    pub mean: Vec<f32>,
    /// `|x_i - x_j|`.
    pub dist: Vec<f32>,
    /// `D^l` of the edge frame for `l = 1..=L`, `(E, 2l+1, 2l+1)` row-major each.
    pub frames: Vec<Vec<f32>>,
    /// The relative position `x_i - x_j` of every edge (float64, from the coordinates).
    pub rels: Vec<[f64; 3]>,
    /// Edge token per edge (`num_edge_tokens`).
    pub edge_tokens: Option<Vec<f32>>,
    /// Edge features per edge, `(E, edge_dim)` (continuous `edges`).
    pub edge_features: Option<Vec<f32>>,
    /// Bond-distance label per edge (`num_adj_degrees_embed` with `adj_dim > 0`).
    pub adj_labels: Option<Vec<f32>>,
}

/// The adjacency of batch element `bi` as an `n x n` matrix (a `(n, n)` input is shared).
fn adjacency(inp: &ModelInputs, bi: usize) -> Result<Option<Vec<bool>>, Error> {
    let n = inp.nodes();
    let Some(a) = &inp.adj_mat else {
        return Ok(None);
    };
    match a.shape.as_slice() {
        [r, c] if *r == n && *c == n => Ok(Some(a.data.clone())),
        [b, r, c] if *b == inp.batch() && *r == n && *c == n => {
            Ok(Some(a.data[bi * n * n..(bi + 1) * n * n].to_vec()))
        }
        _ => Err(Error::InputShape {
            name: "adj_mat",
            expected: format!("({n}, {n}) or ({}, {n}, {n})", inp.batch()),
            found: a.shape.clone(),
        }),
    }
}

/// Bond-distance labels and the adjacency after the library's `num_adj_degrees_embed` loop.
fn adj_degrees(adj: &[bool], n: usize, degrees: usize) -> (Vec<usize>, Vec<bool>) {
    let mut labels: Vec<usize> = adj.iter().map(|&a| usize::from(a)).collect();
    let mut cur = adj.to_vec();
    for degree in 2..=degrees {
        let mut next = vec![false; n * n];
        for i in 0..n {
            for j in 0..n {
                next[i * n + j] = (0..n).any(|t| cur[i * n + t] && cur[t * n + j]);
            }
        }
        for (idx, (&nx, &c)) in next.iter().zip(&cur).enumerate() {
            if nx && !c {
                labels[idx] = degree;
            }
        }
        cur = next;
    }
    (labels, cur)
}

impl HostEdges {
    /// Selects the slots for `inp` under `cfg`, with frames up to degree `max_degree`.
    ///
    /// # Errors
    /// `MissingInput` (`adj_mat` for sparse neighbours or bond-distance labels, `edges` when
    /// the config has edge features), `UnexpectedInput` (`edges` without `edge_dim`;
    /// `neighbor_mask`, `global_feats`: `Equiformer.forward` has no such parameter),
    /// `InputShape`, `IndexOutOfRange` (tokens), `NoNeighbors`, `EmptyGraph` (one node),
    /// `InvalidConfig` (`max_sparse_neighbors` below the bonds of a node: the library then
    /// samples at random).
    pub fn select(
        cfg: &EquiformerConfig,
        inp: &ModelInputs,
        max_degree: usize,
    ) -> Result<Self, Error> {
        let (b, n) = (inp.batch(), inp.nodes());
        if n < 2 {
            return Err(Error::EmptyGraph { batch: b, nodes: n });
        }
        let needs_adj = cfg.attend_sparse_neighbors || cfg.num_adj_degrees_embed.is_some();
        if needs_adj && inp.adj_mat.is_none() {
            return Err(Error::MissingInput { name: "adj_mat" });
        }
        if cfg.has_edges() && inp.edges.is_none() {
            return Err(Error::MissingInput { name: "edges" });
        }
        if inp.neighbor_mask.is_some() {
            return Err(Error::UnexpectedInput {
                name: "neighbor_mask",
            });
        }
        if inp.global_feats.is_some() {
            return Err(Error::UnexpectedInput {
                name: "global_feats",
            });
        }
        if !cfg.has_edges() && inp.edges.is_some() {
            return Err(Error::UnexpectedInput { name: "edges" });
        }
        // Adjacency (after the bond-distance loop) and labels per batch element.
        let mut adjs = Vec::new();
        let mut labels = Vec::new();
        for bi in 0..b {
            let a = if needs_adj { adjacency(inp, bi)? } else { None };
            match (a, cfg.num_adj_degrees_embed) {
                (Some(a), Some(k)) => {
                    let (lab, cur) = adj_degrees(&a, n, k);
                    labels.push(lab);
                    adjs.push(Some(cur));
                }
                (a, _) => adjs.push(a),
            }
        }
        let bonded = |bi: usize, i: usize, j: usize| {
            cfg.attend_sparse_neighbors && adjs[bi].as_ref().is_some_and(|a| a[i * n + j])
        };
        let mut sparse = 0;
        if cfg.attend_sparse_neighbors {
            for bi in 0..b {
                for i in 0..n {
                    sparse = sparse.max((0..n).filter(|&j| j != i && bonded(bi, i, j)).count());
                }
            }
            if cfg.max_sparse_neighbors.is_some_and(|m| m < sparse) {
                return Err(Error::InvalidConfig {
                    field: "max_sparse_neighbors",
                    expected: "at least the most bonds of any node (fewer makes the library sample bonds at random)",
                    found: format!("{:?} < {sparse}", cfg.max_sparse_neighbors),
                });
            }
        }
        let neighbors = cfg.num_neighbors.unwrap_or(usize::MAX).min(n - 1);
        if !cfg.attend_sparse_neighbors && neighbors == 0 {
            return Err(Error::NoNeighbors);
        }
        let valid_radius = if cfg.num_neighbors == Some(0) {
            0.0
        } else {
            cfg.valid_radius
        };
        let k = neighbors.saturating_add(sparse).min(n - 1);
        if k == 0 {
            return Err(Error::NoNeighbors);
        }
        let e = b * n * k;
        let (mut src, mut dst) = (Vec::with_capacity(e), Vec::with_capacity(e));
        let (mut mask, mut dist) = (Vec::with_capacity(e), Vec::with_capacity(e));
        let mut pairs = Vec::with_capacity(e);
        let mut rels = Vec::with_capacity(e);
        for bi in 0..b {
            let pts = inp.points(bi);
            let nm = inp.node_mask(bi);
            let valid = |i: usize, j: usize| nm.is_none_or(|m| m[i] && m[j]);
            for i in 0..n {
                let cands: Vec<usize> = (0..n).filter(|&j| j != i).collect();
                let rel = |j: usize| -> [f64; 3] {
                    [
                        pts[i][0] - pts[j][0],
                        pts[i][1] - pts[j][1],
                        pts[i][2] - pts[j][2],
                    ]
                };
                let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
                let keys: Vec<f64> = cands
                    .iter()
                    .map(|&j| {
                        if bonded(bi, i, j) {
                            0.0
                        } else if !valid(i, j) {
                            f64::MAX
                        } else {
                            norm(rel(j))
                        }
                    })
                    .collect();
                let chosen = topk_smallest(&keys, k);
                for &p in &chosen {
                    let j = cands[p];
                    let ok = keys[p] <= valid_radius && valid(i, j);
                    src.push((bi * n + j) as f32);
                    dst.push((bi * n + i) as f32);
                    mask.push(if ok { 1.0f32 } else { 0.0 });
                    let r = rel(j);
                    dist.push(norm(r) as f32);
                    rels.push(r);
                    pairs.push((bi, i, j));
                }
            }
        }
        let mut mean = Vec::with_capacity(e);
        for row in mask.chunks(k) {
            let c: f32 = row.iter().sum();
            mean.extend(row.iter().map(|m| m / c.max(1.0)));
        }
        let frames = edge_frames(&rels, max_degree)?;
        let mut out = HostEdges {
            k,
            src,
            dst,
            mask,
            mean,
            dist,
            frames,
            rels,
            edge_tokens: None,
            edge_features: None,
            adj_labels: None,
        };
        if cfg.has_edges() {
            match &inp.edges {
                Some(EdgeInput::Tokens { shape, ids }) if shape.as_slice() == [b, n, n] => {
                    let Some(t) = cfg.num_edge_tokens else {
                        return Err(Error::InputShape {
                            name: "edges",
                            expected: format!(
                                "({b}, {n}, {n}, edge_dim) floats (no num_edge_tokens)"
                            ),
                            found: shape.clone(),
                        });
                    };
                    let mut v = Vec::with_capacity(e);
                    for (pos, &(bi, i, j)) in pairs.iter().enumerate() {
                        let id = ids[(bi * n + i) * n + j];
                        if id < 0 || id as usize >= t {
                            return Err(Error::IndexOutOfRange {
                                name: "edges",
                                index: pos,
                                found: id,
                                bound: t,
                            });
                        }
                        v.push(id as f32);
                    }
                    out.edge_tokens = Some(v);
                }
                Some(EdgeInput::Dense(t))
                    if cfg.num_edge_tokens.is_none()
                        && t.shape.len() == 4
                        && t.shape[..3] == [b, n, n]
                        && Some(t.shape[3]) == cfg.edge_dim =>
                {
                    let w = t.shape[3];
                    let mut v = Vec::with_capacity(e * w);
                    for &(bi, i, j) in &pairs {
                        let o = ((bi * n + i) * n + j) * w;
                        v.extend(t.data[o..o + w].iter().map(|&x| x as f32));
                    }
                    out.edge_features = Some(v);
                }
                other => {
                    let found = match other {
                        Some(EdgeInput::Tokens { shape, .. }) => shape.clone(),
                        Some(EdgeInput::Dense(t)) => t.shape.clone(),
                        None => vec![],
                    };
                    return Err(Error::InputShape {
                        name: "edges",
                        expected: if cfg.num_edge_tokens.is_some() {
                            format!("({b}, {n}, {n}) edge tokens")
                        } else {
                            format!("({b}, {n}, {n}, {}) floats", cfg.edge_dim.unwrap_or(0))
                        },
                        found,
                    });
                }
            }
        }
        if cfg.has_adj_embedding() {
            out.adj_labels = Some(
                pairs
                    .iter()
                    .map(|&(bi, i, j)| labels[bi][i * n + j] as f32)
                    .collect(),
            );
        }
        Ok(out)
    }
}

/// `D^l` (l = 1..=max_degree) of every edge's frame; the identity for all edges if every
/// relative position is `(0, 1, 0)` within torch's `allclose` (the library's shortcut). A
/// zero relative position takes the direction `(0, 1, 0)` (torch's `normalize` of zero).
fn edge_frames(rels: &[[f64; 3]], max_degree: usize) -> Result<Vec<Vec<f32>>, Error> {
    if max_degree == 0 {
        return Ok(Vec::new());
    }
    let y = [0.0, 1.0, 0.0];
    let aligned = rels
        .iter()
        .all(|r| (0..3).all(|c| (r[c] - y[c]).abs() <= 1e-6 + 1e-5 * y[c]));
    let mut frames: Vec<Vec<f32>> = (1..=max_degree)
        .map(|l| Vec::with_capacity(rels.len() * (2 * l + 1) * (2 * l + 1)))
        .collect();
    if aligned {
        for _ in rels {
            for (l, f) in (1..=max_degree).zip(frames.iter_mut()) {
                let m = 2 * l + 1;
                f.extend((0..m * m).map(|i| if i / m == i % m { 1.0f32 } else { 0.0 }));
            }
        }
        return Ok(frames);
    }
    let dirs: Vec<[f64; 3]> = rels
        .iter()
        .map(|r| if r.iter().all(|&v| v == 0.0) { y } else { *r })
        .collect();
    let flat = equiformer_edge_wigner_d_batch(max_degree, &dirs)?;
    let per_edge: usize = (0..=max_degree).map(|l| (2 * l + 1) * (2 * l + 1)).sum();
    for chunk in flat.chunks(per_edge) {
        let mut at = 1;
        for (l, f) in (1..=max_degree).zip(frames.iter_mut()) {
            let mm = (2 * l + 1) * (2 * l + 1);
            f.extend(chunk[at..at + mm].iter().map(|&v| v as f32));
            at += mm;
        }
    }
    Ok(frames)
}

/// The gradient with respect to each edge's relative position `r = x_i - x_j` of
/// `Σ_l <G^l_e, D^l(r)>`, given `grads[l - 1]`, the gradients `G^l` of the frames `D^l`
/// (`(E, 2l+1, 2l+1)` row-major, as [`HostEdges::frames`]).
///
/// The frame `D^l(R(r))` is a smooth function of `r` away from `r ∝ -(0, 1, 0)`; its
/// derivative is taken by central differences in float64 along each axis
/// (`h = 1e-5 |r|`, error about `1e-10` relative, far below the float32 gradients it
/// multiplies). Edges with `r = 0` have no direction and get zero.
///
/// # Errors
/// As [`equiformer_edge_wigner_d_batch`].
pub fn frame_gradients(
    rels: &[[f64; 3]],
    max_degree: usize,
    grads: &[Vec<f32>],
) -> Result<Vec<[f64; 3]>, Error> {
    let mut out = vec![[0.0f64; 3]; rels.len()];
    if max_degree == 0 || rels.is_empty() {
        return Ok(out);
    }
    let per_edge: usize = (0..=max_degree).map(|l| (2 * l + 1) * (2 * l + 1)).sum();
    let norms: Vec<f64> = rels
        .iter()
        .map(|r| (r[0] * r[0] + r[1] * r[1] + r[2] * r[2]).sqrt())
        .collect();
    let y = [0.0, 1.0, 0.0];
    for axis in 0..3 {
        let moved = |sign: f64| -> Vec<[f64; 3]> {
            rels.iter()
                .zip(&norms)
                .map(|(r, &nr)| {
                    if nr == 0.0 {
                        return y;
                    }
                    let mut p = *r;
                    p[axis] += sign * 1e-5 * nr;
                    p
                })
                .collect()
        };
        let up = equiformer_edge_wigner_d_batch(max_degree, &moved(1.0))?;
        let down = equiformer_edge_wigner_d_batch(max_degree, &moved(-1.0))?;
        for (e, o) in out.iter_mut().enumerate() {
            if norms[e] == 0.0 {
                continue;
            }
            let base = e * per_edge;
            let mut at = 1;
            let mut acc = 0.0;
            for (l, g) in (1..=max_degree).zip(grads) {
                let mm = (2 * l + 1) * (2 * l + 1);
                for q in 0..mm {
                    let d = up[base + at + q] - down[base + at + q];
                    acc += f64::from(g[e * mm + q]) * d;
                }
                at += mm;
            }
            o[axis] = acc / (2e-5 * norms[e]);
        }
    }
    Ok(out)
}
