//! Equiformer's `Norm`: an RMS norm over the channels of each degree, of per-channel L2 norms.

use luminal::prelude::*;

use super::graph::{dims, expand_at, reshape, FeatureTensors, Param, ParamSource, X};
use crate::exec::Session;
use crate::fiber::FiberSpec;
use crate::Error;

/// equiformer-pytorch's `Norm(fiber)` (no centering, no bias, also for degree 0):
///
/// `y_l[r, c, m] = x_l[r, c, m] / max(rms_l[r], 1e-12) * s_l[c]`, with
/// `rms_l[r] = sqrt(sum_{c, m} x_l[r, c, m]^2 / C_l)` (the RMS over the `C_l` channels of the
/// per-channel norms `|x_l[r, c, :]|`).
///
/// Equivariant: it scales every channel by an invariant. On a row that is exactly zero the
/// output is zero and no gradient flows back (not the `1 / 1e-12` derivative of the clamp; see
/// `build`). Keys `<prefix>transforms.<i>` of shape
/// `(C_l, 1)`, `i` the position of degree `l` in the fiber.
#[derive(Debug, Clone)]
pub struct RmsNormLayer {
    fiber: FiberSpec,
    scales: Vec<Param>,
}

impl RmsNormLayer {
    /// Loads the per-channel scales stored under `prefix`.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight` from `src`.
    pub fn load(src: &mut dyn ParamSource, prefix: &str, fiber: &FiberSpec) -> Result<Self, Error> {
        let scales = fiber
            .degrees()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let p = Param::load(src, format!("{prefix}transforms.{i}"), vec![d.channels, 1])?;
                Ok(Param {
                    key: format!("transforms.{i}"),
                    ..p
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(RmsNormLayer {
            fiber: fiber.clone(),
            scales,
        })
    }

    /// The norm applied to `x` (weights `<prefix>transforms.<i>`).
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not of the layer's fiber.
    pub fn build<R: Dimension>(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<R>,
    ) -> Result<FeatureTensors<R>, Error> {
        x.expect_fiber(&self.fiber, "rms norm input")?;
        let mut out = Vec::new();
        for ((d, t), p) in self
            .fiber
            .degrees()
            .iter()
            .zip(x.tensors())
            .zip(&self.scales)
        {
            let sh = dims(*t);
            let t3: GraphTensor<(X, X, X)> = GraphTensor::from_id(t.id, t.shape, t.graph_ref);
            let sq: GraphTensor<(X,)> = (t3 * t3)
                .sum_reduce::<(X, X), Axis<2>>()
                .sum_reduce::<(X,), Axis<1>>();
            let rms = (sq * (1.0 / d.channels as f32)).sqrt().max_f32(1e-12);
            // `1 / max(rms, eps)`, and 0 on an all-zero row (whose output is 0 either way):
            // the derivative there would be `1 / eps`, which stacked norms of a zero row (the
            // degree >= 1 features of a masked node) compound past float32's range, while
            // every path from such a row to a parameter or input meets a zero factor (`-sq <
            // sq` is `sq > 0` for `sq >= 0`)
            let nonzero = (sq * -1.0).less_than(sq);
            let inv: GraphTensor<(X, X)> = expand_at(rms.recip() * nonzero, 1, sh[1]);
            let inv: GraphTensor<(X, X, X)> = expand_at(inv, 2, sh[2]);
            let w: GraphTensor<(X, X)> = p.declare(s, prefix)?;
            let w: GraphTensor<(X,)> = reshape(w, &[sh[1]]);
            let w: GraphTensor<(X, X)> = expand_at(w, 0, sh[0]);
            let w: GraphTensor<(X, X, X)> = expand_at(w, 2, sh[2]);
            let y = t3 * inv * w;
            out.push(GraphTensor::from_id(y.id, y.shape, y.graph_ref));
        }
        Ok(FeatureTensors::from_parts(self.fiber.clone(), out))
    }
}
