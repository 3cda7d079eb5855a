//! Vector-Jacobian product of [`EdgeContract`](super::EdgeContract) (sum and logits, any number
//! of heads), emitted as graph ops.
//!
//! Both kinds are `Σ_e <G_e, m_e>` in their cotangent, with the per-edge cotangent of the message
//! `G_e[o, p] = a_e g_i[o, p]` (sum: `g` the output gradient, `a` the pooling or attention
//! weights) or `G_e[o, p] = dl_e q_i[o, p]` (logits), per head. So the two kinds are each
//! other's adjoints in their per-head input, and both are computed by the fused kernel:
//! `da = edge_contract_logits(q := g)`, `dq = edge_contract_sum(a := dl)`. The node features'
//! gradient `dx_j[c, q] = Σ_{e: nbr e = j} Σ_{p, f} K_e[p, q, f] Σ_o R_e[o, (f, c)] G_e[o, p]` is
//! the fused [`RadialEdgeConv`] kernel with the roles of input and output swapped (input rows
//! `g_i` or `q_i`, edge weights `a` or `dl`, pooling into the neighbours `nbr`, basis and last
//! layer transposed), so the per-edge radial weights are not formed for it. The last layer's
//! weights and the hidden values get their gradients from the fused [`EdgeContractGrad`] nodes
//! (one per kind over all heads), per node as the forward: with `G_e = u_e r_i` and
//! `Gw_i[(p, f, c), h] = Σ_o W[(f, c, h), o] r_i[o, p]`, `dh_e = u_e Kx_e · Gw_i`,
//! `dW = Σ_i r_i (Σ_{e of i} u_e Kx_e ⊗ h_e)`, `db = Σ_i r_i Σ_e u_e Kx_e` (`backward_cpu.rs`);
//! no per-edge `dR_e [c_out, c_in nf]` is formed. The basis (coordinates) gets
//! `dK_e[p, q, f] = Σ_c dKx_e[p, (f, c)] x_j[c, q]` from `dKx_e = u_e (h_e · Gw_i + r_i^T b)`,
//! formed per node as graph ops for degree-0 outputs ([`reassociate`]) and as `G_e^T R_e` with
//! `R_e` per edge otherwise (only models with coordinate gradients through the basis ask for it).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::{symbolic::Expression, *};

use super::backward_cpu::{EdgeContractGrad, LastLayerGrad};
use super::{edge_contract_logits, edge_contract_sum, ContractKind};
use crate::autodiff::emit::{add, contiguous, copy, dims, expand, mul, plain, sum_axis, Tensor};
use crate::exec::view::View;
use crate::layers::graph::{bmm, expand_at, mm, permute, reshape, retype, transpose, X};
use crate::ops::edge_conv::backward::flat;
use crate::ops::edge_conv::{PairShape, RadialEdgeConv, RadialMode};
use crate::ops::gather::GatherRows;
use crate::ops::size_view;

type T2 = GraphTensor<(X, X)>;
type T3 = GraphTensor<(X, X, X)>;
type T4 = GraphTensor<(X, X, X, X)>;

/// The node of each edge of edges grouped by node: input a size carrier `[n, k]`, output
/// `[n k]` with `i` at edges `i k .. (i + 1) k`.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeOwner;

impl Operator for EdgeOwner {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<luminal::prelude::Tensor> {
        let empty = Default::default();
        let v = View::new(&inp[0].1, &empty);
        let (n, k) = (v.axes[0].len, v.axes[1].len);
        let mut out = crate::exec::pool::take(n * k);
        for (i, row) in out.chunks_mut(k.max(1)).enumerate() {
            row.fill(i as f32);
        }
        crate::exec::pool::finish(inp, out)
    }
}

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
    let h2: T2 = reshape(h, &[e, hd.into()]);
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
    if wanted[3] {
        d_h = Some(last_layer(LastLayerGrad::Hidden, &[e, hd.into()]));
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
    // what is left for the per-head loop: the node features, the per-head inputs and the
    // basis (whose last-layer part keeps its per-node or per-edge form)
    let rest: Vec<bool> = wanted
        .iter()
        .enumerate()
        .map(|(i, &w)| w && !(3..=5).contains(&i))
        .collect();
    let wanted = &rest[..];
    // transposed basis [e, mo, nf mi] (also Kx's left factor [e, mo nf, mi])
    let need_basis_t = wanted[0] || wanted[3] || wanted[4] || wanted[5];
    let basis_t: Option<T3> = need_basis_t.then(|| {
        let b4: T4 = retype(basis);
        reshape(
            permute(b4, &[0, 1, 3, 2]),
            &[e, mo.into(), (nf * mi).into()],
        )
    });
    let xj: T3 = {
        let id = x
            .graph()
            .add_op(GatherRows)
            .input(x.id, 0, x.shape)
            .input(nbr.id, 0, nbr.shape)
            .finish();
        GraphTensor::from_id(id, ShapeTracker::new(&[e, ci.into(), mi.into()]), gref)
    };
    let need_dr = wanted[3] || wanted[4] || wanted[5];
    let kx: Option<T3> = basis_t.filter(|_| need_dr).map(|bt| {
        let bt: T3 = reshape(bt, &[e, (mo * nf).into(), mi.into()]);
        reshape(bmm(bt, permute(xj, &[0, 2, 1])), &[e, mo.into(), cf.into()])
    });
    let owner = wanted[0].then(|| {
        let id = x
            .graph()
            .add_op(EdgeOwner)
            .input(nbr.id, 0, size_view(&[n, k]))
            .finish();
        plain(id, &[e], gref)
    });
    let (mut d_x, mut d_basis) = (None::<Tensor>, None::<Tensor>);
    let mut d_heads = vec![None; heads];
    let acc = accumulate;
    for t in 0..heads {
        let per_head = inputs[6 + t];
        let (wt, bt) = (columns(wc, t * cnt, cnt), columns(bc, t * cnt, cnt));
        let gt = gts[t];
        // rows whose outer product with the edge weights is the per-edge cotangent G_e
        let (rows, weights): (Tensor, Tensor) = match kind {
            ContractKind::Sum => (gt, per_head),
            ContractKind::Logits => (per_head, gt),
        };
        if wanted[6 + t] {
            d_heads[t] = Some(match kind {
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
        let w4: T4 = reshape(wt, &[nf.into(), ci.into(), hd.into(), cnt.into()]);
        if let (true, Some(kt), Some(owner)) = (wanted[0], basis_t, owner) {
            let wt_t: T2 = reshape(
                permute(w4, &[1, 3, 0, 2]),
                &[(ci * cnt * nf).into(), hd.into()],
            );
            let b3: T3 = reshape(bt, &[nf.into(), ci.into(), cnt.into()]);
            let bt_t: GraphTensor<(X,)> =
                reshape(permute(b3, &[1, 2, 0]), &[(ci * cnt * nf).into()]);
            let x_rows: T2 = reshape(rows, &[n, (cnt * mo).into()]);
            let ew: GraphTensor<(X,)> = reshape(weights, &[e]);
            let shape = PairShape {
                c_in: cnt,
                d_in: (mo - 1) / 2,
                nf,
                c_out: ci,
                d_out: (mi - 1) / 2,
            };
            let id = x
                .graph()
                .add_op(RadialEdgeConv {
                    shape,
                    mode: RadialMode::Auto,
                })
                .input(x_rows.id, 0, x_rows.shape)
                .input(kt.id, 0, kt.shape)
                .input(h2.id, 0, h2.shape)
                .input(wt_t.id, 0, wt_t.shape)
                .input(bt_t.id, 0, bt_t.shape)
                .input(ew.id, 0, ew.shape)
                .input(owner.id, 0, owner.shape)
                .input(nbr.id, 0, nbr.shape)
                .input(nbr.id, 0, size_view(&[n]))
                .finish();
            acc(&mut d_x, plain(id, &[n, (ci * mi).into()], gref));
        }
        if !(need_dr || wanted[2]) {
            continue;
        }
        if reassociate(mo) {
            // reassociated around the last layer (module doc of `edge_contract`): with the rows
            // r_i [cnt, mo] and edge weights u_e of G_e = u_e r_i, per node
            // Gw_i[(p, f, c), h] = sum_o W[(f, c, h), o] r_i[o, p] ([n, mo cf, hd]), then per edge
            // dh_e = u_e Kx_e . Gw_i, dKx_e = u_e (h_e . Gw_i + r_i^T b), and the last layer's
            // dW = sum_i r_i (sum_e u_e Kx_e (x) h_e)_i, db = sum_i r_i (sum_e u_e Kx_e)_i: every
            // product is a per-node GEMM of the forward's size; dR_e [cnt, cf] is never formed.
            let r_t: T3 = permute(retype::<(), (X, X, X)>(rows), &[0, 2, 1]);
            let r2: T2 = reshape(r_t, &[n * mo, cnt.into()]);
            let u_e: GraphTensor<(X,)> = reshape(weights, &[e]);
            let u_eh: T2 = expand_at(u_e, 1, hd);
            let need_gw = wanted[3] || wanted[2];
            let gw: Option<T3> = need_gw.then(|| {
                let g2: T2 = mm(r2, transpose(retype(wt)));
                reshape(g2, &[n, (mo * cf).into(), hd.into()])
            });
            let hu: Option<T3> = (wanted[4] || wanted[2]).then(|| {
                let hu: T2 = h2 * u_eh;
                reshape(hu, &[n, k, hd.into()])
            });
            if let Some(kx) = kx {
                let kx3: T3 = reshape(kx, &[n, k, (mo * cf).into()]);
                if let (true, Some(gw)) = (wanted[3], gw) {
                    let dh: T2 = reshape(bmm(kx3, gw), &[e, hd.into()]);
                    acc(&mut d_h, retype(dh * u_eh));
                }
                if let (true, Some(hu)) = (wanted[4], hu) {
                    let a: T3 = bmm(permute(kx3, &[0, 2, 1]), hu);
                    let a2: T2 = reshape(a, &[n * mo, (cf * hd).into()]);
                    let dw: T2 = mm(transpose(a2), r2);
                    acc(&mut d_w, pad_columns(retype(dw), t * cnt, cols));
                }
                if wanted[5] {
                    let u3: T3 = reshape(u_e, &[n, 1.into(), k]);
                    let bsum: T2 = reshape(bmm(u3, kx3), &[n * mo, cf.into()]);
                    let db: T2 = mm(transpose(bsum), r2);
                    acc(&mut d_b, pad_columns(retype(db), t * cnt, cols));
                }
            }
            if let (true, Some(gw), Some(hu)) = (wanted[2], gw, hu) {
                // dKx_e [e, mo, cf] = u_e (h_e . Gw_i + r_i^T b)
                let dk: T3 = bmm(hu, permute(gw, &[0, 2, 1]));
                let rb: T2 = mm(r2, transpose(retype(bt)));
                let rb_n: T2 = reshape(rb, &[n, (mo * cf).into()]);
                let rb_e: T3 = expand_at(rb_n, 1, k);
                let u_k: T3 = expand_at(reshape::<_, (X, X)>(u_e, &[n, k]), 2, mo * cf);
                let dkx: T3 = dk + rb_e * u_k;
                let dkx: T3 = reshape(dkx, &[e, (mo * nf).into(), ci.into()]);
                let db4: T4 = reshape(bmm(dkx, xj), &[e, mo.into(), nf.into(), mi.into()]);
                acc(&mut d_basis, retype(permute(db4, &[0, 1, 3, 2])));
            }
        } else {
            per_edge_last_layer(
                &LastLayer {
                    wt,
                    bt,
                    h2,
                    kx,
                    xj,
                    rows,
                    weights,
                },
                &Dims {
                    e,
                    k,
                    cnt,
                    cf,
                    hd,
                    mo,
                    nf,
                    ci,
                    mi,
                    cols,
                    t,
                },
                wanted,
                &mut [&mut d_w, &mut d_b, &mut d_h, &mut d_basis],
            );
        }
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

/// `sum += t` on an optional sum (the first term starts it).
fn accumulate(sum: &mut Option<Tensor>, t: Tensor) {
    *sum = Some(match *sum {
        Some(s) => add(s, t),
        None => t,
    });
}

/// A plain `[rows, cnt]` matrix placed at columns `c0 .. c0 + cnt` of `[rows, cols]` (zeros
/// elsewhere), as a padded view.
fn pad_columns(m: Tensor, c0: usize, cols: usize) -> Tensor {
    let cnt = dims(&m)[1].to_usize().unwrap_or(0);
    if c0 == 0 && cnt == cols {
        return m;
    }
    let mut st = m.shape;
    st.pad(&[(0.into(), 0.into()), (c0.into(), (cols - c0 - cnt).into())]);
    copy(GraphTensor::from_id(m.id, st, m.graph_ref))
}

/// Whether the last layer's gradients of a pair with `mo = 2 l_out + 1` output components are
/// taken per node (reassociated) rather than through the per-edge `dR_e [cnt, cf]`.
///
/// Per head, the per-edge form costs `e cnt cf hd` multiply-adds for each of `dW`, `dh` (and
/// `R_e` for the basis) and holds `[e, cnt cf]`; the reassociated one costs `n mo cf hd cnt +
/// e mo cf hd` and holds `Gw` and `A`, `[n, mo cf, hd]` each, `mo hd / (k cnt)` times as much.
/// At the SE(3)-Transformer's sizes (`hd` 128, 16 neighbours, 16 channels a head) degree-0
/// outputs take 8x fewer multiply-adds in half the memory. Degree 1 would take 2.7x fewer at
/// 1.5x the memory, degree 2 1.6x fewer at 2.5x: measured on a training step (degrees 0-1 and
/// 0-2, 128 and 512 nodes), reassociating degree 0 only gave 1.40 / 4.68 / 4.79 -> 1.26 / 3.97
/// / 4.27 s with peaks 514 / 1181 / 1531 -> 511 / 1160 / 1519 MiB; adding degree 1 gained
/// another 2-5% of time for 30-140 MiB more. The neighbour count is a run-time size of the
/// graph, so the rule does not read it.
pub(crate) fn reassociate(mo: usize) -> bool {
    mo == 1
}

/// The views the last layer's gradients are formed from (per head).
struct LastLayer {
    wt: Tensor,
    bt: Tensor,
    h2: T2,
    kx: Option<T3>,
    xj: T3,
    rows: Tensor,
    weights: Tensor,
}

/// Sizes of one head's contraction.
struct Dims {
    e: Expression,
    k: Expression,
    cnt: usize,
    cf: usize,
    hd: usize,
    mo: usize,
    nf: usize,
    ci: usize,
    mi: usize,
    cols: usize,
    t: usize,
}

/// The last layer's gradients through the per-edge `dR_e[o, (f, c)] = sum_p G_e[o, p]
/// Kx_e[p, (f, c)]` (`G_e = u_e r_i`): `dW = dR^T h`, `db = sum_e dR_e`, `dh = dR W`, and for the
/// basis `dKx_e = G_e^T R_e` with `R_e` formed per edge; accumulated into `acc` = `[dW, db, dh,
/// dbasis]`.
fn per_edge_last_layer(
    v: &LastLayer,
    d: &Dims,
    wanted: &[bool],
    acc: &mut [&mut Option<Tensor>; 4],
) {
    let add_to = accumulate;
    let (e, cnt, cf, hd, mo) = (d.e, d.cnt, d.cf, d.hd, d.mo);
    let w4: T4 = reshape(v.wt, &[d.nf.into(), d.ci.into(), hd.into(), cnt.into()]);
    let w_rows: T2 = reshape(permute(w4, &[3, 0, 1, 2]), &[(cnt * cf).into(), hd.into()]);
    // G_e [e, cnt, mo]
    let r4 = expand(v.rows, 1, d.k);
    let w4e = expand(expand(v.weights, 2, cnt.into()), 3, mo.into());
    let gg: T3 = reshape(mul(r4, w4e), &[e, cnt.into(), mo.into()]);
    if let Some(kx) = v.kx {
        let dr: T2 = reshape(bmm(gg, kx), &[e, (cnt * cf).into()]);
        if wanted[4] {
            let z: T3 = reshape(mm(transpose(dr), v.h2), &[cnt.into(), cf.into(), hd.into()]);
            let dw: T2 = reshape(permute(z, &[1, 2, 0]), &[(cf * hd).into(), cnt.into()]);
            add_to(acc[0], pad_columns(retype(dw), d.t * cnt, d.cols));
        }
        if wanted[5] {
            let db: T2 = reshape(sum_axis(retype(dr), 0), &[cnt.into(), cf.into()]);
            let db: T2 = reshape(transpose(db), &[cf.into(), cnt.into()]);
            add_to(acc[1], pad_columns(retype(db), d.t * cnt, d.cols));
        }
        if wanted[3] {
            add_to(acc[2], retype(mm(dr, w_rows)));
        }
    }
    if wanted[2] {
        // dKx_e = G_e^T R_e, R_e = W h_e + b: [e, mo, cf]
        let b_rows: GraphTensor<(X,)> = reshape(transpose(retype(v.bt)), &[(cnt * cf).into()]);
        let r = add(
            retype(mm(v.h2, transpose(w_rows))),
            expand(retype(b_rows), 0, e),
        );
        let r: T3 = reshape(r, &[e, cnt.into(), cf.into()]);
        let dkx = bmm(permute(gg, &[0, 2, 1]), r);
        let dkx: T3 = reshape(dkx, &[e, (mo * d.nf).into(), d.ci.into()]);
        let db4: T4 = reshape(bmm(dkx, v.xj), &[e, mo.into(), d.nf.into(), d.mi.into()]);
        add_to(acc[3], retype(permute(db4, &[0, 1, 3, 2])));
    }
}
