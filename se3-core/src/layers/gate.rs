//! The gate nonlinearity of e3nn (`nn.Gate`) as a graph builder.

use luminal::prelude::{symbolic::Expression, *};

use super::graph::{dims, expand_at, reshape, retype, FeatureTensors, X};
use crate::exec::Session;
use crate::fiber::{DegreeSpec, FiberSpec};
use crate::Error;

/// Channels `start..end` of axis 1 of `t`, as a contiguous tensor.
pub(crate) fn channel_slice(
    t: GraphTensor<(X, X, X)>,
    start: usize,
    end: usize,
) -> GraphTensor<(X, X, X)> {
    let d = dims(t);
    let mut sh = t.shape;
    sh.slice(&[
        (Expression::from(0), d[0]),
        (Expression::from(start), Expression::from(end)),
        (Expression::from(0), d[2]),
    ]);
    GraphTensor::<(X, X, X)>::from_id(t.id, sh, t.graph_ref).contiguous()
}

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
        let mut out = vec![DegreeSpec::new(0, c0 - gates, None)];
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
        if x.spec() != &self.fiber_in {
            return Err(Error::FiberMismatch {
                fiber: "gate input",
                expected: self.fiber_in.to_string(),
                found: x.spec().to_string(),
            });
        }
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
