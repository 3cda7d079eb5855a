//! `GlobalLinearAttention`: nodes exchange information through a few global tokens, as
//! egnn-pytorch 0.2.8's `GlobalLinearAttention` (a Set-Transformer style induced attention).
//!
//! With `x` the node features `[b, n, dim]` and `q` the global tokens `[b, g, dim]`:
//!
//! ```text
//! x~ = LayerNorm_seq(x),  q~ = LayerNorm_queries(q)
//! u  = Attn1(q~, x~, mask)       (tokens attend to the unmasked nodes of their graph)
//! x' = Attn2(x~, u) + x          (nodes attend to the induced tokens)
//! q' = u + q
//! x''= x' + W_2 GELU(W_1 LayerNorm_ff(x') + b_1) + b_2
//! Attn(a, c) = W_o concat_h softmax(a W_q^h (c W_k^h)^T / sqrt(dim_head)) c W_v^h + b_o
//! ```
//!
//! A masked node's logit is replaced by a very negative number (the library uses the most
//! negative float), so a graph whose nodes are all masked attends uniformly. Keys:
//! `norm_seq`, `norm_queries`, `attn{1,2}.to_q` (no bias), `attn{1,2}.to_kv` (keys then values,
//! no bias), `attn{1,2}.to_out`, `ff.0` (LayerNorm), `ff.1`, `ff.3`. LayerNorm eps 1e-5, exact
//! (erf) GELU. Every operation mixes invariant channels only.

use luminal::prelude::*;

use super::dense::DenseLinear;
use super::graph::{dims, expand_at, gelu, layer_norm, permute, reshape, Param, ParamSource, X};
use crate::exec::Session;
use crate::Error;

/// One multi-head attention of [`GlobalLinearAttention`].
#[derive(Debug, Clone)]
struct InducedAttention {
    to_q: DenseLinear,
    to_k: DenseLinear,
    to_v: DenseLinear,
    to_out: DenseLinear,
}

/// New node features `[batch * nodes, dim]` and global tokens `[batch * tokens, dim]`.
pub type NodesAndTokens = (GraphTensor<(X, X)>, GraphTensor<(X, X)>);

/// A LayerNorm's affine parameters `(weight, bias)`.
type Affine = (Param, Param);

/// egnn-pytorch's `GlobalLinearAttention` in run-time form (see the module doc).
#[derive(Debug, Clone)]
pub struct GlobalLinearAttention {
    dim: usize,
    heads: usize,
    dim_head: usize,
    norm_seq: Affine,
    norm_queries: Affine,
    attn1: InducedAttention,
    attn2: InducedAttention,
    ff_norm: Affine,
    ff_in: DenseLinear,
    ff_out: DenseLinear,
}

/// Graph sizes of one [`GlobalLinearAttention::build`]: batch, nodes and tokens per graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalSizes {
    pub batch: usize,
    pub nodes: usize,
    pub tokens: usize,
}

fn load_affine(src: &mut dyn ParamSource, prefix: &str, dim: usize) -> Result<Affine, Error> {
    Ok((
        Param::load(src, format!("{prefix}weight"), vec![dim])?,
        Param::load(src, format!("{prefix}bias"), vec![dim])?,
    ))
}

fn build_norm(
    s: &mut Session,
    prefix: &str,
    affine: &Affine,
    x: GraphTensor<(X, X)>,
) -> Result<GraphTensor<(X, X)>, Error> {
    let g: GraphTensor<(X,)> = affine.0.declare(s, prefix)?;
    let b: GraphTensor<(X,)> = affine.1.declare(s, prefix)?;
    Ok(layer_norm(x, g, b, 1e-5))
}

impl InducedAttention {
    fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        dim: usize,
        inner: usize,
    ) -> Result<Self, Error> {
        let to_q = DenseLinear::load(src, &format!("{prefix}to_q."), dim, inner, false)?;
        let to_kv = DenseLinear::load(src, &format!("{prefix}to_kv."), dim, 2 * inner, false)?;
        let rows = |start: usize| -> Result<DenseLinear, Error> {
            let w = &to_kv.weight;
            Ok(DenseLinear {
                weight: Param::new(
                    format!("{}[{start}..]", w.key),
                    vec![inner, dim],
                    w.data[start * dim..(start + inner) * dim].to_vec(),
                )?,
                bias: None,
            })
        };
        Ok(InducedAttention {
            to_k: rows(0)?,
            to_v: rows(inner)?,
            to_q,
            to_out: DenseLinear::load(src, &format!("{prefix}to_out."), inner, dim, true)?,
        })
    }

    /// `a` `[b * i, dim]` attends to `c` `[b * j, dim]` within each graph; `mask` `[b, j]`.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        heads: usize,
        dim_head: usize,
        (b, i, j): (usize, usize, usize),
        a: GraphTensor<(X, X)>,
        c: GraphTensor<(X, X)>,
        mask: Option<GraphTensor<(X, X)>>,
    ) -> Result<GraphTensor<(X, X)>, Error> {
        let split = |t: GraphTensor<(X, X)>, len: usize| -> GraphTensor<(X, X, X, X)> {
            // [b * len, h * d] -> [b, h, len, d]
            let t4: GraphTensor<(X, X, X, X)> =
                reshape(t, &[b.into(), len.into(), heads.into(), dim_head.into()]);
            permute(t4, &[0, 2, 1, 3])
        };
        let q = split(self.to_q.build(s, prefix, a)?, i);
        let k = split(self.to_k.build(s, prefix, c)?, j);
        let v = split(self.to_v.build(s, prefix, c)?, j);
        // dots [b, h, i, j]
        let q5: GraphTensor<(X, X, X, X, X)> = expand_at(q, 3, j);
        let k5: GraphTensor<(X, X, X, X, X)> = expand_at(k, 2, i);
        let mut dots =
            (q5 * k5).sum_reduce::<(X, X, X, X), Axis<4>>() * (dim_head as f32).powf(-0.5);
        if let Some(m) = mask {
            // m [b, j] -> [b, h, i, j]; masked logits become -1e30 (all masked: uniform).
            let m3: GraphTensor<(X, X, X)> = expand_at(m, 1, i);
            let m4: GraphTensor<(X, X, X, X)> = expand_at(m3, 1, heads);
            dots = dots * m4 + (m4 + (-1.0)) * 1e30;
        }
        let max: GraphTensor<(X, X, X)> = dots.max_reduce::<(X, X, X), Axis<3>>();
        let e = (dots - expand_at::<_, (X, X, X, X)>(max, 3, j)).exp();
        let sum: GraphTensor<(X, X, X)> = e.sum_reduce::<(X, X, X), Axis<3>>();
        let attn = e * expand_at::<_, (X, X, X, X)>(sum.recip(), 3, j);
        // out [b, h, i, d] = sum_j attn[b, h, i, j] v[b, h, j, d]
        let a5: GraphTensor<(X, X, X, X, X)> = expand_at(attn, 4, dim_head);
        let v5: GraphTensor<(X, X, X, X, X)> = expand_at(v, 2, i);
        let out: GraphTensor<(X, X, X, X)> = (a5 * v5).sum_reduce::<(X, X, X, X), Axis<3>>();
        let out = permute(out, &[0, 2, 1, 3]);
        let flat: GraphTensor<(X, X)> = reshape(out, &[(b * i).into(), (heads * dim_head).into()]);
        self.to_out.build(s, prefix, flat)
    }
}

impl GlobalLinearAttention {
    /// Reads the block under `prefix` (egnn-pytorch's keys).
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight` from `src`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        dim: usize,
        heads: usize,
        dim_head: usize,
    ) -> Result<Self, Error> {
        let inner = heads * dim_head;
        let p = |name: &str| format!("{prefix}{name}");
        Ok(GlobalLinearAttention {
            dim,
            heads,
            dim_head,
            norm_seq: load_affine(src, &p("norm_seq."), dim)?,
            norm_queries: load_affine(src, &p("norm_queries."), dim)?,
            attn1: InducedAttention::load(src, &p("attn1."), dim, inner)?,
            attn2: InducedAttention::load(src, &p("attn2."), dim, inner)?,
            ff_norm: load_affine(src, &p("ff.0."), dim)?,
            ff_in: DenseLinear::load(src, &p("ff.1."), dim, 4 * dim, true)?,
            ff_out: DenseLinear::load(src, &p("ff.3."), 4 * dim, dim, true)?,
        })
    }

    /// Builds the block on node features `x` `[batch * nodes, dim]` and tokens `queries`
    /// `[batch * tokens, dim]` with an optional node `mask` `[batch, nodes]` (1 = real node);
    /// returns the new `(x, queries)`.
    ///
    /// # Errors
    /// `ShapeMismatch` for widths other than `dim`; session errors.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        sizes: GlobalSizes,
        x: GraphTensor<(X, X)>,
        queries: GraphTensor<(X, X)>,
        mask: Option<GraphTensor<(X, X)>>,
    ) -> Result<NodesAndTokens, Error> {
        for (what, t) in [("node features", x), ("global tokens", queries)] {
            if dims(t)[1].to_usize() != Some(self.dim) {
                return Err(Error::ShapeMismatch {
                    what: format!("{what} of `{prefix}`"),
                    expected: vec![self.dim],
                    found: vec![dims(t)[1].to_usize().unwrap_or(0)],
                });
            }
        }
        let GlobalSizes {
            batch,
            nodes,
            tokens,
        } = sizes;
        let xn = build_norm(s, prefix, &self.norm_seq, x)?;
        let qn = build_norm(s, prefix, &self.norm_queries, queries)?;
        let induced = self.attn1.build(
            s,
            prefix,
            self.heads,
            self.dim_head,
            (batch, tokens, nodes),
            qn,
            xn,
            mask,
        )?;
        let out = self.attn2.build(
            s,
            prefix,
            self.heads,
            self.dim_head,
            (batch, nodes, tokens),
            xn,
            induced,
            None,
        )?;
        let x1 = out + x;
        let q1 = induced + queries;
        let h = build_norm(s, prefix, &self.ff_norm, x1)?;
        let h = gelu(self.ff_in.build(s, prefix, h)?);
        let x2 = self.ff_out.build(s, prefix, h)? + x1;
        Ok((x2, q1))
    }
}
