//! Point clouds a compiled module runs on, and the neighbour graph it is compiled for.

use nalgebra::{Matrix3, Vector3};

use crate::Error;

/// Which edges a compiled module's layers run over, and the maximum degree of the kernel
/// basis on them.
///
/// Edge `e` carries features from its source (a neighbour) to its destination (the centre).
/// kNN edges are computed on the host for every node: the `k` nearest other nodes of the same
/// cloud (ties by index), valid if within the radius and both nodes unmasked, grouped by
/// destination with `k` slots per node (missing ones skipped), as se3-transformer-pytorch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbors {
    kind: NeighborKind,
    max_degree: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NeighborKind {
    Nearest { k: usize, radius: f64 },
    Given,
}

impl Neighbors {
    /// The `k` nearest other nodes of each node's cloud.
    pub fn knn(k: usize) -> Self {
        Neighbors {
            kind: NeighborKind::Nearest {
                k,
                radius: f64::INFINITY,
            },
            max_degree: None,
        }
    }

    /// The nodes within `radius`, at most the `max` nearest (grouped with `max` slots per
    /// node).
    pub fn radius(radius: f64, max: usize) -> Self {
        Neighbors {
            kind: NeighborKind::Nearest { k: max, radius },
            max_degree: None,
        }
    }

    /// The edges each [`Cloud`] gives ([`Cloud::with_edges`]); not grouped by node, so
    /// attention layers cannot run on them.
    pub fn given() -> Self {
        Neighbors {
            kind: NeighborKind::Given,
            max_degree: None,
        }
    }

    /// The kernel basis up to degree `l` (default: the highest degree of the module's
    /// fibers).
    #[must_use]
    pub fn max_degree(mut self, l: usize) -> Self {
        self.max_degree = Some(l);
        self
    }

    /// The maximum degree asked for, if any.
    pub fn max_degree_set(&self) -> Option<usize> {
        self.max_degree
    }

    /// Edge slots per node if the edges are grouped by destination.
    pub(crate) fn per_node(&self) -> Option<usize> {
        match self.kind {
            NeighborKind::Nearest { k, .. } => Some(k),
            NeighborKind::Given => None,
        }
    }

    /// The edges of `cloud` as `(src, dst)` f32 indices, `-1` for a missing edge.
    ///
    /// # Errors
    /// `CloudInput` if the neighbours are given and the cloud has none, or an index is
    /// outside the cloud.
    pub(crate) fn edges(&self, cloud: &Cloud) -> Result<(Vec<f32>, Vec<f32>), Error> {
        match self.kind {
            NeighborKind::Nearest { k, radius } => Ok(nearest(cloud, k, radius)),
            NeighborKind::Given => {
                let (src, dst) = cloud.edges.as_ref().ok_or(Error::CloudInput {
                    what: "edges of a module compiled with `Neighbors::given()`",
                    expected: "a cloud with edges (`Cloud::with_edges`)".into(),
                    found: "a cloud without edges".into(),
                })?;
                let n = cloud.len();
                if let Some(bad) = src.iter().chain(dst).find(|&&i| i >= n) {
                    return Err(Error::CloudInput {
                        what: "edge index",
                        expected: format!("below the node count {n}"),
                        found: bad.to_string(),
                    });
                }
                let valid = |i: usize| cloud.unmasked(i);
                let (s, d) = src
                    .iter()
                    .zip(dst)
                    .map(|(&s, &d)| {
                        if valid(s) && valid(d) {
                            (s as f32, d as f32)
                        } else {
                            (-1.0, -1.0)
                        }
                    })
                    .unzip();
                Ok((s, d))
            }
        }
    }
}

/// kNN edges within each cloud of `cloud`, `k` slots per node.
fn nearest(cloud: &Cloud, k: usize, radius: f64) -> (Vec<f32>, Vec<f32>) {
    let rows = cloud.len();
    let (mut src, mut dst) = (vec![-1.0; rows * k], vec![-1.0; rows * k]);
    let mut base = 0;
    for &size in &cloud.sizes {
        for i in base..base + size {
            let p = Vector3::from(cloud.points[i]);
            let mut cand: Vec<(f64, usize)> = (base..base + size)
                .filter(|&j| j != i)
                .map(|j| ((Vector3::from(cloud.points[j]) - p).norm(), j))
                .collect();
            cand.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            for (slot, &(d, j)) in cand.iter().take(k).enumerate() {
                if d <= radius && cloud.unmasked(i) && cloud.unmasked(j) {
                    src[i * k + slot] = j as f32;
                    dst[i * k + slot] = i as f32;
                }
            }
        }
        base += size;
    }
    (src, dst)
}

/// One point cloud, or a batch of clouds stacked node after node: coordinates, an optional
/// mask (masked nodes take part in no edge) and optional edges (for [`Neighbors::given`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Cloud {
    points: Vec<[f64; 3]>,
    /// Node counts of the stacked clouds (kNN never crosses them).
    sizes: Vec<usize>,
    mask: Option<Vec<bool>>,
    edges: Option<(Vec<usize>, Vec<usize>)>,
}

impl Cloud {
    /// A cloud of `points` (`[f64; 3]`, `nalgebra::Point3<f64>` or `Vector3<f64>`).
    pub fn new<P: Into<[f64; 3]>>(points: impl IntoIterator<Item = P>) -> Self {
        let points: Vec<[f64; 3]> = points.into_iter().map(Into::into).collect();
        Cloud {
            sizes: vec![points.len()],
            points,
            mask: None,
            edges: None,
        }
    }

    /// The clouds stacked into one batch (masks and edges carried, edge indices shifted).
    pub fn batch(clouds: &[Cloud]) -> Self {
        let mut out = Cloud {
            points: Vec::new(),
            sizes: Vec::new(),
            mask: None,
            edges: None,
        };
        let any_mask = clouds.iter().any(|c| c.mask.is_some());
        let any_edges = clouds.iter().any(|c| c.edges.is_some());
        let (mut mask, mut src, mut dst) = (Vec::new(), Vec::new(), Vec::new());
        for c in clouds {
            let base = out.points.len();
            out.points.extend_from_slice(&c.points);
            out.sizes.extend_from_slice(&c.sizes);
            mask.extend((0..c.len()).map(|i| c.unmasked(i)));
            if let Some((s, d)) = &c.edges {
                src.extend(s.iter().map(|i| i + base));
                dst.extend(d.iter().map(|i| i + base));
            }
        }
        out.mask = any_mask.then_some(mask);
        out.edges = any_edges.then_some((src, dst));
        out
    }

    /// The same cloud with a node mask (`false`: the node takes part in no edge).
    ///
    /// # Errors
    /// `CloudInput` if the mask's length is not the node count.
    pub fn with_mask(mut self, mask: Vec<bool>) -> Result<Self, Error> {
        if mask.len() != self.len() {
            return Err(Error::CloudInput {
                what: "mask length",
                expected: self.len().to_string(),
                found: mask.len().to_string(),
            });
        }
        self.mask = Some(mask);
        Ok(self)
    }

    /// The same cloud with edges `src[e] -> dst[e]` (node indices).
    ///
    /// # Errors
    /// `CloudInput` if `src` and `dst` differ in length.
    pub fn with_edges(mut self, src: Vec<usize>, dst: Vec<usize>) -> Result<Self, Error> {
        if src.len() != dst.len() {
            return Err(Error::CloudInput {
                what: "edge lists (src, dst)",
                expected: format!("{} destinations", src.len()),
                found: dst.len().to_string(),
            });
        }
        self.edges = Some((src, dst));
        Ok(self)
    }

    /// The cloud moved rigidly: every point `p -> m p + shift` (mask and edges kept).
    pub fn moved(&self, m: &Matrix3<f64>, shift: &Vector3<f64>) -> Self {
        Cloud {
            points: self
                .points
                .iter()
                .map(|p| (m * Vector3::from(*p) + shift).into())
                .collect(),
            ..self.clone()
        }
    }

    /// Number of nodes (of all clouds of a batch).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the cloud has no nodes.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The coordinates.
    pub fn points(&self) -> &[[f64; 3]] {
        &self.points
    }

    /// Whether node `i` is unmasked.
    fn unmasked(&self, i: usize) -> bool {
        self.mask.as_ref().is_none_or(|m| m[i])
    }
}
