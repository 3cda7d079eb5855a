//! Vector-neuron multi-head attention.

use luminal::prelude::*;

use super::{VnLinear, VnTensor};
use crate::exec::Session;
use crate::layers::graph::{dims, ParamSource, X};
use crate::ops::{head_attention, HeadLogits};
use crate::Error;

/// How the attention logits are formed from query and key head vectors `q_i`, `k_j` (each the
/// `dim_head x components` block of a head, flattened) with `s = (dim_head * components)^-1/2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VnAttentionKind {
    /// `s <q_i, k_j>`; a query whose keys are all masked attends uniformly to every key (the
    /// library's `-finfo.max` fill).
    DotProduct,
    /// `s <q_i, k_j>` as PyTorch's fused `scaled_dot_product_attention` (the library's
    /// `flash = True`): the same softmax attention, except that a query whose keys are all
    /// masked gets a zero output (torch 2.15 CPU).
    FusedDotProduct,
    /// `2 s <q_i, k_j> - |q_i|^2 - |k_j|^2` (`l2_dist_attn`; the scale multiplies the dot
    /// product only), with `to_k` tied to `to_q`.
    L2Distance,
}

/// VN multi-head attention (VN-transformer 0.1.0 `VNAttention`, self-attention form).
///
/// `Q = to_q(x)`, `K = to_k(x)`, `V = to_v(x)` are [`VnLinear`] maps `dim -> heads * dim_head`;
/// channel `h * dim_head + d` belongs to head `h` (`(h d) c -> h (d c)`). Per head, logits
/// `L_ij` as [`VnAttentionKind`], keys `j` with `mask_j = 0` left out of the softmax (a row
/// with every key masked attends uniformly, as the library's `-finfo.max` fill, or gets zero
/// weights with [`VnAttentionKind::FusedDotProduct`]), `A = softmax_j(L)`,
/// `out_i = sum_j A_ij V_j`, heads concatenated and mapped by `to_out` (`heads * dim_head -> dim`).
/// Logits to merged heads are one fused op ([`head_attention`]).
/// Equivariant: logits are inner products of component vectors. Keys `to_q.*`, `to_k.*`,
/// `to_v.*`, `to_out.*` (with `L2Distance` the library ties `to_k` to `to_q`: both keys are in
/// its state dict; loading copies `to_k` last, so its values are the ones used).
#[derive(Debug, Clone)]
pub struct VnAttention {
    to_q: VnLinear,
    to_k: Option<VnLinear>,
    to_v: VnLinear,
    to_out: VnLinear,
    heads: usize,
    dim_head: usize,
    kind: VnAttentionKind,
}

impl VnAttention {
    /// Loads the four projections under `prefix`.
    ///
    /// # Errors
    /// `InvalidParameter` for zero heads or head width; those of [`VnLinear::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        dim: usize,
        heads: usize,
        dim_head: usize,
        bias_epsilon: f64,
        kind: VnAttentionKind,
    ) -> Result<Self, Error> {
        if heads == 0 || dim_head == 0 {
            return Err(Error::InvalidParameter {
                what: "VN attention heads and dim_head",
                expected: "positive",
                found: heads.min(dim_head) as f64,
            });
        }
        let inner = heads * dim_head;
        let to_q = VnLinear::load(src, &format!("{prefix}to_q."), dim, inner, bias_epsilon)?;
        let to_k = VnLinear::load(src, &format!("{prefix}to_k."), dim, inner, bias_epsilon)?;
        let (to_q, to_k) = match kind {
            VnAttentionKind::DotProduct | VnAttentionKind::FusedDotProduct => (to_q, Some(to_k)),
            VnAttentionKind::L2Distance => (to_k, None),
        };
        Ok(VnAttention {
            to_q,
            to_k,
            to_v: VnLinear::load(src, &format!("{prefix}to_v."), dim, inner, bias_epsilon)?,
            to_out: VnLinear::load(src, &format!("{prefix}to_out."), inner, dim, bias_epsilon)?,
            heads,
            dim_head,
            kind,
        })
    }

    /// Adds the layer to `s`; `x` is `[b, n, k, dim]`, `mask` `[b, n]` (1 = attend to this key).
    ///
    /// # Errors
    /// Those of [`VnLinear::build`].
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: VnTensor,
        mask: GraphTensor<(X, X)>,
    ) -> Result<VnTensor, Error> {
        let k = dims(x)[2];
        let scale = ((self.dim_head * k.to_usize().unwrap_or(1)) as f32).powf(-0.5);
        let q_full = self.to_q.build(s, &format!("{prefix}to_q."), x)?;
        let k_full = match &self.to_k {
            Some(l) => l.build(s, &format!("{prefix}to_k."), x)?,
            None => q_full,
        };
        let v_full = self.to_v.build(s, &format!("{prefix}to_v."), x)?;
        let (logits, zero_if_all_masked) = match self.kind {
            VnAttentionKind::DotProduct => (HeadLogits::Dot, false),
            VnAttentionKind::FusedDotProduct => (HeadLogits::Dot, true),
            VnAttentionKind::L2Distance => (HeadLogits::L2Distance, false),
        };
        let merged = head_attention(
            q_full,
            k_full,
            v_full,
            mask,
            self.heads,
            scale,
            logits,
            zero_if_all_masked,
        );
        self.to_out.build(s, &format!("{prefix}to_out."), merged)
    }
}
