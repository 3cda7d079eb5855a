//! Pooling over the nodes of a graph (readout), with masks.

use luminal::prelude::*;

use super::edges::full_like;
use super::graph::{dims, expand_at, retype, FeatureTensors, N, X};
use crate::Error;

/// How node features are pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePool {
    /// Mean over the unmasked nodes (0 if none): equivariant for every degree.
    Mean,
    /// Maximum over the unmasked nodes, per channel, of the degree-0 features only (a
    /// component-wise maximum of higher degrees would not be equivariant), as the
    /// SE(3)-Transformer's `GMaxPooling`; 0 if no node is unmasked.
    Max,
}

/// Pools `x` over its nodes: one `(channels, 2l + 1)` tensor per pooled degree (every degree
/// for [`NodePool::Mean`], degree 0 only for [`NodePool::Max`]). `mask (N,)` is 1 for real
/// nodes.
///
/// # Errors
/// `FiberMismatch` if `Max` is asked of a fiber without degree 0.
pub fn pool_nodes(
    x: &FeatureTensors<N>,
    mask: Option<GraphTensor<(N,)>>,
    how: NodePool,
) -> Result<Vec<GraphTensor<(X, X)>>, Error> {
    let mut out = Vec::new();
    for (d, t) in x.spec().degrees().iter().zip(x.tensors()) {
        if how == NodePool::Max && d.l != 0 {
            continue;
        }
        let t3: GraphTensor<(X, X, X)> = retype(*t);
        let m: GraphTensor<(X,)> = match mask {
            Some(m) => retype(m),
            None => ones_like_rows(*t),
        };
        let m3: GraphTensor<(X, X, X)> =
            expand_at(expand_at::<_, (X, X)>(m, 1, d.channels), 2, d.width());
        let count: GraphTensor<()> = m.sum_reduce::<(), Axis<0>>();
        let spread = |v: GraphTensor<()>| -> GraphTensor<(X, X)> {
            expand_at(expand_at::<_, (X,)>(v, 0, d.channels), 1, d.width())
        };
        match how {
            NodePool::Mean => {
                let s: GraphTensor<(X, X)> = (t3 * m3).sum_reduce::<(X, X), Axis<0>>();
                let inv = count.max(full_like(count, 1.0)).recip();
                out.push(s * spread(inv));
            }
            NodePool::Max => {
                // masked nodes get -1e30, so they never win unless all nodes are masked
                let filled = t3 * m3 + (m3 + (-1.0)) * 1e30;
                let mx: GraphTensor<(X, X)> = filled.max_reduce::<(X, X), Axis<0>>();
                let any = count.min(full_like(count, 1.0));
                out.push(mx * spread(any));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::FiberMismatch {
            fiber: "max pooling input (needs degree 0)",
            expected: "a fiber with degree 0".into(),
            found: x.spec().to_string(),
        });
    }
    Ok(out)
}

/// Ones over the node axis of `t`.
fn ones_like_rows(t: GraphTensor<(N, X, X)>) -> GraphTensor<(X,)> {
    let d = dims(t);
    let c = t.graph().constant(1.0);
    expand_at(c, 0, d[0])
}
