//! The radial network of a convolution: se3-transformer-pytorch's `RadialFunc`.

use luminal::prelude::{symbolic::Expression, *};
use rand::Rng;

use super::edges::concat_columns;
use super::graph::{add_views, dims, expand_at, mm, reshape, transpose, Param, ParamSource, E, X};
use crate::exec::Session;
use crate::ops::layer_norm_gelu;
use crate::Error;

/// Hidden width of se3-transformer-pytorch's radial network.
pub const RADIAL_HIDDEN: usize = 128;

/// `RadialFunc`: `Linear(in, h) -> LayerNorm -> GELU -> Linear(h, h) -> LayerNorm -> GELU ->
/// Linear(h, out)`, `h = 128`, exact (erf) GELU, LayerNorm eps 1e-5. Keys
/// `net.{0,1,3,4,6}.{weight,bias}` (torch `Linear` weights are `(out, in)`), so checkpoints of
/// the library load as they are. Its output for a degree pair is read as
/// `(c_out, c_in, nf)`.
#[derive(Debug, Clone)]
pub struct RadialMlp {
    n_in: usize,
    n_out: usize,
    params: Vec<Param>,
}

fn keys(n_in: usize, n_out: usize) -> Vec<(String, Vec<usize>)> {
    let h = RADIAL_HIDDEN;
    vec![
        ("net.0.weight".into(), vec![h, n_in]),
        ("net.0.bias".into(), vec![h]),
        ("net.1.weight".into(), vec![h]),
        ("net.1.bias".into(), vec![h]),
        ("net.3.weight".into(), vec![h, h]),
        ("net.3.bias".into(), vec![h]),
        ("net.4.weight".into(), vec![h]),
        ("net.4.bias".into(), vec![h]),
        ("net.6.weight".into(), vec![n_out, h]),
        ("net.6.bias".into(), vec![n_out]),
    ]
}

impl RadialMlp {
    /// A network with torch's default initialisation (uniform, bound `1 / sqrt(fan_in)`;
    /// LayerNorm weight 1, bias 0).
    pub fn new(n_in: usize, n_out: usize, rng: &mut impl Rng) -> Self {
        let params = keys(n_in, n_out)
            .into_iter()
            .map(|(key, shape)| {
                if key.starts_with("net.1") || key.starts_with("net.4") {
                    let v = if key.ends_with("weight") { 1.0 } else { 0.0 };
                    let n = shape[0];
                    Param {
                        key,
                        shape,
                        data: vec![v; n],
                    }
                } else {
                    let fan_in = if key.starts_with("net.0") {
                        n_in
                    } else {
                        RADIAL_HIDDEN
                    };
                    Param::uniform(key, shape, 1.0 / (fan_in as f32).sqrt(), rng)
                }
            })
            .collect();
        RadialMlp {
            n_in,
            n_out,
            params,
        }
    }

    /// Loads the keys under `prefix` (e.g. `"convs.0.kernel_unary.(0,1).rp."`).
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        n_in: usize,
        n_out: usize,
    ) -> Result<Self, Error> {
        let params = keys(n_in, n_out)
            .into_iter()
            .map(|(key, shape)| {
                let p = Param::load(src, format!("{prefix}{key}"), shape)?;
                Ok(Param { key, ..p })
            })
            .collect::<Result<_, Error>>()?;
        Ok(RadialMlp {
            n_in,
            n_out,
            params,
        })
    }

    /// Input width.
    pub fn n_in(&self) -> usize {
        self.n_in
    }

    /// Output width.
    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// The hidden activations after the second GELU, `(E, 128)`, and the last layer's weight
    /// `(n_out, 128)` and bias `(n_out,)` as graph tensors (weights `<prefix>net.*`).
    ///
    /// # Errors
    /// Those of `Session::set_weight`.
    #[allow(clippy::type_complexity)]
    pub fn build_hidden(
        &self,
        s: &mut Session,
        prefix: &str,
        input: GraphTensor<(E, X)>,
    ) -> Result<(GraphTensor<(E, X)>, GraphTensor<(X, X)>, GraphTensor<(X,)>), Error> {
        let p = |i: usize, s: &mut Session| -> Result<GraphTensor<(X, X)>, Error> {
            self.params[i].declare(s, prefix)
        };
        let v = |i: usize, s: &mut Session| -> Result<GraphTensor<(X,)>, Error> {
            self.params[i].declare(s, prefix)
        };
        // Linear without its bias, then bias + LayerNorm + GELU in one fused row kernel
        // (`ops::layer_norm_gelu`; the unfused graph is `graph::layer_norm` + `graph::gelu`).
        let linear = |x: GraphTensor<(E, X)>, w: GraphTensor<(X, X)>| -> GraphTensor<(E, X)> {
            super::graph::retype(mm(super::graph::retype(x), transpose(w)))
        };
        let h = linear(input, p(0, s)?);
        let h = layer_norm_gelu(h, v(1, s)?, v(2, s)?, v(3, s)?, 1e-5);
        let h = linear(h, p(4, s)?);
        let h = layer_norm_gelu(h, v(5, s)?, v(6, s)?, v(7, s)?, 1e-5);
        Ok((h, p(8, s)?, v(9, s)?))
    }

    /// The network on `input (E, n_in)`: `(E, n_out)`.
    ///
    /// # Errors
    /// Those of `Session::set_weight`.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        input: GraphTensor<(E, X)>,
    ) -> Result<GraphTensor<(E, X)>, Error> {
        let (h, w, b) = self.build_hidden(s, prefix, input)?;
        let rows = dims(h)[0];
        // The bias rides in the GEMM, `[h, 1] [W^T; b]`, instead of an elementwise pass over the
        // (E, n_out) result, which is the largest tensor of a convolution.
        let one = h.graph().constant(1.0);
        let ones: GraphTensor<(E, X)> = expand_at(expand_at::<_, (E,)>(one, 0, rows), 1, 1);
        let h1 = concat_columns(&[h, ones]);
        let wt: GraphTensor<(X, X)> = transpose(w).contiguous();
        let n_out: Expression = self.n_out.into();
        let wt: GraphTensor<(X, X)> =
            wt.pad::<(X, X), Expression, Expression>(&[(0.into(), 1.into()), (0.into(), 0.into())]);
        let b1: GraphTensor<(X, X)> = reshape(b, &[1.into(), n_out]);
        let b1: GraphTensor<(X, X)> = b1.pad::<(X, X), Expression, Expression>(&[
            (RADIAL_HIDDEN.into(), 0.into()),
            (0.into(), 0.into()),
        ]);
        let w1 = add_views(wt, b1);
        Ok(super::graph::retype(mm(super::graph::retype(h1), w1)))
    }
}
