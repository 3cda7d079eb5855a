//! Equiformer's radial network: per-edge channel-mixing weights from invariant edge features.

use luminal::prelude::*;

use super::depthwise_tp::concat_axis1;
use super::graph::{constant, dims, expand_at, layer_norm, mm, transpose, Param, ParamSource, X};
use crate::exec::Session;
use crate::ops::{linear_silu_layer_norm, silu_layer_norm};
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

/// The last layer's input `[h, 1] (E, hidden + 1)` and weights `[W_3, b_3] (c_out c_in,
/// hidden + 1)` ([`EquiformerRadial::hidden`]).
pub type LastLayer = (GraphTensor<(X, X)>, GraphTensor<(X, X)>);

/// Edge-feature widths up to which the inference form computes the first layer in its row
/// kernel ([`linear_silu_layer_norm`]) instead of a matrix product.
const NARROW_INPUTS: usize = 8;

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

    /// Input channels `c_in` of the weights it forms.
    pub fn c_in(&self) -> usize {
        self.c_in
    }

    /// Output channels `c_out` of the weights it forms.
    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// Width `hidden + 1` of [`EquiformerRadial::hidden`]'s rows.
    pub fn hidden_width(&self) -> usize {
        self.params.first().map_or(0, |p| p.shape[0]) + 1
    }

    /// The last layer's input and weights: `([h, 1] (E, hidden + 1), [W_3, b_3] (c_out c_in,
    /// hidden + 1))` with `h = LN(silu(W_2 LN(silu(W_1 f + b_1)) + b_2))` on edge features
    /// `f (E, F)`; rows of `[W_3, b_3]` ordered `(o, c)`. So `R = [h, 1] [W_3, b_3]^T`, and a
    /// caller may contract `[W_3, b_3]` with node features before the edges
    /// (`ops::table_contract`).
    ///
    /// # Errors
    /// Those of `Session::set_weight` (none for a loaded network).
    pub fn hidden(
        &self,
        s: &mut Session,
        prefix: &str,
        f: GraphTensor<(X, X)>,
    ) -> Result<LastLayer, Error> {
        self.hidden_with(s, prefix, f, false)
    }

    /// [`EquiformerRadial::hidden`] for inference: each hidden layer's bias, SiLU and
    /// LayerNorm as one row kernel ([`silu_layer_norm`](crate::ops::silu_layer_norm()), no
    /// gradient).
    ///
    /// # Errors
    /// As [`EquiformerRadial::hidden`].
    pub fn hidden_inference(
        &self,
        s: &mut Session,
        prefix: &str,
        f: GraphTensor<(X, X)>,
    ) -> Result<LastLayer, Error> {
        self.hidden_with(s, prefix, f, true)
    }

    fn hidden_with(
        &self,
        s: &mut Session,
        prefix: &str,
        f: GraphTensor<(X, X)>,
        fused: bool,
    ) -> Result<LastLayer, Error> {
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
        let h = if fused {
            // a first layer of a few inputs (the distance, edge features) row by row
            let narrow = dims(f)[1].to_usize().is_some_and(|n| n <= NARROW_INPUTS);
            let h = if narrow {
                linear_silu_layer_norm(f, transpose(w2[0]), w1[0], w1[1], w1[2], 1e-5)
            } else {
                silu_layer_norm(mm(f, transpose(w2[0])), w1[0], w1[1], w1[2], 1e-5)
            };
            silu_layer_norm(mm(h, transpose(w2[1])), w1[3], w1[4], w1[5], 1e-5)
        } else {
            let h = silu(linear(f, w2[0], w1[0]));
            let h = layer_norm(h, w1[1], w1[2], 1e-5);
            let h = silu(linear(h, w2[1], w1[3]));
            layer_norm(h, w1[4], w1[5], 1e-5)
        };
        // The bias folded into the product (a separate bias add over the `(E, c_out c_in)`
        // result costs about as much as the GEMM).
        let one: GraphTensor<(X,)> = constant(s, &format!("{prefix}rp.one"), vec![1.0], &[1])?;
        let ones: GraphTensor<(X, X)> = expand_at(one, 0, rows);
        let h1 = concat_axis1(&[h, ones]);
        let b3: GraphTensor<(X, X)> = expand_at(w1[6], 1, 1);
        Ok((h1, concat_axis1(&[w2[2], b3])))
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
        self.build_with(s, prefix, f, false)
    }

    /// [`EquiformerRadial::build`] on the inference form of the hidden layers
    /// ([`EquiformerRadial::hidden_inference`], no gradient).
    ///
    /// # Errors
    /// As [`EquiformerRadial::build`].
    pub fn build_inference(
        &self,
        s: &mut Session,
        prefix: &str,
        f: GraphTensor<(X, X)>,
    ) -> Result<GraphTensor<(X, X, X)>, Error> {
        self.build_with(s, prefix, f, true)
    }

    fn build_with(
        &self,
        s: &mut Session,
        prefix: &str,
        f: GraphTensor<(X, X)>,
        fused: bool,
    ) -> Result<GraphTensor<(X, X, X)>, Error> {
        let (h1, w3b) = self.hidden_with(s, prefix, f, fused)?;
        let rows = dims(f)[0];
        let r = mm(h1, transpose(w3b));
        Ok(super::graph::reshape(
            r,
            &[rows, self.c_out.into(), self.c_in.into()],
        ))
    }
}
