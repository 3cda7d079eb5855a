//! The vector-neuron ReLU.

use luminal::prelude::*;

use super::{load_param, mix_by, mix_channels, per_channel, VnTensor};
use crate::exec::Session;
use crate::layers::edges::full_like;
use crate::layers::graph::{dims, mm, Param, ParamSource, X};
use crate::Error;

/// VN ReLU (VN-transformer 0.1.0 `VNReLU`): with `q = W x` and `u = U x` (channel mixes),
///
/// `y_c = q_c` where `<q_c, u_c> >= 0`, else `y_c = q_c - <q_c, u_c / max(|u_c|, eps)> u_c`,
///
/// inner products over the components, `eps = 1e-6`. Note the library's form: the projection
/// removes `<q, u/|u|> u`, divided by `|u|` once (not `|u|^2`), which this layer reproduces.
/// Equivariant: only inner products and channel mixes. Keys `W`, `U` `(c, c)`.
#[derive(Debug, Clone)]
pub struct VnRelu {
    w: Param,
    u: Param,
    eps: f32,
}

impl VnRelu {
    /// Loads `<prefix>W` and `<prefix>U`, both `(dim, dim)`.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    pub fn load(src: &mut dyn ParamSource, prefix: &str, dim: usize) -> Result<Self, Error> {
        Ok(VnRelu {
            w: load_param(src, prefix, "W", vec![dim, dim])?,
            u: load_param(src, prefix, "U", vec![dim, dim])?,
            eps: 1e-6,
        })
    }

    /// Adds the layer to `s` (weights `<prefix>W`, `<prefix>U`); `x` is `[b, n, k, dim]`.
    ///
    /// # Errors
    /// Those of declaring the weights.
    pub fn build(&self, s: &mut Session, prefix: &str, x: VnTensor) -> Result<VnTensor, Error> {
        let q = mix_channels(s, prefix, &self.w, x)?;
        let u = mix_channels(s, prefix, &self.u, x)?;
        Ok(self.rectify(q, u))
    }

    /// The layer applied to `L x` for a bias-free channel mix `L` `(dim, dim_in)` (a graph
    /// weight), `x` `[b, n, k, dim_in]`: since `W (L x) = (W L) x`, the products `W L` and
    /// `U L` (`dim x dim_in`, formed once a run) mix `x` straight to `q` and `u`, which takes
    /// `dim_in / dim` of the multiply-adds of mixing `L x` again and never forms `L x`.
    ///
    /// # Errors
    /// Those of declaring the weights.
    pub fn build_after_mix(
        &self,
        s: &mut Session,
        prefix: &str,
        l: GraphTensor<(X, X)>,
        x: VnTensor,
    ) -> Result<VnTensor, Error> {
        let w: GraphTensor<(X, X)> = self.w.declare(s, prefix)?;
        let u: GraphTensor<(X, X)> = self.u.declare(s, prefix)?;
        let q = mix_by(mm(w, l), x);
        let u = mix_by(mm(u, l), x);
        Ok(self.rectify(q, u))
    }

    /// `y = q - [<q, u> < 0] <q, u> / max(|u|, eps) u` per channel.
    fn rectify(&self, q: VnTensor, u: VnTensor) -> VnTensor {
        let k = dims(q)[2];
        let qu: GraphTensor<(X, X, X)> = (q * u).sum_reduce::<(X, X, X), Axis<2>>();
        let un: GraphTensor<(X, X, X)> = (u * u).sum_reduce::<(X, X, X), Axis<2>>().sqrt();
        let un = un.max(full_like(un, self.eps));
        let negative = qu.less_than(full_like(qu, 0.0));
        let coef = negative * qu * un.recip();
        q - per_channel(coef, k) * u
    }
}
