//! `differentiable_coors`: the per-edge geometry computed inside the compiled graph from the
//! coordinates, instead of fed as host inputs.
//!
//! With the option the graph takes `coors [n, 3]` (plus the edge features `radial_edge
//! [e, edge_dim]` when the model has any) and builds, as graph operations:
//! - the relative positions of the selected neighbours, `rel[i k + kk] = x[i] - x[nbr[i k + kk]]`
//!   (centre minus neighbour, the sign of the oracle's `build_graph` and of se3-core's
//!   [`EdgeGraph`](se3_core::layers::EdgeGraph), `x[dst] - x[src]`), and `|rel|`;
//! - the radial input `[fourier(|rel|), |rel|, edge features]` (se3-core's
//!   [`radial_features`], the column order of the oracle's `radial_input`);
//! - the kernel basis of every degree pair through se3-core's [`EdgeBasis`] with the model's Q_J
//!   sign table ([`Se3tBasis::sign_flips`]), permuted from `EdgeBasis`'s
//!   `(e, 2 d_in + 1, nf (2 d_out + 1))` to the `[e, 2 d_out + 1, 2 d_in + 1, nf]` the compiled
//!   layers read.
//!
//! Neighbour selection (`nbr`, `valid`) stays on the host: it is a discrete choice, through which
//! no gradient flows in se3-transformer-pytorch either. Forward values equal those of the host
//! basis (CONVENTIONS 2.8: the option changes gradients only) up to float32 rounding.

use std::collections::BTreeMap;

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::{InputKind, Session};
use se3_core::layers::edges::radial_features;
use se3_core::layers::EdgeBasis;
use se3_core::ops::{distances, gather};

use super::flat_input;
use crate::se3_transformer::basis::Se3tBasis;
use crate::se3_transformer::graph::Graph;
use crate::Error;
use se3_core::layers::graph::{expand_at, permute, reshape, retype, T2, T4};

/// Name of the coordinates input, `[n, 3]`.
pub(crate) const COORS_INPUT: &str = "coors";
/// Name of the edge features input, `[e * edge_dim]` (only when `edge_dim > 0`).
pub(crate) const EDGE_INPUT: &str = "radial_edge";

/// The geometry built in the graph: radial input and basis blocks in the compiled layout.
pub(crate) struct InGraphGeometry {
    /// Radial network input per edge, `[e, n_in]`.
    pub radial_in: T2,
    /// Edge length `|x_i - x_j|` per edge, `[e, 1]` (the EGNN trunk's distance input).
    pub dist: T2,
    /// Basis per degree pair, `[e, 2 d_out + 1, 2 d_in + 1, nf]`.
    basis: BTreeMap<(usize, usize), T4>,
    /// Width of the edge features input (0: none declared).
    edge_dim: usize,
}

impl InGraphGeometry {
    /// Declares `coors` (and `radial_edge` in flat slot `*slot` if `edge_dim > 0`) on `s` and
    /// builds the geometry of the edges `nbr` (`e = n k`, neighbour `kk` of node `i` at row
    /// `i k + kk`) up to `table`'s degree with `table`'s Q_J signs.
    ///
    /// # Errors
    /// `Core(DegreeTooHigh)` beyond se3-core's harmonics; weight errors of the session;
    /// `NotCompiled` if the flat input slots run out.
    pub(crate) fn declare(
        s: &mut Session,
        nbr: GraphTensor<(Dyn<'e'>,)>,
        table: &Se3tBasis,
        fourier: Option<usize>,
        edge_dim: usize,
        slot: &mut usize,
    ) -> Result<Self, Error> {
        let (k, e) = (Expression::from('k'), Expression::from('e'));
        let coors = s.input::<(Dyn<'n'>, Const<3>)>(COORS_INPUT, InputKind::Coordinates);
        // x[i] repeated over the k neighbours of i, as [e, 3]
        let centre: GraphTensor<(Dyn<'n'>, Dyn<'k'>, Const<3>)> = expand_at(coors, 1, k);
        let centre: GraphTensor<(Dyn<'e'>, Const<3>)> = reshape(centre, &[e, 3.into()]);
        let rel = centre - gather(coors, nbr);
        let dist = distances(rel);
        let edge_feat = if edge_dim > 0 {
            let t = flat_input(s, EDGE_INPUT, *slot)?;
            *slot += 1;
            Some(reshape::<_, (Dyn<'e'>, Dyn<'-'>)>(t, &[e, edge_dim.into()]))
        } else {
            None
        };
        let radial_in = retype(radial_features(s, dist, edge_feat, fourier)?);
        let dist_column: T2 = reshape(dist, &[e, 1.into()]);
        let max_degree = table.max_degree();
        let eb = EdgeBasis::from_geometry(s, "coors.", rel, dist, max_degree, &table.sign_flips())?;
        let mut basis = BTreeMap::new();
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
                // [e, i, f mo + o] -> [e, i, f, o] -> [e, o, i, f], copied once for all layers
                let b: T4 = reshape(
                    eb.block(d_in, d_out)?,
                    &[e, mi.into(), nf.into(), mo.into()],
                );
                basis.insert((d_in, d_out), permute(b, &[0, 3, 1, 2]).contiguous());
            }
        }
        Ok(Self {
            radial_in,
            dist: dist_column,
            basis,
            edge_dim,
        })
    }

    /// The basis block of `(d_in, d_out)`, `[e, 2 d_out + 1, 2 d_in + 1, nf]`.
    ///
    /// # Errors
    /// `NotCompiled` for a pair above the model's degree (a broken build invariant).
    pub(crate) fn block(&self, d_in: usize, d_out: usize) -> Result<T4, Error> {
        self.basis
            .get(&(d_in, d_out))
            .copied()
            .ok_or(Error::NotCompiled {
                option: "a basis pair above the model's degree",
            })
    }

    /// What a run has to set (see [`CoorsInputs::set`]).
    pub(crate) fn inputs(&self) -> CoorsInputs {
        CoorsInputs {
            edge_dim: self.edge_dim,
        }
    }
}

impl super::Se3Transformer {
    /// Whether the graph builds the geometry (relative positions, radial input, kernel basis)
    /// from the coordinates itself (`differentiable_coors = true`) rather than reading it from
    /// host inputs.
    pub fn basis_in_graph(&self) -> bool {
        self.coors.is_some()
    }
}

/// The per-run inputs of the in-graph geometry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoorsInputs {
    edge_dim: usize,
}

impl CoorsInputs {
    /// Sets the inputs for one batch element: the coordinates `points` (`n` rows, as given to
    /// the model) and, if the model has edge features, those of `g`'s selected edges.
    ///
    /// # Errors
    /// Session errors (`NonFiniteInput` for NaN/inf coordinates, shape mismatches).
    pub(crate) fn set(&self, s: &mut Session, points: &[[f64; 3]], g: &Graph) -> Result<(), Error> {
        let flat: Vec<f32> = points
            .iter()
            .flat_map(|p| p.iter().map(|&v| v as f32))
            .collect();
        s.set(COORS_INPUT, flat, &[points.len(), 3])?;
        if self.edge_dim > 0 {
            let ef: Vec<f32> = g.edge_feat.iter().map(|&v| v as f32).collect();
            let len = ef.len();
            s.set(EDGE_INPUT, ef, &[len])?;
        }
        Ok(())
    }
}
