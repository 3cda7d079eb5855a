//! Batches of graphs of different sizes: concatenated with per-node graph ids (no padding), or
//! padded to `(b, n)` with a mask.

use rand::seq::SliceRandom;
use rand::Rng;

use super::dataset::Sample;
use crate::Error;

/// Graphs concatenated node-wise, as molecule models take them: node k belongs to graph
/// `graph_ids[k]`, graph g owns nodes `offsets[g]..offsets[g + 1]`. Flat row-major f32 arrays:
/// `positions` is `[nodes, 3]`, `features` `[nodes, feature_dim]`; optional parts are empty
/// when the samples lack them; `energy` has one entry per graph.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphBatch {
    pub positions: Vec<f32>,
    pub velocities: Vec<f32>,
    pub features: Vec<f32>,
    pub feature_dim: usize,
    pub target_positions: Vec<f32>,
    pub energy: Vec<f32>,
    pub forces: Vec<f32>,
    pub graph_ids: Vec<usize>,
    pub offsets: Vec<usize>,
}

/// Graphs padded to the largest: `positions` is `[b, n, 3]`, `mask` `[b, n]` (true for a real
/// node), padded entries zero; optional parts as in [`GraphBatch`].
#[derive(Clone, Debug, PartialEq)]
pub struct PaddedBatch {
    pub batch: usize,
    pub nodes: usize,
    pub positions: Vec<f32>,
    pub mask: Vec<bool>,
    pub velocities: Vec<f32>,
    pub features: Vec<f32>,
    pub feature_dim: usize,
    pub target_positions: Vec<f32>,
    pub energy: Vec<f32>,
    pub forces: Vec<f32>,
}

/// Which optional parts the batch carries: those of the first sample, checked on all.
struct Parts {
    velocities: bool,
    targets: bool,
    energy: bool,
    forces: bool,
    features: bool,
}

fn parts(samples: &[&Sample], feature_dim: usize) -> Result<Parts, Error> {
    let first = samples.first().ok_or(Error::InvalidParameter {
        name: "batch",
        expected: "at least one graph",
        found: "0 graphs".into(),
    })?;
    let p = Parts {
        velocities: !first.velocities.is_empty(),
        targets: !first.target_positions.is_empty(),
        energy: first.energy.is_some(),
        forces: !first.forces.is_empty(),
        features: feature_dim > 0,
    };
    for (i, s) in samples.iter().enumerate() {
        let n = s.len();
        let checks = [
            (
                "velocities",
                s.velocities.len(),
                if p.velocities { n } else { 0 },
            ),
            (
                "target_positions",
                s.target_positions.len(),
                if p.targets { n } else { 0 },
            ),
            ("forces", s.forces.len(), if p.forces { n } else { 0 }),
            ("features", s.features.len(), n * feature_dim),
            (
                "energy",
                usize::from(s.energy.is_some()),
                usize::from(p.energy),
            ),
        ];
        for (field, found, expected) in checks {
            if found != expected {
                return Err(Error::WrongShape {
                    key: format!("batch graph {i}: {field}"),
                    expected: vec![expected],
                    found: vec![found],
                });
            }
        }
        if n == 0 {
            return Err(Error::EmptyGraph { batch: i, nodes: 0 });
        }
    }
    Ok(p)
}

fn push_vectors(out: &mut Vec<f32>, v: &[nalgebra::Vector3<f64>]) {
    out.extend(v.iter().flat_map(|p| [p.x as f32, p.y as f32, p.z as f32]));
}

impl GraphBatch {
    /// Concatenates `samples`, each with `feature_dim` features per node.
    ///
    /// # Errors
    /// `InvalidParameter` for no samples, `EmptyGraph` for a graph without nodes, `WrongShape` if
    /// the samples disagree in which parts they carry or in their lengths.
    pub fn from_samples(samples: &[&Sample], feature_dim: usize) -> Result<Self, Error> {
        let p = parts(samples, feature_dim)?;
        let mut b = GraphBatch {
            positions: Vec::new(),
            velocities: Vec::new(),
            features: Vec::new(),
            feature_dim,
            target_positions: Vec::new(),
            energy: Vec::new(),
            forces: Vec::new(),
            graph_ids: Vec::new(),
            offsets: vec![0],
        };
        for (g, s) in samples.iter().enumerate() {
            push_vectors(&mut b.positions, &s.positions);
            if p.velocities {
                push_vectors(&mut b.velocities, &s.velocities);
            }
            if p.targets {
                push_vectors(&mut b.target_positions, &s.target_positions);
            }
            if p.forces {
                push_vectors(&mut b.forces, &s.forces);
            }
            if p.features {
                b.features.extend(s.features.iter().map(|&f| f as f32));
            }
            if let Some(e) = s.energy {
                b.energy.push(e as f32);
            }
            b.graph_ids.extend(std::iter::repeat_n(g, s.len()));
            b.offsets.push(b.graph_ids.len());
        }
        Ok(b)
    }

    /// Number of graphs.
    pub fn graphs(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Total number of nodes.
    pub fn nodes(&self) -> usize {
        self.graph_ids.len()
    }

    /// Directed edges (source, target) between every two distinct nodes of the same graph, in
    /// batch node indices: the fully connected graphs of the N-body models.
    pub fn fully_connected_edges(&self) -> Vec<(usize, usize)> {
        let mut edges = Vec::new();
        for w in self.offsets.windows(2) {
            for i in w[0]..w[1] {
                for j in w[0]..w[1] {
                    if i != j {
                        edges.push((i, j));
                    }
                }
            }
        }
        edges
    }
}

impl PaddedBatch {
    /// Pads `samples` to the largest graph.
    ///
    /// # Errors
    /// As [`GraphBatch::from_samples`].
    pub fn from_samples(samples: &[&Sample], feature_dim: usize) -> Result<Self, Error> {
        let p = parts(samples, feature_dim)?;
        let n = samples.iter().map(|s| s.len()).max().unwrap_or(0);
        let padded = |get: &dyn Fn(&Sample) -> &[nalgebra::Vector3<f64>]| -> Vec<f32> {
            let mut out = Vec::with_capacity(samples.len() * n * 3);
            for s in samples {
                let v = get(s);
                push_vectors(&mut out, v);
                out.extend(std::iter::repeat_n(0.0, (n - v.len()) * 3));
            }
            out
        };
        let mut features = Vec::new();
        if p.features {
            for s in samples {
                features.extend(s.features.iter().map(|&f| f as f32));
                features.extend(std::iter::repeat_n(0.0, (n - s.len()) * feature_dim));
            }
        }
        Ok(PaddedBatch {
            batch: samples.len(),
            nodes: n,
            positions: padded(&|s| &s.positions),
            mask: samples
                .iter()
                .flat_map(|s| (0..n).map(move |i| i < s.len()))
                .collect(),
            velocities: if p.velocities {
                padded(&|s| &s.velocities)
            } else {
                Vec::new()
            },
            features,
            feature_dim,
            target_positions: if p.targets {
                padded(&|s| &s.target_positions)
            } else {
                Vec::new()
            },
            energy: samples
                .iter()
                .filter_map(|s| s.energy.map(|e| e as f32))
                .collect(),
            forces: if p.forces {
                padded(&|s| &s.forces)
            } else {
                Vec::new()
            },
        })
    }
}

/// Sample indices of one epoch in batches of at most `batch_size`, shuffled by `rng` if given
/// (the last batch may be smaller).
///
/// # Errors
/// `InvalidParameter` if `batch_size` is 0.
pub fn epoch_batches<R: Rng + ?Sized>(
    len: usize,
    batch_size: usize,
    rng: Option<&mut R>,
) -> Result<Vec<Vec<usize>>, Error> {
    if batch_size == 0 {
        return Err(Error::InvalidParameter {
            name: "batch_size",
            expected: "at least 1",
            found: "0".into(),
        });
    }
    let mut order: Vec<usize> = (0..len).collect();
    if let Some(rng) = rng {
        order.shuffle(rng);
    }
    Ok(order.chunks(batch_size).map(<[usize]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::Vector3;
    use rand::rngs::StdRng;

    fn graph(n: usize, base: f64) -> Sample {
        Sample {
            positions: (0..n)
                .map(|i| Vector3::new(base + i as f64, 0.5, -1.0))
                .collect(),
            features: (0..n).map(|i| base * 10.0 + i as f64).collect(),
            energy: Some(base),
            forces: (0..n).map(|i| Vector3::new(0.0, i as f64, base)).collect(),
            ..Sample::default()
        }
    }

    #[test]
    fn concatenated_batch_keeps_every_node_once_with_its_graph() -> Result<(), Error> {
        let samples = [graph(3, 1.0), graph(1, 2.0), graph(4, 3.0)];
        let refs: Vec<&Sample> = samples.iter().collect();
        let b = GraphBatch::from_samples(&refs, 1)?;
        assert_eq!(b.graphs(), 3);
        assert_eq!(b.nodes(), 8);
        assert_eq!(b.offsets, vec![0, 3, 4, 8]);
        assert_eq!(b.graph_ids, vec![0, 0, 0, 1, 2, 2, 2, 2]);
        assert_eq!(b.positions.len(), 8 * 3);
        assert!(b.velocities.is_empty() && b.target_positions.is_empty());
        assert_eq!(b.energy, vec![1.0, 2.0, 3.0]);
        for (g, s) in samples.iter().enumerate() {
            for (k, node) in (b.offsets[g]..b.offsets[g + 1]).enumerate() {
                assert_eq!(b.positions[node * 3] as f64, s.positions[k].x);
                assert_eq!(b.features[node] as f64, s.features[k]);
                assert_eq!(b.forces[node * 3 + 2] as f64, s.forces[k].z);
            }
        }
        let edges = b.fully_connected_edges();
        // 3·2 + 1·0 + 4·3 ordered pairs, never across graphs
        assert_eq!(edges.len(), 6 + 12);
        assert!(edges
            .iter()
            .all(|&(i, j)| i != j && b.graph_ids[i] == b.graph_ids[j]));
        Ok(())
    }

    #[test]
    fn padded_batch_masks_exactly_the_padding() -> Result<(), Error> {
        let samples = [graph(2, 1.0), graph(4, 2.0)];
        let refs: Vec<&Sample> = samples.iter().collect();
        let b = PaddedBatch::from_samples(&refs, 1)?;
        assert_eq!((b.batch, b.nodes), (2, 4));
        assert_eq!(
            b.mask,
            vec![true, true, false, false, true, true, true, true]
        );
        assert_eq!(&b.positions[6..12], &[0.0; 6]);
        assert_eq!(b.positions[12] as f64, samples[1].positions[0].x);
        assert_eq!(
            b.features,
            vec![10.0, 11.0, 0.0, 0.0, 20.0, 21.0, 22.0, 23.0]
        );
        Ok(())
    }

    #[test]
    fn inconsistent_or_empty_batches_are_errors() {
        let mut no_forces = graph(2, 1.0);
        no_forces.forces.clear();
        let a = graph(3, 0.0);
        assert!(matches!(
            GraphBatch::from_samples(&[&a, &no_forces], 1),
            Err(Error::WrongShape { .. })
        ));
        assert!(matches!(
            PaddedBatch::from_samples(&[&a], 2),
            Err(Error::WrongShape { .. })
        ));
        assert!(matches!(
            GraphBatch::from_samples(&[], 1),
            Err(Error::InvalidParameter { .. })
        ));
        let empty = Sample::default();
        assert!(matches!(
            GraphBatch::from_samples(&[&empty], 0),
            Err(Error::EmptyGraph { .. })
        ));
    }

    #[test]
    fn epoch_batches_cover_every_index_once() -> Result<(), Error> {
        let (mut rng, seed) = se3_core::testing::rng();
        let batches = epoch_batches(10, 4, Some(&mut rng))?;
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>(), "seed {seed}");
        assert!(epoch_batches::<StdRng>(10, 0, None).is_err());
        Ok(())
    }
}
