//! NormSE3: the norm nonlinearity of se3-transformer-pytorch.

use std::collections::BTreeMap;

use crate::checkpoint::WeightSource;
use crate::se3_transformer::config::FiberDims;
use crate::se3_transformer::oracle::features::{Block, Feats, Mat};
use crate::Error;

/// Exact (erf) GELU, as `torch.nn.GELU()`.
pub(crate) fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))
}

#[derive(Debug, Clone)]
pub(crate) enum NormParam {
    Scale(Vec<f64>),
    Gate(Mat),
}

/// NormSE3: per degree and channel, `norm = max(|t|, 1e-12)` over m, and
/// `out = f(norm * s) * t / norm` with `s` a learned per-channel scale (key `.transform.<l>.scale`,
/// shape (1, 1, c)) or, with `gated_scale`, `s = norm @ W` (key `.transform.<l>.w_gate`, (c, c)).
/// `f` is exact GELU, or the identity for the output norm. Directions are kept: equivariant.
#[derive(Debug, Clone)]
pub(crate) struct NormSe3 {
    pub(crate) params: BTreeMap<usize, NormParam>,
    pub(crate) identity: bool,
}

impl NormSe3 {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        fiber: &FiberDims,
        gated: bool,
        identity: bool,
    ) -> Result<Self, Error> {
        let mut params = BTreeMap::new();
        for &(l, c) in fiber {
            let p = if gated {
                NormParam::Gate(Mat::load(
                    src,
                    &format!("{prefix}.transform.{l}.w_gate"),
                    c,
                    c,
                )?)
            } else {
                NormParam::Scale(
                    src.take(&format!("{prefix}.transform.{l}.scale"), &[1, 1, c])?
                        .data,
                )
            };
            params.insert(l, p);
        }
        Ok(Self { params, identity })
    }

    pub(crate) fn apply(&self, x: &Feats) -> Result<Feats, Error> {
        let mut out = Feats::new();
        for (l, b) in x {
            let p = self.params.get(l).ok_or(Error::MissingKey {
                key: format!("transform.{l}"),
                expected: vec![b.channels],
            })?;
            let (c, m) = (b.channels, b.m);
            let mut o = Block::zeros(b.rows(), c, m);
            let mut norms = vec![0.0; c];
            let mut scale = vec![0.0; c];
            for r in 0..b.rows() {
                let t = b.row(r);
                for (ch, nv) in norms.iter_mut().enumerate() {
                    let s: f64 = t[ch * m..(ch + 1) * m].iter().map(|v| v * v).sum();
                    *nv = s.sqrt().max(1e-12);
                }
                match p {
                    NormParam::Scale(s) => scale.copy_from_slice(s),
                    NormParam::Gate(w) => {
                        for (e, se) in scale.iter_mut().enumerate() {
                            *se = (0..c).map(|d| norms[d] * w.data[d * c + e]).sum();
                        }
                    }
                }
                let orow = &mut o.data[r * c * m..(r + 1) * c * m];
                for ch in 0..c {
                    let z = norms[ch] * scale[ch];
                    let f = if self.identity { z } else { gelu(z) };
                    for mi in 0..m {
                        orow[ch * m + mi] = f * (t[ch * m + mi] / norms[ch]);
                    }
                }
            }
            out.insert(*l, o);
        }
        Ok(out)
    }
}
