//! Inputs and outputs of the SE3Transformer oracle: node features (dense, tokens, per degree, position
//! embedding), pair edge features (edge tokens or floats), and output assembly (pooling, squeezing,
//! `return_type`).

use std::collections::BTreeMap;

use super::{embed, shape_err, Se3TransformerOracle};
use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::{EdgeInput, ModelInputs, NodeFeats};
use crate::se3_transformer::config::Se3TransformerForward;
use crate::se3_transformer::oracle::features::{Block, Feats};
use crate::Error;

impl Se3TransformerOracle {
    pub(super) fn node_feats(&self, inp: &ModelInputs) -> Result<Vec<Feats>, Error> {
        let (b, n) = (inp.batch(), inp.nodes());
        let fin = &self.shape.fiber_in;
        let d0 = fin[0].1;
        let mut dense: Option<Vec<f64>> = None;
        let mut out = Vec::with_capacity(b);
        match &inp.feats {
            NodeFeats::Dense(t) => {
                if self.cfg.input_degrees != 1 {
                    return Err(shape_err(
                        "feats",
                        format!("a dict of {} degrees", self.cfg.input_degrees),
                        &t.shape,
                    ));
                }
                if t.shape[2] != d0 {
                    return Err(shape_err("feats", format!("({b}, {n}, {d0})"), &t.shape));
                }
                if self.token_emb.is_some() {
                    return Err(shape_err(
                        "feats",
                        format!("({b}, {n}) int64 tokens"),
                        &t.shape,
                    ));
                }
                dense = Some(t.data.clone());
            }
            NodeFeats::Tokens { shape, ids } => {
                let emb = self.token_emb.as_ref().ok_or_else(|| {
                    shape_err(
                        "feats",
                        format!("({b}, {n}, {d0}) floats (num_tokens is not set)"),
                        shape,
                    )
                })?;
                if self.cfg.input_degrees != 1 || emb.cols != d0 {
                    return Err(shape_err(
                        "feats",
                        format!("dim_in = dim = {}", emb.cols),
                        shape,
                    ));
                }
                dense = Some(embed("feats", emb, ids)?);
            }
            NodeFeats::Degrees(map) => {
                if self.pos_emb.is_some() {
                    return Err(Error::InvalidConfig {
                        field: "num_positions",
                        expected: "None when feats is a per-degree dict",
                        found: "set".into(),
                    });
                }
                // the dict holds degrees 0..input_degrees (the library asserts it); degrees beyond a
                // short dim_in tuple are not read
                let degrees: Vec<usize> = map.keys().copied().collect();
                let want: Vec<usize> = (0..self.cfg.input_degrees).collect();
                if degrees != want {
                    return Err(Error::InputShape {
                        name: "feats",
                        expected: format!("degrees {want:?}"),
                        found: degrees,
                    });
                }
                for bi in 0..b {
                    let mut x = Feats::new();
                    for &(l, c) in fin {
                        let t = &map[&l];
                        let m = 2 * l + 1;
                        if t.shape[2] != c {
                            return Err(shape_err(
                                "feats",
                                format!("({b}, {n}, {c}, {m})"),
                                &t.shape,
                            ));
                        }
                        x.insert(
                            l,
                            Block {
                                channels: c,
                                m,
                                data: t.data[bi * n * c * m..(bi + 1) * n * c * m].to_vec(),
                            },
                        );
                    }
                    out.push(x);
                }
            }
        }
        if let Some(mut data) = dense {
            if let Some(pe) = &self.pos_emb {
                if n > pe.rows {
                    return Err(shape_err(
                        "feats",
                        format!("at most {} nodes (num_positions)", pe.rows),
                        &[b, n],
                    ));
                }
                for bi in 0..b {
                    for i in 0..n {
                        for c in 0..d0 {
                            // `feats += pos_emb` broadcasts a width-1 embedding (dim = 1) over
                            // dim_in channels; other widths equal dim_in (checked by the config)
                            let at = if pe.cols == 1 { i } else { i * pe.cols + c };
                            data[(bi * n + i) * d0 + c] += pe.data[at];
                        }
                    }
                }
            }
            for bi in 0..b {
                let mut x = Feats::new();
                x.insert(
                    0,
                    Block {
                        channels: d0,
                        m: 1,
                        data: data[bi * n * d0..(bi + 1) * n * d0].to_vec(),
                    },
                );
                out.push(x);
            }
        }
        Ok(out)
    }

    /// Edge features for every ordered pair, (b, n, n, edge_dim) flattened, before the adjacency embedding.
    pub(super) fn pair_edges(&self, inp: &ModelInputs) -> Result<Option<(Vec<f64>, usize)>, Error> {
        let (b, n) = (inp.batch(), inp.nodes());
        let has_edges = self.cfg.edge_dim.is_some_and(|e| e > 0);
        match (&inp.edges, has_edges) {
            (None, false) => Ok(None),
            (None, true) => Err(Error::MissingInput { name: "edges" }),
            (Some(_), false) => Err(Error::UnexpectedInput { name: "edges" }),
            (Some(EdgeInput::Tokens { ids, shape }), true) => {
                let emb = self.edge_emb.as_ref().ok_or_else(|| {
                    shape_err(
                        "edges",
                        format!("({b}, {n}, {n}, edge_dim) floats (num_edge_tokens is not set)"),
                        shape,
                    )
                })?;
                Ok(Some((embed("edges", emb, ids)?, emb.cols)))
            }
            (Some(EdgeInput::Dense(t)), true) => {
                let e = self.cfg.edge_dim.unwrap_or(0);
                if self.edge_emb.is_some() {
                    return Err(shape_err(
                        "edges",
                        format!("({b}, {n}, {n}) int64 edge tokens"),
                        &t.shape,
                    ));
                }
                if t.shape[3] != e {
                    return Err(shape_err(
                        "edges",
                        format!("({b}, {n}, {n}, {e})"),
                        &t.shape,
                    ));
                }
                Ok(Some((t.data.clone(), e)))
            }
        }
    }

    pub(crate) fn assemble(
        &self,
        per_batch: Vec<Feats>,
        inp: &ModelInputs,
        fwd: &Se3TransformerForward,
        b: usize,
        n: usize,
    ) -> Result<StateDict, Error> {
        let reduce = self.linear_out.is_some();
        let mut degrees: BTreeMap<usize, (usize, Vec<f64>)> = BTreeMap::new();
        for (bi, x) in per_batch.into_iter().enumerate() {
            for (l, blk) in x {
                let (c, m) = (blk.channels, blk.m);
                let entry = degrees.entry(l).or_insert((c, Vec::new()));
                if fwd.return_pooled {
                    let mask = inp.node_mask(bi);
                    let mut acc = vec![0.0; c * m];
                    let mut cnt = 0usize;
                    for i in 0..n {
                        if mask.is_none_or(|mk| mk[i]) {
                            cnt += 1;
                            acc.iter_mut().zip(blk.row(i)).for_each(|(a, v)| *a += v);
                        }
                    }
                    if cnt > 0 {
                        acc.iter_mut().for_each(|a| *a /= cnt as f64);
                    }
                    entry.1.extend(acc);
                } else {
                    entry.1.extend(blk.data);
                }
            }
        }
        let mut sd = StateDict::new();
        let mut return_type = fwd.return_type;
        if self.shape.output_degrees == Some(1) {
            return_type = Some(0);
        }
        for (l, (c, data)) in degrees {
            let mut shape = vec![b];
            if !fwd.return_pooled {
                shape.push(n);
            }
            if !reduce {
                shape.push(c);
            }
            if l != 0 {
                shape.push(2 * l + 1);
            }
            let t = Tensor::new(shape, data)?;
            match return_type {
                Some(r) if r == l => sd.insert("out", t),
                Some(_) => {}
                None => sd.insert(format!("type{l}"), t),
            }
        }
        if let Some(r) = return_type {
            if sd.is_empty() {
                return Err(Error::InvalidConfig {
                    field: "return_type",
                    expected: "a degree the model outputs",
                    found: r.to_string(),
                });
            }
        }
        Ok(sd)
    }
}
