//! A module compiled once to a graph and run on point clouds of any size.

use std::marker::PhantomData;

use luminal::prelude::Const;

use super::{Cloud, Forward, GraphCtx, Neighbors};
use crate::exec::{InputKind, Session};
use crate::fiber::{DegreeTensor, Features, Fiber};
use crate::layers::graph::N;
use crate::layers::{EdgeBasis, EdgeGraph, GraphFeatures};
use crate::Error;

/// A module with its forward built as one graph: coordinates, edges and input features in,
/// output features out; node and edge counts are set per run, so one compiled module serves
/// clouds of every size.
///
/// The layers' weights are copied into the graph when it is built; the compiled module does
/// not borrow the module (compile again after changing its weights).
pub struct Compiled<M> {
    session: Session,
    neighbors: Neighbors,
    module: PhantomData<fn(M)>,
}

impl<M: Forward> std::fmt::Debug for Compiled<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("in", &M::In::spec().to_string())
            .field("out", &M::Out::spec().to_string())
            .field("neighbors", &self.neighbors)
            .finish()
    }
}

impl<M: Forward> Compiled<M> {
    /// Builds and compiles the graph of `module.forward` on `neighbors`.
    ///
    /// # Errors
    /// Those of the forward; `DegreeTooHigh` for the kernel basis.
    pub(crate) fn new(module: &M, neighbors: Neighbors) -> Result<Self, Error> {
        let layers = module.layers();
        let max_degree = neighbors.max_degree_set().unwrap_or_else(|| {
            layers
                .iter()
                .flat_map(|e| e.fiber_in.degrees().iter().chain(e.fiber_out.degrees()))
                .map(|d| d.l)
                .chain([M::In::max_degree(), M::Out::max_degree()])
                .max()
                .unwrap_or(0)
        });
        let mut s = Session::new();
        let coords = s.input::<(N, Const<3>)>("coords", InputKind::Coordinates);
        let x = GraphFeatures::<M::In>::input(&mut s, "x");
        let mut edges = EdgeGraph::input(&mut s, "edges", coords);
        if let Some(k) = neighbors.per_node() {
            edges = edges.grouped(k);
        }
        let basis = EdgeBasis::new(&mut s, "graph.", &edges, max_degree)?;
        let y = {
            let mut g = GraphCtx::new(&mut s, edges, basis, &layers);
            module.forward(&mut g, x)?
        };
        y.output(&mut s, "y");
        s.compile();
        Ok(Compiled {
            session: s,
            neighbors,
            module: PhantomData,
        })
    }

    /// The module run on `cloud` with node features `x` (one row per node).
    ///
    /// # Errors
    /// `CloudInput` if `x` has another node count than `cloud`, or the cloud's edges do not
    /// fit it; those of the session (non-finite coordinates).
    pub fn forward(
        &mut self,
        cloud: &Cloud,
        x: &Features<M::In>,
    ) -> Result<Features<M::Out>, Error> {
        let n = cloud.len();
        if x.nodes() != n {
            return Err(Error::CloudInput {
                what: "input feature rows",
                expected: format!("{n} (one per node of the cloud)"),
                found: x.nodes().to_string(),
            });
        }
        let (src, dst) = self.neighbors.edges(cloud)?;
        let s = &mut self.session;
        let flat: Vec<f32> = cloud.points().iter().flatten().map(|&v| v as f32).collect();
        s.set("coords", flat, &[n, 3])?;
        let e = src.len();
        s.set("edges.src", src, &[e])?;
        s.set("edges.dst", dst, &[e])?;
        for (d, b) in M::In::degrees().as_slice().iter().zip(x.blocks()) {
            s.set(&format!("x.{}", d.l), b.data().to_vec(), &b.shape())?;
        }
        s.run()?;
        let blocks = M::Out::degrees()
            .as_slice()
            .iter()
            .map(|d| {
                let y = s.get(&format!("y.{}", d.l))?;
                DegreeTensor::from_vec([n, d.channels, d.width()], y.data)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Features::from_blocks(blocks)
    }

    /// The neighbour graph it was compiled for.
    pub fn neighbors(&self) -> Neighbors {
        self.neighbors
    }
}
