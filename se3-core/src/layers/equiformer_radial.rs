//! Equiformer's radial network: per-edge channel-mixing weights from invariant edge features.

use luminal::prelude::{symbolic::Expression, *};

use super::depthwise_tp::concat_axis1;
use super::graph::{
    constant, dims, expand_at, layer_norm, mm, permute, reshape, transpose, Param, ParamSource, X,
};
use crate::exec::Session;
use crate::Error;

/// equiformer-pytorch's `Radial(..).rp`: on edge features `f (E, F)` (edge embeddings, then the
/// distance),
///
/// `R = W_3 LN(silu(W_2 LN(silu(W_1 f + b_1)) + b_2)) + b_3`, reshaped `(E, c_out, c_in)`
/// (the last layer computed as one product `[h, 1] [W_3, b_3]^T`)
///
/// with torch `LayerNorm` (eps 1e-5, affine `gamma`, buffer `beta`). Keys `<prefix>rp.0.*`,
/// `rp.2.{gamma,beta}`, `rp.3.*`, `rp.5.*`, `rp.6.*`; linear weights `(out, in)`.
#[derive(Debug, Clone)]
pub struct EquiformerRadial {
    c_in: usize,
    c_out: usize,
    params: Vec<Param>,
}

const KEYS: [&str; 10] = [
    "rp.0.weight",
    "rp.0.bias",
    "rp.2.gamma",
    "rp.2.beta",
    "rp.3.weight",
    "rp.3.bias",
    "rp.5.gamma",
    "rp.5.beta",
    "rp.6.weight",
    "rp.6.bias",
];

impl EquiformerRadial {
    /// Loads the network under `prefix` for `edge_features` inputs, `hidden` units and
    /// `c_out x c_in` outputs.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight` from `src`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        edge_features: usize,
        hidden: usize,
        c_in: usize,
        c_out: usize,
    ) -> Result<Self, Error> {
        let shapes: [Vec<usize>; 10] = [
            vec![hidden, edge_features],
            vec![hidden],
            vec![hidden],
            vec![hidden],
            vec![hidden, hidden],
            vec![hidden],
            vec![hidden],
            vec![hidden],
            vec![c_out * c_in, hidden],
            vec![c_out * c_in],
        ];
        let params = KEYS
            .iter()
            .zip(shapes)
            .map(|(k, sh)| {
                let p = Param::load(src, format!("{prefix}{k}"), sh)?;
                Ok(Param {
                    key: (*k).to_string(),
                    ..p
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(EquiformerRadial {
            c_in,
            c_out,
            params,
        })
    }

    /// The weights `(E, c_out, c_in)` on edge features `f (E, F)`.
    ///
    /// # Errors
    /// Those of `Session::set_weight` (none for a loaded network).
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        f: GraphTensor<(X, X)>,
    ) -> Result<GraphTensor<(X, X, X)>, Error> {
        let (h, w3, b3) = self.hidden(s, prefix, f)?;
        let rows = dims(f)[0];
        // Last layer with its bias folded into the product: `[h, 1] [W_3, b_3]^T` (one GEMM; a
        // separate bias add over the `(E, c_out c_in)` result costs about as much as the GEMM).
        let one: GraphTensor<(X,)> = constant(s, &format!("{prefix}rp.one"), vec![1.0], &[1])?;
        let ones: GraphTensor<(X, X)> = expand_at(one, 0, rows);
        let h1 = concat_axis1(&[h, ones]);
        let b3: GraphTensor<(X, X)> = expand_at(b3, 1, 1);
        let w3b = concat_axis1(&[w3, b3]);
        let r = mm(h1, transpose(w3b));
        Ok(reshape(r, &[rows, self.c_out.into(), self.c_in.into()]))
    }

    /// The hidden activations `h (E, hidden)` on edge features `f (E, F)` and the last layer
    /// in the layout of `ops::edge_contract_sum`: `W [(c, k), o] = W_3[(o, c), k]`
    /// (`(c_in hidden, c_out)`) and `b [c, o] = b_3[(o, c)]` (`(c_in, c_out)`), so that
    /// `R_e[o, c] = sum_k W[(c, k), o] h_e[k] + b[c, o]` is never formed.
    ///
    /// # Errors
    /// Those of `Session::set_weight` (none for a loaded network).
    #[allow(clippy::type_complexity)]
    pub fn contraction_parts(
        &self,
        s: &mut Session,
        prefix: &str,
        f: GraphTensor<(X, X)>,
    ) -> Result<
        (
            GraphTensor<(X, X)>,
            GraphTensor<(X, X)>,
            GraphTensor<(X, X)>,
        ),
        Error,
    > {
        let (h, w3, b3) = self.hidden(s, prefix, f)?;
        let hidden = dims(h)[1];
        let (co, ci) = (Expression::from(self.c_out), Expression::from(self.c_in));
        let w: GraphTensor<(X, X, X)> = reshape(w3, &[co, ci, hidden]);
        let w: GraphTensor<(X, X)> = reshape(permute(w, &[1, 2, 0]), &[ci * hidden, co]);
        let b: GraphTensor<(X, X)> = reshape(b3, &[co, ci]);
        let b: GraphTensor<(X, X)> = reshape(transpose(b), &[ci, co]);
        Ok((h, w, b))
    }

    /// The two hidden layers on `f` and the last layer's weight `(c_out c_in, hidden)` and
    /// bias `(c_out c_in,)`.
    #[allow(clippy::type_complexity)]
    fn hidden(
        &self,
        s: &mut Session,
        prefix: &str,
        f: GraphTensor<(X, X)>,
    ) -> Result<(GraphTensor<(X, X)>, GraphTensor<(X, X)>, GraphTensor<(X,)>), Error> {
        let mut w2 = Vec::new();
        let mut w1 = Vec::new();
        for p in &self.params {
            if p.shape.len() == 2 {
                w2.push(p.declare::<(X, X)>(s, prefix)?);
            } else {
                w1.push(p.declare::<(X,)>(s, prefix)?);
            }
        }
        let rows = dims(f)[0];
        let linear = |x: GraphTensor<(X, X)>, w: GraphTensor<(X, X)>, b: GraphTensor<(X,)>| {
            let y = mm(x, transpose(w));
            y + expand_at::<_, (X, X)>(b, 0, rows)
        };
        let silu = |x: GraphTensor<(X, X)>| x * x.sigmoid();
        let h = silu(linear(f, w2[0], w1[0]));
        let h = layer_norm(h, w1[1], w1[2], 1e-5);
        let h = silu(linear(h, w2[1], w1[3]));
        let h = layer_norm(h, w1[4], w1[5], 1e-5);
        Ok((h, w2[2], w1[6]))
    }
}
