//! Vector-neuron multi-head attention.

use luminal::prelude::*;

use super::{VnLinear, VnTensor};
use crate::exec::Session;
use crate::layers::graph::{bmm, dims, expand_at, permute, reshape, ParamSource, X};
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
/// `L_ij` as [`VnAttentionKind`], keys `j` with `mask_j = 0` get `-1e30` (so a row with every
/// key masked attends uniformly, as the library's `-finfo.max` fill, or gets zero weights with
/// [`VnAttentionKind::FusedDotProduct`]), `A = softmax_j(L)`,
/// `out_i = sum_j A_ij V_j`, heads concatenated and mapped by `to_out` (`heads * dim_head -> dim`).
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

    /// `[b, n, k, h d] -> [b h, n, k d]`.
    fn split_heads(&self, t: VnTensor) -> GraphTensor<(X, X, X)> {
        let d = dims(t);
        let (h, dh) = (self.heads, self.dim_head);
        let t5: GraphTensor<(X, X, X, X, X)> = reshape(t, &[d[0], d[1], d[2], h.into(), dh.into()]);
        let p = permute(t5, &[0, 3, 1, 2, 4]);
        reshape(p, &[d[0] * h, d[1], d[2] * dh])
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
        let d = dims(x);
        let (b, n, k) = (d[0], d[1], d[2]);
        let (h, dh) = (self.heads, self.dim_head);
        let scale = ((dh * k.to_usize().unwrap_or(1)) as f32).powf(-0.5);
        let q_full = self.to_q.build(s, &format!("{prefix}to_q."), x)?;
        let k_full = match &self.to_k {
            Some(l) => l.build(s, &format!("{prefix}to_k."), x)?,
            None => q_full,
        };
        let v_full = self.to_v.build(s, &format!("{prefix}to_v."), x)?;
        let q = self.split_heads(q_full);
        let kh = if self.to_k.is_some() {
            self.split_heads(k_full)
        } else {
            q
        };
        let v = self.split_heads(v_full);
        let dot = bmm(q, permute(kh, &[0, 2, 1]));
        let logits = match self.kind {
            VnAttentionKind::DotProduct | VnAttentionKind::FusedDotProduct => dot * scale,
            VnAttentionKind::L2Distance => {
                let qq: GraphTensor<(X, X)> = (q * q).sum_reduce::<(X, X), Axis<2>>();
                let kk: GraphTensor<(X, X)> = (kh * kh).sum_reduce::<(X, X), Axis<2>>();
                dot * (2.0 * scale)
                    - expand_at::<_, (X, X, X)>(qq, 2, n)
                    - expand_at::<_, (X, X, X)>(kk, 1, n)
            }
        };
        // key mask [b, n] -> [b h, n_i, n_j]
        let m3: GraphTensor<(X, X, X)> = expand_at(mask, 1, n);
        let m4: GraphTensor<(X, X, X, X)> = expand_at(m3, 1, h);
        let m: GraphTensor<(X, X, X)> = reshape(m4, &[b * h, n, n]);
        let logits = logits * m + (m * 1e30 + (-1e30));
        let mx: GraphTensor<(X, X)> = logits.max_reduce::<(X, X), Axis<2>>();
        let ex = (logits - expand_at::<_, (X, X, X)>(mx, 2, n)).exp();
        let den: GraphTensor<(X, X)> = ex.sum_reduce::<(X, X), Axis<2>>();
        let mut att = ex * expand_at::<_, (X, X, X)>(den.recip(), 2, n);
        if self.kind == VnAttentionKind::FusedDotProduct {
            // 1 if the batch element has any unmasked key, else 0
            let any: GraphTensor<(X,)> = mask.max_reduce::<(X,), Axis<1>>();
            let per_head: GraphTensor<(X,)> = reshape(expand_at::<_, (X, X)>(any, 1, h), &[b * h]);
            let rows: GraphTensor<(X, X)> = expand_at(per_head, 1, n);
            att *= expand_at::<_, (X, X, X)>(rows, 2, n);
        }
        let o = bmm(att, v); // [b h, n, k d]
        let o5: GraphTensor<(X, X, X, X, X)> = reshape(o, &[b, h.into(), n, k, dh.into()]);
        let merged: VnTensor = reshape(permute(o5, &[0, 2, 3, 1, 4]), &[b, n, k, (h * dh).into()]);
        self.to_out.build(s, &format!("{prefix}to_out."), merged)
    }
}
