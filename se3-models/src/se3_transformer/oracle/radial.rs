//! The radial network of se3-transformer-pytorch's PairwiseConv (RadialFunc).

use crate::checkpoint::WeightSource;
use crate::se3_transformer::oracle::norm::gelu;
use crate::Error;

/// `y = W x + b`, keys `<prefix>.weight` (out, in) and `<prefix>.bias` (out).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub n_in: usize,
    pub n_out: usize,
    pub(crate) w: Vec<f64>,
    pub(crate) b: Vec<f64>,
}

impl Dense {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        n_in: usize,
        n_out: usize,
    ) -> Result<Self, Error> {
        Ok(Self {
            n_in,
            n_out,
            w: src.take(&format!("{prefix}.weight"), &[n_out, n_in])?.data,
            b: src.take(&format!("{prefix}.bias"), &[n_out])?.data,
        })
    }

    pub(crate) fn apply(&self, x: &[f64]) -> Vec<f64> {
        debug_assert_eq!(x.len(), self.n_in);
        (0..self.n_out)
            .map(|o| {
                self.b[o]
                    + self.w[o * self.n_in..(o + 1) * self.n_in]
                        .iter()
                        .zip(x)
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
            })
            .collect()
    }
}

/// `torch.nn.LayerNorm(dim)` (eps 1e-5, biased variance), keys `.weight`, `.bias`.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    pub(crate) w: Vec<f64>,
    pub(crate) b: Vec<f64>,
}

impl LayerNorm {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        dim: usize,
    ) -> Result<Self, Error> {
        Ok(Self {
            w: src.take(&format!("{prefix}.weight"), &[dim])?.data,
            b: src.take(&format!("{prefix}.bias"), &[dim])?.data,
        })
    }

    pub(crate) fn apply(&self, x: &mut [f64]) {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + 1e-5).sqrt();
        for (i, v) in x.iter_mut().enumerate() {
            *v = (*v - mean) * inv * self.w[i] + self.b[i];
        }
    }
}

/// Hidden width of the radial network.
pub const RADIAL_HIDDEN: usize = 128;

/// RadialFunc: Linear(in, 128) -> LayerNorm -> GELU -> Linear(128, 128) -> LayerNorm -> GELU ->
/// Linear(128, c_out c_in nf); output index `(o c_in + i) nf + f` (output channel slowest).
/// Keys `<prefix>.net.{0,1,3,4,6}`.
#[derive(Debug, Clone)]
pub(crate) struct RadialFunc {
    pub(crate) l0: Dense,
    pub(crate) n1: LayerNorm,
    pub(crate) l3: Dense,
    pub(crate) n4: LayerNorm,
    pub(crate) l6: Dense,
}

impl RadialFunc {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        n_in: usize,
        n_out: usize,
    ) -> Result<Self, Error> {
        let l0 = Dense::load(src, &format!("{prefix}.net.0"), n_in, RADIAL_HIDDEN)?;
        let n1 = LayerNorm::load(src, &format!("{prefix}.net.1"), RADIAL_HIDDEN)?;
        let l3 = Dense::load(
            src,
            &format!("{prefix}.net.3"),
            RADIAL_HIDDEN,
            RADIAL_HIDDEN,
        )?;
        let n4 = LayerNorm::load(src, &format!("{prefix}.net.4"), RADIAL_HIDDEN)?;
        let l6 = Dense::load(src, &format!("{prefix}.net.6"), RADIAL_HIDDEN, n_out)?;
        Ok(Self { l0, n1, l3, n4, l6 })
    }

    /// The last hidden activation (after the second GELU), 128 values.
    pub(crate) fn hidden(&self, x: &[f64]) -> Vec<f64> {
        let mut h = self.l0.apply(x);
        self.n1.apply(&mut h);
        h.iter_mut().for_each(|v| *v = gelu(*v));
        let mut h = self.l3.apply(&h);
        self.n4.apply(&mut h);
        h.iter_mut().for_each(|v| *v = gelu(*v));
        h
    }

    /// The last (linear) layer, `R = W h + b`.
    pub(crate) fn last(&self) -> &Dense {
        &self.l6
    }

    pub(crate) fn apply(&self, x: &[f64]) -> Vec<f64> {
        let mut h = self.l0.apply(x);
        self.n1.apply(&mut h);
        h.iter_mut().for_each(|v| *v = gelu(*v));
        let mut h = self.l3.apply(&h);
        self.n4.apply(&mut h);
        h.iter_mut().for_each(|v| *v = gelu(*v));
        self.l6.apply(&h)
    }
}
