//! Exact nearest neighbours: for every point `i`, the indices of the `K` nearest other points
//! by squared Euclidean distance (optionally only within a radius), with masks.
//!
//! Rules (each has a test, because neighbour selection bugs are silent):
//! - exact: the result is that of comparing every pair, in f32 with the same formula for every
//!   pair; the search itself buckets points in a cell grid above a few hundred points (about
//!   O(N K) on clouds of even density, [`grid`]), also usable on the host in f64
//!   ([`nearest_neighbors`]);
//! - order: increasing distance, ties broken by increasing index (deterministic);
//! - `exclude_self`: `i` is never its own neighbour (a duplicate point at distance 0 still is);
//! - masked points (mask 0) are neither centres (their row is all `-1`) nor neighbours;
//! - fewer than `K` candidates (few valid points, or few within the radius): the row is
//!   filled with `-1` after the found neighbours, and `valid` is 0 there;
//! - radius: a neighbour needs `|x_i - x_j| <= radius`.

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod grid;
#[cfg(test)]
mod properties;

pub use cpu::{EdgeCenters, IndexValid, Knn};
pub use grid::{nearest_neighbors, NeighborLists, SearchSpec};
use luminal::prelude::*;

use super::logical_dims;

/// How neighbours are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeighborSpec {
    /// Only neighbours with distance <= radius (`None`: no limit).
    pub radius: Option<f32>,
    /// Leave a point out of its own neighbour list.
    pub exclude_self: bool,
}

impl Default for NeighborSpec {
    fn default() -> Self {
        NeighborSpec {
            radius: None,
            exclude_self: true,
        }
    }
}

/// Neighbour lists: `idx[i, k]` (f32 integer, `-1` when missing) and `valid[i, k]` (1/0).
#[derive(Debug, Clone, Copy)]
pub struct Neighbors<N: Dimension, const K: usize> {
    pub idx: GraphTensor<(N, Const<K>)>,
    pub valid: GraphTensor<(N, Const<K>)>,
}

/// Neighbour lists as a flat edge list of `E = N * K` edges (edge `i * K + k` is the `k`-th
/// neighbour of `i`): `src` the neighbour, `dst` the centre, `valid` 1/0. Missing neighbours
/// have `src = dst = -1`, so gathers read zeros and scatters, segment softmaxes and the edge
/// kernel skip them.
#[derive(Debug, Clone, Copy)]
pub struct Edges<E: Dimension> {
    pub src: GraphTensor<(E,)>,
    pub dst: GraphTensor<(E,)>,
    pub valid: GraphTensor<(E,)>,
}

impl<N: Dimension, const K: usize> Neighbors<N, K> {
    /// The flat edge list (see [`Edges`]). `E` is the edge dimension type; with a dynamic
    /// `Dyn<'e'>`, declare its size once: `session.derive_dim('e', Expression::from('n') * K)`
    /// (luminal's binary ops take output shapes from the type).
    pub fn edges<E: Dimension>(&self) -> Edges<E> {
        let e = logical_dims(&self.idx.shape)[0] * K;
        let flat = |t: GraphTensor<(N, Const<K>)>| t.dyn_reshape::<(E,)>(vec![e]);
        let g = self.idx.graph();
        let did = g
            .add_op(EdgeCenters { k: K })
            .input(self.idx.id, 0, self.idx.shape)
            .finish();
        Edges {
            src: flat(self.idx),
            dst: GraphTensor::from_id(did, ShapeTracker::new(&[e]), self.idx.graph_ref),
            valid: flat(self.valid),
        }
    }
}

/// The `K` nearest neighbours of each point of `coords (N, 3)` (see the module rules);
/// `mask (N,)` holds 1 for real points and 0 for padding.
pub fn neighbors<N: Dimension, const K: usize>(
    coords: GraphTensor<(N, Const<3>)>,
    mask: Option<GraphTensor<(N,)>>,
    spec: NeighborSpec,
) -> Neighbors<N, K> {
    neighbors_in_batches(coords, mask, None, spec)
}

/// [`neighbors`] over several point clouds stored one after the other: `batch (N,)` holds
/// each point's cloud id (any f32 value, compared exactly), and neighbours never cross
/// clouds. Indices stay global (rows of the stacked `(N, ..)` tensors), ready for `gather`.
pub fn neighbors_in_batches<N: Dimension, const K: usize>(
    coords: GraphTensor<(N, Const<3>)>,
    mask: Option<GraphTensor<(N,)>>,
    batch: Option<GraphTensor<(N,)>>,
    spec: NeighborSpec,
) -> Neighbors<N, K> {
    let dims = [logical_dims(&coords.shape)[0], K.into()];
    let op = Knn {
        k: K,
        radius: spec.radius,
        exclude_self: spec.exclude_self,
        masked: mask.is_some(),
        batched: batch.is_some(),
    };
    let mut b = coords.graph().add_op(op).input(coords.id, 0, coords.shape);
    for t in [mask, batch].into_iter().flatten() {
        b = b.input(t.id, 0, t.shape);
    }
    let id = b.finish();
    let shape = ShapeTracker::new(&dims);
    let idx = GraphTensor::from_id(id, shape, coords.graph_ref);
    let vid = coords
        .graph()
        .add_op(IndexValid)
        .input(id, 0, shape)
        .finish();
    Neighbors {
        idx,
        valid: GraphTensor::from_id(vid, shape, coords.graph_ref),
    }
}

#[cfg(test)]
mod tests {
    use luminal::prelude::{symbolic::Expression, *};
    use rand::Rng;

    use super::NeighborSpec;
    use crate::exec::tests::{rand_vec, rng};
    use crate::exec::{InputKind, Session};
    use crate::Error;

    const K: usize = 5;

    /// Brute force: sort all candidates by (distance, index).
    fn brute(x: &[f32], mask: &[f32], spec: NeighborSpec) -> Vec<f32> {
        let n = mask.len();
        let mut out = vec![];
        for i in 0..n {
            let mut c: Vec<(f32, usize)> = (0..n)
                .filter(|&j| mask[i] == 1.0 && mask[j] == 1.0 && !(spec.exclude_self && i == j))
                .map(|j| {
                    (
                        (0..3)
                            .map(|a| (x[i * 3 + a] - x[j * 3 + a]).powi(2))
                            .sum::<f32>(),
                        j,
                    )
                })
                .filter(|(d, _)| spec.radius.map(|r| *d <= r * r).unwrap_or(true))
                .collect();
            c.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for k in 0..K {
                out.push(c.get(k).map(|p| p.1 as f32).unwrap_or(-1.0));
            }
        }
        out
    }

    fn run(x: &[f32], mask: &[f32], spec: NeighborSpec) -> Result<(Vec<f32>, Vec<f32>), Error> {
        let mut s = Session::new();
        let c = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
        let m = s.input::<(Dyn<'n'>,)>("m", InputKind::Mask);
        let nb = super::neighbors::<_, K>(c, Some(m), spec);
        s.output("idx", nb.idx);
        s.output("valid", nb.valid);
        s.set("x", x.to_vec(), &[mask.len(), 3])?;
        s.set("m", mask.to_vec(), &[mask.len()])?;
        s.run()?;
        Ok((s.get("idx")?.data, s.get("valid")?.data))
    }

    #[test]
    fn knn_matches_brute_force_with_masks_radius_and_ties() -> Result<(), Error> {
        let mut r = rng();
        for round in 0..6 {
            let n = r.gen_range(1..40);
            // Coordinates on a coarse grid give many exact ties and duplicates.
            let x: Vec<f32> = (0..n * 3).map(|_| r.gen_range(-2..3) as f32).collect();
            let mask: Vec<f32> = (0..n)
                .map(|_| if r.gen_bool(0.8) { 1.0 } else { 0.0 })
                .collect();
            let spec = NeighborSpec {
                radius: if round % 2 == 0 {
                    None
                } else {
                    Some(r.gen_range(0.5..3.0))
                },
                exclude_self: round % 3 != 2,
            };
            let (idx, valid) = run(&x, &mask, spec)?;
            assert_eq!(idx, brute(&x, &mask, spec), "round {round}: {spec:?}");
            let want_valid: Vec<f32> = idx
                .iter()
                .map(|i| if *i >= 0.0 { 1.0 } else { 0.0 })
                .collect();
            assert_eq!(valid, want_valid);
        }
        Ok(())
    }

    #[test]
    fn grid_knn_on_larger_clouds_matches_brute_force() -> Result<(), Error> {
        let mut r = rng();
        for round in 0..3 {
            let n = r.gen_range(400..900);
            // Round 0: clustered integer grid (ties); 1: a flat sheet; 2: uniform with radius.
            let x: Vec<f32> = (0..n * 3)
                .map(|i| match round {
                    0 => r.gen_range(-4..5) as f32,
                    1 if i % 3 == 2 => 0.0,
                    _ => r.gen_range(-5.0f32..5.0),
                })
                .collect();
            let mask: Vec<f32> = (0..n)
                .map(|_| if r.gen_bool(0.9) { 1.0 } else { 0.0 })
                .collect();
            let spec = NeighborSpec {
                radius: if round == 2 { Some(1.5) } else { None },
                exclude_self: round != 1,
            };
            let (idx, _) = run(&x, &mask, spec)?;
            assert_eq!(idx, brute(&x, &mask, spec), "round {round}");
        }
        Ok(())
    }

    #[test]
    fn batched_neighbours_never_cross_clouds_and_match_per_cloud_brute_force() -> Result<(), Error>
    {
        let mut r = rng();
        let sizes: Vec<usize> = (0..3).map(|_| r.gen_range(1..500)).collect();
        let n: usize = sizes.iter().sum();
        // All clouds overlap in space.
        let x: Vec<f32> = (0..n * 3).map(|_| r.gen_range(-3.0f32..3.0)).collect();
        let mask: Vec<f32> = (0..n)
            .map(|_| if r.gen_bool(0.9) { 1.0 } else { 0.0 })
            .collect();
        let batch: Vec<f32> = sizes
            .iter()
            .enumerate()
            .flat_map(|(b, &s)| vec![b as f32; s])
            .collect();
        let mut s = Session::new();
        let c = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
        let m = s.input::<(Dyn<'n'>,)>("m", InputKind::Mask);
        let b = s.input::<(Dyn<'n'>,)>("b", InputKind::Values);
        let nb = super::neighbors_in_batches::<_, K>(c, Some(m), Some(b), NeighborSpec::default());
        s.output("idx", nb.idx);
        s.set("x", x.clone(), &[n, 3])?;
        s.set("m", mask.clone(), &[n])?;
        s.set("b", batch, &[n])?;
        s.run()?;
        let idx = s.get("idx")?.data;
        let mut off = 0;
        for &size in &sizes {
            let want = brute(
                &x[off * 3..(off + size) * 3],
                &mask[off..off + size],
                NeighborSpec::default(),
            );
            let got: Vec<f32> = idx[off * K..(off + size) * K]
                .iter()
                .map(|&i| if i < 0.0 { -1.0 } else { i - off as f32 })
                .collect();
            assert_eq!(got, want);
            off += size;
        }
        Ok(())
    }

    #[test]
    fn edge_lists_from_neighbours_feed_gather_scatter_and_the_edge_kernel() -> Result<(), Error> {
        let mut r = rng();
        let n = r.gen_range(1..30);
        let x = rand_vec(&mut r, n * 3);
        let f = rand_vec(&mut r, n * 2);
        let mask: Vec<f32> = (0..n)
            .map(|_| if r.gen_bool(0.8) { 1.0 } else { 0.0 })
            .collect();
        let mut s = Session::new();
        let c = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
        let m = s.input::<(Dyn<'n'>,)>("m", InputKind::Mask);
        let feats = s.input::<(Dyn<'n'>, Const<2>)>("f", InputKind::Values);
        let nb = super::neighbors::<_, K>(c, Some(m), NeighborSpec::default());
        let e = nb.edges::<Dyn<'e'>>();
        s.derive_dim('e', Expression::from('n') * K);
        s.output("src", e.src);
        s.output("dst", e.dst);
        s.output("valid", e.valid);
        // Sum of neighbour features per centre, two ways.
        let ones = (crate::ops::gather(feats, e.src) * 0.0 + 1.0)
            * e.valid.expand::<(Dyn<'e'>, Const<2>), _>();
        s.output(
            "fused",
            crate::ops::edge_conv_diag::<Dyn<'n'>, _, _, _>(feats, ones, e.src, e.dst),
        );
        s.output(
            "plain",
            crate::ops::scatter_add::<Dyn<'n'>, _, _>(crate::ops::gather(feats, e.src), e.dst),
        );
        s.set("x", x.clone(), &[n, 3])?;
        s.set("m", mask.clone(), &[n])?;
        s.set("f", f.clone(), &[n, 2])?;
        s.run()?;
        let idx = brute(&x, &mask, NeighborSpec::default());
        let src = s.get("src")?.data;
        let dst = s.get("dst")?.data;
        assert_eq!(src, idx);
        let want_dst: Vec<f32> = idx
            .iter()
            .enumerate()
            .map(|(p, &j)| if j < 0.0 { -1.0 } else { (p / K) as f32 })
            .collect();
        assert_eq!(dst, want_dst);
        assert_eq!(s.get("valid")?.shape, vec![n * K]);
        let mut want = vec![0.0f32; n * 2];
        for (p, &j) in idx.iter().enumerate() {
            if j >= 0.0 {
                for a in 0..2 {
                    want[(p / K) * 2 + a] += f[j as usize * 2 + a];
                }
            }
        }
        assert!(crate::exec::tests::rel_err(&s.get("fused")?.data, &want) < 1e-6);
        assert!(crate::exec::tests::rel_err(&s.get("plain")?.data, &want) < 1e-6);
        Ok(())
    }

    #[test]
    fn knn_edge_cases_fewer_points_than_k_duplicates_and_self() -> Result<(), Error> {
        let mut r = rng();
        // Two points only: each has one neighbour, the rest is -1.
        let x = rand_vec(&mut r, 6);
        let (idx, valid) = run(&x, &[1.0, 1.0], NeighborSpec::default())?;
        assert_eq!(
            idx,
            vec![1.0, -1.0, -1.0, -1.0, -1.0, 0.0, -1.0, -1.0, -1.0, -1.0]
        );
        assert_eq!(valid.iter().sum::<f32>(), 2.0);
        // Duplicates: three coincident points are each other's nearest, in index order.
        let mut x = rand_vec(&mut r, 18)
            .iter()
            .map(|v| v * 100.0 + 50.0)
            .collect::<Vec<_>>();
        for i in [1, 3] {
            for a in 0..3 {
                x[i * 3 + a] = x[a];
            }
        }
        let (idx, _) = run(&x, &[1.0; 6], NeighborSpec::default())?;
        assert_eq!(&idx[..2], &[1.0, 3.0]);
        assert_eq!(&idx[5..7], &[0.0, 3.0]);
        // Self included: a point is its own first neighbour.
        let spec = NeighborSpec {
            exclude_self: false,
            ..Default::default()
        };
        let (idx, _) = run(&x, &[1.0; 6], spec)?;
        assert_eq!(&idx[..3], &[0.0, 1.0, 3.0]);
        // All masked but one: no neighbours anywhere.
        let (idx, _) = run(&x, &[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], NeighborSpec::default())?;
        assert!(idx.iter().all(|i| *i == -1.0));
        Ok(())
    }
}
