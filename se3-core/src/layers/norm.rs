//! The norm nonlinearity of se3-transformer-pytorch (`NormSE3`) as a graph builder.

use std::marker::PhantomData;

use luminal::prelude::*;

use super::edges::full_like;
use super::graph::{
    dims, expand_at, gelu, mm, reshape, retype, FeatureTensors, GraphFeatures, Param, ParamSource,
    X,
};
use crate::exec::Session;
use crate::fiber::{Fiber, FiberSpec};
use crate::Error;

/// The function applied to the scaled norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormActivation {
    /// Exact (erf) GELU, the library's default.
    Gelu,
    /// The identity (the library's output norm).
    Identity,
}

/// How the norms are scaled before the nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormScale {
    /// A learned scale per channel (key `transform.<l>.scale`, shape `(1, 1, c)`).
    PerChannel,
    /// `gated_scale`: `s = norms @ W` (key `transform.<l>.w_gate`, `(c, c)`).
    Gated,
}

#[derive(Debug, Clone)]
struct DegreeParam {
    l: usize,
    scale: NormScale,
    p: Param,
}

/// `NormSE3`: per degree, node and channel, `n = max(|x|, 1e-12)` over the m axis and
///
/// `y = f(n s) x / n`,
///
/// with `s` a learned per-channel scale or, gated, `s = n W` (norms of all channels of that
/// degree), and `f` GELU or the identity. Directions are kept, norms are invariant: the
/// layer is equivariant. A zero feature stays zero (its direction `x / n` is 0).
#[derive(Debug, Clone)]
pub struct NormLayer {
    fiber: FiberSpec,
    activation: NormActivation,
    params: Vec<DegreeParam>,
}

impl NormLayer {
    /// A layer with scales 1 (or, gated, identity gates).
    pub fn new(fiber: &FiberSpec, scale: NormScale, activation: NormActivation) -> Self {
        let params = fiber
            .degrees()
            .iter()
            .map(|d| {
                let c = d.channels;
                let p = match scale {
                    NormScale::PerChannel => Param {
                        key: format!("transform.{}.scale", d.l),
                        shape: vec![1, 1, c],
                        data: vec![1.0; c],
                    },
                    NormScale::Gated => Param {
                        key: format!("transform.{}.w_gate", d.l),
                        shape: vec![c, c],
                        data: (0..c * c)
                            .map(|i| f32::from(u8::from(i % (c + 1) == 0)))
                            .collect(),
                    },
                };
                DegreeParam { l: d.l, scale, p }
            })
            .collect();
        NormLayer {
            fiber: fiber.clone(),
            activation,
            params,
        }
    }

    /// A layer from given values, one per degree of `fiber` in degree order: `c` scales
    /// (`PerChannel`) or a row-major `[c, c]` gate matrix (`Gated`).
    ///
    /// # Errors
    /// `LengthMismatch` for a wrong number of degrees, `WrongShape` or `NonFiniteWeight` for a
    /// bad value.
    pub fn from_values(
        fiber: &FiberSpec,
        scale: NormScale,
        activation: NormActivation,
        values: Vec<Vec<f32>>,
    ) -> Result<Self, Error> {
        if values.len() != fiber.degrees().len() {
            return Err(Error::LengthMismatch {
                what: "norm parameters (one per degree)",
                expected: fiber.degrees().len(),
                found: values.len(),
            });
        }
        let params = fiber
            .degrees()
            .iter()
            .zip(values)
            .map(|(d, data)| {
                let c = d.channels;
                let (key, shape) = match scale {
                    NormScale::PerChannel => (format!("transform.{}.scale", d.l), vec![1, 1, c]),
                    NormScale::Gated => (format!("transform.{}.w_gate", d.l), vec![c, c]),
                };
                Ok(DegreeParam {
                    l: d.l,
                    scale,
                    p: Param::new(key, shape, data)?,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(NormLayer {
            fiber: fiber.clone(),
            activation,
            params,
        })
    }

    /// Loads a `NormSE3` checkpoint under `prefix` (e.g. `"norms.0."`).
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber: &FiberSpec,
        scale: NormScale,
        activation: NormActivation,
    ) -> Result<Self, Error> {
        let params = fiber
            .degrees()
            .iter()
            .map(|d| {
                let c = d.channels;
                let (key, shape) = match scale {
                    NormScale::PerChannel => (format!("transform.{}.scale", d.l), vec![1, 1, c]),
                    NormScale::Gated => (format!("transform.{}.w_gate", d.l), vec![c, c]),
                };
                let p = Param::load(src, format!("{prefix}{key}"), shape)?;
                Ok(DegreeParam {
                    l: d.l,
                    scale,
                    p: Param { key, ..p },
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(NormLayer {
            fiber: fiber.clone(),
            activation,
            params,
        })
    }

    /// The fiber.
    pub fn fiber(&self) -> &FiberSpec {
        &self.fiber
    }

    /// Adds the layer to `s` (weights `<prefix>transform.<l>.*`).
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not the layer's fiber.
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<R>,
    ) -> Result<FeatureTensors<R>, Error> {
        x.expect_fiber(&self.fiber, "norm input")?;
        let mut out = Vec::new();
        for (t, dp) in x.tensors().iter().zip(&self.params) {
            let d = dims(*t);
            let (rows, c, m) = (d[0], d[1], d[2]);
            let t3: GraphTensor<(X, X, X)> = retype(*t);
            let sq: GraphTensor<(X, X)> = (t3 * t3).sum_reduce::<(X, X), Axis<2>>();
            let norm = sq.sqrt();
            let norm = norm.max(full_like(norm, 1e-12));
            let scale: GraphTensor<(X, X)> = match dp.scale {
                NormScale::PerChannel => {
                    let sc: GraphTensor<(X, X, X)> = dp.p.declare(s, prefix)?;
                    let sc: GraphTensor<(X,)> = reshape(sc, &[c]);
                    expand_at(sc, 0, rows)
                }
                NormScale::Gated => {
                    let w: GraphTensor<(X, X)> = dp.p.declare(s, prefix)?;
                    mm(norm, w)
                }
            };
            let z = norm * scale;
            let f = match self.activation {
                NormActivation::Gelu => gelu(z),
                NormActivation::Identity => z,
            };
            let factor: GraphTensor<(X, X, X)> = expand_at(f * norm.recip(), 2, m);
            let _ = dp.l;
            out.push(retype(t3 * factor));
        }
        Ok(FeatureTensors::from_parts(self.fiber.clone(), out))
    }
}

/// [`NormLayer`] typed by its fiber.
#[derive(Debug, Clone)]
pub struct Norm<F: Fiber> {
    layer: NormLayer,
    fiber: PhantomData<F>,
}

impl<F: Fiber> Norm<F> {
    /// A norm layer with unit scales (or identity gates).
    pub fn new(scale: NormScale, activation: NormActivation) -> Self {
        Norm {
            layer: NormLayer::new(&F::spec(), scale, activation),
            fiber: PhantomData,
        }
    }

    /// Loads a `NormSE3` checkpoint under `prefix`.
    ///
    /// # Errors
    /// As [`NormLayer::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        scale: NormScale,
        activation: NormActivation,
    ) -> Result<Self, Error> {
        Ok(Norm {
            layer: NormLayer::load(src, prefix, &F::spec(), scale, activation)?,
            fiber: PhantomData,
        })
    }

    /// The run-time layer.
    pub fn layer(&self) -> &NormLayer {
        &self.layer
    }

    /// The typed view of a run-time layer.
    ///
    /// # Errors
    /// `FiberMismatch` if the layer's fiber is not `F`.
    pub fn from_layer(layer: NormLayer) -> Result<Self, Error> {
        F::check_spec(layer.fiber())?;
        Ok(Self {
            layer,
            fiber: PhantomData,
        })
    }

    /// Adds the layer to a graph.
    ///
    /// # Errors
    /// As [`NormLayer::build`].
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &GraphFeatures<F, R>,
    ) -> Result<GraphFeatures<F, R>, Error> {
        Ok(GraphFeatures::wrap(self.layer.build(
            s,
            prefix,
            x.untyped(),
        )?))
    }
}

impl NormLayer {
    /// Visits every parameter as `(<prefix><key>, param)` (`transform.<l>.scale` or
    /// `transform.<l>.w_gate`).
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for d in &self.params {
            f(&format!("{prefix}{}", d.p.key), &d.p);
        }
    }

    /// Visits every parameter mutably, as [`NormLayer::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for d in &mut self.params {
            f(&format!("{prefix}{}", d.p.key), &mut d.p)?;
        }
        Ok(())
    }
}

impl<F: Fiber> Norm<F> {
    /// The run-time layer, for the module parameter visitors.
    pub(crate) fn layer_mut(&mut self) -> &mut NormLayer {
        &mut self.layer
    }
}
