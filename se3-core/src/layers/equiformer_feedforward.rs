//! Equiformer's feed-forward block: RMS norm, optional norms of higher degrees into degree 0,
//! linear, SiLU gate, linear.

use luminal::prelude::*;

use super::depthwise_tp::concat_axis1;
use super::graph::{dims, reshape, retype, FeatureTensors, ParamSource, X};
use super::linear::{LinearLayer, LinearLayout};
use super::rms_norm::RmsNormLayer;
use super::silu_gate::SiluGateLayer;
use crate::exec::Session;
use crate::fiber::{DegreeSpec, FiberSpec};
use crate::Error;

/// equiformer-pytorch's `FeedForward(fiber, fiber_out, mult = 4, include_htype_norms)`:
///
/// `y = project_out(Gate(project_in(x'')))`, `x' = Norm(x)`, and `x''` is `x'` with degree 0
/// replaced by `[x'_0, |x'_1[c, :]|, |x'_2[c, :]|, ..]` if `include_htype_norms` (the norms over
/// m of every higher-degree channel). `project_in` maps to `4 C_l` channels per degree `l > 0`
/// and `sum_l 4 C_l` at degree 0 (gates for the higher degrees, then `4 C_0` scalars);
/// `project_out` maps `4 C_l` to the output fiber. Keys `<prefix>prenorm.`,
/// `project_in.weights.<l>`, `project_out.weights.<l>`.
#[derive(Debug, Clone)]
pub struct EquiformerFeedForwardLayer {
    fiber: FiberSpec,
    prenorm: RmsNormLayer,
    htype_norms: bool,
    project_in: LinearLayer,
    gate: SiluGateLayer,
    project_out: LinearLayer,
}

fn fiber_of(ch: &[usize]) -> Result<FiberSpec, Error> {
    FiberSpec::new(
        ch.iter()
            .enumerate()
            .map(|(l, &c)| DegreeSpec::new(l, c, None))
            .collect(),
    )
}

impl EquiformerFeedForwardLayer {
    /// Loads the block under `prefix` from `fiber` to `fiber_out` (the library's default
    /// `fiber_out = fiber`).
    ///
    /// # Errors
    /// Checkpoint errors from `src`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber: &FiberSpec,
        fiber_out: &FiberSpec,
        htype_norms: bool,
    ) -> Result<Self, Error> {
        let ch: Vec<usize> = fiber.degrees().iter().map(|d| d.channels).collect();
        let hidden: Vec<usize> = ch.iter().map(|c| c * 4).collect();
        let mut in_fiber = ch.clone();
        if htype_norms {
            in_fiber[0] = ch.iter().sum();
        }
        let mut in_hidden = hidden.clone();
        in_hidden[0] = hidden.iter().sum();
        let prenorm = RmsNormLayer::load(src, &format!("{prefix}prenorm."), fiber)?;
        let project_in = LinearLayer::load(
            src,
            &format!("{prefix}project_in."),
            &fiber_of(&in_fiber)?,
            &fiber_of(&in_hidden)?,
            LinearLayout::Se3TransformerPytorch,
            false,
        )?;
        let gate = SiluGateLayer::new(&fiber_of(&in_hidden)?)?;
        let project_out = LinearLayer::load(
            src,
            &format!("{prefix}project_out."),
            &fiber_of(&hidden)?,
            fiber_out,
            LinearLayout::Se3TransformerPytorch,
            false,
        )?;
        Ok(EquiformerFeedForwardLayer {
            fiber: fiber.clone(),
            prenorm,
            htype_norms,
            project_in,
            gate,
            project_out,
        })
    }

    /// The block's output (without the residual).
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not of the block's fiber.
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<R>,
    ) -> Result<FeatureTensors<R>, Error> {
        let xn = self.prenorm.build(s, &format!("{prefix}prenorm."), x)?;
        let xn = if self.htype_norms {
            let mut parts: Vec<GraphTensor<(X, X, X)>> = vec![retype(xn.tensors()[0])];
            for t in xn.tensors().iter().skip(1) {
                let t3: GraphTensor<(X, X, X)> = retype(*t);
                let d = dims(t3);
                let nrm: GraphTensor<(X, X)> = (t3 * t3).sum_reduce::<(X, X), Axis<2>>().sqrt();
                parts.push(reshape(nrm, &[d[0], d[1], 1.into()]));
            }
            let t0 = concat_axis1(&parts);
            let mut spec = self.fiber.degrees().to_vec();
            spec[0] = DegreeSpec::new(0, self.project_in.fiber_in().channels(0).unwrap_or(0), None);
            let mut ts = vec![retype(t0)];
            ts.extend(xn.tensors().iter().skip(1).copied());
            FeatureTensors::new(FiberSpec::new(spec)?, ts)?
        } else {
            xn
        };
        let h = self
            .project_in
            .build(s, &format!("{prefix}project_in."), &xn)?;
        let h = self.gate.build(&h)?;
        self.project_out
            .build(s, &format!("{prefix}project_out."), &h)
    }
}
