//! The vector-neuron layer norm.

use luminal::prelude::*;

use super::{component_norms, load_param, per_channel, VnTensor};
use crate::exec::Session;
use crate::layers::edges::full_like;
use crate::layers::graph::{dims, layer_norm, reshape, Param, ParamSource, X};
use crate::Error;

/// VN layer norm (VN-transformer 0.1.0 `VNLayerNorm`): with `r_c = |x_c|` the norm of each
/// channel's component vector,
///
/// `y_c = x_c / max(r_c, 1e-6) * (gamma_c (r_c - mean(r)) / sqrt(var(r) + 1e-5) + beta_c)`,
///
/// mean and biased variance over the channels (`torch.nn.functional.layer_norm`). Equivariant:
/// the norms are invariant and each channel keeps its direction. Keys `ln.gamma`, `ln.beta`
/// `(c)` (beta is a buffer of the library, stored in its state dict).
#[derive(Debug, Clone)]
pub struct VnLayerNorm {
    gamma: Param,
    beta: Param,
    norm_eps: f32,
    ln_eps: f32,
}

impl VnLayerNorm {
    /// Loads `<prefix>ln.gamma` and `<prefix>ln.beta`, both `(dim)`.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    pub fn load(src: &mut dyn ParamSource, prefix: &str, dim: usize) -> Result<Self, Error> {
        Ok(VnLayerNorm {
            gamma: load_param(src, prefix, "ln.gamma", vec![dim])?,
            beta: load_param(src, prefix, "ln.beta", vec![dim])?,
            norm_eps: 1e-6,
            ln_eps: 1e-5,
        })
    }

    /// Adds the layer to `s` (weights `<prefix>ln.gamma`, `<prefix>ln.beta`); `x` is `[b, n, k, dim]`.
    ///
    /// # Errors
    /// Those of declaring the weights.
    pub fn build(&self, s: &mut Session, prefix: &str, x: VnTensor) -> Result<VnTensor, Error> {
        let d = dims(x);
        let r = component_norms(x);
        let flat: GraphTensor<(X, X)> = reshape(r, &[d[0] * d[1], d[3]]);
        let g: GraphTensor<(X,)> = self.gamma.declare(s, prefix)?;
        let b: GraphTensor<(X,)> = self.beta.declare(s, prefix)?;
        let ln: GraphTensor<(X, X, X)> =
            reshape(layer_norm(flat, g, b, self.ln_eps), &[d[0], d[1], d[3]]);
        let scale = ln * r.max(full_like(r, self.norm_eps)).recip();
        Ok(x * per_channel(scale, d[2]))
    }
}
