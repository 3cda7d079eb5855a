//! The graph a module's forward is written on: the session, the neighbour graph and the
//! kernel basis (declared once when the module is compiled), and the names of the layers.

use std::collections::HashMap;

use super::LayerEntry;
use crate::exec::Session;
use crate::layers::{EdgeBasis, EdgeGraph};

/// The context of a typed forward: layers' `apply(g, &x)` add themselves to its graph, on its
/// edges and kernel basis, with their weights named by their field paths (`conv1.…`).
///
/// Built by [`super::Module::compile`]; user code only passes it on.
pub struct GraphCtx<'s> {
    session: &'s mut Session,
    edges: EdgeGraph,
    basis: EdgeBasis,
    /// Field path of each layer of the compiled tree, by address and kind.
    paths: HashMap<(usize, &'static str), String>,
    /// How often each weight prefix has been used (a layer applied twice shares weights but
    /// declares them under `<path>@<n>.`).
    used: HashMap<String, usize>,
}

impl std::fmt::Debug for GraphCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphCtx")
            .field("layers", &self.paths.len())
            .field("max_degree", &self.basis.max_degree())
            .finish()
    }
}

impl<'s> GraphCtx<'s> {
    /// The context of a module tree whose layers are `layers`.
    pub(crate) fn new(
        session: &'s mut Session,
        edges: EdgeGraph,
        basis: EdgeBasis,
        layers: &[LayerEntry],
    ) -> Self {
        let paths = layers
            .iter()
            .map(|e| ((e.address, e.kind), e.path.clone()))
            .collect();
        GraphCtx {
            session,
            edges,
            basis,
            paths,
            used: HashMap::new(),
        }
    }

    /// The weight prefix of `layer` (`"conv1."`): its field path in the compiled tree, or
    /// `"<kind>"` for a layer outside it; a prefix used before gets `@<n>`. `kind` is the one
    /// its [`super::LayerEntry`] was listed under.
    pub fn prefix_of<T>(&mut self, layer: &T, kind: &'static str) -> String {
        let address = layer as *const T as usize;
        let path = self
            .paths
            .get(&(address, kind))
            .cloned()
            .unwrap_or_else(|| kind.to_string());
        let n = self.used.entry(path.clone()).or_insert(0);
        *n += 1;
        match *n {
            // the root of the tree (a model compiled on its own) has no prefix
            1 if path.is_empty() => String::new(),
            1 => format!("{path}."),
            k => format!("{path}@{k}."),
        }
    }

    /// The session, the edges and the basis, for a layer's `build`.
    pub fn parts(&mut self) -> (&mut Session, &EdgeGraph, &EdgeBasis) {
        (self.session, &self.edges, &self.basis)
    }

    /// The neighbour graph (edges grouped by destination for kNN).
    pub fn edges(&self) -> &EdgeGraph {
        &self.edges
    }

    /// The kernel basis on the edges.
    pub fn basis(&self) -> &EdgeBasis {
        &self.basis
    }

    /// The session the graph is built on, for operations that are not layers.
    pub fn session(&mut self) -> &mut Session {
        self.session
    }
}
