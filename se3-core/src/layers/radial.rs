//! The radial network of a convolution: se3-transformer-pytorch's `RadialFunc`.

use luminal::prelude::{symbolic::Expression, *};
use rand::Rng;

use super::edges::concat_columns;
use super::graph::{
    add_views, constant, dims, expand_at, mm, reshape, transpose, Param, ParamSource, E, X,
};
use crate::exec::Session;
use crate::ops::{layer_norm_gelu, radial_hidden, stack, RadialHiddenWeights};
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

    /// A network from given values, in the order of its keys (`net.0.weight` `(128, n_in)`,
    /// `net.0.bias`, `net.1.weight`, `net.1.bias`, `net.3.weight` `(128, 128)`, `net.3.bias`,
    /// `net.4.weight`, `net.4.bias`, `net.6.weight` `(n_out, 128)`, `net.6.bias`), row-major.
    ///
    /// # Errors
    /// `LengthMismatch` for a wrong number of tensors, `WrongShape` or `NonFiniteWeight` for a
    /// bad one.
    pub fn from_values(n_in: usize, n_out: usize, values: Vec<Vec<f32>>) -> Result<Self, Error> {
        let keys = keys(n_in, n_out);
        if values.len() != keys.len() {
            return Err(Error::LengthMismatch {
                what: "radial network tensors",
                expected: keys.len(),
                found: values.len(),
            });
        }
        let params = keys
            .into_iter()
            .zip(values)
            .map(|((key, shape), data)| Param::new(key, shape, data))
            .collect::<Result<_, Error>>()?;
        Ok(RadialMlp {
            n_in,
            n_out,
            params,
        })
    }

    /// The last layer's weight `(n_out, 128)` and bias `(n_out,)`, row-major, for graph forms
    /// that rearrange them on the host.
    ///
    /// # Errors
    /// `MissingInput` naming the parameter if its values are not here (moved into a session,
    /// e.g. by `Se3TransformerNet::into_session`).
    pub fn last_layer(&self) -> Result<(&[f32], &[f32]), Error> {
        let (w, b) = (&self.params[8], &self.params[9]);
        for p in [w, b] {
            if p.data.len() != p.shape.iter().product::<usize>() {
                return Err(Error::MissingInput {
                    name: format!("{} (its values were moved out of the layer)", p.key),
                });
            }
        }
        Ok((&w.data, &b.data))
    }

    /// The last layer's weight `(n_out, 128)` and bias `(n_out,)` as graph tensors (weights
    /// `<prefix>net.6.*`), for hidden activations taken from a [`RadialBank`].
    ///
    /// # Errors
    /// Those of `Session::set_weight`.
    #[allow(clippy::type_complexity)]
    pub fn declare_last_layer(
        &self,
        s: &mut Session,
        prefix: &str,
    ) -> Result<(GraphTensor<(X, X)>, GraphTensor<(X,)>), Error> {
        Ok((
            self.params[8].declare(s, prefix)?,
            self.params[9].declare(s, prefix)?,
        ))
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

/// The radial networks of several degree pairs (of one or many convolutions) that read the same
/// per-edge input, evaluated together up to their last layer by one fused op
/// ([`ops::radial_hidden`](crate::ops::radial_hidden())): per network and block of edges, both
/// hidden layers with their LayerNorm + GELU in cache. The same values as
/// [`RadialMlp::build_hidden`] per network, in one graph node instead of a chain per pair
/// (faster to compile and to run for the many small pairs of a model).
#[derive(Debug, Clone, Copy)]
pub struct RadialBank {
    /// Hidden activations after the second GELU, `(P, E, 128)`.
    all: GraphTensor<(X, X, X)>,
    count: usize,
}

impl RadialBank {
    /// The hidden activations of every network of `nets` on `input (E, n_in)`; weights are
    /// session weights `<prefix>bank.*`.
    ///
    /// # Errors
    /// `Empty` for no network, `LengthMismatch` if the networks' input widths differ, those of
    /// `Session::set_weight`.
    pub fn build(
        s: &mut Session,
        prefix: &str,
        nets: &[&RadialMlp],
        input: GraphTensor<(E, X)>,
    ) -> Result<Self, Error> {
        let np = nets.len();
        let first = nets.first().ok_or(Error::Empty {
            what: "radial bank",
        })?;
        let n_in = first.n_in;
        if let Some(bad) = nets.iter().find(|r| r.n_in != n_in) {
            return Err(Error::LengthMismatch {
                what: "radial network input width (shared by a bank)",
                expected: n_in,
                found: bad.n_in,
            });
        }
        let hd = RADIAL_HIDDEN;
        // torch Linear weights are (out, in); the fused op reads (in, out) per network
        let mut w0 = Vec::with_capacity(np * n_in * hd);
        let mut w3 = Vec::with_capacity(np * hd * hd);
        let mut rows: [Vec<f32>; 6] = Default::default();
        for r in nets {
            let (l0, l3) = (&r.params[0].data, &r.params[4].data);
            for i in 0..n_in {
                w0.extend((0..hd).map(|j| l0[j * n_in + i]));
            }
            for i in 0..hd {
                w3.extend((0..hd).map(|j| l3[j * hd + i]));
            }
            for (row, idx) in rows.iter_mut().zip([1, 2, 3, 5, 6, 7]) {
                row.extend_from_slice(&r.params[idx].data);
            }
        }
        let [b0, g1, be1, b3, g4, be4] = rows;
        let name = |k: &str| format!("{prefix}bank.{k}");
        let row = |s: &mut Session, k: &str, v: Vec<f32>| constant(s, &name(k), v, &[np, hd]);
        let w = RadialHiddenWeights {
            w0: constant(s, &name("w0"), w0, &[np, n_in, hd])?,
            b0: row(s, "b0", b0)?,
            g1: row(s, "g1", g1)?,
            be1: row(s, "be1", be1)?,
            w3: constant(s, &name("w3"), w3, &[np, hd, hd])?,
            b3: row(s, "b3", b3)?,
            g4: row(s, "g4", g4)?,
            be4: row(s, "be4", be4)?,
        };
        Ok(RadialBank {
            all: radial_hidden(input, &w, 1e-5),
            count: np,
        })
    }

    /// As [`RadialBank::build`], with each network's hidden-layer weights declared under its
    /// own checkpoint keys (`<prefix>net.0.weight` .. `<prefix>net.4.bias` for each
    /// `(prefix, net)` of `nets`) and stacked in the graph by
    /// [`ops::stack`](crate::ops::stack()) (torch's `(out, in)` matrices read transposed): the
    /// same values, and gradients reach every network's weights under their own keys.
    ///
    /// # Errors
    /// As [`RadialBank::build`].
    pub fn build_declared(
        s: &mut Session,
        nets: &[(String, &RadialMlp)],
        input: GraphTensor<(E, X)>,
    ) -> Result<Self, Error> {
        let n_in = nets
            .first()
            .ok_or(Error::Empty {
                what: "radial bank",
            })?
            .1
            .n_in;
        if let Some((_, bad)) = nets.iter().find(|(_, r)| r.n_in != n_in) {
            return Err(Error::LengthMismatch {
                what: "radial network input width (shared by a bank)",
                expected: n_in,
                found: bad.n_in,
            });
        }
        let (mut w0, mut w3) = (Vec::new(), Vec::new());
        let mut rows: [Vec<GraphTensor<(X,)>>; 6] = Default::default();
        for (prefix, r) in nets {
            w0.push(transpose(r.params[0].declare(s, prefix)?));
            w3.push(transpose(r.params[4].declare(s, prefix)?));
            for (row, idx) in rows.iter_mut().zip([1, 2, 3, 5, 6, 7]) {
                row.push(r.params[idx].declare(s, prefix)?);
            }
        }
        let empty = Error::Empty {
            what: "radial bank",
        };
        let stack3 = |t: &[GraphTensor<(X, X)>]| stack::<_, (X, X, X)>(t).ok_or(empty.clone());
        let stack2 = |t: &[GraphTensor<(X,)>]| stack::<_, (X, X)>(t).ok_or(empty.clone());
        let w = RadialHiddenWeights {
            w0: stack3(&w0)?,
            b0: stack2(&rows[0])?,
            g1: stack2(&rows[1])?,
            be1: stack2(&rows[2])?,
            w3: stack3(&w3)?,
            b3: stack2(&rows[3])?,
            g4: stack2(&rows[4])?,
            be4: stack2(&rows[5])?,
        };
        Ok(RadialBank {
            all: radial_hidden(input, &w, 1e-5),
            count: nets.len(),
        })
    }

    /// The hidden activations of every network, `(P, E, 128)`.
    pub fn all(&self) -> GraphTensor<(X, X, X)> {
        self.all
    }

    /// The number of networks.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the bank holds no network (never, once built).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The hidden activations `(E, 128)` of network `i` (in the order given to `build`), as
    /// [`RadialMlp::build_hidden`] computes them: a view of rows `i E .. (i + 1) E` of the
    /// bank, no copy.
    ///
    /// # Errors
    /// `LengthMismatch` if `i` is not a network of the bank.
    pub fn hidden(&self, i: usize) -> Result<GraphTensor<(E, X)>, Error> {
        if i >= self.count {
            return Err(Error::LengthMismatch {
                what: "radial bank index (networks in the bank)",
                expected: self.count,
                found: i,
            });
        }
        let d = dims(self.all);
        let flat: GraphTensor<(X, X)> = reshape(self.all, &[d[0] * d[1], d[2]]);
        let mut st = flat.shape;
        st.slice(&[(d[1] * i, d[1] * (i + 1)), (0.into(), i32::MAX.into())]);
        Ok(GraphTensor::from_id(flat.id, st, flat.graph_ref))
    }
}

impl RadialMlp {
    /// Visits every parameter as `(<prefix><key>, param)` in checkpoint order.
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for p in &self.params {
            f(&format!("{prefix}{}", p.key), p);
        }
    }

    /// Visits every parameter mutably, as [`RadialMlp::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for p in &mut self.params {
            f(&format!("{prefix}{}", p.key), p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::InputKind;
    use crate::testing::rng;

    #[test]
    fn bank_hidden_matches_each_network_alone() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let (n_in, edges) = (3, 7);
        let nets: Vec<RadialMlp> = (0..3)
            .map(|i| RadialMlp::new(n_in, 4 + i, &mut r))
            .collect();
        let mut s = Session::new();
        let input =
            s.input_with_shape::<(E, X)>("in", InputKind::Values, &['e'.into(), n_in.into()]);
        let refs: Vec<&RadialMlp> = nets.iter().collect();
        let bank = RadialBank::build(&mut s, "b.", &refs, input)?;
        for (i, net) in nets.iter().enumerate() {
            s.output(&format!("bank{i}"), bank.hidden(i)?);
            let (h, _, _) = net.build_hidden(&mut s, &format!("n{i}."), input)?;
            s.output(&format!("alone{i}"), h);
        }
        let x: Vec<f32> = (0..edges * n_in).map(|_| r.gen_range(-2.0..2.0)).collect();
        s.set("in", x, &[edges, n_in])?;
        s.run()?;
        for i in 0..nets.len() {
            let a = s.get(&format!("bank{i}"))?;
            let b = s.get(&format!("alone{i}"))?;
            assert_eq!(a.shape, vec![edges, RADIAL_HIDDEN], "seed {seed}");
            assert_eq!(a.shape, b.shape, "seed {seed}");
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!(
                    (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                    "seed {seed}: net {i}: {x} vs {y}"
                );
            }
        }
        Ok(())
    }
}
