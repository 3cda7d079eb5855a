//! The fused, reassociated edge contraction of ConvSE3 on edges grouped by destination node
//! (`k` edges per node, edge `e = i k + kk` is neighbour `kk` of node `i`), for one degree pair
//! `d_in -> d_out` and output channels `0..cnt` of the weights given:
//!
//! - `Kx_e[p, f, c] = sum_q K_e[p, q, f] x_{j(e)}[c, q]` (`x [n, c_in, 2 d_in + 1]`, neighbour
//!   `j(e) = nbr[e]`, kernel basis `K [e, mo, mi, nf]`, `mo = 2 d_out + 1`); a missing neighbour
//!   (`nbr = -1`) has `Kx = 0`;
//! - the radial network's last layer `R_e[o, (f, c)] = sum_h W[(f, c, h), o] h_e[h] + b[(f, c), o]`
//!   (`h [e, hidden]`, `W [nf c_in hidden, cnt]`, `b [nf c_in, cnt]`; rows ordered basis function
//!   first, so that `Kx` is computed with the channels innermost), never formed;
//! - the message `m_e[o, p] = sum_{f, c} R_e[o, (f, c)] Kx_e[p, f, c]`.
//!
//! [`edge_contract_sum`] gives `y_i[o, p] = sum_kk a_ik m_{ik}[o, p]` (`a [n, k]`: mean-pooling
//! or attention weights), computed as `A_i = sum_kk a_ik Kx_ik (x) h_ik` per node then `A_i W`;
//! [`edge_contract_logits`] gives `l_ik = sum_{o, p} q_i[o, p] m_{ik}[o, p]` (`q [n, cnt, mo]`),
//! computed with the query folded into `W` first. The kernel works on blocks of nodes in
//! thread-local scratch (rayon over blocks): neither `Kx [e, F]` nor `A [n, F, hidden]` of the
//! whole graph is ever stored. [`edge_contract_sum_unfused`] and
//! [`edge_contract_logits_unfused`] build the same computation from luminal primitives
//! (`gather3`, broadcast products, sums and batched matrix products), the reference the fused
//! op is tested against.
//!
//! Adjoint (`backward.rs`, where the kinds' adjoint pairing is used): with `g` the output
//! gradient, `da = edge_contract_logits(q := g)` and `dq = edge_contract_sum(a := dl)`; the last
//! layer's `dW = sum_i A_i^T g_i`, `db` and `dh_e = a_e Kx_e . (W g_i)` by the fused
//! [`EdgeContractGrad`] nodes (the forward's block kernel, per node); `dx` is a fused
//! radial convolution into the neighbours (`K_e^T dKx_e` pooled over `nbr`) and `dK_e` the
//! outer product of `dKx_e` with `x_j` (so through coordinates via the basis); the logits
//! variant is the same with `g_i` replaced by `dl_ik q_i`.

pub(crate) mod arrange;
pub(crate) mod backward;
mod backward_cpu;
#[cfg(feature = "cuda")]
pub(crate) mod backward_cuda;
#[cfg(test)]
mod backward_tests;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use arrange::ArrangeContractionWeights;
pub use backward_cpu::{EdgeContractGrad, LastLayerGrad};
pub use cpu::{ArrangedEdgeContract, ContractKind, EdgeContract};
use luminal::prelude::*;

use super::logical_dims;
use crate::layers::graph::{bmm, bmm_shared, expand_at, permute, reshape, retype, X};

#[allow(clippy::too_many_arguments)]
fn add_op<SX: Shape, SN: Shape, SB: Shape, SH: Shape, SP: Shape>(
    kind: ContractKind,
    x: GraphTensor<SX>,
    nbr: GraphTensor<SN>,
    basis: GraphTensor<SB>,
    h: GraphTensor<SH>,
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
    per_head: &[GraphTensor<SP>],
) -> NodeIndex {
    let hidden = logical_dims(&h.shape)
        .last()
        .and_then(|d| d.to_usize())
        .unwrap_or(0);
    let mut op = x
        .graph()
        .add_op(EdgeContract { kind, hidden })
        .input(x.id, 0, x.shape)
        .input(nbr.id, 0, nbr.shape)
        .input(basis.id, 0, basis.shape)
        .input(h.id, 0, h.shape)
        .input(w.id, 0, w.shape)
        .input(b.id, 0, b.shape);
    for t in per_head {
        op = op.input(t.id, 0, t.shape);
    }
    op.finish()
}

/// `y_i[o, p] = sum_kk a_ik m_{ik}[o, p]` (module doc): `[n, cnt, mo]`.
///
/// Shapes: `x [n, c_in, mi]`, `nbr [e]` (`e = n k`, grouped by node), `basis [e, mo, mi, nf]`,
/// `h [e, hidden]` (any view of that many elements in row-major order), `a [n, k]`,
/// `w [nf c_in hidden, cnt]`, `b [nf c_in, cnt]` (rows `(f, c, h)`, `(f, c)`); `hidden` must be a
/// fixed number.
pub fn edge_contract_sum<SX: Shape, SN: Shape, SB: Shape, SH: Shape, SA: Shape>(
    x: GraphTensor<SX>,
    nbr: GraphTensor<SN>,
    basis: GraphTensor<SB>,
    h: GraphTensor<SH>,
    a: GraphTensor<SA>,
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
) -> GraphTensor<(X, X, X)> {
    edge_contract_sum_heads(x, nbr, basis, h, &[a], w, b)
}

/// [`edge_contract_sum`] for `H` heads at once (one `Kx` for all): head `t` sums with weights
/// `a[t] [n, k]` and output channels `t cnt .. (t + 1) cnt` of `w [nf c_in hidden, H cnt]` and
/// `b [nf c_in, H cnt]`; the result is `[n, H cnt, mo]`.
pub fn edge_contract_sum_heads<SX: Shape, SN: Shape, SB: Shape, SH: Shape, SA: Shape>(
    x: GraphTensor<SX>,
    nbr: GraphTensor<SN>,
    basis: GraphTensor<SB>,
    h: GraphTensor<SH>,
    a: &[GraphTensor<SA>],
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
) -> GraphTensor<(X, X, X)> {
    let dims = [
        logical_dims(&x.shape)[0],
        logical_dims(&w.shape)[1],
        logical_dims(&basis.shape)[1],
    ];
    let id = add_op(ContractKind::Sum, x, nbr, basis, h, w, b, a);
    GraphTensor::from_id(id, ShapeTracker::new(&dims), x.graph_ref)
}

/// `l_ik = sum_{o, p} q_i[o, p] m_{ik}[o, p]` (module doc): `[n, k]`, `k` the neighbours per
/// node. Shapes as [`edge_contract_sum`], with `q [n, cnt, mo]` in place of `a`.
#[allow(clippy::too_many_arguments)]
pub fn edge_contract_logits<SX: Shape, SN: Shape, SB: Shape, SH: Shape, SQ: Shape>(
    x: GraphTensor<SX>,
    nbr: GraphTensor<SN>,
    basis: GraphTensor<SB>,
    h: GraphTensor<SH>,
    q: GraphTensor<SQ>,
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
    k: impl Into<symbolic::Expression>,
) -> GraphTensor<(X, X)> {
    let t = edge_contract_logits_heads(x, nbr, basis, h, &[q], w, b, k);
    // one head: the buffer is [n, k]
    let d = logical_dims(&t.shape);
    GraphTensor::from_id(t.id, ShapeTracker::new(&[d[1], d[2]]), t.graph_ref)
}

/// [`edge_contract_logits`] for `H` heads at once (one `Kx` for all): head `t` with query
/// `q[t] [n, cnt, mo]` and output channels `t cnt .. (t + 1) cnt` of `w`, `b` (as
/// [`edge_contract_sum_heads`]); the result is `[H, n, k]`.
#[allow(clippy::too_many_arguments)]
pub fn edge_contract_logits_heads<SX: Shape, SN: Shape, SB: Shape, SH: Shape, SQ: Shape>(
    x: GraphTensor<SX>,
    nbr: GraphTensor<SN>,
    basis: GraphTensor<SB>,
    h: GraphTensor<SH>,
    q: &[GraphTensor<SQ>],
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
    k: impl Into<symbolic::Expression>,
) -> GraphTensor<(X, X, X)> {
    let dims = [q.len().into(), logical_dims(&x.shape)[0], k.into()];
    let id = add_op(ContractKind::Logits, x, nbr, basis, h, w, b, q);
    GraphTensor::from_id(id, ShapeTracker::new(&dims), x.graph_ref)
}

/// `Kx` of every edge from luminal primitives: `[n, k, mo c_in nf]`.
fn kx_unfused<E: Dimension>(
    x: GraphTensor<(X, X, X)>,
    nbr: GraphTensor<(E,)>,
    basis: GraphTensor<(X, X, X, X)>,
    k: symbolic::Expression,
) -> GraphTensor<(X, X, X)> {
    let xd = logical_dims(&x.shape);
    let bd = logical_dims(&basis.shape);
    let (n, c_in) = (xd[0], xd[1]);
    let (mo, nf) = (bd[1], bd[3]);
    let xj: GraphTensor<(X, X, X)> = retype(super::gather3::<X, X, X, E>(x, nbr));
    let k5: GraphTensor<(X, X, X, X, X)> = expand_at(basis, 2, c_in);
    let x4: GraphTensor<(X, X, X, X)> = expand_at(xj, 1, mo);
    let x5: GraphTensor<(X, X, X, X, X)> = expand_at(x4, 4, nf);
    let kx: GraphTensor<(X, X, X, X)> = (k5 * x5).sum_reduce::<_, Axis<3>>(); // [e, p, c, f]
    reshape(permute(kx, &[0, 1, 3, 2]), &[n, k, mo * nf * c_in]) // F = (p, f, c)
}

/// [`edge_contract_sum`] from luminal primitives (`k` neighbours per node, `h [n, k, hidden]`):
/// `Kx` per edge, `A_i = Kx_i^T (a h)_i` per node (`[n, F, hidden]`), then `W` as one GEMM.
pub fn edge_contract_sum_unfused<E: Dimension>(
    x: GraphTensor<(X, X, X)>,
    nbr: GraphTensor<(E,)>,
    basis: GraphTensor<(X, X, X, X)>,
    h: GraphTensor<(X, X, X)>,
    a: GraphTensor<(X, X)>,
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
) -> GraphTensor<(X, X, X)> {
    let hd = logical_dims(&h.shape);
    let (n, k, hidden) = (hd[0], hd[1], hd[2]);
    let mo = logical_dims(&basis.shape)[1];
    let cf = logical_dims(&b.shape)[0];
    let kx = kx_unfused(x, nbr, basis, k);
    let ah = h * expand_at::<_, (X, X, X)>(a, 2, hidden);
    let kxt = permute(kx, &[0, 2, 1]); // [n, F, k]
    let acc = bmm(kxt, ah); // [n, F, hidden], F = (p, c, f)
    let acc3: GraphTensor<(X, X, X)> = reshape(acc, &[n, mo, cf * hidden]);
    let a3: GraphTensor<(X, X, X)> = reshape(a, &[n, k, 1.into()]);
    let b3: GraphTensor<(X, X, X)> = reshape(bmm(kxt, a3), &[n, mo, cf]);
    let y = bmm_shared(acc3, w) + bmm_shared(b3, b); // [n, mo, cnt]
    permute(y, &[0, 2, 1])
}

/// [`edge_contract_logits`] from luminal primitives (`h [n, k, hidden]`): the query folded into
/// `W` per node (`[n, F, hidden]`), then contracted with `Kx` and `h` per edge.
pub fn edge_contract_logits_unfused<E: Dimension>(
    x: GraphTensor<(X, X, X)>,
    nbr: GraphTensor<(E,)>,
    basis: GraphTensor<(X, X, X, X)>,
    h: GraphTensor<(X, X, X)>,
    q: GraphTensor<(X, X, X)>,
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
) -> GraphTensor<(X, X)> {
    let hd = logical_dims(&h.shape);
    let (n, k, hidden) = (hd[0], hd[1], hd[2]);
    let kx = kx_unfused(x, nbr, basis, k);
    let width = logical_dims(&kx.shape)[2];
    let qp = permute(q, &[0, 2, 1]); // [n, p, o]
    let wt = permute(w, &[1, 0]); // [o, (f, c, h)]
    let bt = permute(b, &[1, 0]); // [o, (f, c)]
    let folded: GraphTensor<(X, X, X)> = reshape(bmm_shared(qp, wt), &[n, width, hidden]);
    let t = bmm(kx, folded); // [n, k, hidden]
    let main: GraphTensor<(X, X)> = (t * h).sum_reduce::<_, Axis<2>>();
    let fb: GraphTensor<(X, X, X)> = reshape(bmm_shared(qp, bt), &[n, width, 1.into()]);
    let bias: GraphTensor<(X, X)> = reshape(bmm(kx, fb), &[n, k]);
    main + bias
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rel_err, rng};
    use crate::exec::Session;
    use crate::layers::graph::{constant, reshape, X};
    use crate::Error;

    fn cols(data: &[f32], rows: usize, all: usize, c0: usize, cnt: usize) -> Vec<f32> {
        (0..rows)
            .flat_map(|r| data[r * all + c0..r * all + c0 + cnt].to_vec())
            .collect()
    }

    /// Errors of one random problem with `H` heads: per head, the fused multi-head sum and
    /// logits against the unfused graph of that head alone.
    fn fused_vs_unfused(
        r: &mut rand::rngs::StdRng,
        d_in: usize,
        d_out: usize,
    ) -> Result<(f64, f64), Error> {
        let (n, k, heads) = (r.gen_range(1..40), r.gen_range(1..9), r.gen_range(1..4));
        let (c_in, cnt) = (r.gen_range(1..6), r.gen_range(1..7));
        // the model's hidden width half of the time: the kernel then works in several chunks of (f, c)
        let hidden = if r.gen_bool(0.5) {
            128
        } else {
            r.gen_range(1..20)
        };
        let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
        let (e, cf, all) = (n * k, c_in * nf, heads * cnt);
        let mut s = Session::new();
        let x: GraphTensor<(X, X, X)> =
            constant(&mut s, "x", rand_vec(r, n * c_in * mi), &[n, c_in, mi])?;
        // a third of the neighbours missing (-1)
        let idx: Vec<f32> = (0..e)
            .map(|_| {
                if r.gen_range(0..3) == 0 {
                    -1.0
                } else {
                    r.gen_range(0..n) as f32
                }
            })
            .collect();
        let nbr: GraphTensor<(X,)> = constant(&mut s, "nbr", idx, &[e])?;
        let basis: GraphTensor<(X, X, X, X)> = constant(
            &mut s,
            "basis",
            rand_vec(r, e * mo * mi * nf),
            &[e, mo, mi, nf],
        )?;
        let h: GraphTensor<(X, X)> = constant(&mut s, "h", rand_vec(r, e * hidden), &[e, hidden])?;
        let h3: GraphTensor<(X, X, X)> = reshape(h, &[n.into(), k.into(), hidden.into()]);
        let (wd, bd) = (rand_vec(r, cf * hidden * all), rand_vec(r, cf * all));
        let w: GraphTensor<(X, X)> = constant(&mut s, "w", wd.clone(), &[cf * hidden, all])?;
        let b: GraphTensor<(X, X)> = constant(&mut s, "b", bd.clone(), &[cf, all])?;
        let mut a = Vec::new();
        let mut q = Vec::new();
        for t in 0..heads {
            a.push(constant::<(X, X)>(
                &mut s,
                &format!("a{t}"),
                rand_vec(r, e),
                &[n, k],
            )?);
            q.push(constant::<(X, X, X)>(
                &mut s,
                &format!("q{t}"),
                rand_vec(r, n * cnt * mo),
                &[n, cnt, mo],
            )?);
            let wt: GraphTensor<(X, X)> = constant(
                &mut s,
                &format!("w{t}"),
                cols(&wd, cf * hidden, all, t * cnt, cnt),
                &[cf * hidden, cnt],
            )?;
            let bt: GraphTensor<(X, X)> = constant(
                &mut s,
                &format!("b{t}"),
                cols(&bd, cf, all, t * cnt, cnt),
                &[cf, cnt],
            )?;
            s.output(
                &format!("sum{t}"),
                super::edge_contract_sum_unfused(x, nbr, basis, h3, a[t], wt, bt),
            );
            s.output(
                &format!("logits{t}"),
                super::edge_contract_logits_unfused(x, nbr, basis, h3, q[t], wt, bt),
            );
        }
        s.output(
            "sum",
            super::edge_contract_sum_heads(x, nbr, basis, h, &a, w, b),
        );
        s.output(
            "logits",
            super::edge_contract_logits_heads(x, nbr, basis, h, &q, w, b, k),
        );
        s.run()?;
        let (sum, lg) = (s.get("sum")?.data, s.get("logits")?.data);
        let (mut es, mut el) = (0.0f64, 0.0f64);
        for t in 0..heads {
            let want = s.get(&format!("sum{t}"))?.data;
            let got: Vec<f32> = (0..n)
                .flat_map(|i| {
                    sum[(i * all + t * cnt) * mo..(i * all + (t + 1) * cnt) * mo].to_vec()
                })
                .collect();
            es = es.max(rel_err(&got, &want));
            let want = s.get(&format!("logits{t}"))?.data;
            el = el.max(rel_err(&lg[t * n * k..(t + 1) * n * k], &want));
        }
        Ok((es, el))
    }

    /// The fused kernel (several heads at once) against the unfused luminal graph of each head,
    /// on every degree pair up to 2 with random sizes and missing neighbours.
    #[test]
    fn fused_contraction_matches_the_unfused_graph_with_missing_neighbours() -> Result<(), Error> {
        let mut r = rng();
        for d_in in 0..3 {
            for d_out in 0..3 {
                let (es, el) = fused_vs_unfused(&mut r, d_in, d_out)?;
                assert!(
                    es < 1e-5 && el < 1e-5,
                    "seed {}: pair {d_in}->{d_out}: sum rel err {es:e}, logits rel err {el:e}",
                    crate::testing::seed()
                );
            }
        }
        Ok(())
    }

    /// A node whose neighbours are all missing gets zero sums and zero logits.
    #[test]
    fn all_missing_neighbours_give_zeros() -> Result<(), Error> {
        let mut r = rng();
        let (n, k, c_in, cnt, hidden) = (3, 4, 2, 3, 5);
        let e = n * k;
        let mut s = Session::new();
        let x: GraphTensor<(X, X, X)> =
            constant(&mut s, "x", rand_vec(&mut r, n * c_in * 3), &[n, c_in, 3])?;
        let nbr: GraphTensor<(X,)> = constant(&mut s, "nbr", vec![-1.0; e], &[e])?;
        let basis: GraphTensor<(X, X, X, X)> =
            constant(&mut s, "basis", rand_vec(&mut r, e * 9), &[e, 3, 3, 1])?;
        let h: GraphTensor<(X, X)> =
            constant(&mut s, "h", rand_vec(&mut r, e * hidden), &[e, hidden])?;
        let a: GraphTensor<(X, X)> = constant(&mut s, "a", rand_vec(&mut r, e), &[n, k])?;
        let q: GraphTensor<(X, X, X)> =
            constant(&mut s, "q", rand_vec(&mut r, n * cnt * 3), &[n, cnt, 3])?;
        let w: GraphTensor<(X, X)> = constant(
            &mut s,
            "w",
            rand_vec(&mut r, c_in * hidden * cnt),
            &[c_in * hidden, cnt],
        )?;
        let b: GraphTensor<(X, X)> =
            constant(&mut s, "b", rand_vec(&mut r, c_in * cnt), &[c_in, cnt])?;
        s.output("sum", super::edge_contract_sum(x, nbr, basis, h, a, w, b));
        s.output(
            "logits",
            super::edge_contract_logits(x, nbr, basis, h, q, w, b, k),
        );
        s.run()?;
        let (sum, lg) = (s.get("sum")?, s.get("logits")?);
        assert_eq!(sum.shape, vec![n, cnt, 3]);
        assert_eq!(lg.shape, vec![n, k]);
        assert!(sum.data.iter().chain(&lg.data).all(|v| *v == 0.0));
        Ok(())
    }
}
