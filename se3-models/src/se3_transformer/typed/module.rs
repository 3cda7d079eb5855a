//! [`TypedSe3Transformer`] as a module: its parameters under the checkpoint keys
//! (`conv_in.*`, `convs.<i>.1.*` / `convs.<i>.0.*`, `net.blocks.<i>.0.*` / `.1.*` or
//! `net.blocks.<i>.f.net.*` / `.g.net.*` when reversible, `conv_out.*`, `norm.*`), and its
//! forward written with the layers' `apply`, so `Module::compile(&model, Neighbors::knn(k))`
//! runs it like any `#[derive(Module)]` network (`model.compile()` is still the inherent
//! [`TypedSe3Transformer::compile`]).

use se3_core::fiber::Fiber;
use se3_core::layers::{FeatureTensors, GraphFeatures, Param};
use se3_core::module::{Forward, GraphCtx, LayerEntry, Module};

use super::TypedSe3Transformer;

impl<In: Fiber, Hidden: Fiber, Out: Fiber> TypedSe3Transformer<In, Hidden, Out> {
    /// Every layer as `(key prefix, module)`, in checkpoint order.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = vec![("conv_in.".into(), &self.conv_in)];
        for (i, (norm, conv)) in self.convs.iter().enumerate() {
            out.push((format!("convs.{i}.1."), norm));
            out.push((format!("convs.{i}.0."), conv));
        }
        for (i, (attention, feed_forward)) in self.blocks.iter().enumerate() {
            let (pa, pf) = self.options().block_prefixes(i);
            out.push((pa, attention));
            out.push((pf, feed_forward));
        }
        out.push(("conv_out.".into(), &self.conv_out));
        if let Some(norm) = &self.norm {
            out.push(("norm.".into(), norm));
        }
        out
    }
}

impl<In: Fiber, Hidden: Fiber, Out: Fiber> Module for TypedSe3Transformer<In, Hidden, Out> {
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for (key, m) in self.children() {
            m.visit_params(&format!("{prefix}{key}"), f);
        }
    }

    fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), se3_core::Error>,
    ) -> Result<(), se3_core::Error> {
        let options = *self.options();
        self.conv_in
            .visit_params_mut(&format!("{prefix}conv_in."), f)?;
        for (i, (norm, conv)) in self.convs.iter_mut().enumerate() {
            norm.visit_params_mut(&format!("{prefix}convs.{i}.1."), f)?;
            conv.visit_params_mut(&format!("{prefix}convs.{i}.0."), f)?;
        }
        for (i, (attention, feed_forward)) in self.blocks.iter_mut().enumerate() {
            let (pa, pf) = options.block_prefixes(i);
            attention.visit_params_mut(&format!("{prefix}{pa}"), f)?;
            feed_forward.visit_params_mut(&format!("{prefix}{pf}"), f)?;
        }
        self.conv_out
            .visit_params_mut(&format!("{prefix}conv_out."), f)?;
        match &mut self.norm {
            Some(norm) => norm.visit_params_mut(&format!("{prefix}norm."), f),
            None => Ok(()),
        }
    }

    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        for (key, m) in self.children() {
            m.visit_layers(&format!("{prefix}{key}"), f);
        }
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
        let mut h = self.conv_in.apply(g, &x)?;
        for (norm, conv) in &self.convs {
            h = norm.apply(g, &h)?;
            h = conv.apply(g, &h)?;
        }
        if self.options().reversible {
            let (mut x1, mut x2) = (h.clone(), h);
            for (attention, feed_forward) in &self.blocks {
                let y1 = attention.apply(g, &x2)?.residual(&x1);
                let y2 = feed_forward.apply(g, &y1)?.residual(&x2);
                (x1, x2) = (y1, y2);
            }
            let tensors = x1
                .untyped()
                .tensors()
                .iter()
                .zip(x2.untyped().tensors())
                .map(|(a, b)| (*a + *b) * 0.5)
                .collect();
            h = GraphFeatures::new(FeatureTensors::new(Hidden::spec(), tensors)?)?;
        } else {
            for (attention, feed_forward) in &self.blocks {
                h = attention.apply(g, &h)?;
                h = feed_forward.apply(g, &h)?;
            }
        }
        let y = self.conv_out.apply(g, &h)?;
        match &self.norm {
            Some(norm) => norm.apply(g, &y),
            None => Ok(y),
        }
    }
}
