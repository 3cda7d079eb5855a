//! What every compiled layer reads: [`Ctx`] holds the session (weights become resident
//! constants), the per-run graph inputs (neighbour indices, validity, pooling weights, radial input,
//! kernel basis blocks, global features, rotary angles) and the radial networks of the whole model
//! evaluated together as an se3-core `RadialBank` ([`Ctx::radial_bank`]).
//!
//! Layouts: node features of degree l are `[n, c, 2l + 1]`; per-edge tensors are `[e, ..]` with
//! `e = n k` (neighbour `kk` of node `i` at row `i k + kk`), viewed as `[n, k, ..]` for per-node
//! sums.

use std::collections::BTreeMap;

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::Session;

use se3_core::layers::RadialMlp;
use se3_core::ops::{radial_hidden, RadialHiddenWeights};

use super::attention::RotaryInputs;
use super::tensor::{reshape, retype, T2, T3, T4};
use crate::se3_transformer::conv::Pair;
use crate::se3_transformer::radial::{RadialFunc, RADIAL_HIDDEN};
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
    bank: Option<ModelRadials>,
    /// Rotary embedding inputs (degree-0 attention), if the model has them.
    pub rotary: Option<RotaryInputs>,
}

/// The radial networks of every degree pair of every ConvSE3 of the model up to their last layer,
/// evaluated together as one se3-core [`RadialBank`] (they all read the same radial input), and
/// which bank row belongs to which pair.
pub(crate) struct ModelRadials {
    index: std::collections::HashMap<usize, usize>,
    /// `[P, e, 128]` from se3-core's fused [`radial_hidden`](se3_core::ops::radial_hidden()).
    all: T3,
}

pub(crate) fn pair_key(p: &Pair) -> usize {
    p as *const Pair as usize
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The float64 RadialFunc of a pair as an se3-core [`RadialMlp`] (weights rounded to f32).
pub(crate) fn radial_mlp(r: &RadialFunc) -> Result<RadialMlp, Error> {
    Ok(RadialMlp::from_values(
        r.l0.n_in,
        r.l6.n_out,
        vec![
            f32s(&r.l0.w),
            f32s(&r.l0.b),
            f32s(&r.n1.w),
            f32s(&r.n1.b),
            f32s(&r.l3.w),
            f32s(&r.l3.b),
            f32s(&r.n4.w),
            f32s(&r.n4.b),
            f32s(&r.l6.w),
            f32s(&r.l6.b),
        ],
    )?)
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

    /// Evaluates the radial networks of `pairs` (every pair of the model) together up to their
    /// last layer (se3-core's fused [`radial_hidden`]: one op, `[P, e, 128]`); later
    /// [`Ctx::radial_hidden`] calls take their hidden activations from here.
    ///
    /// # Errors
    /// Weight errors of the session; `MissingInput` if the networks' input widths differ.
    pub(crate) fn radial_bank(&mut self, pairs: &[&Pair]) -> Result<(), Error> {
        let Some(first) = pairs.first() else {
            return Ok(());
        };
        let (np, hd) = (pairs.len(), RADIAL_HIDDEN);
        let n_in = first.radial.l0.n_in;
        if pairs.iter().any(|p| p.radial.l0.n_in != n_in) {
            return Err(Error::MissingInput {
                name: "radial networks of one input width",
            });
        }
        let mut w0 = Vec::with_capacity(np * n_in * hd);
        let mut w3 = Vec::with_capacity(np * hd * hd);
        let mut rows: [Vec<f64>; 6] = Default::default();
        for p in pairs {
            let r = &p.radial;
            // torch Linear weights are (out, in): store (in, out)
            for i in 0..n_in {
                w0.extend((0..hd).map(|j| r.l0.w[j * n_in + i]));
            }
            for i in 0..hd {
                w3.extend((0..hd).map(|j| r.l3.w[j * hd + i]));
            }
            for (row, v) in rows
                .iter_mut()
                .zip([&r.l0.b, &r.n1.w, &r.n1.b, &r.l3.b, &r.n4.w, &r.n4.b])
            {
                row.extend_from_slice(v);
            }
        }
        let [b0, g1, be1, b3, g4, be4] = rows;
        let w = RadialHiddenWeights {
            w0: self.constant(&w0, &[np, n_in, hd])?,
            b0: self.constant(&b0, &[np, hd])?,
            g1: self.constant(&g1, &[np, hd])?,
            be1: self.constant(&be1, &[np, hd])?,
            w3: self.constant(&w3, &[np, hd, hd])?,
            b3: self.constant(&b3, &[np, hd])?,
            g4: self.constant(&g4, &[np, hd])?,
            be4: self.constant(&be4, &[np, hd])?,
        };
        let all = radial_hidden(self.radial_in, &w, 1e-5);
        let index = pairs
            .iter()
            .enumerate()
            .map(|(pi, p)| (pair_key(p), pi))
            .collect();
        self.bank = Some(ModelRadials { index, all });
        Ok(())
    }

    /// The radial hidden activations of pair `p`, `[1, e, 128]` (row-major `[e, 128]`): a view
    /// of the bank if it holds `p`, else evaluated for `p` alone ([`RadialMlp::build_hidden`]).
    pub(crate) fn radial_hidden(&mut self, p: &Pair) -> Result<T3, Error> {
        if let Some(m) = &self.bank {
            if let Some(&pi) = m.index.get(&pair_key(p)) {
                let mut st = m.all.shape;
                st.slice(&[
                    (Expression::from(pi), Expression::from(pi + 1)),
                    (0.into(), i32::MAX.into()),
                    (0.into(), i32::MAX.into()),
                ]);
                return Ok(GraphTensor::from_id(m.all.id, st, m.all.graph_ref));
            }
        }
        let net = radial_mlp(&p.radial)?;
        let prefix = self.prefix();
        let (h, _, _) = net.build_hidden(self.s, &prefix, retype(self.radial_in))?;
        Ok(reshape(h, &[1.into(), self.e, RADIAL_HIDDEN.into()]))
    }

    /// A fresh weight-name prefix `u<i>.` for an se3-core layer built on the session.
    pub(crate) fn prefix(&mut self) -> String {
        let p = format!("u{}.", self.next);
        self.next += 1;
        p
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
