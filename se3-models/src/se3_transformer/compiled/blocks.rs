//! The layers of the SE(3)-Transformer as luminal graph code: LinearSE3, NormSE3, the radial
//! network, ConvSE3 with the reassociated contraction (the radial network's last layer applied per
//! node after the neighbour sum), and AttentionSE3 with the query folded into the key weights.
//!
//! Layouts: node features of degree l are `[n, c, 2l + 1]`; per-edge tensors are `[e, ..]` with
//! `e = n k` (neighbour `kk` of node `i` at row `i k + kk`), viewed as `[n, k, ..]` for per-node
//! sums. `Kx` of a degree pair is `[n, k, F]` with `F = (p, c, f)`: output order `p`, input channel
//! `c`, basis index `f`, `Kx[f, c, p] = sum_q K_f[p, q] x_j[c, q]`.

use std::collections::BTreeMap;

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::Session;

use super::tensor::{
    bmm, bmm_shared, dims, expand_at, gelu, layer_norm, max_axis, mm, permute, reshape, retype,
    sum_axis, T1, T2, T3, T4, T5, X,
};
use crate::se3_transformer::attention::{AttentionSe3, KeyProj};
use crate::se3_transformer::conv::{ConvSe3, Pair};
use crate::se3_transformer::features::{LinearSe3, Mat};
use crate::se3_transformer::norm::{NormParam, NormSe3};
use crate::se3_transformer::radial::RADIAL_HIDDEN;
use crate::Error;

/// Node features on the graph, degree -> `[n, c, 2l + 1]`.
pub(crate) type GFeats = BTreeMap<usize, T3>;

/// What every layer reads: the session (for weights), the graph inputs and the sizes.
pub(crate) struct Ctx<'a> {
    pub s: &'a mut Session,
    next: usize,
    /// `n`, `k`, `e` as expressions.
    pub n: Expression,
    pub k: Expression,
    pub e: Expression,
    /// Neighbour index per edge, `[e]`.
    pub nbr: GraphTensor<(Dyn<'e'>,)>,
    /// 1 for a valid neighbour, `[n, k]`.
    pub valid: T2,
    /// 1 / (valid neighbours) on valid edges, `[n, k]` (mean pooling).
    pub pool_w: T2,
    /// Radial network input per edge, `[e, n_in]`.
    pub radial_in: T2,
    /// Kernel basis per degree pair `(d_in, d_out)`, `[e, 2 d_out + 1, 2 d_in + 1, nf]`.
    pub basis: BTreeMap<(usize, usize), T4>,
    /// Global features `[g, dim]`, if any.
    pub global: Option<T2>,
    /// Radial hidden activations of every pair of the model, computed together.
    bank: Option<RadialBank>,
    /// Rotary embedding inputs (degree-0 attention), if the model has them.
    pub rotary: Option<RotaryInputs>,
}

/// Rotary embeddings as graph inputs: per channel of a head, `cos` and `sin` of the angle
/// (1 and 0 past the rotated channels) for queries and self keys (`[n, dh]`, position `i`, distance
/// 0) and for neighbour keys and values (`[e, dh]`, position `j`, distance `|r_ij|`); `half` maps
/// `t` to the library's `rotate_half(t)` (`[dh, dh]`, zero past the rotated channels).
#[derive(Clone, Copy)]
pub(crate) struct RotaryInputs {
    pub node_cos: T2,
    pub node_sin: T2,
    pub edge_cos: T2,
    pub edge_sin: T2,
    pub half: T2,
}

/// `t cos + rotate_half(t) sin` on rows of `[rows, dh]`.
fn rotate(t: T2, cos: T2, sin: T2, half: T2) -> T2 {
    t * cos + mm(t, half) * sin
}

/// Per-edge degree-0 messages of a pair with output degree 0, formed directly (radial weights per
/// edge), for output channels `c0..c0 + cnt`: `[e, cnt]`. Used where a per-edge rotation sits
/// between the message and the neighbour sum (rotary embeddings).
fn direct_message(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    c0: usize,
    cnt: usize,
) -> Result<T2, Error> {
    let p = pe.pair;
    let e = ctx.e;
    let cf = pe.width; // d_out = 0: one basis function, one output component
    let last = &p.radial.l6;
    let hd = last.n_in;
    let mut w = vec![0.0; hd * cnt * cf];
    let mut b = vec![0.0; cnt * cf];
    for o in 0..cnt {
        for j in 0..cf {
            let row = (c0 + o) * cf + j;
            for h in 0..hd {
                w[h * cnt * cf + o * cf + j] = last.w[row * hd + h];
            }
            b[o * cf + j] = last.b[row];
        }
    }
    let wt: T2 = ctx.constant(&w, &[hd, cnt * cf])?;
    let bt: T1 = ctx.constant(&b, &[cnt * cf])?;
    let h2: T2 = reshape(pe.h, &[e, hd.into()]);
    let r = mm(h2, wt) + expand_at::<_, (X, X)>(bt, 0, e);
    let r3: T3 = reshape(r, &[e, cnt.into(), cf.into()]);
    let kx2: T2 = reshape(pe.kx, &[e, cf.into()]);
    Ok(sum_axis(r3 * expand_at::<_, (X, X, X)>(kx2, 1, cnt), 2))
}

/// The radial networks of every degree pair of every ConvSE3 of the model up to their last layer,
/// evaluated together (they all read the same radial input): `[P, e, 128]`, one row block per
/// pair, so the whole model runs two GEMMs and one grouped LayerNorm + GELU per layer instead of
/// one chain per pair.
struct RadialBank {
    index: std::collections::HashMap<usize, usize>,
    all: T3,
    cache: std::collections::HashMap<usize, T3>,
}

fn pair_key(p: &Pair) -> usize {
    p as *const Pair as usize
}

/// LayerNorm over the last axis of `[a, b, 128]` with per-block affine `[.., 128]` given already
/// broadcast to the shape of `x`.
fn layer_norm_last(x: T3, gamma: T3, beta: T3) -> T3 {
    let d = dims(x);
    let inv_w = 1.0 / RADIAL_HIDDEN as f32;
    let mean: T2 = sum_axis::<_, (X, X)>(x, 2) * inv_w;
    let centered = x - expand_at::<_, (X, X, X)>(mean, 2, d[2]);
    let var: T2 = sum_axis::<_, (X, X)>(centered * centered, 2) * inv_w;
    let inv = (var + 1e-5).sqrt().recip();
    centered * expand_at::<_, (X, X, X)>(inv, 2, d[2]) * gamma + beta
}

impl Ctx<'_> {
    pub(crate) fn new<'a>(
        s: &'a mut Session,
        nbr: GraphTensor<(Dyn<'e'>,)>,
        valid: T2,
        pool_w: T2,
        radial_in: T2,
        basis: BTreeMap<(usize, usize), T4>,
        global: Option<T2>,
    ) -> Ctx<'a> {
        Ctx {
            s,
            next: 0,
            n: Expression::from('n'),
            k: Expression::from('k'),
            e: Expression::from('e'),
            nbr,
            valid,
            pool_w,
            radial_in,
            basis,
            global,
            bank: None,
            rotary: None,
        }
    }

    /// Evaluates the radial networks of `pairs` (every pair of the model) together; later
    /// [`pair_edges`] calls take their hidden activations from here.
    ///
    /// # Errors
    /// Weight errors of the session.
    pub(crate) fn radial_bank(&mut self, pairs: &[&Pair]) -> Result<(), Error> {
        let np = pairs.len();
        if np == 0 {
            return Ok(());
        }
        let hd = RADIAL_HIDDEN;
        let n_in = pairs[0].radial.l0.n_in;
        let mut w0 = vec![0.0; n_in * np * hd];
        let (mut b0, mut g1, mut be1) = (Vec::new(), Vec::new(), Vec::new());
        let mut w3 = vec![0.0; np * hd * hd];
        let (mut b3, mut g4, mut be4) = (Vec::new(), Vec::new(), Vec::new());
        let mut index = std::collections::HashMap::new();
        for (pi, p) in pairs.iter().enumerate() {
            let r = &p.radial;
            for j in 0..hd {
                for i in 0..n_in {
                    w0[i * np * hd + pi * hd + j] = r.l0.w[j * n_in + i];
                }
                for i in 0..hd {
                    w3[(pi * hd + i) * hd + j] = r.l3.w[j * hd + i];
                }
            }
            b0.extend_from_slice(&r.l0.b);
            g1.extend_from_slice(&r.n1.w);
            be1.extend_from_slice(&r.n1.b);
            b3.extend_from_slice(&r.l3.b);
            g4.extend_from_slice(&r.n4.w);
            be4.extend_from_slice(&r.n4.b);
            index.insert(pair_key(p), pi);
        }
        let e = self.e;
        let w0t: T2 = self.constant(&w0, &[n_in, np * hd])?;
        let b0t: T1 = self.constant(&b0, &[np * hd])?;
        let g1t: T2 = self.constant(&g1, &[np, hd])?;
        let be1t: T2 = self.constant(&be1, &[np, hd])?;
        let w3t: T3 = self.constant(&w3, &[np, hd, hd])?;
        let b3t: T2 = self.constant(&b3, &[np, hd])?;
        let g4t: T2 = self.constant(&g4, &[np, hd])?;
        let be4t: T2 = self.constant(&be4, &[np, hd])?;
        let h = mm(self.radial_in, w0t) + expand_at::<_, (X, X)>(b0t, 0, e);
        let h3: T3 = reshape(h, &[e, np.into(), hd.into()]); // [e, P, 128]
        let h3 = gelu(layer_norm_last(
            h3,
            expand_at(g1t, 0, e),
            expand_at(be1t, 0, e),
        ));
        let h2 = bmm(permute(h3, &[1, 0, 2]), w3t) + expand_at::<_, (X, X, X)>(b3t, 1, e); // [P, e, 128]
        let all = gelu(layer_norm_last(
            h2,
            expand_at(g4t, 1, e),
            expand_at(be4t, 1, e),
        ));
        self.bank = Some(RadialBank {
            index,
            all,
            cache: std::collections::HashMap::new(),
        });
        Ok(())
    }

    /// The radial hidden activations of pair `p` as `[n, k, 128]`: from the bank if it holds `p`,
    /// else evaluated for `p` alone.
    fn radial_hidden(&mut self, p: &Pair) -> Result<T3, Error> {
        let (n, k, e) = (self.n, self.k, self.e);
        if let Some(bank) = &mut self.bank {
            if let Some(&pi) = bank.index.get(&pair_key(p)) {
                if let Some(&h) = bank.cache.get(&pair_key(p)) {
                    return Ok(h);
                }
                let mut st = bank.all.shape;
                st.slice(&[
                    (Expression::from(pi), Expression::from(pi + 1)),
                    (0.into(), i32::MAX.into()),
                    (0.into(), i32::MAX.into()),
                ]);
                let sliced: T3 = GraphTensor::from_id(bank.all.id, st, bank.all.graph_ref);
                let h: T3 = reshape(sliced.contiguous(), &[n, k, RADIAL_HIDDEN.into()]);
                bank.cache.insert(pair_key(p), h);
                return Ok(h);
            }
        }
        let r = &p.radial;
        let w0: T2 = self.constant(
            &transpose(&r.l0.w, r.l0.n_out, r.l0.n_in),
            &[r.l0.n_in, r.l0.n_out],
        )?;
        let b0: T1 = self.constant(&r.l0.b, &[r.l0.n_out])?;
        let g1: T1 = self.constant(&r.n1.w, &[RADIAL_HIDDEN])?;
        let be1: T1 = self.constant(&r.n1.b, &[RADIAL_HIDDEN])?;
        let w3: T2 = self.constant(
            &transpose(&r.l3.w, r.l3.n_out, r.l3.n_in),
            &[r.l3.n_in, r.l3.n_out],
        )?;
        let b3: T1 = self.constant(&r.l3.b, &[r.l3.n_out])?;
        let g4: T1 = self.constant(&r.n4.w, &[RADIAL_HIDDEN])?;
        let be4: T1 = self.constant(&r.n4.b, &[RADIAL_HIDDEN])?;
        let h = mm(self.radial_in, w0) + expand_at::<_, (X, X)>(b0, 0, e);
        let h = gelu(layer_norm(h, g1, be1, RADIAL_HIDDEN));
        let h = mm(h, w3) + expand_at::<_, (X, X)>(b3, 0, e);
        let h = gelu(layer_norm(h, g4, be4, RADIAL_HIDDEN));
        Ok(reshape(h, &[n, k, RADIAL_HIDDEN.into()]))
    }

    /// A resident constant of `shape` holding `data` (f64 weights rounded to f32).
    pub(crate) fn constant<S: Shape>(
        &mut self,
        data: &[f64],
        shape: &[usize],
    ) -> Result<GraphTensor<S>, Error> {
        let name = format!("w{}", self.next);
        self.next += 1;
        let mut t = self.s.weight::<S>(&name);
        t.shape = ShapeTracker::new(
            &shape
                .iter()
                .map(|&d| Expression::from(d))
                .collect::<Vec<_>>(),
        );
        self.s
            .set_weight(&name, data.iter().map(|&v| v as f32).collect(), shape)?;
        Ok(t)
    }
}

/// `y[n, o, m] = sum_i x[n, i, m] W[i, o]` for a `[c_in, c_out]` weight on the graph.
fn linear_block(x: T3, w: T2) -> T3 {
    permute(bmm_shared(permute(x, &[0, 2, 1]), w), &[0, 2, 1])
}

/// Columns `cols` of a row-major `[rows, cols_total]` matrix.
fn columns(m: &Mat, start: usize, count: usize) -> Vec<f64> {
    (0..m.rows)
        .flat_map(|r| m.data[r * m.cols + start..r * m.cols + start + count].to_vec())
        .collect()
}

/// Rows `start..start + count` of a row-major `[rows, cols]` matrix.
fn rows(m: &Mat, start: usize, count: usize) -> Vec<f64> {
    m.data[start * m.cols..(start + count) * m.cols].to_vec()
}

/// LinearSE3 on the degrees `x` and `lin` share; optionally only output columns
/// `start..start + count` of every degree.
pub(crate) fn linear(
    ctx: &mut Ctx<'_>,
    lin: &LinearSe3,
    x: &GFeats,
    cols: Option<(usize, usize)>,
) -> Result<GFeats, Error> {
    let mut out = GFeats::new();
    for (l, w) in &lin.weights {
        let Some(&xl) = x.get(l) else { continue };
        let (start, count) = cols.unwrap_or((0, w.cols));
        let wt: T2 = ctx.constant(&columns(w, start, count), &[w.rows, count])?;
        out.insert(*l, linear_block(xl, wt));
    }
    Ok(out)
}

/// LinearSE3 restricted to input rows `start..start + count` (a head's share of `to_out`).
fn linear_rows(ctx: &mut Ctx<'_>, w: &Mat, x: T3, start: usize, count: usize) -> Result<T3, Error> {
    let wt: T2 = ctx.constant(&rows(w, start, count), &[count, w.cols])?;
    Ok(linear_block(x, wt))
}

/// NormSE3: `y = phi(|x| s) x / |x|` per channel (norm over the 2l + 1 components, floored at
/// 1e-12), `s` a learned scale or the gate `|x| W`; `phi` GELU (identity for the final norm).
pub(crate) fn norm(ctx: &mut Ctx<'_>, nrm: &NormSe3, x: &GFeats) -> Result<GFeats, Error> {
    let mut out = GFeats::new();
    for (&l, &xl) in x {
        let p = nrm.params.get(&l).ok_or(Error::MissingKey {
            key: format!("transform.{l}"),
            expected: vec![],
        })?;
        let d = dims(xl);
        let norms: T2 = sum_axis::<_, (X, X)>(xl * xl, 2).sqrt().max_f32(1e-12);
        let z = match p {
            NormParam::Scale(s) => {
                let st: T1 = ctx.constant(s, &[s.len()])?;
                norms * expand_at::<_, (X, X)>(st, 0, d[0])
            }
            NormParam::Gate(w) => {
                let wt: T2 = ctx.constant(&w.data, &[w.rows, w.cols])?;
                norms * mm(norms, wt)
            }
        };
        let f = if nrm.identity { z } else { gelu(z) };
        let ratio = f / norms;
        out.insert(l, xl * expand_at::<_, (X, X, X)>(ratio, 2, d[2]));
    }
    Ok(out)
}

/// `a + b` on the degrees of `a` (ResidualSE3).
pub(crate) fn residual(a: &GFeats, b: &GFeats) -> GFeats {
    a.iter()
        .map(|(&l, &t)| match b.get(&l) {
            Some(&u) => (l, t + u),
            None => (l, t),
        })
        .collect()
}

/// One degree pair of a ConvSE3 evaluated up to the radial network's last layer: the hidden
/// activations `h` (`[n, k, 128]`) and `Kx` (`[n, k, F]`).
pub(crate) struct PairEdges<'p> {
    pair: &'p Pair,
    h: T3,
    kx: T3,
    width: usize,
}

/// `h` and `Kx` of every pair of `conv` (optionally only those with output degree `only`).
pub(crate) fn pair_edges<'p>(
    ctx: &mut Ctx<'_>,
    conv: &'p ConvSe3,
    x: &GFeats,
    only: Option<usize>,
) -> Result<Vec<PairEdges<'p>>, Error> {
    let (n, k) = (ctx.n, ctx.k);
    let mut out = Vec::new();
    for p in conv
        .pairs
        .iter()
        .filter(|p| only.is_none_or(|d| d == p.d_out))
    {
        let xl = *x.get(&p.d_in).ok_or(Error::MissingInput {
            name: "features of a degree of fiber_in",
        })?;
        let (mi, mo) = (2 * p.d_in + 1, 2 * p.d_out + 1);
        let nf = 2 * p.d_in.min(p.d_out) + 1;
        let h3 = ctx.radial_hidden(p)?;
        // Kx[e, p, c, f] = sum_q K[e, p, q, f] x_j[e, c, q]
        let kb = *ctx
            .basis
            .get(&(p.d_in, p.d_out))
            .ok_or(Error::MissingInput {
                name: "kernel basis",
            })?;
        let xc: T3 = reshape(xl, &[n, p.c_in.into(), mi.into()]);
        let xj: T3 = retype(se3_core::ops::gather3::<X, X, X, Dyn<'e'>>(xc, ctx.nbr));
        let k5: T5 = expand_at(kb, 2, p.c_in);
        let x4: T4 = expand_at(xj, 1, mo);
        let x5: T5 = expand_at(x4, 4, nf);
        let kx: T4 = sum_axis(k5 * x5, 3);
        let width = mo * p.c_in * nf;
        let kx3: T3 = reshape(kx, &[n, k, width.into()]);
        out.push(PairEdges {
            pair: p,
            h: h3,
            kx: kx3,
            width,
        });
    }
    Ok(out)
}

fn transpose(w: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = w[i * c + j];
        }
    }
    t
}

/// The last radial layer of `p` for output channels `c0..c0 + cnt`, as `[(c, f, h), o]` and its
/// bias as `[(c, f), o]`.
fn last_layer(p: &Pair, c0: usize, cnt: usize) -> (Vec<f64>, Vec<f64>) {
    let nf = 2 * p.d_in.min(p.d_out) + 1;
    let last = &p.radial.l6;
    let hd = last.n_in;
    let cf = p.c_in * nf;
    let mut w = vec![0.0; cf * hd * cnt];
    let mut b = vec![0.0; cf * cnt];
    for o in 0..cnt {
        for j in 0..cf {
            let row = (c0 + o) * cf + j;
            for h in 0..hd {
                w[(j * hd + h) * cnt + o] = last.w[row * hd + h];
            }
            b[j * cnt + o] = last.b[row];
        }
    }
    (w, b)
}

/// `sum_j a_ij m_ij` for output channels `c0..c0 + cnt` of the degree of `pe`, reassociated:
/// `A_i = sum_j a_ij h_ij (x) Kx_ij` per node, then the last radial layer; `[n, cnt, 2l + 1]`.
pub(crate) fn weighted_sum(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    a: T2,
    c0: usize,
    cnt: usize,
) -> Result<T3, Error> {
    let p = pe.pair;
    let n = ctx.n;
    let mo = 2 * p.d_out + 1;
    let nf = 2 * p.d_in.min(p.d_out) + 1;
    let cf = p.c_in * nf;
    let (w, b) = last_layer(p, c0, cnt);
    let wt: T2 = ctx.constant(&w, &[cf * RADIAL_HIDDEN, cnt])?;
    let bt: T2 = ctx.constant(&b, &[cf, cnt])?;
    // the weights go on the 128 hidden values (fewer than the F entries of Kx for most pairs)
    let ah = pe.h * expand_at::<_, (X, X, X)>(a, 2, RADIAL_HIDDEN);
    let kxt = permute(pe.kx, &[0, 2, 1]); // [n, F, k]
                                          // [n, F, 128] = Kx^T (a h) per node, F = (p, c, f): viewed as [n, p, (c, f, h)] without a copy
    let acc = bmm(kxt, ah);
    let acc3: T3 = reshape(acc, &[n, mo.into(), (cf * RADIAL_HIDDEN).into()]);
    let a3: T3 = reshape(a, &[n, ctx.k, 1.into()]);
    let bsum = bmm(kxt, a3); // [n, F, 1]
    let b3: T3 = reshape(bsum, &[n, mo.into(), cf.into()]);
    let y = bmm_shared(acc3, wt) + bmm_shared(b3, bt); // [n, mo, cnt]
    Ok(permute(y, &[0, 2, 1]))
}

/// `sum_{o,p} q_i[o, p] m_ij[c0 + o, p]` per edge, the query folded into the last radial layer:
/// `[n, k]`.
pub(crate) fn query_logits(
    ctx: &mut Ctx<'_>,
    pe: &PairEdges<'_>,
    q: T3,
    c0: usize,
    cnt: usize,
) -> Result<T2, Error> {
    let p = pe.pair;
    let n = ctx.n;
    let nf = 2 * p.d_in.min(p.d_out) + 1;
    let cf = p.c_in * nf;
    let (w, b) = last_layer(p, c0, cnt);
    // [o, (c, f, h)] and [o, (c, f)]
    let wt: T2 = ctx.constant(
        &transpose(&w, cf * RADIAL_HIDDEN, cnt),
        &[cnt, cf * RADIAL_HIDDEN],
    )?;
    let bt: T2 = ctx.constant(&transpose(&b, cf, cnt), &[cnt, cf])?;
    let qp = permute(q, &[0, 2, 1]); // [n, p, o]
    let folded: T3 = reshape(
        bmm_shared(qp, wt),
        &[n, pe.width.into(), RADIAL_HIDDEN.into()],
    ); // [n, F, 128]
    let t = bmm(pe.kx, folded); // [n, k, 128]
    let main: T2 = sum_axis(t * pe.h, 2);
    let fb: T3 = reshape(bmm_shared(qp, bt), &[n, pe.width.into(), 1.into()]); // [n, F, 1]
    let bias: T2 = reshape(bmm(pe.kx, fb), &[n, ctx.k]);
    Ok(main + bias)
}

/// ConvSE3 with mean pooling over valid neighbours and self-interaction.
pub(crate) fn conv_pooled(ctx: &mut Ctx<'_>, conv: &ConvSe3, x: &GFeats) -> Result<GFeats, Error> {
    let pes = pair_edges(ctx, conv, x, None)?;
    let mut out = GFeats::new();
    for &(l, c) in &conv.fout {
        let mut acc: Option<T3> = None;
        for pe in pes.iter().filter(|pe| pe.pair.d_out == l) {
            let y = weighted_sum(ctx, pe, ctx.pool_w, 0, c)?;
            acc = Some(match acc {
                Some(a) => a + y,
                None => y,
            });
        }
        if let Some(a) = acc {
            out.insert(l, a);
        }
    }
    match &conv.self_interact {
        Some(si) => {
            let s = linear(ctx, si, x, None)?;
            Ok(residual(&out, &s))
        }
        None => Ok(out),
    }
}

/// `sum_{o,p} a[n, o, p] b[n, o, p]`: `[n]`.
fn inner(a: T3, b: T3) -> T1 {
    let s: T2 = sum_axis(a * b, 2);
    sum_axis(s, 1)
}

/// AttentionSE3 / OneHeadedKVAttentionSE3 (no rotary embeddings): per degree and head, logits of
/// the neighbours (conv keys with the query folded in, or gathered linear keys), of the self key,
/// the null key and the global keys; one softmax; values reassociated.
pub(crate) fn attention(
    ctx: &mut Ctx<'_>,
    att: &AttentionSe3,
    x: &GFeats,
) -> Result<GFeats, Error> {
    let o = att.o;
    let (h, dh) = (o.heads, o.dim_head);
    let scale = (dh as f32).powf(-0.5);
    let (n, k) = (ctx.n, ctx.k);
    let key_conv: Option<&ConvSe3> = match &att.to_k {
        KeyProj::Conv(c) => Some(c),
        KeyProj::Tied => Some(&att.to_v),
        KeyProj::Linear(_) => None,
    };
    let mut out = GFeats::new();
    for (&l, _) in x.iter() {
        let m = 2 * l + 1;
        let vpes = pair_edges(ctx, &att.to_v, x, Some(l))?;
        let kpes = match (key_conv, &att.to_k) {
            (Some(c), KeyProj::Conv(_)) => pair_edges(ctx, c, x, Some(l))?,
            _ => Vec::new(),
        };
        let mut result: Option<T3> = None;
        for hh in 0..h {
            let kc = if o.one_headed_kv { 0 } else { hh * dh };
            let q = *linear(ctx, &att.to_q, x, Some((hh * dh, dh)))?
                .get(&l)
                .ok_or(Error::MissingInput { name: "query" })?;
            let rot = if l == 0 { ctx.rotary } else { None };
            let q = match rot {
                Some(r) => {
                    let qf: T2 = reshape(q, &[n, dh.into()]);
                    reshape(
                        rotate(qf, r.node_cos, r.node_sin, r.half),
                        &[n, dh.into(), 1.into()],
                    )
                }
                None => q,
            };
            // neighbour logits
            let mut nl: Option<T2> = None;
            match &att.to_k {
                _ if rot.is_some() => {
                    let r = rot.ok_or(Error::MissingInput { name: "rotary" })?;
                    let keys: T2 = match &att.to_k {
                        KeyProj::Linear(lin) => {
                            let kl = *linear(ctx, lin, x, Some((kc, dh)))?
                                .get(&l)
                                .ok_or(Error::MissingInput { name: "keys" })?;
                            let kflat: T2 = reshape(kl, &[n, dh.into()]);
                            retype(se3_core::ops::gather::<X, X, Dyn<'e'>>(kflat, ctx.nbr))
                        }
                        _ => {
                            let pes = if matches!(att.to_k, KeyProj::Tied) {
                                &vpes
                            } else {
                                &kpes
                            };
                            let mut acc: Option<T2> = None;
                            for pe in pes {
                                let mk = direct_message(ctx, pe, kc, dh)?;
                                acc = Some(match acc {
                                    Some(a) => a + mk,
                                    None => mk,
                                });
                            }
                            acc.ok_or(Error::MissingInput { name: "keys" })?
                        }
                    };
                    let kr = rotate(keys, r.edge_cos, r.edge_sin, r.half);
                    let k3: T3 = reshape(kr, &[n, k, dh.into()]);
                    let qf: T2 = reshape(q, &[n, dh.into()]);
                    nl = Some(sum_axis(k3 * expand_at::<_, (X, X, X)>(qf, 1, k), 2));
                }
                KeyProj::Linear(lin) => {
                    let kl = *linear(ctx, lin, x, Some((kc, dh)))?
                        .get(&l)
                        .ok_or(Error::MissingInput { name: "keys" })?;
                    let kflat: T2 = reshape(kl, &[n, (dh * m).into()]);
                    let kj: T2 = retype(se3_core::ops::gather::<X, X, Dyn<'e'>>(kflat, ctx.nbr));
                    let kj3: T3 = reshape(kj, &[n, k, (dh * m).into()]);
                    let qf: T2 = reshape(q, &[n, (dh * m).into()]);
                    nl = Some(sum_axis(kj3 * expand_at::<_, (X, X, X)>(qf, 1, k), 2));
                }
                _ => {
                    let pes = if matches!(att.to_k, KeyProj::Tied) {
                        &vpes
                    } else {
                        &kpes
                    };
                    for pe in pes {
                        let lg = query_logits(ctx, pe, q, kc, dh)?;
                        nl = Some(match nl {
                            Some(a) => a + lg,
                            None => lg,
                        });
                    }
                }
            }
            let nl = nl.ok_or(Error::MissingInput { name: "keys" })? * scale;
            let z = nl * ctx.valid + (ctx.valid + (-1.0)) * f32::MAX;
            // pre slots: (logits [n, s], values [s, dh, m] or per node [n, dh, m])
            let mut mx: T1 = max_axis(z, 1);
            let mut singles: Vec<(T1, T3)> = Vec::new();
            let mut global: Option<(T2, T2)> = None;
            if let (Some((gk, gv)), 0, Some(gf)) = (&att.global_kv, l, ctx.global) {
                let wk = gk.weights.get(&0).ok_or(Error::MissingInput {
                    name: "global keys",
                })?;
                let wv = gv.weights.get(&0).ok_or(Error::MissingInput {
                    name: "global values",
                })?;
                let wkt: T2 = ctx.constant(&columns(wk, kc, dh), &[wk.rows, dh])?;
                let wvt: T2 = ctx.constant(&columns(wv, kc, dh), &[wv.rows, dh])?;
                let keys = mm(gf, wkt); // [g, dh]
                let vals = mm(gf, wvt);
                let qf: T2 = reshape(q, &[n, dh.into()]);
                let gl = mm(qf, permute(keys, &[1, 0])) * scale; // [n, g]
                mx = mx.max(max_axis(gl, 1));
                global = Some((gl, vals));
            }
            if o.use_null_kv {
                let nk = att
                    .null_k
                    .get(&l)
                    .ok_or(Error::MissingInput { name: "null keys" })?;
                let nv = att.null_v.get(&l).ok_or(Error::MissingInput {
                    name: "null values",
                })?;
                let nkt: T2 = ctx.constant(&nk[kc * m..(kc + dh) * m], &[dh, m])?;
                let nvt: T2 = ctx.constant(&nv[kc * m..(kc + dh) * m], &[dh, m])?;
                let nk3: T3 = expand_at(nkt, 0, n);
                let nv3: T3 = expand_at(nvt, 0, n);
                let lg = inner(q, nk3) * scale;
                mx = mx.max(lg);
                singles.push((lg, nv3));
            }
            if let Some((sk, sv)) = &att.self_kv {
                let skl = *linear(ctx, sk, x, Some((kc, dh)))?
                    .get(&l)
                    .ok_or(Error::MissingInput { name: "self keys" })?;
                let svl =
                    *linear(ctx, sv, x, Some((kc, dh)))?
                        .get(&l)
                        .ok_or(Error::MissingInput {
                            name: "self values",
                        })?;
                let (skl, svl) = match rot {
                    Some(r) => {
                        let f = |t: T3| -> T3 {
                            let t2: T2 = reshape(t, &[n, dh.into()]);
                            reshape(
                                rotate(t2, r.node_cos, r.node_sin, r.half),
                                &[n, dh.into(), 1.into()],
                            )
                        };
                        (f(skl), f(svl))
                    }
                    None => (skl, svl),
                };
                let lg = inner(q, skl) * scale;
                mx = mx.max(lg);
                singles.push((lg, svl));
            }
            let ex = (z - expand_at::<_, (X, X)>(mx, 1, k)).exp();
            let mut tot: T1 = sum_axis(ex, 1);
            let single_ex: Vec<(T1, T3)> = singles
                .iter()
                .map(|&(lg, v)| ((lg - mx).exp(), v))
                .collect();
            for (e1, _) in &single_ex {
                tot += *e1;
            }
            let global_ex = global.map(|(gl, vals)| {
                let g = dims(gl)[1];
                ((gl - expand_at::<_, (X, X)>(mx, 1, g)).exp(), vals)
            });
            if let Some((ge, _)) = &global_ex {
                tot += sum_axis::<_, (X,)>(*ge, 1);
            }
            let inv = tot.recip();
            let a = ex * expand_at::<_, (X, X)>(inv, 1, k);
            let mut oh: Option<T3> = None;
            if let Some(r) = rot {
                let mut acc: Option<T2> = None;
                for pe in &vpes {
                    let mv = direct_message(ctx, pe, kc, dh)?;
                    acc = Some(match acc {
                        Some(t) => t + mv,
                        None => mv,
                    });
                }
                let vals = acc.ok_or(Error::MissingInput { name: "values" })?;
                let vr = rotate(vals, r.edge_cos, r.edge_sin, r.half);
                let v3: T3 = reshape(vr, &[n, k, dh.into()]);
                let a3: T3 = reshape(a, &[n, 1.into(), k]);
                oh = Some(reshape(bmm(a3, v3), &[n, dh.into(), 1.into()]));
            } else {
                for pe in &vpes {
                    let y = weighted_sum(ctx, pe, a, kc, dh)?;
                    oh = Some(match oh {
                        Some(t) => t + y,
                        None => y,
                    });
                }
            }
            let mut oh = oh.ok_or(Error::MissingInput { name: "values" })?;
            for (e1, v) in single_ex {
                let w = e1 * inv;
                let w3: T3 = expand_at(expand_at::<_, (X, X)>(w, 1, dh), 2, m);
                oh += w3 * v;
            }
            if let Some((ge, vals)) = global_ex {
                let g = dims(ge)[1];
                let w = ge * expand_at::<_, (X, X)>(inv, 1, g);
                let gsum = mm(w, vals); // [n, dh]
                oh += reshape::<_, (X, X, X)>(gsum, &[n, dh.into(), 1.into()]);
            }
            let proj = match &att.to_out {
                Some(lin) => {
                    let w = lin
                        .weights
                        .get(&l)
                        .ok_or(Error::MissingInput { name: "to_out" })?;
                    linear_rows(ctx, w, oh, hh * dh, dh)?
                }
                None => oh,
            };
            result = Some(match result {
                Some(r) => r + proj,
                None => proj,
            });
        }
        out.insert(l, result.ok_or(Error::MissingInput { name: "heads" })?);
    }
    Ok(out)
}

/// `x W^T + b` for a `torch.nn.Linear` (`w` of shape `[n_out, n_in]`) on rows `[rows, n_in]`,
/// optionally only input columns `cols` of `w` (a block of a concatenated input), without bias.
fn dense(
    ctx: &mut Ctx<'_>,
    d: &crate::se3_transformer::radial::Dense,
    x: T2,
    cols: Option<(usize, usize)>,
    bias: bool,
) -> Result<T2, Error> {
    let (start, count) = cols.unwrap_or((0, d.n_in));
    let mut wt = vec![0.0; count * d.n_out];
    for o in 0..d.n_out {
        for i in 0..count {
            wt[i * d.n_out + o] = d.w[o * d.n_in + start + i];
        }
    }
    let w: T2 = ctx.constant(&wt, &[count, d.n_out])?;
    let y = mm(x, w);
    if bias {
        let b: T1 = ctx.constant(&d.b, &[d.n_out])?;
        let rows = dims(y)[0];
        Ok(y + expand_at::<_, (X, X)>(b, 0, rows))
    } else {
        Ok(y)
    }
}

fn silu(x: T2) -> T2 {
    x * x.sigmoid()
}

/// One EGNN layer of `SE3Transformer(use_egnn = True)` (as the oracle's `EgnnLayer`): edge MLP on
/// `[x_i, x_j, |h_i - h_j| per channel, |r_ij|, edge features]` over the self slot and the `k`
/// neighbours, messages summed over valid slots into the node MLP (residual), higher degrees
/// moved along `h_i - h_j` (every neighbour slot, as the library) and gated by the new nodes.
pub(crate) fn egnn_layer(
    ctx: &mut Ctx<'_>,
    layer: &crate::se3_transformer::egnn::EgnnLayer,
    x: &GFeats,
    dist: T2,
    edge_feat: Option<T2>,
) -> Result<GFeats, Error> {
    let (n, k, e) = (ctx.n, ctx.k, ctx.e);
    let x0 = *x.get(&0).ok_or(Error::MissingInput {
        name: "degree-0 features",
    })?;
    let d0 = dims(x0)[1].to_usize().unwrap_or(0);
    let nodes: T2 = reshape(x0, &[n, d0.into()]);
    let xi: T2 = reshape(expand_at::<_, (X, X, X)>(nodes, 1, k), &[e, d0.into()]);
    let xj: T2 = retype(se3_core::ops::gather::<X, X, Dyn<'e'>>(nodes, ctx.nbr));
    // edge MLP first layer as a sum over the blocks of its concatenated input
    let mut off = 0;
    let mut h_edge = dense(ctx, &layer.edge0, xi, Some((0, d0)), true)?;
    let h_self_a = dense(ctx, &layer.edge0, nodes, Some((0, d0)), true)?;
    h_edge += dense(ctx, &layer.edge0, xj, Some((d0, d0)), false)?;
    let h_self = h_self_a + dense(ctx, &layer.edge0, nodes, Some((d0, d0)), false)?;
    off += 2 * d0;
    let mut rels: Vec<(usize, usize, T3, T2)> = Vec::new();
    for &(l, c) in &layer.htypes {
        let hl = *x.get(&l).ok_or(Error::MissingInput {
            name: "higher-degree features",
        })?;
        let m = 2 * l + 1;
        let hc: T3 = reshape(hl, &[n, c.into(), m.into()]);
        let hi: T3 = reshape(
            expand_at::<_, (X, X, X, X)>(hc, 1, k),
            &[e, c.into(), m.into()],
        );
        let hj: T3 = retype(se3_core::ops::gather3::<X, X, X, Dyn<'e'>>(hc, ctx.nbr));
        let rel = hi - hj;
        let norm: T2 = sum_axis::<_, (X, X)>(rel * rel, 2).sqrt();
        h_edge += dense(ctx, &layer.edge0, norm, Some((off, c)), false)?;
        off += c;
        rels.push((l, c, rel, norm));
    }
    h_edge += dense(ctx, &layer.edge0, dist, Some((off, 1)), false)?;
    off += 1;
    if let Some(ef) = edge_feat {
        let w = dims(ef)[1].to_usize().unwrap_or(0);
        h_edge += dense(ctx, &layer.edge0, ef, Some((off, w)), false)?;
    }
    let m_edge = silu(dense(ctx, &layer.edge2, silu(h_edge), None, true)?); // [e, hidden]
    let m_self = silu(dense(ctx, &layer.edge2, silu(h_self), None, true)?); // [n, hidden]
    let hidden = layer.edge2.n_out;
    let m3: T3 = reshape(m_edge, &[n, k, hidden.into()]);
    let valid3: T3 = expand_at(ctx.valid, 2, hidden);
    let m_i: T2 = sum_axis::<_, (X, X)>(m3 * valid3, 1) + m_self;
    // higher-degree updates from the neighbour slots (the self slot has h_i - h_i = 0)
    let w1 = silu(dense(ctx, &layer.hmlp0, m_edge, None, true)?);
    let mut w = dense(ctx, &layer.hmlp2, w1, None, true)?; // [e, hdims]
    if let Some(cv) = layer.clamp {
        // (luminal 0.2's `clip(min, max)` applies the bounds the wrong way round)
        w = w.max_f32(-cv as f32).min_f32(cv as f32);
    }
    // node update
    let gamma: T1 = ctx.constant(&layer.node_norm.w, &[d0])?;
    let beta: T1 = ctx.constant(&layer.node_norm.b, &[d0])?;
    let normed = layer_norm(nodes, gamma, beta, d0);
    let h = dense(ctx, &layer.node0, normed, Some((0, d0)), true)?
        + dense(ctx, &layer.node0, m_i, Some((d0, hidden)), false)?;
    let new_nodes = dense(ctx, &layer.node2, silu(h), None, true)? + nodes;
    let mut out = GFeats::new();
    let mut woff = 0;
    for (l, c, rel, norm) in rels {
        let m = 2 * l + 1;
        let (scale, bias) = layer.htype_norms.get(&l).ok_or(Error::MissingInput {
            name: "htype norms",
        })?;
        let st: T1 = ctx.constant(scale, &[c])?;
        let bt: T1 = ctx.constant(bias, &[c])?;
        let f = norm * expand_at::<_, (X, X)>(st, 0, e) + expand_at::<_, (X, X)>(bt, 0, e);
        // w columns woff..woff + c, as a product with a selection matrix (no slicing)
        let hdims = layer.hmlp2.n_out;
        let mut sel = vec![0.0; hdims * c];
        for ch in 0..c {
            sel[(woff + ch) * c + ch] = 1.0;
        }
        let selt: T2 = ctx.constant(&sel, &[hdims, c])?;
        let wl = mm(w, selt); // [e, c]
        let coef = f * wl / norm.max_f32(1e-8); // [e, c]
        let upd = rel * expand_at::<_, (X, X, X)>(coef, 2, m); // [e, c, m]
        let upd4: T4 = reshape(upd, &[n, k, c.into(), m.into()]);
        let upd_i: T3 = sum_axis(upd4, 1); // [n, c, m]
        let gate = dense(ctx, &layer.htype_gating[&l], new_nodes, None, true)?.sigmoid(); // [n, c]
        let hl = *x.get(&l).ok_or(Error::MissingInput {
            name: "higher-degree features",
        })?;
        out.insert(l, (hl + upd_i) * expand_at::<_, (X, X, X)>(gate, 2, m));
        woff += c;
    }
    out.insert(0, reshape(new_nodes, &[n, d0.into(), 1.into()]));
    Ok(out)
}
