//! What every compiled layer reads: [`Ctx`] holds the session (weights become resident
//! constants), the per-run graph inputs (neighbour indices, validity, pooling weights, radial input,
//! kernel basis blocks, global features, rotary angles) and the radial networks of the whole model
//! evaluated together by layer as se3-core `RadialBank`s ([`Ctx::radial_bank`]).
//!
//! Layouts: node features of degree l are `[n, c, 2l + 1]`; per-edge tensors are `[e, ..]` with
//! `e = n k` (neighbour `kk` of node `i` at row `i k + kk`), viewed as `[n, k, ..]` for per-node
//! sums.

use std::collections::BTreeMap;

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::Session;

use se3_core::layers::{RadialBank, RadialMlp};

use super::GraphForm;
use crate::se3_transformer::conv::Pair;
use crate::se3_transformer::radial::{RadialFunc, RADIAL_HIDDEN};
use crate::Error;
use se3_core::layers::graph::{reshape, retype, T2, T3, T4};
use se3_core::layers::RotaryAngles;

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
    /// Radial hidden activations of the pairs of the model, computed together by layer.
    bank: ModelRadials<'a>,
    /// The float32 radial networks of the pairs (converted once from the float64 model, whose
    /// last layers are then dropped), until their layer is built ([`Ctx::release`]).
    pub(crate) nets: RadialNets,
    /// Rotary embedding inputs (degree-0 attention), if the model has them.
    pub rotary: Option<RotaryAngles>,
    /// Fused kernels or primitive forms for the radial networks and edge contractions.
    pub form: GraphForm,
}

/// The radial networks of the degree pairs of the model up to their last layer, evaluated
/// together by group (a layer) as an se3-core [`RadialBank`] (they all read the same radial
/// input; `[P, e, 128]` per group), and which row belongs to which pair. A group's bank is
/// added to the graph when its first pair is asked for, so the graph's build order (which the
/// memory-aware schedule follows among equals) has it next to its layer.
#[derive(Default)]
pub(crate) struct ModelRadials<'a> {
    /// pair -> (group, row of the group's bank)
    index: std::collections::HashMap<usize, (usize, usize)>,
    groups: Vec<Vec<&'a Pair>>,
    banks: Vec<Option<T3>>,
}

pub(crate) fn pair_key(p: &Pair) -> usize {
    p as *const Pair as usize
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Float32 radial networks by pair ([`pair_key`]).
pub(crate) type RadialNets = std::collections::HashMap<usize, std::rc::Rc<RadialMlp>>;

/// The float64 RadialFunc of a pair as an se3-core [`RadialMlp`] (weights rounded to f32).
pub(crate) fn radial_mlp(r: &RadialFunc) -> Result<RadialMlp, Error> {
    radial_mlp_values(r, true)
}

/// The float64 RadialFunc of a pair up to its last layer as an se3-core [`RadialMlp`] (weights
/// rounded to f32; the last layer, the bulk of the weights, is left empty).
fn radial_mlp_hidden(r: &RadialFunc) -> Result<RadialMlp, Error> {
    radial_mlp_values(r, false)
}

fn radial_mlp_values(r: &RadialFunc, with_last: bool) -> Result<RadialMlp, Error> {
    let (n_out, w6, b6) = if with_last {
        match &r.l6_f32 {
            Some((w, b)) => (r.l6.n_out, w.clone(), b.clone()),
            None => (r.l6.n_out, f32s(&r.l6.w), f32s(&r.l6.b)),
        }
    } else {
        (0, Vec::new(), Vec::new())
    };
    let hidden = [
        &r.l0.w, &r.l0.b, &r.n1.w, &r.n1.b, &r.l3.w, &r.l3.b, &r.n4.w, &r.n4.b,
    ];
    let mut values: Vec<Vec<f32>> = hidden.iter().map(|v| f32s(v)).collect();
    values.extend([w6, b6]);
    Ok(RadialMlp::from_values(r.l0.n_in, n_out, values)?)
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
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
            bank: ModelRadials::default(),
            nets: RadialNets::new(),
            rotary: None,
            form: GraphForm::Fused,
        }
    }

    /// Registers the radial networks of `pairs` (one layer) to be evaluated together (a
    /// [`RadialBank`], added to the graph when [`Ctx::radial_hidden`] first asks for one of
    /// them).
    pub(crate) fn radial_bank(&mut self, pairs: &[&'a Pair]) {
        if pairs.is_empty() {
            return;
        }
        let m = &mut self.bank;
        let gi = m.groups.len();
        m.groups.push(pairs.to_vec());
        m.banks.push(None);
        for (pi, p) in pairs.iter().enumerate() {
            m.index.insert(pair_key(p), (gi, pi));
        }
    }

    /// The radial hidden activations of pair `p`, `[1, e, 128]` (row-major `[e, 128]`): a view of
    /// its group's fused output if it was registered ([`Ctx::radial_bank`]), else evaluated for
    /// `p` alone ([`RadialMlp::build_hidden`]).
    ///
    /// # Errors
    /// Weight errors of the session; `MissingInput` if a group's input widths differ.
    pub(crate) fn radial_hidden(&mut self, p: &Pair) -> Result<T3, Error> {
        if self.form == GraphForm::Unfused {
            return self.radial_hidden_alone(p);
        }
        if let Some(&(gi, pi)) = self.bank.index.get(&pair_key(p)) {
            if self.bank.banks.get(gi).is_some_and(Option::is_none) {
                let group = self.bank.groups[gi].clone();
                let all = self.group_hidden(&group)?;
                self.bank.banks[gi] = Some(all);
            }
            let all = self
                .bank
                .banks
                .get(gi)
                .copied()
                .flatten()
                .ok_or(Error::MissingInput {
                    name: "radial bank",
                })?;
            let mut st = all.shape;
            st.slice(&[
                (Expression::from(pi), Expression::from(pi + 1)),
                (0.into(), i32::MAX.into()),
                (0.into(), i32::MAX.into()),
            ]);
            return Ok(GraphTensor::from_id(all.id, st, all.graph_ref));
        }
        self.radial_hidden_alone(p)
    }

    /// The radial hidden activations of pair `p` evaluated for `p` alone
    /// ([`RadialMlp::build_hidden`]: GEMMs and the LayerNorm + GELU row op), `[1, e, 128]`.
    fn radial_hidden_alone(&mut self, p: &Pair) -> Result<T3, Error> {
        let net = self.radial_net(p)?;
        let prefix = self.prefix();
        let (h, _, _) = net.build_hidden(self.s, &prefix, retype(self.radial_in))?;
        Ok(reshape(h, &[1.into(), self.e, RADIAL_HIDDEN.into()]))
    }

    /// The hidden layers of the radial networks of `pairs` as one se3-core [`RadialBank`] (one
    /// fused [`radial_hidden`](se3_core::ops::radial_hidden()) op), `[P, e, 128]`.
    fn group_hidden(&mut self, pairs: &[&Pair]) -> Result<T3, Error> {
        let nets = pairs
            .iter()
            .map(|q| radial_mlp_hidden(&q.radial))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&RadialMlp> = nets.iter().collect();
        let prefix = self.prefix();
        let bank = RadialBank::build(self.s, &prefix, &refs, retype(self.radial_in))?;
        Ok(bank.all())
    }

    /// The float32 radial network of pair `p`: the one converted ahead ([`Ctx::nets`]), else
    /// converted from the float64 model now.
    ///
    /// # Errors
    /// `WrongShape` if the float64 last layer was dropped and no converted network is held.
    pub(crate) fn radial_net(&mut self, p: &Pair) -> Result<std::rc::Rc<RadialMlp>, Error> {
        match self.nets.get(&pair_key(p)) {
            Some(net) => Ok(net.clone()),
            None => Ok(std::rc::Rc::new(radial_mlp(&p.radial)?)),
        }
    }

    /// Drops the converted radial networks of `pairs` (their layer is built; the session holds
    /// their weights).
    pub(crate) fn release(&mut self, pairs: &[Pair]) {
        for p in pairs {
            self.nets.remove(&pair_key(p));
        }
    }

    /// [`Ctx::release`] of the pairs of `pairs` into output degree `l` (an attention block's keys
    /// or values once that degree is built), so the converted networks and the session's copies
    /// of their weights coexist for one degree at a time.
    pub(crate) fn release_out_degree(&mut self, pairs: &[Pair], l: usize) {
        for p in pairs.iter().filter(|p| p.d_out == l) {
            self.nets.remove(&pair_key(p));
        }
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
