//! The vector-neuron invariant readout.

use luminal::prelude::*;

use super::{VnLinear, VnRelu, VnTensor};
use crate::exec::Session;
use crate::layers::graph::{expand_at, ParamSource, X};
use crate::Error;

/// VN invariant readout (VN-transformer 0.1.0 `VNInvariant`): a frame
/// `m(x) = VnRelu(VnLinear(dim -> k)(x))` of `k` channels (one per component), then
///
/// `y[o] = sum_c sum_i x[c, i] m(x)[o, i]`, i.e. the library's `einsum('b n d i, b n i o -> b n o')`
/// with `m` transposed to `(i, o)`.
///
/// Invariant: `x -> x Q^T` sends `m -> m Q^T`, and `sum_i x[c, i] m[o, i]` is an inner product.
/// Keys `mlp.0.weight` `(dim_coor, dim)`, `mlp.1.W|U` `(dim_coor, dim_coor)`.
#[derive(Debug, Clone)]
pub struct VnInvariant {
    lin: VnLinear,
    relu: VnRelu,
}

impl VnInvariant {
    /// Loads the readout under `prefix` for `dim` input channels and a frame of `dim_coor`
    /// channels (the library's `dim_coor`, which must equal the components of the input).
    ///
    /// # Errors
    /// Those of [`VnLinear::load`] and [`VnRelu::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        dim: usize,
        dim_coor: usize,
    ) -> Result<Self, Error> {
        Ok(VnInvariant {
            lin: VnLinear::load(src, &format!("{prefix}mlp.0."), dim, dim_coor, 0.0)?,
            relu: VnRelu::load(src, &format!("{prefix}mlp.1."), dim_coor)?,
        })
    }

    /// Adds the readout to `s`; `x` is `[b, n, k, dim]` with `k = dim_coor`, the result
    /// `[b, n, dim_coor]` invariant.
    ///
    /// # Errors
    /// Those of the parts.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: VnTensor,
    ) -> Result<GraphTensor<(X, X, X)>, Error> {
        let frame = self.lin.build(s, &format!("{prefix}mlp.0."), x)?;
        let m = self.relu.build(s, &format!("{prefix}mlp.1."), frame)?; // [b, n, i, o]
                                                                        // sum over channels c of x[b, n, i, c], then contract components i with m[b, n, i, o]
        let xs: GraphTensor<(X, X, X)> = x.sum_reduce::<(X, X, X), Axis<3>>(); // [b, n, i]
        let x4: VnTensor = expand_at(xs, 3, self.lin.dim_out());
        Ok((x4 * m).sum_reduce::<(X, X, X), Axis<2>>())
    }
}
