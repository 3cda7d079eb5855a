//! The hidden layers of many radial networks on one per-edge input, fused: for each network
//! `p`, `h_p = gelu(LN(gelu(LN(x W0_p + b0_p)) W3_p + b3_p))` (se3-transformer-pytorch's
//! `RadialFunc` up to its last, linear layer; LayerNorm with affine `g`, `be` and epsilon
//! `eps`, exact GELU with erf by Abramowitz & Stegun 7.1.26 to f32 precision), written as
//! `[P, e, hidden]`. Per network and block of edges both layers, their LayerNorms and GELUs
//! run in cache, instead of a chain of broadcasts, reductions and elementwise passes over
//! `[e, P, hidden]` tensors. The last layer is left to the consumer
//! ([`edge_contract`](super::edge_contract) reassociates it).
//!
//! Adjoint (`backward.rs`): per network, the hidden layers recomputed with the fused row kernel
//! and differentiated (LayerNorm and GELU derivatives, two GEMMs with the transposed weights);
//! checked against finite differences, and [`radial_hidden_unfused`] (the luminal primitive
//! graph) is the reference the forward is tested against.

pub(crate) mod backward;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use cpu::RadialHidden;
use luminal::prelude::*;

use super::logical_dims;
use crate::layers::graph::{expand_at, gelu, layer_norm, mm, retype, X};

/// Weights of `P` radial networks' hidden layers, laid out for [`radial_hidden`]:
/// `w0 [P, n_in, hidden]` (input x output), `w3 [P, hidden, hidden]` (input x output), and
/// biases, LayerNorm gains and offsets `[P, hidden]`.
#[derive(Debug, Clone, Copy)]
pub struct RadialHiddenWeights {
    pub w0: GraphTensor<(X, X, X)>,
    pub b0: GraphTensor<(X, X)>,
    pub g1: GraphTensor<(X, X)>,
    pub be1: GraphTensor<(X, X)>,
    pub w3: GraphTensor<(X, X, X)>,
    pub b3: GraphTensor<(X, X)>,
    pub g4: GraphTensor<(X, X)>,
    pub be4: GraphTensor<(X, X)>,
}

/// The hidden activations of every network on `x [e, n_in]`: `[P, e, hidden]` (module doc).
pub fn radial_hidden<S: Shape>(
    x: GraphTensor<S>,
    w: &RadialHiddenWeights,
    eps: f32,
) -> GraphTensor<(X, X, X)> {
    let xd = logical_dims(&x.shape);
    let wd = logical_dims(&w.w0.shape);
    let dims = [wd[0], xd[0], wd[2]];
    let id = x
        .graph()
        .add_op(RadialHidden { eps })
        .input(x.id, 0, x.shape)
        .input(w.w0.id, 0, w.w0.shape)
        .input(w.b0.id, 0, w.b0.shape)
        .input(w.g1.id, 0, w.g1.shape)
        .input(w.be1.id, 0, w.be1.shape)
        .input(w.w3.id, 0, w.w3.shape)
        .input(w.b3.id, 0, w.b3.shape)
        .input(w.g4.id, 0, w.g4.shape)
        .input(w.be4.id, 0, w.be4.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), x.graph_ref)
}

/// Network `p` of [`radial_hidden`] from luminal primitives (`mm`, broadcast adds, the
/// unfused `layer_norm` and `gelu`): `[e, hidden]`. `hidden` must be a fixed number.
pub fn radial_hidden_unfused(
    x: GraphTensor<(X, X)>,
    w: &RadialHiddenWeights,
    p: usize,
    hidden: usize,
    eps: f32,
) -> GraphTensor<(X, X)> {
    let e = logical_dims(&x.shape)[0];
    let row = |t: GraphTensor<(X, X)>| -> GraphTensor<(X,)> {
        let mut st = t.shape;
        st.slice(&[(p.into(), (p + 1).into()), (0.into(), hidden.into())]);
        let s: GraphTensor<(X, X)> = GraphTensor::from_id(t.id, st, t.graph_ref);
        crate::layers::graph::reshape(s.contiguous(), &[hidden.into()])
    };
    let mat = |t: GraphTensor<(X, X, X)>, rows: symbolic::Expression| -> GraphTensor<(X, X)> {
        let d = logical_dims(&t.shape);
        let mut st = t.shape;
        st.slice(&[
            (p.into(), (p + 1).into()),
            (0.into(), d[1]),
            (0.into(), d[2]),
        ]);
        let s: GraphTensor<(X, X, X)> = GraphTensor::from_id(t.id, st, t.graph_ref);
        crate::layers::graph::reshape(s.contiguous(), &[rows, hidden.into()])
    };
    let n_in = logical_dims(&w.w0.shape)[1];
    let bias = |b: GraphTensor<(X,)>| expand_at::<_, (X, X)>(b, 0, e);
    let z1 = mm(x, mat(w.w0, n_in)) + bias(row(w.b0));
    let h1 = gelu(layer_norm(z1, retype(row(w.g1)), retype(row(w.be1)), eps));
    let z2 = mm(h1, mat(w.w3, hidden.into())) + bias(row(w.b3));
    gelu(layer_norm(z2, retype(row(w.g4)), retype(row(w.be4)), eps))
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use super::RadialHiddenWeights;
    use crate::exec::tests::{rand_vec, rel_err, rng};
    use crate::exec::Session;
    use crate::layers::graph::{constant, X};
    use crate::Error;

    /// The fused hidden layers of several networks against each network's unfused graph, on a
    /// random edge count that is not a multiple of the edge block.
    #[test]
    fn fused_radial_hidden_matches_the_unfused_graph_per_network() -> Result<(), Error> {
        let mut r = rng();
        let (np, e, n_in, hd) = (
            r.gen_range(1..5),
            r.gen_range(1..150),
            r.gen_range(1..4),
            r.gen_range(2..40),
        );
        let mut s = Session::new();
        let c2 = |s: &mut Session, name: &str, r: &mut rand::rngs::StdRng| {
            constant::<(X, X)>(s, name, rand_vec(r, np * hd), &[np, hd])
        };
        let w = RadialHiddenWeights {
            w0: constant(
                &mut s,
                "w0",
                rand_vec(&mut r, np * n_in * hd),
                &[np, n_in, hd],
            )?,
            b0: c2(&mut s, "b0", &mut r)?,
            g1: c2(&mut s, "g1", &mut r)?,
            be1: c2(&mut s, "be1", &mut r)?,
            w3: constant(&mut s, "w3", rand_vec(&mut r, np * hd * hd), &[np, hd, hd])?,
            b3: c2(&mut s, "b3", &mut r)?,
            g4: c2(&mut s, "g4", &mut r)?,
            be4: c2(&mut s, "be4", &mut r)?,
        };
        let x: GraphTensor<(X, X)> = constant(&mut s, "x", rand_vec(&mut r, e * n_in), &[e, n_in])?;
        s.output("fused", super::radial_hidden(x, &w, 1e-5));
        for p in 0..np {
            s.output(
                &format!("unfused{p}"),
                super::radial_hidden_unfused(x, &w, p, hd, 1e-5),
            );
        }
        s.run()?;
        let fused = s.get("fused")?;
        assert_eq!(fused.shape, vec![np, e, hd]);
        for p in 0..np {
            let un = s.get(&format!("unfused{p}"))?.data;
            let err = rel_err(&fused.data[p * e * hd..(p + 1) * e * hd], &un);
            assert!(
                err < 1e-5,
                "seed {}: network {p}: rel err {err:e}",
                crate::testing::seed()
            );
        }
        Ok(())
    }
}
