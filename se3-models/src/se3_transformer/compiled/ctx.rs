//! What every compiled layer reads: [`Ctx`] holds the session (weights become resident
//! constants), the per-run graph inputs (neighbour indices, validity, pooling weights, radial input,
//! kernel basis blocks, global features, rotary angles) and the radial networks of the whole model
//! evaluated together ([`Ctx::radial_bank`]).
//!
//! Layouts: node features of degree l are `[n, c, 2l + 1]`; per-edge tensors are `[e, ..]` with
//! `e = n k` (neighbour `kk` of node `i` at row `i k + kk`), viewed as `[n, k, ..]` for per-node
//! sums.

use std::collections::BTreeMap;

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::Session;

use super::attention::RotaryInputs;
use super::tensor::{
    bmm, dims, expand_at, gelu, layer_norm, mm, permute, reshape, sum_axis, T1, T2, T3, T4, X,
};
use crate::se3_transformer::conv::Pair;
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

/// The radial networks of every degree pair of every ConvSE3 of the model up to their last layer,
/// evaluated together (they all read the same radial input): `[P, e, 128]`, one row block per
/// pair, so the whole model runs two GEMMs and one grouped LayerNorm + GELU per layer instead of
/// one chain per pair.
pub(crate) struct RadialBank {
    index: std::collections::HashMap<usize, usize>,
    all: T3,
    cache: std::collections::HashMap<usize, T3>,
}

pub(crate) fn pair_key(p: &Pair) -> usize {
    p as *const Pair as usize
}

/// LayerNorm over the last axis of `[a, b, 128]` with per-block affine `[.., 128]` given already
/// broadcast to the shape of `x`.
pub(crate) fn layer_norm_last(x: T3, gamma: T3, beta: T3) -> T3 {
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
    pub(crate) fn radial_hidden(&mut self, p: &Pair) -> Result<T3, Error> {
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

pub(crate) fn transpose(w: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = w[i * c + j];
        }
    }
    t
}
