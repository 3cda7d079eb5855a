//! Vector-Jacobian products of the fused edge kernels [`EdgeConv`](super::EdgeConv) and
//! [`RadialEdgeConv`](super::RadialEdgeConv), emitted as graph ops. With `g` the gradient of the
//! pooled output (`[N, ...]`) and `G_e = g[dst e]` its rows gathered per edge (zero for a
//! missing edge):
//!
//! - `EdgeConv` (matrix): `dx = edge_conv(g, w^T)` with `src` and `dst` swapped (the same fused
//!   kernel, pooling into the source nodes), `dw_e = G_e (x) x[src e]`; diagonal weights:
//!   `dx = edge_conv_diag(g, w)` swapped, `dw_e = G_e x[src e]`.
//! - `RadialEdgeConv`: `dx` is again the fused kernel with `src` and `dst` swapped, the basis
//!   block transposed (`K'_e[p, f, q] = K_e[q, f, p]`) and the last layer's rows reordered from
//!   `(o, c, f)` to `(c, o, f)`, so the per-edge radial weights are not formed in the backward
//!   either. The last layer's gradient goes through the per-edge radial gradient
//!   `dR_e[o, (c, f)] = w_e sum_p G_e[o, p] Kx_e[(c, f), p]` (`c_out c_in nf` values per edge,
//!   the radial network's output, never the `(2 d_out + 1) c_out x (2 d_in + 1) c_in` kernel):
//!   `dW = dR^T h`, `db = sum_e dR_e`, `dh = dR W`; the pooling weights get
//!   `dw_e = <h_e, dRu_e W> + <b, dRu_e>` (`dRu = dR / w`, no radial weights needed), and the
//!   basis (only when the coordinates are differentiated) `dK_e[q, (f, p)] = sum_c x[src e, c, q]
//!   dKx_e[(c, f), p]` with `dKx_e = w_e R_e^T G_e`, the one place where `R_e = W h_e + b` is
//!   formed per edge.

use luminal::prelude::{symbolic::Expression, *};

use super::{EdgeConv, PairShape, RadialEdgeConv, RadialMode};
use crate::autodiff::emit::{dims, expand, mul, plain, sum_axis, Tensor};
use crate::layers::graph::{bmm, mm, permute, reshape, retype, transpose, X};
use crate::ops::gather::GatherRows;
use crate::ops::size_view;

type T2 = GraphTensor<(X, X)>;
type T3 = GraphTensor<(X, X, X)>;

/// Rows of `table` (any view of logical shape `[N, C]`) at `idx`: `[E, C]`, zeros for `-1`.
pub(crate) fn gather_rows(table: Tensor, idx: Tensor) -> Tensor {
    let out = [dims(&idx)[0], dims(&table)[1]];
    let id = table
        .graph()
        .add_op(GatherRows)
        .input(table.id, 0, table.shape)
        .input(idx.id, 0, idx.shape)
        .finish();
    plain(id, &out, table.graph_ref)
}

/// `t` as a row-major tensor of `shape` (copied if its view is not plain).
pub(crate) fn flat(t: Tensor, shape: &[Expression]) -> Tensor {
    reshape::<(), ()>(t, shape)
}

/// Gradients of the views `[x, w, src, dst, size]` of an [`EdgeConv`] node from its gradient
/// buffer `g_id`.
pub(crate) fn edge_conv_vjp(
    inputs: &[Tensor],
    diagonal: bool,
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let (x, w, src, dst, size) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
    let gref = x.graph_ref;
    let co = dims(&w)[1];
    let g = plain(g_id, &[dims(&size)[0], co], gref);
    let d_x = wanted[0].then(|| {
        let mut wt = w.shape;
        if !diagonal {
            wt.permute(&[0, 2, 1]);
        }
        let xd = dims(&x);
        let id = x
            .graph()
            .add_op(EdgeConv { diagonal })
            .input(g.id, 0, g.shape)
            .input(w.id, 0, wt)
            .input(dst.id, 0, dst.shape)
            .input(src.id, 0, src.shape)
            .input(src.id, 0, size_view(&xd[..1]))
            .finish();
        plain(id, &xd, gref)
    });
    let d_w = wanted[1].then(|| {
        let (gd, xs) = (gather_rows(g, dst), gather_rows(x, src));
        if diagonal {
            mul(gd, xs)
        } else {
            let ci = dims(&x)[1];
            mul(expand(gd, 2, ci), expand(xs, 1, co))
        }
    });
    vec![d_x, d_w, None, None, None]
}

/// Gradients of the views `[x, basis, h, weight, bias, w, src, dst, size]` of a
/// [`RadialEdgeConv`] node from its gradient buffer `g_id` (module doc).
pub(crate) fn radial_edge_conv_vjp(
    inputs: &[Tensor],
    shape: PairShape,
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let [x, basis, h, weight, bias, w, src, dst, size] =
        [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|i| inputs[i]);
    debug_assert_eq!(inputs.len(), 9, "RadialEdgeConv has nine inputs");
    let gref = x.graph_ref;
    let (ci, di, nf, mo, co, cf) = (
        shape.c_in,
        shape.di(),
        shape.nf,
        shape.mo(),
        shape.c_out,
        shape.cf(),
    );
    let e = dims(&w)[0];
    let hd = dims(&h)[1];
    let g = plain(g_id, &[dims(&size)[0], (co * mo).into()], gref);
    let xd = dims(&x);
    let d_x = wanted[0].then(|| {
        // the same fused kernel, pooling into the sources: input channels o (orders p), output
        // channels c (orders q)
        let kb: GraphTensor<(X, X, X, X)> = reshape(basis, &[e, di.into(), nf.into(), mo.into()]);
        let kt: T3 = reshape(
            permute(kb, &[0, 3, 2, 1]),
            &[e, mo.into(), (nf * di).into()],
        );
        let w4: GraphTensor<(X, X, X, X)> = reshape(weight, &[co.into(), ci.into(), nf.into(), hd]);
        let wt: T2 = reshape(permute(w4, &[1, 0, 2, 3]), &[(ci * co * nf).into(), hd]);
        let b3: T3 = reshape(bias, &[co.into(), ci.into(), nf.into()]);
        let bt: GraphTensor<(X,)> = reshape(permute(b3, &[1, 0, 2]), &[(ci * co * nf).into()]);
        let transposed = PairShape {
            c_in: co,
            d_in: shape.d_out,
            nf,
            c_out: ci,
            d_out: shape.d_in,
        };
        let id = x
            .graph()
            .add_op(RadialEdgeConv {
                shape: transposed,
                mode: RadialMode::Auto,
            })
            .input(g.id, 0, g.shape)
            .input(kt.id, 0, kt.shape)
            .input(h.id, 0, h.shape)
            .input(wt.id, 0, wt.shape)
            .input(bt.id, 0, bt.shape)
            .input(w.id, 0, w.shape)
            .input(dst.id, 0, dst.shape)
            .input(src.id, 0, src.shape)
            .input(src.id, 0, size_view(&xd[..1]))
            .finish();
        plain(id, &xd, gref)
    });
    let rest = wanted[1..6].iter().any(|&w| w);
    if !rest {
        return vec![d_x, None, None, None, None, None, None, None, None];
    }
    // per-edge quantities: gathered gradient G [E, co, mo], source rows, Kx [E, (c, f), mo]
    let gu: T3 = reshape(gather_rows(g, dst), &[e, co.into(), mo.into()]);
    let xs: T3 = reshape(gather_rows(x, src), &[e, ci.into(), di.into()]);
    let kx = bmm(xs, reshape(basis, &[e, di.into(), (nf * mo).into()]));
    let kx: T3 = reshape(kx, &[e, cf.into(), mo.into()]);
    let d_ru: T3 = bmm(gu, permute(kx, &[0, 2, 1])); // [E, co, cf]
    let d_ru: T2 = reshape(d_ru, &[e, (co * cf).into()]);
    let width: Expression = (co * cf).into();
    // the pooling weight of each edge, broadcast over the radial outputs
    let w_rows = expand(w, 1, width);
    let d_r: T2 = retype(mul(retype(d_ru), w_rows));
    let weight2: T2 = retype(weight);
    let h2: T2 = reshape(h, &[e, hd]);
    let d_weight = wanted[3].then(|| retype(mm(transpose(d_r), h2)));
    let d_bias = wanted[4].then(|| sum_axis(retype(d_r), 0));
    let d_h = wanted[2].then(|| retype(mm(d_r, weight2)));
    let d_w = wanted[5].then(|| {
        let dhu: T2 = mm(d_ru, weight2);
        let via_h = sum_axis(mul(retype(dhu), retype(h2)), 1);
        let bias_rows = expand(retype(bias), 0, e);
        let via_b = sum_axis(mul(retype(d_ru), bias_rows), 1);
        crate::autodiff::emit::add(via_h, via_b)
    });
    let d_basis = wanted[1].then(|| {
        // dKx_e = w_e R_e^T G_e, R_e = W h_e + b
        let r: T2 = mm(h2, transpose(weight2));
        let r = crate::autodiff::emit::add(retype(r), expand(retype(bias), 0, e));
        let r = mul(r, w_rows);
        let r: T3 = reshape(r, &[e, co.into(), cf.into()]);
        let dkx = bmm(permute(r, &[0, 2, 1]), gu); // [E, cf, mo]
        let dkx: T3 = reshape(dkx, &[e, ci.into(), (nf * mo).into()]);
        retype(bmm(permute(xs, &[0, 2, 1]), dkx)) // [E, di, nf mo]
    });
    let as_view = |t: Option<Tensor>, like: Tensor| t.map(|t| flat(t, &dims(&like)));
    vec![
        d_x,
        as_view(d_basis, basis),
        as_view(d_h, h),
        as_view(d_weight, weight),
        as_view(d_bias, bias),
        as_view(d_w, w),
        None,
        None,
        None,
    ]
}
