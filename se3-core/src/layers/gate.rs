//! The gate nonlinearity of e3nn (`nn.Gate`) as a graph builder.

use std::marker::PhantomData;

use luminal::prelude::*;

use super::graph::{
    channel_slice, dims, expand_at, reshape, retype, FeatureTensors, GraphFeatures, X,
};
use crate::exec::Session;
use crate::fiber::{DegreeSpec, DegreeTable, FeedsGraph, Fiber, FiberSpec, GateFibers, MAX_DEGREE};
use crate::Error;

/// e3nn's `Gate`: the degree-0 channels of the input are `[scalars, gates]`; the output has
/// `silu(scalars)` as degree 0 and every channel of each degree `l > 0` multiplied by
/// `sigmoid` of its own gate (gates ordered by degree, then channel):
///
/// `y_0 = silu(x_0[:s])`, `y_l[c] = sigmoid(g_{l,c}) x_l[c]`.
///
/// Equivariant: gates are invariant scalars, and scalar times a degree-l feature is a degree-l
/// feature. Input fiber `0:(s + G), l1:c1, ...` with `G = sum c_l`, output `0:s, l1:c1, ...`.
#[derive(Debug, Clone)]
pub struct GateLayer {
    fiber_in: FiberSpec,
    fiber_out: FiberSpec,
    scalars: usize,
}

impl GateLayer {
    /// The gate for `fiber_in`.
    ///
    /// # Errors
    /// `LengthMismatch` if the degree-0 channels are not more than the gated channels (at least
    /// one scalar must remain), or the fiber has no degree 0.
    pub fn new(fiber_in: &FiberSpec) -> Result<Self, Error> {
        let gates: usize = fiber_in
            .degrees()
            .iter()
            .filter(|d| d.l > 0)
            .map(|d| d.channels)
            .sum();
        let c0 = fiber_in.channels(0).unwrap_or(0);
        if c0 <= gates {
            return Err(Error::LengthMismatch {
                what: "degree-0 channels of a gate input (scalars + one gate per gated channel, at least one scalar)",
                expected: gates + 1,
                found: c0,
            });
        }
        let parity0 = fiber_in.degrees().first().and_then(|d| d.parity);
        let mut out = vec![DegreeSpec::new(0, c0 - gates, parity0)];
        out.extend(fiber_in.degrees().iter().filter(|d| d.l > 0).copied());
        Ok(GateLayer {
            fiber_in: fiber_in.clone(),
            fiber_out: FiberSpec::new(out)?,
            scalars: c0 - gates,
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

    /// Adds the gate to `s` (no weights).
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not the layer's input fiber.
    pub fn build<R: Dimension>(
        &self,
        _s: &mut Session,
        _prefix: &str,
        x: &FeatureTensors<R>,
    ) -> Result<FeatureTensors<R>, Error> {
        x.expect_fiber(&self.fiber_in, "gate input")?;
        let x0: GraphTensor<(X, X, X)> = retype(x.tensors()[0]);
        let c0 = self.fiber_in.channels(0).unwrap_or(0);
        let s = channel_slice(x0, 0, self.scalars);
        let mut out = vec![retype(s.swish())];
        let mut off = self.scalars;
        for (d, t) in self
            .fiber_in
            .degrees()
            .iter()
            .zip(x.tensors())
            .filter(|(d, _)| d.l > 0)
        {
            let g = channel_slice(x0, off, off + d.channels).sigmoid();
            off += d.channels;
            let rows = dims(g)[0];
            let g2: GraphTensor<(X, X)> = reshape(g, &[rows, d.channels.into()]);
            let g3: GraphTensor<(X, X, X)> = expand_at(g2, 2, d.width());
            out.push(retype(retype::<_, (X, X, X)>(*t) * g3));
        }
        debug_assert_eq!(off, c0);
        Ok(FeatureTensors::from_parts(self.fiber_out.clone(), out))
    }
}

/// [`GateLayer`] typed by its fibers: `Gate<In, Out>` maps `0:(s + g), l1:c1, ..` to
/// `0:s, l1:c1, ..` with `g = c1 + c2 + ..` (one gate per gated channel):
///
/// `y_0 = silu(x_0[:s])`, `y_l[c] = sigmoid(g_{l,c}) x_l[c]`.
///
/// Checked at compile time: the degrees ([`GateFibers`]: both fibers have invariant scalars
/// and the same higher degrees, a trait bound with its own message) and the channel counts
/// (`c0(In) = c0(Out) + sum_{l > 0} c_l(In)`, `c_l(In) = c_l(Out)`: a constant evaluated when
/// `Gate::<In, Out>::new` is instantiated, so `cargo build` reports it and `cargo check`
/// does not).
#[derive(Debug, Clone)]
pub struct Gate<In, Out> {
    layer: GateLayer,
    fibers: PhantomData<fn(In) -> Out>,
}

/// Whether `o` is the gate output of `i` (see [`Gate`]); degrees above 0 must agree.
const fn gate_channels_match(i: DegreeTable, o: DegreeTable) -> bool {
    let mut gates = 0;
    let mut l = 1;
    while l <= MAX_DEGREE {
        match (i.channels(l), o.channels(l)) {
            (Some(a), Some(b)) => {
                if a != b {
                    return false;
                }
                gates += a;
            }
            (None, None) => {}
            _ => return false,
        }
        l += 1;
    }
    match (i.channels(0), o.channels(0)) {
        (Some(a), Some(b)) => a == b + gates,
        _ => false,
    }
}

impl<In: Fiber, Out: Fiber> Gate<In, Out> {
    const CHANNELS: () = assert!(
        gate_channels_match(In::DEGREES, Out::DEGREES),
        "Gate<In, Out> needs c0(In) = c0(Out) + one gate per channel of each degree l > 0, and equal channels for l > 0"
    );

    /// The gate from `In` to `Out` (no weights).
    ///
    /// # Errors
    /// None for fibers that pass the compile-time checks; `LengthMismatch` is kept from
    /// [`GateLayer::new`] for completeness.
    #[rustfmt::skip]
    pub fn new() -> Result<Self, Error> where Self: GateFibers {
        #[allow(clippy::let_unit_value)]
        let () = Self::CHANNELS;
        Ok(Gate {
            layer: GateLayer::new(&In::spec())?,
            fibers: PhantomData,
        })
    }

    /// The run-time layer.
    pub fn layer(&self) -> &GateLayer {
        &self.layer
    }

    /// Adds the gate to a graph (see [`GateLayer::build`]; no weights).
    ///
    /// # Errors
    /// None for typed features (the fibers are checked by the types).
    pub fn build<X: FeedsGraph<In>>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &X,
    ) -> Result<GraphFeatures<Out, X::Rows>, Error> {
        let x = X::feed_graph(x);
        Ok(GraphFeatures::wrap(self.layer.build(
            s,
            prefix,
            x.untyped(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use se3_macros::fiber;

    #[fiber(0:7, 1:3, 2:2)]
    struct In;
    #[fiber(0:2, 1:3, 2:2)]
    struct Out;
    #[fiber("0e:5, 1o:3")]
    struct PolarIn;
    #[fiber("0e:2, 1o:3")]
    struct Polar;

    #[test]
    fn typed_gate_has_the_run_time_output_fiber() -> Result<(), Error> {
        let g = Gate::<In, Out>::new()?;
        assert_eq!(g.layer().fiber_out(), &Out::spec());
        assert!(gate_channels_match(In::DEGREES, Out::DEGREES));
        assert!(!gate_channels_match(Out::DEGREES, Out::DEGREES));
        // E(3): the scalars keep their parity
        let p = Gate::<PolarIn, Polar>::new()?;
        assert_eq!(p.layer().fiber_out(), &Polar::spec());
        Ok(())
    }
}
