//! Tensor Field Network stack: se3-transformer-pytorch ConvSE3 + NormSE3 layers
//! (tests/reference/CONVENTIONS.md 6, `models/tfn_stack/config.json`).
//!
//! `convs.i: ConvSE3(fibers[i], fibers[i+1], self_interaction, pool = True)`, followed by
//! `norms.i: NormSE3(fibers[i+1])` except after the last conv. Every other node is a neighbour (no
//! radius), pooling is a masked mean over `mask[i] & mask[j]`. Outputs `type<l>` of shape
//! (b, n, channels, 2l+1) for every degree of the last fiber.

#[cfg(test)]
mod attention_parity;
pub mod graph;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{KeyRecorder, StateDict, StateDictSource, Tensor, WeightSource};
use crate::inputs::ModelInputs;
use crate::model_file::{check_known_keys, parse_fiber_dict};
use crate::se3_transformer::basis::{QjSigns, Se3tBasis};
use crate::se3_transformer::config::FiberDims;
use crate::se3_transformer::graph::{build_graph, PairInputs, SelectionParams};
use crate::se3_transformer::oracle::conv::{ConvOpts, ConvSe3};
use crate::se3_transformer::oracle::features::{Block, Feats};
use crate::se3_transformer::oracle::norm::NormSe3;
use crate::Error;

fn d_true() -> bool {
    true
}
fn d_splits() -> usize {
    4
}

/// Constructor kwargs of the TFN stack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TfnStackConfig {
    /// Fibers from input to output, each `{"degree": channels}`; the first must be `{"0": d}`.
    pub fibers: Vec<BTreeMap<String, usize>>,
    /// LinearSE3 self-interaction in every conv.
    #[serde(default = "d_true")]
    pub self_interaction: bool,
    /// Memory chunking of the library (no effect on values).
    #[serde(default = "d_splits")]
    pub splits: usize,
}

impl TfnStackConfig {
    /// Parses and validates constructor kwargs.
    ///
    /// # Errors
    /// `UnknownKwarg`, `ConfigParse`, `InvalidConfig`.
    pub fn from_kwargs(kwargs: &serde_json::Value) -> Result<Self, Error> {
        check_known_keys(
            "TFNStack",
            kwargs,
            &["fibers", "self_interaction", "splits"],
        )?;
        let cfg: Self =
            serde_json::from_value(kwargs.clone()).map_err(|source| Error::ConfigParse {
                path: "constructor_kwargs".into(),
                source,
            })?;
        cfg.fiber_dims()?;
        Ok(cfg)
    }

    /// The fibers as (degree, channels) lists.
    ///
    /// # Errors
    /// `InvalidConfig` for fewer than two fibers, an input fiber that is not type-0 only, or bad entries;
    /// `TooLarge` for more fibers, degrees or channels than [`crate::limits`] allows.
    pub fn fiber_dims(&self) -> Result<Vec<FiberDims>, Error> {
        if self.fibers.len() < 2 {
            return Err(Error::InvalidConfig {
                field: "fibers",
                expected: "at least an input and an output fiber",
                found: format!("{} fibers", self.fibers.len()),
            });
        }
        crate::limits::at_most("fibers", self.fibers.len(), crate::limits::MAX_DEPTH + 1)?;
        let f: Vec<FiberDims> = self
            .fibers
            .iter()
            .map(|d| parse_fiber_dict("fibers", d))
            .collect::<Result<_, _>>()?;
        if f[0].len() != 1 || f[0][0].0 != 0 {
            return Err(Error::InvalidConfig {
                field: "fibers",
                expected: "an input fiber of degree 0 only",
                found: format!("{:?}", f[0]),
            });
        }
        Ok(f)
    }
}

/// The TFN stack with loaded weights (float64 reference forward).
#[derive(Debug, Clone)]
pub struct TfnStack {
    fibers: Vec<FiberDims>,
    convs: Vec<ConvSe3>,
    norms: Vec<NormSe3>,
    table: Se3tBasis,
}

impl TfnStack {
    fn build(cfg: &TfnStackConfig, src: &mut dyn WeightSource) -> Result<Self, Error> {
        let fibers = cfg.fiber_dims()?;
        let max_degree = fibers.iter().flatten().map(|&(l, _)| l).max().unwrap_or(0);
        let table = Se3tBasis::new(max_degree)?;
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for i in 0..fibers.len() - 1 {
            convs.push(ConvSe3::load(
                src,
                &format!("convs.{i}"),
                &fibers[i],
                &fibers[i + 1],
                ConvOpts {
                    edge_dim: 0,
                    fourier: None,
                    self_interaction: cfg.self_interaction,
                    pool: true,
                },
            )?);
            if i + 2 < fibers.len() {
                norms.push(NormSe3::load(
                    src,
                    &format!("norms.{i}"),
                    &fibers[i + 1],
                    false,
                    false,
                )?);
            }
        }
        Ok(Self {
            fibers,
            convs,
            norms,
            table,
        })
    }

    /// Replaces the Q_J sign table (default [`QjSigns::reference`]) by the one of the LAPACK build the
    /// weights were trained with.
    ///
    /// # Errors
    /// `Core(DegreeTooHigh)` if the degrees exceed the harmonics of se3-core.
    pub fn set_qj_signs(&mut self, signs: &QjSigns) -> Result<(), Error> {
        self.table = Se3tBasis::with_signs(self.table.max_degree(), signs)?;
        Ok(())
    }

    /// Every state-dict key the config needs, with its shape.
    ///
    /// # Errors
    /// Config errors.
    pub fn expected_keys(cfg: &TfnStackConfig) -> Result<Vec<(String, Vec<usize>)>, Error> {
        let mut rec = KeyRecorder::default();
        Self::build(cfg, &mut rec)?;
        Ok(rec.keys)
    }

    /// Builds the stack from a state dict.
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `UnexpectedKey`, config errors.
    pub fn from_state_dict(cfg: &TfnStackConfig, sd: &StateDict) -> Result<Self, Error> {
        let mut loader = StateDictSource::new(sd);
        let m = Self::build(cfg, &mut loader)?;
        loader.finish()?;
        Ok(m)
    }

    /// Forward pass; outputs `type<l>` (b, n, c, 2l+1).
    ///
    /// # Errors
    /// `InputShape` if feats are not (b, n, d0) floats, plus input validation errors.
    pub fn forward(&self, inp: &ModelInputs) -> Result<StateDict, Error> {
        inp.validate()?;
        let d0 = self.fibers[0][0].1;
        let (b, n) = (inp.batch(), inp.nodes());
        let feats = inp.dense_feats(d0)?;
        let sel = SelectionParams {
            num_neighbors: None,
            valid_radius: f64::INFINITY,
            causal: false,
            attend_sparse: false,
            max_sparse_neighbors: None,
            num_adj_degrees: None,
        };
        let last = &self.fibers[self.fibers.len() - 1];
        let mut outs: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        for bi in 0..b {
            let pts = inp.points(bi);
            let pin = PairInputs {
                coors: &pts,
                mask: inp.node_mask(bi),
                adj: None,
                neighbor_mask: None,
                edge_feat: None,
            };
            let g = build_graph(&sel, &pin, None, 0, None, 0, &self.table)?;
            let mut x = Feats::new();
            x.insert(
                0,
                Block {
                    channels: d0,
                    m: 1,
                    data: feats.data[bi * n * d0..(bi + 1) * n * d0].to_vec(),
                },
            );
            for (i, conv) in self.convs.iter().enumerate() {
                x = conv.apply(&x, &g)?;
                if let Some(norm) = self.norms.get(i) {
                    x = norm.apply(&x)?;
                }
            }
            for (l, blk) in x {
                outs.entry(l).or_default().extend(blk.data);
            }
        }
        let mut sd = StateDict::new();
        for &(l, c) in last {
            let data = outs.remove(&l).unwrap_or_default();
            sd.insert(
                format!("type{l}"),
                Tensor::new(vec![b, n, c, 2 * l + 1], data)?,
            );
        }
        Ok(sd)
    }
}
