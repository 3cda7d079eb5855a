//! Neighbour selection of egnn-pytorch 0.2.8's `EGNN.forward`, computed on the host from the
//! current coordinates before each layer's graph runs (CONVENTIONS 5).
//!
//! Without `num_nearest_neighbors` or `only_sparse_neighbors` every node `j` (itself included)
//! is a neighbour of `i`, valid if both are unmasked. Otherwise pairs are ranked by squared
//! distance, with masked pairs at `1e5` and, when an adjacency is given, the node itself at
//! `-1` and bonded nodes at `0` (in that order of overwriting); the `k` smallest are kept in the
//! order PyTorch's CPU `topk` returns them (ties included). `k` is `num_nearest_neighbors`, or
//! with `only_sparse_neighbors` and an adjacency the largest row sum of the adjacency (diagonal
//! included) with the radius forced to 0. A kept edge is valid if both nodes are unmasked and
//! its rank is at most `valid_radius`; **without a mask every kept edge is valid** (the library
//! applies the radius through the mask only).

use rayon::prelude::*;

use crate::se3_transformer::torch_topk::topk_smallest_into;
use crate::Error;

/// How one layer selects neighbours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionRule {
    /// `num_nearest_neighbors`.
    pub num_nearest: usize,
    /// `only_sparse_neighbors`.
    pub only_sparse: bool,
    /// `valid_radius` (squared distance).
    pub valid_radius: f64,
}

/// The neighbour lists of a batch: node `r = b n + i` owns edges `r k .. (r + 1) k`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Edges per node.
    pub k: usize,
    /// `(b, i, j)` of every edge (`j` the neighbour).
    pub pairs: Vec<(usize, usize, usize)>,
    /// Whether the edge counts.
    pub valid: Vec<bool>,
}

impl SelectionRule {
    /// Whether neighbours are ranked at all.
    pub fn uses_nearest(&self) -> bool {
        self.num_nearest > 0 || self.only_sparse
    }

    /// Selects the neighbours of every node of `coors` (`b` blocks of `n` points), with an
    /// optional node `mask` (`b n`) and adjacency (`b n n`, after the network's degree loop).
    ///
    /// # Errors
    /// `InvalidConfig` (`num_nearest_neighbors`) if more neighbours than nodes are asked for
    /// (`topk` fails in PyTorch). With `k = 0` (sparse neighbours without any bond) every node
    /// gets one invalid self-edge, which contributes nothing.
    pub fn select(
        &self,
        coors: &[[f64; 3]],
        (b, n): (usize, usize),
        mask: Option<&[bool]>,
        adj: Option<&[bool]>,
    ) -> Result<Selection, Error> {
        let m = |bi: usize, i: usize| mask.is_none_or(|m| m[bi * n + i]);
        if !self.uses_nearest() {
            let mut sel = Selection {
                k: n,
                pairs: Vec::with_capacity(b * n * n),
                valid: Vec::with_capacity(b * n * n),
            };
            for bi in 0..b {
                for i in 0..n {
                    for j in 0..n {
                        sel.pairs.push((bi, i, j));
                        sel.valid.push(m(bi, i) && m(bi, j));
                    }
                }
            }
            return Ok(sel);
        }
        let (k, radius) = match adj {
            Some(a) if self.only_sparse => {
                let most = a
                    .chunks_exact(n.max(1))
                    .map(|row| row.iter().filter(|&&x| x).count())
                    .max()
                    .unwrap_or(0);
                (most, 0.0)
            }
            _ => (self.num_nearest, self.valid_radius),
        };
        if k > n {
            return Err(Error::InvalidConfig {
                field: "num_nearest_neighbors",
                expected: "at most the number of nodes (torch.topk fails otherwise)",
                found: format!("{k} neighbours for {n} nodes"),
            });
        }
        if k == 0 {
            // The library's messages are then an empty sum: coordinates unchanged, pooled
            // messages 0. One invalid self-edge per node gives exactly that.
            let pairs: Vec<_> = (0..b)
                .flat_map(|bi| (0..n).map(move |i| (bi, i, i)))
                .collect();
            return Ok(Selection {
                k: 1,
                valid: vec![false; pairs.len()],
                pairs,
            });
        }
        // Rows are independent: each node ranks its candidates and keeps its `k` in parallel.
        let mut sel = Selection {
            k,
            pairs: vec![(0, 0, 0); b * n * k],
            valid: vec![false; b * n * k],
        };
        // coordinates by axis, so that a row of squared distances vectorises
        let axis = |a: usize| coors.iter().map(|c| c[a]).collect::<Vec<f64>>();
        let (xs, ys, zs) = (axis(0), axis(1), axis(2));
        sel.pairs
            .par_chunks_mut(k)
            .zip(sel.valid.par_chunks_mut(k))
            .enumerate()
            .for_each_init(
                || (vec![0.0f64; n], Vec::new(), Vec::with_capacity(k)),
                |(rank, scratch, picked), (row, (pairs, valid))| {
                    let (bi, i) = (row / n, row % n);
                    let xi = coors[bi * n + i];
                    let block = bi * n..(bi + 1) * n;
                    let (bx, by, bz) = (&xs[block.clone()], &ys[block.clone()], &zs[block]);
                    squared_distances(xi, (bx, by, bz), rank);
                    if mask.is_some() {
                        for (j, r) in rank.iter_mut().enumerate() {
                            if !(m(bi, i) && m(bi, j)) {
                                *r = 1e5;
                            }
                        }
                    }
                    if let Some(a) = adj {
                        rank[i] = -1.0;
                        for (j, r) in rank.iter_mut().enumerate() {
                            if j != i && a[(bi * n + i) * n + j] {
                                *r = 0.0;
                            }
                        }
                    }
                    smallest(rank, k, scratch, picked);
                    for ((p, v), &j) in pairs.iter_mut().zip(valid.iter_mut()).zip(picked.iter()) {
                        *p = (bi, i, j);
                        *v = mask.is_none() || (m(bi, i) && m(bi, j) && rank[j] <= radius);
                    }
                },
            );
        Ok(sel)
    }
}

/// Whether this CPU runs the AVX2 copies of the row loops (detected once).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
}

/// `rank[j] = |x_i - x_j|^2` for the points `(xs[j], ys[j], zs[j])` of one batch entry (the
/// same additions and products, in the same order, on every instruction set).
#[inline(always)]
fn squared_distances_impl(xi: [f64; 3], (xs, ys, zs): (&[f64], &[f64], &[f64]), rank: &mut [f64]) {
    for (((r, x), y), z) in rank.iter_mut().zip(xs).zip(ys).zip(zs) {
        let d = [xi[0] - x, xi[1] - y, xi[2] - z];
        *r = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn squared_distances_avx2(xi: [f64; 3], axes: (&[f64], &[f64], &[f64]), rank: &mut [f64]) {
    squared_distances_impl(xi, axes, rank);
}

/// [`squared_distances_impl`], on 4 lanes where the CPU has AVX2 (the crate's baseline has 2).
fn squared_distances(xi: [f64; 3], axes: (&[f64], &[f64], &[f64]), rank: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: `has_avx2` detected the feature on this CPU.
        unsafe { squared_distances_avx2(xi, axes, rank) };
        return;
    }
    squared_distances_impl(xi, axes, rank);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn smallest_avx2(rank: &[f64], k: usize, scratch: &mut Vec<(f64, usize)>, picked: &mut Vec<usize>) {
    topk_smallest_into(rank, k, scratch, picked);
}

/// [`topk_smallest_into`] (comparisons only: the same picks on every instruction set), its
/// scans on 4 lanes where the CPU has AVX2.
fn smallest(rank: &[f64], k: usize, scratch: &mut Vec<(f64, usize)>, picked: &mut Vec<usize>) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: `has_avx2` detected the feature on this CPU.
        unsafe { smallest_avx2(rank, k, scratch, picked) };
        return;
    }
    topk_smallest_into(rank, k, scratch, picked);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_neighbors_rank_self_then_bonds_and_fill_with_nearest() -> Result<(), Error> {
        // 4 points on a line, bonds 0-3 only; k = largest row sum = 1 + diag.
        let coors = [
            [0.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [2.0, 0.0, 0.0],
            [3.0, 0.0, 0.0],
        ];
        let mut adj = vec![false; 16];
        adj[3] = true;
        adj[12] = true;
        adj[0] = true; // diagonal of node 0 counts in the row sum
        let rule = SelectionRule {
            num_nearest: 0,
            only_sparse: true,
            valid_radius: f64::INFINITY,
        };
        let mask = [true; 4];
        let sel = rule.select(&coors, (1, 4), Some(&mask), Some(&adj))?;
        assert_eq!(sel.k, 2);
        // node 0: itself (-1) then its bond 3 (0); node 1: itself, then nearest (invalid: r > 0).
        assert_eq!(sel.pairs[0], (0, 0, 0));
        assert_eq!(sel.pairs[1], (0, 0, 3));
        assert_eq!(&sel.valid[..4], &[true, true, true, false]);
        Ok(())
    }

    #[test]
    fn no_bond_at_all_gives_one_invalid_self_edge_per_node() -> Result<(), Error> {
        let coors = [[0.0; 3], [1.0, 0.0, 0.0]];
        let rule = SelectionRule {
            num_nearest: 0,
            only_sparse: true,
            valid_radius: f64::INFINITY,
        };
        let sel = rule.select(&coors, (1, 2), None, Some(&[false; 4]))?;
        assert_eq!(sel.k, 1);
        assert_eq!(sel.pairs, vec![(0, 0, 0), (0, 1, 1)]);
        assert_eq!(sel.valid, vec![false, false]);
        Ok(())
    }

    #[test]
    fn too_many_neighbors_is_an_error() {
        let coors = [[0.0; 3]; 3];
        let rule = SelectionRule {
            num_nearest: 4,
            only_sparse: false,
            valid_radius: f64::INFINITY,
        };
        assert!(matches!(
            rule.select(&coors, (1, 3), None, None),
            Err(Error::InvalidConfig { .. })
        ));
    }
}
