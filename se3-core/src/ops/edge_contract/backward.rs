//! Vector-Jacobian product of [`EdgeContract`](super::EdgeContract) (sum and logits, any number
//! of heads), emitted as graph ops.
//!
//! Both kinds are `Σ_e <G_e, m_e>` in their cotangent, with the per-edge cotangent of the message
//! `G_e[o, p] = u_e r_i[o, p]`: sums `r = g` (the output gradient) and `u = a` (the pooling or
//! attention weights), logits `r = q` and `u = dl`, per head. So the two kinds are each
//! other's adjoints in their per-head input, and both are computed by the fused kernel:
//! `da = edge_contract_logits(q := g)`, `dq = edge_contract_sum(a := dl)`. Everything else
//! comes from two fused [`EdgeContractGrad`] nodes over all heads, per node as the forward
//! (`backward_cpu.rs`), with `Gw_i[(p, f, c), h] = Σ_o W[(f, c, h), o] r_i[o, p]`:
//! - per edge, `dh_e = u_e Kx_e · Gw_i` and the message's `dKx_e = u_e (h_e · Gw_i + r_i^T b)`
//!   (`[mo, nf c_in]`, the size of `Kx_e`); from `dKx_e`, the node features' gradient
//!   `dx_j = Σ_{e: nbr e = j} K_e^T dKx_e` (per-edge products pooled by a scatter-add into the
//!   neighbours) and the basis' (coordinates') `dK_e[p, q, f] = Σ_c dKx_e[p, (f, c)] x_j[c, q]`;
//! - the last layer's `dW = Σ_i r_i (Σ_{e of i} u_e Kx_e ⊗ h_e)` and `db = Σ_i r_i Σ_e u_e Kx_e`.
//!
//! No per-edge radial weights `R_e` or their gradient `dR_e` are formed.

use luminal::prelude::{symbolic::Expression, *};

use super::backward_cpu::{EdgeContractGrad, LastLayerGrad};
use super::{edge_contract_logits, edge_contract_sum, ContractKind};
use crate::autodiff::emit::{contiguous, copy, dims, plain, Tensor};
use crate::layers::graph::{bmm, permute, reshape, retype, X};
use crate::ops::edge_conv::backward::flat;
use crate::ops::gather::GatherRows;
use crate::ops::scatter_add::ScatterAdd;
use crate::ops::size_view;

type T2 = GraphTensor<(X, X)>;
type T3 = GraphTensor<(X, X, X)>;
type T4 = GraphTensor<(X, X, X, X)>;

/// Columns `c0 .. c0 + cnt` of a plain matrix `m` (a view).
fn columns(m: Tensor, c0: usize, cnt: usize) -> Tensor {
    let mut st = m.shape;
    st.slice(&[(0.into(), i32::MAX.into()), (c0.into(), (c0 + cnt).into())]);
    GraphTensor::from_id(m.id, st, m.graph_ref)
}

/// Entry `t` of the first axis of a plain tensor, copied, as a plain tensor of `rest`.
fn entry(m: Tensor, t: usize, rest: &[Expression]) -> Tensor {
    let mut st = m.shape;
    let mut b = vec![(Expression::from(0), Expression::from(i32::MAX)); st.len()];
    b[0] = (t.into(), (t + 1).into());
    st.slice(&b);
    let c = copy(GraphTensor::from_id(m.id, st, m.graph_ref));
    plain(c.id, rest, m.graph_ref)
}

/// Gradients of the views `[x, nbr, basis, h, w, b, a_0 | q_0, ...]` of an
/// `EdgeContract { kind, hidden }` node from its gradient buffer `g_id` (module doc).
pub(crate) fn vjp(
    inputs: &[Tensor],
    kind: ContractKind,
    hidden: usize,
    g_id: NodeIndex,
    wanted: &[bool],
) -> Vec<Option<Tensor>> {
    let (x, nbr, basis, h, w, b) = (
        inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], inputs[5],
    );
    let gref = x.graph_ref;
    let heads = inputs.len().saturating_sub(6).max(1);
    let (xd, bd) = (dims(&x), dims(&basis));
    let fixed = |e: &Expression| e.to_usize().unwrap_or(0);
    let cols = fixed(&dims(&w)[1]);
    let (n, e) = (xd[0], bd[0]);
    let k = match kind {
        ContractKind::Sum => dims(&inputs[6])[1],
        ContractKind::Logits => bd[0] / xd[0],
    };
    let (ci, mi, mo, nf) = (fixed(&xd[1]), fixed(&xd[2]), fixed(&bd[1]), fixed(&bd[3]));
    let (hd, cnt) = (hidden, cols / heads);
    let cf = ci * nf;
    let wc = contiguous(w);
    let bc = contiguous(b);
    // the output gradient per head: g_t [n, cnt, mo] (sum) or dl_t [n, k] (logits)
    let g = match kind {
        ContractKind::Sum => plain(g_id, &[n, cols.into(), mo.into()], gref),
        ContractKind::Logits => plain(g_id, &[heads.into(), n, k], gref),
    };
    let g_of = |t: usize| -> Tensor {
        match kind {
            ContractKind::Sum => {
                // channels t cnt .. (t + 1) cnt of the middle axis: [n, cnt, mo]
                let mut st = g.shape;
                st.slice(&[
                    (0.into(), i32::MAX.into()),
                    ((t * cnt).into(), ((t + 1) * cnt).into()),
                    (0.into(), i32::MAX.into()),
                ]);
                let c = copy(GraphTensor::from_id(g.id, st, gref));
                plain(c.id, &[n, cnt.into(), mo.into()], gref)
            }
            ContractKind::Logits => entry(g, t, &[n, k]),
        }
    };
    // each head's output gradient, read by several of its gradients
    let gts: Vec<Tensor> = (0..heads).map(g_of).collect();
    // the last layer's and the hidden values' gradients: fused nodes over all heads, per node
    // as the forward ([`EdgeContractGrad`])
    let last_layer = |wrt: LastLayerGrad, out: &[Expression]| -> Tensor {
        let mut op = x
            .graph()
            .add_op(EdgeContractGrad { wrt, hidden })
            .input(x.id, 0, x.shape)
            .input(nbr.id, 0, nbr.shape)
            .input(basis.id, 0, basis.shape)
            .input(h.id, 0, h.shape)
            .input(w.id, 0, w.shape)
            .input(b.id, 0, b.shape);
        let (rows, weights): (Vec<Tensor>, Vec<Tensor>) = match kind {
            ContractKind::Sum => (gts.clone(), inputs[6..6 + heads].to_vec()),
            ContractKind::Logits => (inputs[6..6 + heads].to_vec(), gts.clone()),
        };
        for t in rows.iter().chain(&weights) {
            op = op.input(t.id, 0, t.shape);
        }
        plain(op.finish(), out, gref)
    };
    let (mut d_h, mut d_w, mut d_b) = (None::<Tensor>, None::<Tensor>, None::<Tensor>);
    let (mut d_x, mut d_basis) = (None::<Tensor>, None::<Tensor>);
    // per edge: the hidden values' gradient and the messages' dKx [e, mo, (f, c)], one node
    let message = wanted[0] || wanted[2];
    if wanted[3] || message {
        let hw = if wanted[3] { hd } else { 0 };
        let width = hw + if message { mo * cf } else { 0 };
        let eg = last_layer(
            LastLayerGrad::Edges {
                hidden: wanted[3],
                message,
            },
            &[e, width.into()],
        );
        // columns c0 .. c0 + len of the per-edge gradients (the node itself when it is all)
        let part = |c0: usize, len: usize| -> Tensor {
            if c0 == 0 && len == width {
                return eg;
            }
            let mut st = eg.shape;
            st.slice(&[(0.into(), i32::MAX.into()), (c0.into(), (c0 + len).into())]);
            let c = copy(GraphTensor::from_id(eg.id, st, gref));
            plain(c.id, &[e, len.into()], gref)
        };
        if wanted[3] {
            d_h = Some(part(0, hd));
        }
        if message {
            // dKx as [e, (mo, nf), c_in]
            let dkx: T3 = reshape(part(hw, mo * cf), &[e, (mo * nf).into(), ci.into()]);
            if wanted[0] {
                // dx_j = sum_{e: nbr e = j} K_e^T dKx_e: per edge [c_in, mi], pooled into the
                // neighbours (missing ones skipped)
                let b4: T4 = retype(basis);
                let kt: T3 = reshape(
                    permute(b4, &[0, 1, 3, 2]),
                    &[e, (mo * nf).into(), mi.into()],
                );
                let per_edge: T2 =
                    reshape(bmm(permute(dkx, &[0, 2, 1]), kt), &[e, (ci * mi).into()]);
                let id = x
                    .graph()
                    .add_op(ScatterAdd)
                    .input(per_edge.id, 0, per_edge.shape)
                    .input(nbr.id, 0, nbr.shape)
                    .input(nbr.id, 0, size_view(&[n]))
                    .finish();
                d_x = Some(plain(id, &[n, (ci * mi).into()], gref));
            }
            if wanted[2] {
                // dK_e[p, q, f] = sum_c dKx_e[p, f, c] x_j[c, q]
                let xj: T3 = {
                    let id = x
                        .graph()
                        .add_op(GatherRows)
                        .input(x.id, 0, x.shape)
                        .input(nbr.id, 0, nbr.shape)
                        .finish();
                    GraphTensor::from_id(id, ShapeTracker::new(&[e, ci.into(), mi.into()]), gref)
                };
                let db4: T4 = reshape(bmm(dkx, xj), &[e, mo.into(), nf.into(), mi.into()]);
                d_basis = Some(retype(permute(db4, &[0, 1, 3, 2])));
            }
        }
    }
    if wanted[4] || wanted[5] {
        let wb = last_layer(
            LastLayerGrad::Weights,
            &[(cf * hd + cf).into(), cols.into()],
        );
        let part = |r0: usize, len: usize| {
            let mut st = wb.shape;
            st.slice(&[(r0.into(), (r0 + len).into()), (0.into(), i32::MAX.into())]);
            let c = copy(GraphTensor::from_id(wb.id, st, gref));
            plain(c.id, &[len.into(), cols.into()], gref)
        };
        d_w = wanted[4].then(|| part(0, cf * hd));
        d_b = wanted[5].then(|| part(cf * hd, cf));
    }
    // the per-head inputs: the kinds are each other's adjoints (module doc)
    let mut d_heads = vec![None; heads];
    for (t, d) in d_heads.iter_mut().enumerate() {
        if !wanted[6 + t] {
            continue;
        }
        let (wt, bt) = (columns(wc, t * cnt, cnt), columns(bc, t * cnt, cnt));
        let gt = gts[t];
        *d = Some(match kind {
            ContractKind::Sum => retype(edge_contract_logits(
                x,
                nbr,
                basis,
                h,
                gt,
                retype(wt),
                retype(bt),
                k,
            )),
            ContractKind::Logits => retype(edge_contract_sum(
                x,
                nbr,
                basis,
                h,
                gt,
                retype(wt),
                retype(bt),
            )),
        });
    }
    let as_view = |t: Option<Tensor>, like: Tensor| t.map(|t| flat(t, &dims(&like)));
    let mut out = vec![
        as_view(d_x, x),
        None,
        as_view(d_basis, basis),
        as_view(d_h, h),
        as_view(d_w, w),
        as_view(d_b, b),
    ];
    for (t, d) in d_heads.into_iter().enumerate() {
        out.push(as_view(d, inputs[6 + t]));
    }
    out
}
