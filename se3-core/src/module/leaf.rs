//! The typed layers as leaves of a module tree: their parameters (the run-time layers' keys
//! below the field path), their fibers, and their fresh weights with default options.

use rand::RngCore;

use super::{Init, LayerEntry, Module};
use crate::fiber::{Fiber, GateFibers, SameDegrees};
use crate::layers::{
    Activation, Attention, AttentionBlock, AttentionOptions, Conv, ConvOptions, FeedForwardBlock,
    Gate, LayerNorm, Linear, Norm, NormActivation, NormScale, Param, ScalarActivation,
};
use crate::Error;

/// The entry of a leaf layer at `prefix` (`"conv1."` gives the path `conv1`) with the fibers
/// of the types `In`, `Out`.
fn typed_entry<T, In: Fiber, Out: Fiber>(
    layer: &T,
    prefix: &str,
    kind: &'static str,
) -> LayerEntry {
    LayerEntry {
        path: prefix.strip_suffix('.').unwrap_or(prefix).to_string(),
        kind,
        fiber_in: In::spec(),
        fiber_out: Out::spec(),
        address: layer as *const T as usize,
    }
}

/// Implements [`Module`] for a typed layer whose run-time layer (`layer_mut`, `layer`) has
/// `visit_params` / `visit_params_mut`.
macro_rules! runtime_leaf {
    ($ty:ident < $($g:ident),+ >, $kind:literal, $fin:ident, $fout:ident) => {
        impl<$($g: Fiber),+> Module for $ty<$($g),+> {
            fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
                self.layer().visit_params(prefix, f);
            }

            fn visit_params_mut(
                &mut self,
                prefix: &str,
                f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
            ) -> Result<(), Error> {
                self.layer_mut().visit_params_mut(prefix, f)
            }

            fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
                f(typed_entry::<Self, $fin, $fout>(self, prefix, $kind));
            }
        }
    };
}

runtime_leaf!(Conv<In, Out>, "Conv", In, Out);
runtime_leaf!(Norm<F>, "Norm", F, F);
runtime_leaf!(LayerNorm<F>, "LayerNorm", F, F);
runtime_leaf!(Attention<F>, "Attention", F, F);
runtime_leaf!(AttentionBlock<F>, "AttentionBlock", F, F);
runtime_leaf!(FeedForwardBlock<F>, "FeedForwardBlock", F, F);

impl<In: Fiber, Out: Fiber> Module for Linear<In, Out> {
    /// `weights.<l>` (`[c_in, c_out]`, degree `l` of `In`) per degree, then `bias` (`[c_0]`)
    /// if `Out` has degree 0 (the keys of [`Linear::to_layer`]).
    fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        self.to_layer().visit_params(prefix, f);
    }

    fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (weights, bias) = self.values_mut();
        for ((i, o), w) in In::DEGREES
            .as_slice()
            .iter()
            .zip(Out::DEGREES.as_slice())
            .zip(weights.iter_mut())
        {
            let mut p = Param {
                key: format!("weights.{}", i.l),
                shape: vec![i.channels, o.channels],
                data: std::mem::take(w),
            };
            let r = f(&format!("{prefix}{}", p.key), &mut p);
            *w = p.data;
            r?;
        }
        if !bias.is_empty() {
            let mut p = Param {
                key: "bias".into(),
                shape: vec![bias.len()],
                data: std::mem::take(bias),
            };
            let r = f(&format!("{prefix}bias"), &mut p);
            *bias = p.data;
            r?;
        }
        Ok(())
    }

    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        f(typed_entry::<Self, In, Out>(self, prefix, "Linear"));
    }
}

impl<In: Fiber, Out: Fiber> Module for Gate<In, Out> {
    fn visit_params(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param)) {}

    fn visit_params_mut(
        &mut self,
        _prefix: &str,
        _f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        Ok(())
    }

    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        f(typed_entry::<Self, In, Out>(self, prefix, "Gate"));
    }
}

impl<F: Fiber, A, D> Module for Activation<F, A, D> {
    fn visit_params(&self, _prefix: &str, _f: &mut dyn FnMut(&str, &Param)) {}

    fn visit_params_mut(
        &mut self,
        _prefix: &str,
        _f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        Ok(())
    }

    fn visit_layers(&self, prefix: &str, f: &mut dyn FnMut(LayerEntry)) {
        f(typed_entry::<Self, F, F>(self, prefix, "Activation"));
    }
}

/// Default options: `ConvOptions::default()` (mean pooling, self-interaction).
impl<In: Fiber, Out: Fiber> Init for Conv<In, Out> {
    fn init(mut rng: &mut dyn RngCore) -> Result<Self, Error> {
        Conv::new(ConvOptions::default(), &mut rng)
    }
}

/// NormSE3's defaults: per-channel scales, GELU.
impl<F: Fiber> Init for Norm<F> {
    fn init(_rng: &mut dyn RngCore) -> Result<Self, Error> {
        Ok(Norm::new(NormScale::PerChannel, NormActivation::Gelu))
    }
}

impl<In: Fiber, Out: Fiber> Init for Linear<In, Out>
where
    Linear<In, Out>: SameDegrees,
{
    fn init(mut rng: &mut dyn RngCore) -> Result<Self, Error> {
        Ok(Linear::new(&mut rng))
    }
}

impl<F: Fiber> Init for LayerNorm<F> {
    fn init(_rng: &mut dyn RngCore) -> Result<Self, Error> {
        Ok(LayerNorm::new())
    }
}

/// Default options: `AttentionOptions::default()`.
impl<F: Fiber> Init for Attention<F> {
    fn init(mut rng: &mut dyn RngCore) -> Result<Self, Error> {
        Attention::new(AttentionOptions::default(), &mut rng)
    }
}

/// Default options: `AttentionOptions::default()`, per-channel pre-norm scales.
impl<F: Fiber> Init for AttentionBlock<F> {
    fn init(mut rng: &mut dyn RngCore) -> Result<Self, Error> {
        AttentionBlock::new(AttentionOptions::default(), false, &mut rng)
    }
}

/// Per-channel pre-norm scales.
impl<F: Fiber> Init for FeedForwardBlock<F> {
    fn init(mut rng: &mut dyn RngCore) -> Result<Self, Error> {
        FeedForwardBlock::new(false, &mut rng)
    }
}

impl<In: Fiber, Out: Fiber> Init for Gate<In, Out>
where
    Gate<In, Out>: GateFibers,
{
    fn init(_rng: &mut dyn RngCore) -> Result<Self, Error> {
        Gate::new()
    }
}

impl<F, A, D> Init for Activation<F, A, D>
where
    F: Fiber,
    A: ScalarActivation + Default,
    D: crate::fiber::ScalarOnly<A> + crate::fiber::DegreeOf<F>,
{
    fn init(_rng: &mut dyn RngCore) -> Result<Self, Error> {
        Ok(Activation::new(A::default()))
    }
}
