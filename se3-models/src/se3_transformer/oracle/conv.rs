//! ConvSE3: the Tensor Field Network convolution of se3-transformer-pytorch.

use crate::checkpoint::WeightSource;
use crate::se3_transformer::config::FiberDims;
use crate::se3_transformer::graph::Graph;
use crate::se3_transformer::oracle::features::{residual, Block, Feats, LinearSe3};
use crate::se3_transformer::oracle::radial::RadialFunc;
use crate::se3_transformer::oracle::reassociated::{weighted_message_sum, Contraction};
use crate::Error;

/// Radial-network input for one edge: `[|r|, edge features]`, or with Fourier encoding
/// (`se3_core::basis::fourier_encode`) `[sin(d / 2^k) (k < K), cos(d / 2^k) (k < K), d, edge features]`.
///
/// # Errors
/// `Core(NonFinite)` for a non-finite distance.
pub(crate) fn radial_input(
    dist: f64,
    edge: &[f64],
    fourier: Option<usize>,
) -> Result<Vec<f64>, Error> {
    let mut v = match fourier {
        Some(kf) => se3_core::basis::fourier_encode(dist, kf, true)?,
        None => vec![dist],
    };
    v.extend_from_slice(edge);
    Ok(v)
}

#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub d_in: usize,
    pub c_in: usize,
    pub d_out: usize,
    pub c_out: usize,
    pub radial: RadialFunc,
}

/// `Kx[f, c, p] = sum_q K[p, q, f] x[c, q]`: the basis applied to one neighbour's features.
pub(crate) fn basis_times_features(
    kb: &[f64],
    xj: &[f64],
    nf: usize,
    c_in: usize,
    mi: usize,
    mo: usize,
) -> Vec<f64> {
    let mut kx = vec![0.0; nf * c_in * mo];
    for f in 0..nf {
        for c in 0..c_in {
            for o in 0..mo {
                let mut s = 0.0;
                for q in 0..mi {
                    s += kb[(o * mi + q) * nf + f] * xj[c * mi + q];
                }
                kx[(f * c_in + c) * mo + o] = s;
            }
        }
    }
    kx
}

/// ConvSE3 (fiber_in -> fiber_out): for each output degree, the sum over input degrees of
/// `W(r_ij) x_j` with `W[(o, p), (c, q)] = sum_f R_f(|r_ij|, e_ij)[o, c] K_f(r_ij)[p, q]`; pooled by a
/// masked mean over valid neighbours (0 if none) and plus LinearSE3 self-interaction, or returned per
/// edge (rows `i * k + kk`). Keys `<prefix>.kernel_unary.(d_in,d_out).rp.net.*`,
/// `<prefix>.self_interact.weights.<l>`.
#[derive(Debug, Clone)]
pub(crate) struct ConvSe3 {
    pub(crate) fout: FiberDims,
    pub(crate) pairs: Vec<Pair>,
    pub(crate) self_interact: Option<LinearSe3>,
    pub(crate) pool: bool,
    pub(crate) fourier: Option<usize>,
}

/// Options of a ConvSE3 besides its fibers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvOpts {
    pub edge_dim: usize,
    pub fourier: Option<usize>,
    pub self_interaction: bool,
    pub pool: bool,
}

impl ConvSe3 {
    pub(crate) fn load(
        src: &mut dyn WeightSource,
        prefix: &str,
        fin: &FiberDims,
        fout: &FiberDims,
        o: ConvOpts,
    ) -> Result<Self, Error> {
        let n_in = 1 + o.edge_dim + o.fourier.map_or(0, |k| 2 * k);
        let mut pairs = Vec::new();
        for &(d_in, c_in) in fin {
            for &(d_out, c_out) in fout {
                let nf = 2 * d_in.min(d_out) + 1;
                let radial = RadialFunc::load(
                    src,
                    &format!("{prefix}.kernel_unary.({d_in},{d_out}).rp"),
                    n_in,
                    nf * c_in * c_out,
                )?;
                pairs.push(Pair {
                    d_in,
                    c_in,
                    d_out,
                    c_out,
                    radial,
                });
            }
        }
        let self_interact = if o.self_interaction {
            Some(LinearSe3::load(
                src,
                &format!("{prefix}.self_interact"),
                fin,
                fout,
            )?)
        } else {
            None
        };
        Ok(Self {
            fout: fout.clone(),
            pairs,
            self_interact,
            pool: o.pool,
            fourier: o.fourier,
        })
    }

    /// Degree pairs with their radial networks.
    pub(crate) fn pairs(&self) -> &[Pair] {
        &self.pairs
    }

    /// Output fiber.
    pub(crate) fn fiber_out(&self) -> &FiberDims {
        &self.fout
    }

    /// Fourier features of the distance, if any.
    pub(crate) fn fourier(&self) -> Option<usize> {
        self.fourier
    }

    pub(crate) fn apply(&self, x: &Feats, g: &Graph) -> Result<Feats, Error> {
        let (n, k) = (g.n, g.k);
        if self.pool && g.contraction == Contraction::Reassociated {
            let mut w = vec![0.0; n * k];
            for i in 0..n {
                let cnt = (0..k).filter(|&kk| g.valid[i * k + kk]).count();
                for kk in (0..k).filter(|&kk| g.valid[i * k + kk]) {
                    w[i * k + kk] = 1.0 / cnt as f64;
                }
            }
            let pooled = weighted_message_sum(self, x, g, &w, None)?;
            return match &self.self_interact {
                Some(si) => Ok(residual(pooled, &si.apply(x))),
                None => Ok(pooled),
            };
        }
        let mut per_edge: Feats = self
            .fout
            .iter()
            .map(|&(l, c)| (l, Block::zeros(n * k, c, 2 * l + 1)))
            .collect();
        for e in 0..n * k {
            let input = radial_input(
                g.dist[e],
                &g.edge_feat[e * g.edge_dim..(e + 1) * g.edge_dim],
                self.fourier,
            )?;
            let j = g.nbr[e];
            for p in &self.pairs {
                let xb = x.get(&p.d_in).ok_or(Error::MissingInput {
                    name: "features of a degree of fiber_in",
                })?;
                let (mi, mo) = (2 * p.d_in + 1, 2 * p.d_out + 1);
                let nf = 2 * p.d_in.min(p.d_out) + 1;
                let r = p.radial.apply(&input);
                let kb = g.basis_block(e, p.d_in, p.d_out);
                let xj = xb.row(j);
                let kx = basis_times_features(kb, xj, nf, p.c_in, mi, mo);
                let out = &mut per_edge
                    .get_mut(&p.d_out)
                    .ok_or(Error::MissingInput {
                        name: "output degree",
                    })?
                    .data[e * p.c_out * mo..(e + 1) * p.c_out * mo];
                for oc in 0..p.c_out {
                    for c in 0..p.c_in {
                        for f in 0..nf {
                            let w = r[(oc * p.c_in + c) * nf + f];
                            let src = &kx[(f * p.c_in + c) * mo..(f * p.c_in + c + 1) * mo];
                            for o in 0..mo {
                                out[oc * mo + o] += w * src[o];
                            }
                        }
                    }
                }
            }
        }
        if !self.pool {
            return Ok(per_edge);
        }
        let mut pooled = Feats::new();
        for (l, b) in per_edge {
            let w = b.channels * b.m;
            let mut o = Block::zeros(n, b.channels, b.m);
            for i in 0..n {
                let cnt = (0..k).filter(|&kk| g.valid[i * k + kk]).count();
                if cnt == 0 {
                    continue;
                }
                let orow = &mut o.data[i * w..(i + 1) * w];
                for kk in (0..k).filter(|&kk| g.valid[i * k + kk]) {
                    for (a, v) in orow.iter_mut().zip(b.row(i * k + kk)) {
                        *a += v;
                    }
                }
                orow.iter_mut().for_each(|a| *a /= cnt as f64);
            }
            pooled.insert(l, o);
        }
        match &self.self_interact {
            Some(si) => Ok(residual(pooled, &si.apply(x))),
            None => Ok(pooled),
        }
    }
}
