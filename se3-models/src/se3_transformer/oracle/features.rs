//! Per-degree feature blocks of one graph (one batch element) and LinearSE3.

use std::collections::BTreeMap;

use crate::checkpoint::WeightSource;
use crate::se3_transformer::config::FiberDims;
use crate::Error;

/// Features of one degree: `rows x channels x m` row-major, `m = 2l + 1`. Rows are nodes, or
/// (node, neighbour) pairs for unpooled convolution outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// Channels per row.
    pub channels: usize,
    /// 2l + 1.
    pub m: usize,
    /// Values, `rows * channels * m`.
    pub data: Vec<f64>,
}

impl Block {
    /// Zeros with `rows` rows.
    pub fn zeros(rows: usize, channels: usize, m: usize) -> Self {
        Self {
            channels,
            m,
            data: vec![0.0; rows * channels * m],
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data
            .len()
            .checked_div(self.channels * self.m)
            .unwrap_or(0)
    }

    /// The `channels x m` slice of row `r`.
    pub fn row(&self, r: usize) -> &[f64] {
        let w = self.channels * self.m;
        &self.data[r * w..(r + 1) * w]
    }
}

/// Degree -> block.
pub type Feats = BTreeMap<usize, Block>;

/// A dense (c_in x c_out) matrix, row-major.
#[derive(Debug, Clone)]
pub(crate) struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        key: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Self, Error> {
        Ok(Self {
            rows,
            cols,
            data: src.take(key, &[rows, cols])?.data,
        })
    }
}

/// se3-transformer-pytorch's LinearSE3: per degree present in both fibers,
/// `out[r, e, m] = sum_d x[r, d, m] W_l[d, e]` (no bias, no mixing across degrees).
/// Keys `<prefix>.weights.<l>` of shape (c_in, c_out).
#[derive(Debug, Clone)]
pub(crate) struct LinearSe3 {
    pub weights: BTreeMap<usize, Mat>,
}

impl LinearSe3 {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        fin: &FiberDims,
        fout: &FiberDims,
    ) -> Result<Self, Error> {
        let mut weights = BTreeMap::new();
        for &(l, ci) in fin {
            if let Some(&(_, co)) = fout.iter().find(|(lo, _)| *lo == l) {
                weights.insert(l, Mat::load(src, &format!("{prefix}.weights.{l}"), ci, co)?);
            }
        }
        Ok(Self { weights })
    }

    pub(crate) fn apply_block(w: &Mat, x: &Block) -> Block {
        let rows = x.rows();
        let m = x.m;
        let mut out = Block::zeros(rows, w.cols, m);
        for r in 0..rows {
            let xr = x.row(r);
            let o = &mut out.data[r * w.cols * m..(r + 1) * w.cols * m];
            for d in 0..w.rows {
                for e in 0..w.cols {
                    let wde = w.data[d * w.cols + e];
                    for mi in 0..m {
                        o[e * m + mi] += xr[d * m + mi] * wde;
                    }
                }
            }
        }
        out
    }

    /// Applies the layer; the output has the degrees of the weights.
    pub(crate) fn apply(&self, x: &Feats) -> Feats {
        self.weights
            .iter()
            .filter_map(|(l, w)| x.get(l).map(|b| (*l, Self::apply_block(w, b))))
            .collect()
    }
}

/// ResidualSE3: `x + res` on the degrees of `x` that `res` also has.
pub(crate) fn residual(mut x: Feats, res: &Feats) -> Feats {
    for (l, b) in x.iter_mut() {
        if let Some(r) = res.get(l) {
            for (a, c) in b.data.iter_mut().zip(&r.data) {
                *a += c;
            }
        }
    }
    x
}
