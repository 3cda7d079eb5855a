//! [`TypedSe3Transformer`] as a module: its parameters under the checkpoint keys
//! (`conv_in.*`, `convs.<i>.1.*` / `convs.<i>.0.*`, `net.blocks.<i>.0.*` / `.1.*` or
//! `net.blocks.<i>.f.net.*` / `.g.net.*` when reversible, `net.layers.<i>.*` for the EGNN
//! trunk, `conv_out.*`, `norm.*`, the embeddings), and its forward
//! ([`Se3TransformerNet::build`](crate::se3_transformer::Se3TransformerNet::build)) on the
//! context's graph, so `Module::compile(&model, Neighbors::knn(k))` runs it like any
//! `#[derive(Module)]` network (`model.compile()` is still the inherent
//! [`TypedSe3Transformer::compile`]).

use se3_core::fiber::Fiber;
use se3_core::layers::{GraphFeatures, Param};
use se3_core::module::{Forward, GraphCtx, LayerEntry, Module};

use super::TypedSe3Transformer;

/// The kind the model is listed under.
const KIND: &str = "Se3Transformer";

impl<In: Fiber, Hidden: Fiber, Out: Fiber> Module for TypedSe3Transformer<In, Hidden, Out> {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.net().visit_params(prefix, f);
    }

    fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), se3_core::Error>,
    ) -> Result<(), se3_core::Error> {
        self.net_mut().visit_params_mut(prefix, f)
    }

    /// The model's entry (its inputs and outputs), then each of its layers with its fibers.
    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        f(LayerEntry::new(self, prefix, KIND, In::spec(), Out::spec()));
        self.net().visit_layers(prefix, f);
    }
}

// not listed in the message for a module without a forward
#[diagnostic::do_not_recommend]
impl<In: Fiber, Hidden: Fiber, Out: Fiber> Forward for TypedSe3Transformer<In, Hidden, Out> {
    type In = In;
    type Out = Out;

    /// [`TypedSe3Transformer::build`] on the context's graph (which must be kNN with
    /// `num_neighbors` per node for the library's semantics).
    fn forward(
        &self,
        g: &mut GraphCtx<'_>,
        x: GraphFeatures<In>,
    ) -> Result<GraphFeatures<Out>, se3_core::Error> {
        if let Some(option) = self.options().session_only() {
            // their inputs (ids, angles, selections) are fed by TypedSession
            return Err(se3_core::Error::InvalidParameter {
                what: option,
                expected: "off in Module::forward (TypedSe3Transformer::compile runs it)",
                found: 1.0,
            });
        }
        let prefix = g.prefix_of(self, KIND);
        let (s, edges, basis) = g.parts();
        let y = self
            .net()
            .build(s, &prefix, x.untyped(), edges, basis)
            .map_err(|e| match e {
                crate::Error::Core(c) => c,
                // the layers' errors are se3-core's; nothing else reaches here
                _ => se3_core::Error::InvalidOp {
                    op: "Se3TransformerNet::build",
                    problem: "an error outside se3-core's layers",
                },
            })?;
        GraphFeatures::new(y)
    }
}
