//! Pooling over the nodes of a graph (readout), with masks.

use std::marker::PhantomData;

use luminal::prelude::*;

use super::edges::full_like;
use super::graph::{dims, expand_at, reshape, retype, FeatureTensors, GraphFeatures, N, X};
use crate::fiber::{Degree, DegreeMarker, FeedsGraph, Fiber, Invariant};
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

/// Typed mean pooling over the nodes: features of fiber `F` on `n` nodes to features of `F`
/// on one row (`Const<1>`), the mean over the unmasked nodes (0 if none). Equivariant for
/// every degree (a mean of degree-l features is a degree-l feature).
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanPool<F>(PhantomData<F>);

impl<F: Fiber> MeanPool<F> {
    /// The pooling layer.
    pub fn new() -> Self {
        MeanPool(PhantomData)
    }

    /// Adds the pooling to a graph; `mask (N,)` is 1 for real nodes.
    ///
    /// # Errors
    /// None for typed features (kept for the shared signature of [`pool_nodes`]).
    pub fn build<X2: FeedsGraph<F, Rows = N>>(
        &self,
        x: &X2,
        mask: Option<GraphTensor<(N,)>>,
    ) -> Result<GraphFeatures<F, Const<1>>, Error> {
        let x = X2::feed_graph(x);
        let pooled = pool_nodes(x.untyped(), mask, NodePool::Mean)?;
        let degrees = F::spec()
            .degrees()
            .iter()
            .zip(pooled)
            .map(|(d, t)| reshape(t, &[1.into(), d.channels.into(), d.width().into()]))
            .collect();
        Ok(GraphFeatures::wrap(FeatureTensors::from_parts(
            F::spec(),
            degrees,
        )))
    }
}

/// Typed max pooling over the nodes (the SE(3)-Transformer's `GMaxPooling`): per channel, the
/// maximum of degree `D` over the unmasked nodes (0 if none), as a `(channels, 1)` tensor.
/// Only invariant degrees may be pooled this way ([`Invariant`]: `Degree<0>`, even or without
/// parity); a component-wise maximum of a vector does not rotate with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaxPool<F, D = Degree<0>>(PhantomData<(F, D)>);

impl<F: Fiber, D: DegreeMarker> MaxPool<F, D> {
    /// The pooling layer.
    #[rustfmt::skip]
    pub fn new() -> Self where D: Invariant<F> {
        MaxPool(PhantomData)
    }
}

impl<F: Fiber, D: Invariant<F>> MaxPool<F, D> {
    /// Adds the pooling to a graph; `mask (N,)` is 1 for real nodes.
    ///
    /// # Errors
    /// None for typed features (kept for the shared signature of [`pool_nodes`]).
    pub fn build<X2: FeedsGraph<F, Rows = N>>(
        &self,
        x: &X2,
        mask: Option<GraphTensor<(N,)>>,
    ) -> Result<GraphTensor<(X, X)>, Error> {
        let x = X2::feed_graph(x);
        let pooled = pool_nodes(x.untyped(), mask, NodePool::Max)?;
        pooled.into_iter().next().ok_or(Error::Empty {
            what: "max pooling output",
        })
    }
}
