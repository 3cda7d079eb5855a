//! The vector-neuron linear layer.

use luminal::prelude::*;

use super::{load_param, mix_channels, VnTensor};
use crate::exec::Session;
use crate::layers::edges::full_like;
use crate::layers::graph::{dims, expand_at, Param, ParamSource, X};
use crate::Error;

/// VN linear map over channels: `y[.., k, o] = sum_i W[o, i] x[.., k, i] + eps * b[o] / max(|b|, 1e-12)`.
///
/// The channel mix commutes with any linear map of the components, so without bias it is
/// equivariant. With `bias_epsilon > 0` (VN-transformer's "quasi-equivariance") the
/// normalised bias, scaled to length `eps`, is added to every component of channel `o`, which
/// breaks exact equivariance by at most `eps`. Keys `weight` `(out, in)` and, only if
/// `bias_epsilon > 0`, `bias` `(out)` (VN-transformer 0.1.0 `VNLinear`).
#[derive(Debug, Clone)]
pub struct VnLinear {
    weight: Param,
    bias: Option<Param>,
    bias_epsilon: f32,
}

impl VnLinear {
    /// A layer from its weight `(out, in)` and, with `bias_epsilon > 0`, its bias `(out)`.
    ///
    /// # Errors
    /// `WrongShape` if the bias length is not the output width or a bias is given (missing)
    /// where `bias_epsilon` is 0 (positive); `InvalidParameter` for a negative or non-finite
    /// `bias_epsilon`.
    pub fn new(weight: Param, bias: Option<Param>, bias_epsilon: f64) -> Result<Self, Error> {
        if !(bias_epsilon.is_finite() && bias_epsilon >= 0.0) {
            return Err(Error::InvalidParameter {
                what: "VN linear bias_epsilon",
                expected: "finite and >= 0",
                found: bias_epsilon,
            });
        }
        let out = weight.shape.first().copied().unwrap_or(0);
        let want_bias = bias_epsilon > 0.0;
        match &bias {
            Some(b) if !want_bias || b.shape != [out] => {
                return Err(Error::WrongShape {
                    key: b.key.clone(),
                    expected: if want_bias { vec![out] } else { vec![] },
                    found: b.shape.clone(),
                })
            }
            None if want_bias => {
                return Err(Error::MissingKey {
                    key: "bias".into(),
                    expected: vec![out],
                })
            }
            _ => {}
        }
        Ok(VnLinear {
            weight,
            bias,
            bias_epsilon: bias_epsilon as f32,
        })
    }

    /// Loads `<prefix>weight` `(dim_out, dim_in)` and, if `bias_epsilon > 0`, `<prefix>bias`.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`, `InvalidParameter` (see [`VnLinear::new`]).
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        dim_in: usize,
        dim_out: usize,
        bias_epsilon: f64,
    ) -> Result<Self, Error> {
        let weight = load_param(src, prefix, "weight", vec![dim_out, dim_in])?;
        let bias = if bias_epsilon > 0.0 {
            Some(load_param(src, prefix, "bias", vec![dim_out])?)
        } else {
            None
        };
        Self::new(weight, bias, bias_epsilon)
    }

    /// The weight when the layer is a pure channel mix (no bias), declared in `s` as
    /// `<prefix>weight`, for a following layer to fold it into its own mixes.
    ///
    /// # Errors
    /// Those of declaring the weight.
    pub(super) fn declare_bias_free(
        &self,
        s: &mut Session,
        prefix: &str,
    ) -> Result<Option<GraphTensor<(X, X)>>, Error> {
        match self.bias {
            Some(_) => Ok(None),
            None => self.weight.declare(s, prefix).map(Some),
        }
    }

    /// Output channels.
    pub fn dim_out(&self) -> usize {
        self.weight.shape[0]
    }

    /// Input channels.
    pub fn dim_in(&self) -> usize {
        self.weight.shape[1]
    }

    /// Adds the layer to `s` (weights `<prefix>weight`, `<prefix>bias`); `x` is `[b, n, k, dim_in]`.
    ///
    /// # Errors
    /// `ShapeMismatch` if the channel axis of `x` is not `dim_in`.
    pub fn build(&self, s: &mut Session, prefix: &str, x: VnTensor) -> Result<VnTensor, Error> {
        let d = dims(x);
        if d[3].to_usize() != Some(self.dim_in()) {
            return Err(Error::ShapeMismatch {
                what: format!("VN linear `{prefix}` input"),
                expected: vec![0, 0, 0, self.dim_in()],
                found: d.iter().map(|e| e.to_usize().unwrap_or(0)).collect(),
            });
        }
        let mut y = mix_channels(s, prefix, &self.weight, x)?;
        if let Some(b) = &self.bias {
            let o = self.dim_out();
            let bt: GraphTensor<(X,)> = b.declare(s, prefix)?;
            let len: GraphTensor<()> = (bt * bt).sum_reduce::<(), Axis<0>>().sqrt();
            let inv = len.max(full_like(len, 1e-12)).recip() * self.bias_epsilon;
            let unit = bt * expand_at::<_, (X,)>(inv, 0, o);
            let b2: GraphTensor<(X, X)> = expand_at(unit, 0, d[2]);
            let b3: GraphTensor<(X, X, X)> = expand_at(b2, 0, d[1]);
            y += expand_at::<_, (X, X, X, X)>(b3, 0, d[0]);
        }
        Ok(y)
    }
}
