//! `apply(g, &x)` of every typed layer: the layer added to the graph of a [`GraphCtx`], its
//! weights named by its field path, on the context's edges and kernel basis. The input must
//! be `GraphFeatures` of the layer's input fiber ([`FeedsGraph`]), so connecting layers of
//! different fibers is a compile error.

use super::GraphCtx;
use crate::fiber::{DegreeOf, FeedsGraph, Fiber, GateFibers, ScalarOnly};
use crate::layers::graph::N;
use crate::layers::{
    Activation, Attention, AttentionBlock, Conv, FeedForwardBlock, Gate, GraphFeatures, LayerNorm,
    Linear, Norm, ScalarActivation,
};
use crate::Error;

impl<In: Fiber, Out: Fiber> Conv<In, Out> {
    /// The convolution on the context's edges and basis (see [`Conv::build`]).
    ///
    /// # Errors
    /// As [`crate::layers::ConvLayer::build`].
    pub fn apply<X: FeedsGraph<In, Rows = N>>(
        &self,
        g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<Out>, Error> {
        let prefix = g.prefix_of(self, "Conv");
        let (s, edges, basis) = g.parts();
        self.build(s, &prefix, X::feed_graph(x), edges, basis)
    }
}

impl<F: Fiber> Norm<F> {
    /// The norm nonlinearity (see [`Norm::build`]).
    ///
    /// # Errors
    /// As [`crate::layers::NormLayer::build`].
    pub fn apply<X: FeedsGraph<F, Rows = N>>(
        &self,
        g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<F>, Error> {
        let prefix = g.prefix_of(self, "Norm");
        self.build(g.session(), &prefix, X::feed_graph(x))
    }
}

impl<In: Fiber, Out: Fiber> Linear<In, Out> {
    /// The channel mixing (see [`Linear::build`]).
    ///
    /// # Errors
    /// As [`crate::layers::LinearLayer::build`].
    pub fn apply<X: FeedsGraph<In, Rows = N>>(
        &self,
        g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<Out>, Error> {
        let prefix = g.prefix_of(self, "Linear");
        self.build(g.session(), &prefix, X::feed_graph(x))
    }
}

impl<F: Fiber> LayerNorm<F> {
    /// The equivariant layer norm (see [`LayerNorm::build`]).
    ///
    /// # Errors
    /// As [`crate::layers::EquivariantLayerNorm::build`].
    pub fn apply<X: FeedsGraph<F, Rows = N>>(
        &self,
        g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<F>, Error> {
        let prefix = g.prefix_of(self, "LayerNorm");
        self.build(g.session(), &prefix, X::feed_graph(x))
    }
}

impl<F: Fiber> Attention<F> {
    /// Attention over the context's edges, which must be grouped by node (kNN).
    ///
    /// # Errors
    /// As [`crate::layers::AttentionLayer::build`].
    pub fn apply<X: FeedsGraph<F, Rows = N>>(
        &self,
        g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<F>, Error> {
        let prefix = g.prefix_of(self, "Attention");
        let (s, edges, basis) = g.parts();
        self.build(s, &prefix, X::feed_graph(x), edges, basis)
    }
}

impl<F: Fiber> AttentionBlock<F> {
    /// `x + Attention(NormSE3(x))` over the context's edges (grouped by node: kNN).
    ///
    /// # Errors
    /// As [`crate::layers::AttentionBlockLayer::build`].
    pub fn apply<X: FeedsGraph<F, Rows = N>>(
        &self,
        g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<F>, Error> {
        let prefix = g.prefix_of(self, "AttentionBlock");
        let (s, edges, basis) = g.parts();
        self.build(s, &prefix, X::feed_graph(x), edges, basis)
    }
}

impl<F: Fiber> FeedForwardBlock<F> {
    /// `x + Linear(NormSE3(Linear(NormSE3(x))))`.
    ///
    /// # Errors
    /// As [`crate::layers::FeedForwardBlockLayer::build`].
    pub fn apply<X: FeedsGraph<F, Rows = N>>(
        &self,
        g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<F>, Error> {
        let prefix = g.prefix_of(self, "FeedForwardBlock");
        self.build(g.session(), &prefix, X::feed_graph(x))
    }
}

impl<In: Fiber, Out: Fiber> Gate<In, Out>
where
    Gate<In, Out>: GateFibers,
{
    /// The gated nonlinearity (see [`Gate::build`]).
    ///
    /// # Errors
    /// As [`crate::layers::GateLayer::build`].
    pub fn apply<X: FeedsGraph<In, Rows = N>>(
        &self,
        g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<Out>, Error> {
        let prefix = g.prefix_of(self, "Gate");
        self.build(g.session(), &prefix, x)
    }
}

impl<F, A, D> Activation<F, A, D>
where
    F: Fiber,
    A: ScalarActivation,
    D: ScalarOnly<A> + DegreeOf<F>,
{
    /// The activation on degree 0, other degrees passed through (see [`Activation::build`]).
    ///
    /// # Errors
    /// None; `Result` for a uniform forward.
    pub fn apply<X: FeedsGraph<F, Rows = N>>(
        &self,
        _g: &mut GraphCtx<'_>,
        x: &X,
    ) -> Result<GraphFeatures<F>, Error> {
        Ok(self.build(X::feed_graph(x)))
    }
}
