//! The vector-neuron feed-forward block.

use super::{VnLinear, VnRelu, VnTensor};
use crate::exec::Session;
use crate::layers::graph::ParamSource;
use crate::Error;

/// VN feed-forward (VN-transformer 0.1.0 `VNFeedForward`): `VnLinear(dim -> dim * mult)`,
/// [`VnRelu`], `VnLinear(dim * mult -> dim)`; keys `0.*`, `1.W|U`, `2.*` (an `nn.Sequential`).
/// Without a bias the first map is folded into the ReLU's mixes ([`VnRelu::build_after_mix`]:
/// `(W L) x` instead of `W (L x)`, a quarter of the multiply-adds at `mult = 4`).
/// Equivariant as its parts.
#[derive(Debug, Clone)]
pub struct VnFeedForward {
    lin_in: VnLinear,
    relu: VnRelu,
    lin_out: VnLinear,
}

impl VnFeedForward {
    /// Loads the block under `prefix`; the hidden width is `dim_inner` (`int(dim * mult)`).
    ///
    /// # Errors
    /// Those of [`VnLinear::load`] and [`VnRelu::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        dim: usize,
        dim_inner: usize,
        bias_epsilon: f64,
    ) -> Result<Self, Error> {
        Ok(VnFeedForward {
            lin_in: VnLinear::load(src, &format!("{prefix}0."), dim, dim_inner, bias_epsilon)?,
            relu: VnRelu::load(src, &format!("{prefix}1."), dim_inner)?,
            lin_out: VnLinear::load(src, &format!("{prefix}2."), dim_inner, dim, bias_epsilon)?,
        })
    }

    /// Adds the block to `s`; `x` is `[b, n, k, dim]`.
    ///
    /// # Errors
    /// Those of the parts.
    pub fn build(&self, s: &mut Session, prefix: &str, x: VnTensor) -> Result<VnTensor, Error> {
        // Without a bias the first linear map folds into the ReLU's two mixes.
        let h = match self.lin_in.declare_bias_free(s, &format!("{prefix}0."))? {
            Some(l) => self.relu.build_after_mix(s, &format!("{prefix}1."), l, x)?,
            None => {
                let h = self.lin_in.build(s, &format!("{prefix}0."), x)?;
                self.relu.build(s, &format!("{prefix}1."), h)?
            }
        };
        self.lin_out.build(s, &format!("{prefix}2."), h)
    }
}
