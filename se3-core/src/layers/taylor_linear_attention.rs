//! Degree-0 linear attention with the second-order Taylor kernel (taylor-series-linear-attention's
//! `TaylorSeriesLinearAttn`, the `num_linear_attn_heads` of equiformer-pytorch).

use luminal::prelude::{symbolic::Expression, *};

use super::graph::{bmm, dims, expand_at, mm, permute, reshape, transpose, Param, ParamSource, X};
use crate::exec::Session;
use crate::Error;

/// The node rows of a graph as `batch` elements of `nodes` each, with a node mask `(b n,)`
/// (0/1): what a global (all-pairs) layer over each element needs.
#[derive(Debug, Clone, Copy)]
pub struct NodeBatch {
    /// Batch elements.
    pub batch: usize,
    /// Nodes per element.
    pub nodes: usize,
    /// Node mask `(b n,)`.
    pub mask: GraphTensor<(X,)>,
}

/// `TaylorSeriesLinearAttn(dim, dim_head, heads, combine_heads = False, gate_value_heads)` on
/// degree-0 features `x (b n, c)`, over all unmasked nodes of the same batch element:
///
/// `out_i = sum_j w_ij v_j / max(sum_j w_ij, 1e-5)`, `w_ij = mask_j phi(q_i) . phi(k_j)
/// = mask_j (1 + s + s^2 / 2)`, `s = q_i . k_j`, with `q = dim_head^(-1/2) W_q x`, `[k, v] =
/// W_kv x` per head (`phi(u) = [1, u, u u^T / sqrt 2]` is the library's feature map; the
/// dot products are formed directly instead of the `(1 + d + d^2)` features, which gives the
/// same values). With `gate_value_heads` each head is multiplied by `sigmoid(W_g x)`.
/// Output `(b n, heads dim_head)`, heads outer. Keys `<prefix>to_q.0.weight`,
/// `to_kv.0.weight`, `to_v_gates.0.weight` (torch `(out, in)`, no biases).
#[derive(Debug, Clone)]
pub struct TaylorLinearAttentionLayer {
    heads: usize,
    dim_head: usize,
    to_q: Param,
    to_kv: Param,
    gates: Option<Param>,
}

impl TaylorLinearAttentionLayer {
    /// Loads the layer under `prefix` for `dim` input channels.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight` from `src`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        dim: usize,
        heads: usize,
        dim_head: usize,
        gate_value_heads: bool,
    ) -> Result<Self, Error> {
        let named = |p: Param, key: &str| Param {
            key: key.to_string(),
            ..p
        };
        let to_q = Param::load(
            src,
            format!("{prefix}to_q.0.weight"),
            vec![heads * dim_head, dim],
        )?;
        let to_kv = Param::load(
            src,
            format!("{prefix}to_kv.0.weight"),
            vec![2 * heads * dim_head, dim],
        )?;
        let gates = if gate_value_heads {
            let g = Param::load(
                src,
                format!("{prefix}to_v_gates.0.weight"),
                vec![heads, dim],
            )?;
            Some(named(g, "to_v_gates.0.weight"))
        } else {
            None
        };
        Ok(TaylorLinearAttentionLayer {
            heads,
            dim_head,
            to_q: named(to_q, "to_q.0.weight"),
            to_kv: named(to_kv, "to_kv.0.weight"),
            gates,
        })
    }

    /// Output channels (`heads dim_head`).
    pub fn width(&self) -> usize {
        self.heads * self.dim_head
    }

    /// The attention on `x (b n, c)` (see the type's doc).
    ///
    /// # Errors
    /// Those of `Session::set_weight` (none for a loaded layer).
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: GraphTensor<(X, X)>,
        nodes: &NodeBatch,
    ) -> Result<GraphTensor<(X, X)>, Error> {
        let (b, n, h, d) = (nodes.batch, nodes.nodes, self.heads, self.dim_head);
        let wq: GraphTensor<(X, X)> = self.to_q.declare(s, prefix)?;
        let wkv: GraphTensor<(X, X)> = self.to_kv.declare(s, prefix)?;
        let q = mm(x, transpose(wq)) * (d as f32).powf(-0.5);
        let kv = mm(x, transpose(wkv));
        let ex = |v: usize| Expression::from(v);
        // (b n, h d) -> (b h, n, d)
        let heads_first = |t: GraphTensor<(X, X)>| -> GraphTensor<(X, X, X)> {
            let t4: GraphTensor<(X, X, X, X)> = reshape(t, &[ex(b), ex(n), ex(h), ex(d)]);
            reshape(permute(t4, &[0, 2, 1, 3]), &[ex(b * h), ex(n), ex(d)])
        };
        let kv3: GraphTensor<(X, X, X)> = reshape(kv, &[ex(b * n), ex(2), ex(h * d)]);
        let half = |i: usize| -> GraphTensor<(X, X)> {
            let dd = dims(kv3);
            let mut sh = kv3.shape;
            sh.slice(&[(ex(0), dd[0]), (ex(i), ex(i + 1)), (ex(0), dd[2])]);
            let t: GraphTensor<(X, X, X)> = GraphTensor::from_id(kv3.id, sh, kv3.graph_ref);
            reshape(t.contiguous(), &[ex(b * n), ex(h * d)])
        };
        let (qh, kh, vh) = (heads_first(q), heads_first(half(0)), heads_first(half(1)));
        // s[bh, i, j] = q_i . k_j; w = mask_j (1 + s + s^2 / 2).
        let sc = bmm(qh, permute(kh, &[0, 2, 1]));
        let m2: GraphTensor<(X, X)> = reshape(nodes.mask, &[ex(b), ex(n)]);
        let mh: GraphTensor<(X, X, X)> = expand_at(m2, 1, h);
        let mh: GraphTensor<(X, X)> = reshape(mh, &[ex(b * h), ex(n)]);
        let m3: GraphTensor<(X, X, X)> = expand_at(mh, 1, n);
        let w = (sc * sc * 0.5 + sc + 1.0) * m3;
        let den: GraphTensor<(X, X)> = w.sum_reduce::<(X, X), Axis<2>>().max_f32(1e-5);
        let num = bmm(w, vh);
        let out = num / expand_at::<_, (X, X, X)>(den, 2, d);
        // (b h, n, d) -> (b, n, h, d)
        let out4: GraphTensor<(X, X, X, X)> = reshape(out, &[ex(b), ex(h), ex(n), ex(d)]);
        let mut out4 = permute(out4, &[0, 2, 1, 3]);
        if let Some(g) = &self.gates {
            let wg: GraphTensor<(X, X)> = g.declare(s, prefix)?;
            let gate = mm(x, transpose(wg)).sigmoid();
            let g4: GraphTensor<(X, X, X)> = reshape(gate, &[ex(b), ex(n), ex(h)]);
            out4 *= expand_at::<_, (X, X, X, X)>(g4, 3, d);
        }
        Ok(reshape(out4, &[ex(b * n), ex(h * d)]))
    }
}
