//! The Tensor Field Network convolution (se3-transformer-pytorch's `ConvSE3`) as a graph
//! builder: run-time [`ConvLayer`] and the typed [`Conv<In, Out>`] over it.

use std::marker::PhantomData;

use luminal::prelude::*;
use rand::Rng;

use super::edges::{EdgeBasis, EdgeGraph};
use super::graph::{
    bmm, dims, expand_at, reshape, FeatureTensors, GraphFeatures, ParamSource, E, N, X,
};
use super::linear::{LinearLayer, LinearLayout};
use super::radial::RadialMlp;
use crate::exec::Session;
use crate::fiber::{Fiber, FiberSpec};
use crate::ops::{gather3, scatter_add3};
use crate::Error;

/// How messages of a node's edges are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Mean over the node's valid edges (0 for a node without any), as `ConvSE3(pool=True)`.
    Mean,
    /// Sum over the node's valid edges.
    Sum,
}

/// Options of a convolution besides its fibers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    /// Width of the per-edge features fed to the radial network next to the distance.
    pub edge_dim: usize,
    /// Fourier-encode the distance with this many frequencies (`fourier_encode`).
    pub fourier: Option<usize>,
    /// Add a `LinearSE3` of the node's own features (keys `self_interact.weights.<l>`).
    pub self_interaction: bool,
    /// Pooling of messages into nodes.
    pub pool: Pool,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            edge_dim: 0,
            fourier: None,
            self_interaction: true,
            pool: Pool::Mean,
        }
    }
}

#[derive(Debug, Clone)]
struct PairKernel {
    d_in: usize,
    c_in: usize,
    d_out: usize,
    c_out: usize,
    radial: RadialMlp,
}

/// The TFN / SE(3)-Transformer convolution from `fiber_in` to `fiber_out`:
///
/// `m_e[o, p] = sum_{d_in} sum_{c, f} R_f(|r_e|, a_e)[o, c] sum_q K_f(r_e)[p, q] x_{src e}[c, q]`
///
/// for every output degree, with `K_f` the kernel basis ([`EdgeBasis`]) and `R` a radial
/// network per degree pair ([`RadialMlp`], fed the distance and optional edge features
/// `a_e`), then pooled into `dst e` (mean or sum over valid edges) and plus an optional
/// self-interaction `LinearSE3(x)`. Equivariant because `K_f(R r) = D^{d_out}(R) K_f(r)
/// D^{d_in}(R)^T` and `R` sees only invariants. Weights and keys as se3-transformer-pytorch
/// (`kernel_unary.(d_in,d_out).rp.net.*`, `self_interact.weights.<l>`), so `ConvSE3`
/// checkpoints load.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    fiber_in: FiberSpec,
    fiber_out: FiberSpec,
    options: ConvOptions,
    pairs: Vec<PairKernel>,
    self_interact: Option<LinearLayer>,
}

/// Whether the fibers have a degree in common (else self-interaction has no weights).
fn shares_degree(a: &FiberSpec, b: &FiberSpec) -> bool {
    a.degrees().iter().any(|d| b.channels(d.l).is_some())
}

fn radial_in(o: &ConvOptions) -> usize {
    1 + o.edge_dim + o.fourier.map_or(0, |k| 2 * k)
}

impl ConvLayer {
    /// A convolution with freshly initialised weights (self-interaction, if asked for, on the
    /// degrees both fibers have; none if they share no degree).
    ///
    /// # Errors
    /// None for valid fiber specs.
    pub fn new(
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        options: ConvOptions,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        for i in fiber_in.degrees() {
            for o in fiber_out.degrees() {
                let nf = 2 * i.l.min(o.l) + 1;
                pairs.push(PairKernel {
                    d_in: i.l,
                    c_in: i.channels,
                    d_out: o.l,
                    c_out: o.channels,
                    radial: RadialMlp::new(radial_in(&options), nf * i.channels * o.channels, rng),
                });
            }
        }
        let self_interact = if options.self_interaction && shares_degree(fiber_in, fiber_out) {
            Some(LinearLayer::new(fiber_in, fiber_out, false, rng)?)
        } else {
            None
        };
        Ok(ConvLayer {
            fiber_in: fiber_in.clone(),
            fiber_out: fiber_out.clone(),
            options,
            pairs,
            self_interact,
        })
    }

    /// Loads a `ConvSE3` checkpoint stored under `prefix` (e.g. `"convs.0."`).
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        options: ConvOptions,
    ) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        for i in fiber_in.degrees() {
            for o in fiber_out.degrees() {
                let nf = 2 * i.l.min(o.l) + 1;
                let radial = RadialMlp::load(
                    src,
                    &format!("{prefix}kernel_unary.({},{}).rp.", i.l, o.l),
                    radial_in(&options),
                    nf * i.channels * o.channels,
                )?;
                pairs.push(PairKernel {
                    d_in: i.l,
                    c_in: i.channels,
                    d_out: o.l,
                    c_out: o.channels,
                    radial,
                });
            }
        }
        let self_interact = if options.self_interaction && shares_degree(fiber_in, fiber_out) {
            Some(LinearLayer::load(
                src,
                &format!("{prefix}self_interact."),
                fiber_in,
                fiber_out,
                LinearLayout::Se3TransformerPytorch,
                false,
            )?)
        } else {
            None
        };
        Ok(ConvLayer {
            fiber_in: fiber_in.clone(),
            fiber_out: fiber_out.clone(),
            options,
            pairs,
            self_interact,
        })
    }

    /// The input fiber.
    pub fn fiber_in(&self) -> &FiberSpec {
        &self.fiber_in
    }

    /// The output fiber.
    pub fn fiber_out(&self) -> &FiberSpec {
        &self.fiber_out
    }

    /// The options.
    pub fn options(&self) -> ConvOptions {
        self.options
    }

    fn check_input(&self, x: &FeatureTensors<N>, basis: &EdgeBasis) -> Result<(), Error> {
        if x.spec() != &self.fiber_in {
            return Err(Error::FiberMismatch {
                fiber: "convolution input",
                expected: self.fiber_in.to_string(),
                found: x.spec().to_string(),
            });
        }
        let need = self
            .fiber_in
            .degrees()
            .iter()
            .chain(self.fiber_out.degrees())
            .map(|d| d.l)
            .max()
            .unwrap_or(0);
        if need > basis.max_degree() {
            return Err(Error::DegreeTooHigh {
                l: need,
                max: basis.max_degree(),
            });
        }
        Ok(())
    }

    /// Per-edge messages `m_e` (`(E, c_out, 2 d_out + 1)` per output degree), before pooling
    /// and self-interaction (the keys and values of attention).
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not `fiber_in`, `DegreeTooHigh` if `basis` is too small,
    /// `LengthMismatch` if the edge features' width is not `edge_dim`.
    pub fn messages(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors<E>, Error> {
        self.check_input(x, basis)?;
        let found = edges
            .edge_features
            .map_or(0, |f| dims(f)[1].to_usize().unwrap_or(0));
        if found != self.options.edge_dim {
            return Err(Error::LengthMismatch {
                what: "edge features per edge (the conv's edge_dim)",
                expected: self.options.edge_dim,
                found,
            });
        }
        let input = edges.radial_input(s, self.options.fourier)?;
        let e = dims(edges.dist)[0];
        let mut out: Vec<Option<GraphTensor<(E, X, X)>>> =
            vec![None; self.fiber_out.degrees().len()];
        for p in &self.pairs {
            let (mo, nf) = (2 * p.d_out + 1, 2 * p.d_in.min(p.d_out) + 1);
            let xl = x.degree(p.d_in).ok_or(Error::FiberMismatch {
                fiber: "convolution input",
                expected: self.fiber_in.to_string(),
                found: x.spec().to_string(),
            })?;
            let r = p.radial.build(
                s,
                &format!("{prefix}kernel_unary.({},{}).rp.", p.d_in, p.d_out),
                input,
            )?;
            let r: GraphTensor<(X, X, X)> = reshape(r, &[e, p.c_out.into(), (p.c_in * nf).into()]);
            let xs: GraphTensor<(X, X, X)> =
                super::graph::retype(gather3::<N, X, X, E>(xl, edges.src));
            // Kx[e, c, (f, o)] = sum_q x[src e, c, q] K[e, q, (f, o)]
            let kx = bmm(xs, super::graph::retype(basis.block(p.d_in, p.d_out)?));
            let kx: GraphTensor<(X, X, X)> = reshape(kx, &[e, (p.c_in * nf).into(), mo.into()]);
            let m = bmm(r, kx);
            let slot = self
                .fiber_out
                .degrees()
                .iter()
                .position(|d| d.l == p.d_out)
                .unwrap_or(0);
            out[slot] = Some(match out[slot] {
                None => super::graph::retype(m),
                Some(acc) => acc + super::graph::retype(m),
            });
        }
        let degrees = out
            .into_iter()
            .map(|t| {
                t.ok_or(Error::Empty {
                    what: "convolution input fiber",
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FeatureTensors::from_parts(self.fiber_out.clone(), degrees))
    }

    /// The convolution: messages pooled into their destinations, plus self-interaction.
    /// Weights are session weights named `<prefix>` + their checkpoint keys.
    ///
    /// # Errors
    /// As [`ConvLayer::messages`].
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors<N>, Error> {
        let msgs = self.messages(s, prefix, x, edges, basis)?;
        let w = match self.options.pool {
            Pool::Mean => edges.mean_weights(),
            Pool::Sum => edges.valid,
        };
        let mut pooled = Vec::new();
        for (t, d) in msgs.tensors().iter().zip(self.fiber_out.degrees()) {
            let w2: GraphTensor<(E, X)> = expand_at(w, 1, d.channels);
            let w3: GraphTensor<(E, X, X)> = expand_at(w2, 2, d.width());
            pooled.push(scatter_add3::<N, X, X, E>(*t * w3, edges.dst));
        }
        let out = FeatureTensors::from_parts(self.fiber_out.clone(), pooled);
        match &self.self_interact {
            Some(si) => {
                let r = si.build(s, &format!("{prefix}self_interact."), x)?;
                Ok(out.residual(&r))
            }
            None => Ok(out),
        }
    }
}

/// [`ConvLayer`] typed by its fibers.
#[derive(Debug, Clone)]
pub struct Conv<In: Fiber, Out: Fiber> {
    layer: ConvLayer,
    fibers: PhantomData<fn(In) -> Out>,
}

impl<In: Fiber, Out: Fiber> Conv<In, Out> {
    /// A convolution with fresh weights.
    ///
    /// # Errors
    /// As [`ConvLayer::new`].
    pub fn new(options: ConvOptions, rng: &mut impl Rng) -> Result<Self, Error> {
        Ok(Conv {
            layer: ConvLayer::new(&In::spec(), &Out::spec(), options, rng)?,
            fibers: PhantomData,
        })
    }

    /// Loads a `ConvSE3` checkpoint under `prefix`.
    ///
    /// # Errors
    /// As [`ConvLayer::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        options: ConvOptions,
    ) -> Result<Self, Error> {
        Ok(Conv {
            layer: ConvLayer::load(src, prefix, &In::spec(), &Out::spec(), options)?,
            fibers: PhantomData,
        })
    }

    /// The run-time layer.
    pub fn layer(&self) -> &ConvLayer {
        &self.layer
    }

    /// Adds the convolution to a graph (see [`ConvLayer::build`]).
    ///
    /// # Errors
    /// As [`ConvLayer::build`].
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &GraphFeatures<In>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<GraphFeatures<Out>, Error> {
        Ok(GraphFeatures::wrap(self.layer.build(
            s,
            prefix,
            x.untyped(),
            edges,
            basis,
        )?))
    }
}
