//! Equiformer's `Gate`: SiLU on the scalars, sigmoid gates from degree 0 on higher degrees.

use luminal::prelude::*;

use super::graph::channel_slice;
use super::graph::{dims, expand_at, retype, FeatureTensors, X};
use crate::fiber::{DegreeSpec, FiberSpec};
use crate::Error;

/// equiformer-pytorch's `Gate(fiber)`: the degree-0 channels of the input are
/// `[g_1, g_2, ..., g_L, s]` (one gate per channel of degree 1, then of degree 2, ..., the
/// scalars last); the output is `silu(s)` at degree 0 and `x_l[r, c, m] * sigmoid(g_l[r, c])`
/// at degree `l > 0`.
///
/// Equivariant: gates are invariants. (e3nn's `Gate`, [`super::GateLayer`], puts the scalars
/// first.)
#[derive(Debug, Clone)]
pub struct SiluGateLayer {
    fiber_in: FiberSpec,
    fiber_out: FiberSpec,
}

impl SiluGateLayer {
    /// The gate on features of `fiber_in` (degrees `0..=L` in order).
    ///
    /// # Errors
    /// `LengthMismatch` unless degree 0 has more channels than all higher degrees together
    /// (the library's assertion).
    pub fn new(fiber_in: &FiberSpec) -> Result<Self, Error> {
        let c0 = fiber_in.channels(0).unwrap_or(0);
        let gates: usize = fiber_in
            .degrees()
            .iter()
            .filter(|d| d.l > 0)
            .map(|d| d.channels)
            .sum();
        if c0 <= gates {
            return Err(Error::LengthMismatch {
                what: "degree-0 channels of an equiformer gate input (one gate per higher-degree channel plus at least one scalar)",
                expected: gates + 1,
                found: c0,
            });
        }
        let out = fiber_in
            .degrees()
            .iter()
            .map(|d| {
                if d.l == 0 {
                    DegreeSpec::new(0, c0 - gates, d.parity)
                } else {
                    *d
                }
            })
            .collect();
        Ok(SiluGateLayer {
            fiber_in: fiber_in.clone(),
            fiber_out: FiberSpec::new(out)?,
        })
    }

    /// The output fiber.
    pub fn fiber_out(&self) -> &FiberSpec {
        &self.fiber_out
    }

    /// The gate applied to `x`.
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not of the input fiber.
    pub fn build<R: Dimension>(&self, x: &FeatureTensors<R>) -> Result<FeatureTensors<R>, Error> {
        x.expect_fiber(&self.fiber_in, "equiformer gate input")?;
        let t0 = x.tensors()[0];
        let x0: GraphTensor<(X, X, X)> = GraphTensor::from_id(t0.id, t0.shape, t0.graph_ref);
        let c0 = self.fiber_in.channels(0).unwrap_or(0);
        let gates = c0 - self.fiber_out.channels(0).unwrap_or(0);
        let s = channel_slice(x0, gates, c0);
        let mut out = vec![retype(s * s.sigmoid())];
        let mut off = 0;
        for (d, t) in self.fiber_in.degrees().iter().zip(x.tensors()).skip(1) {
            let g = channel_slice(x0, off, off + d.channels).sigmoid();
            off += d.channels;
            let m = dims(*t)[2];
            let g2: GraphTensor<(X, X)> = g.sum_reduce::<(X, X), Axis<2>>();
            let g3: GraphTensor<(X, X, X)> = expand_at(g2, 2, m);
            let t3: GraphTensor<(X, X, X)> = GraphTensor::from_id(t.id, t.shape, t.graph_ref);
            out.push(retype(t3 * g3));
        }
        Ok(FeatureTensors::from_parts(self.fiber_out.clone(), out))
    }
}
