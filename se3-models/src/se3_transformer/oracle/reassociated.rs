//! The ConvSE3 contractions reassociated around the radial network's last (linear) layer.
//!
//! A ConvSE3 message is `m_ij[o, p] = sum_{c, f} R_ij[o, c, f] Kx_ij[f, c, p]` with
//! `R_ij = W h_ij + b` (`h_ij` the 128 hidden activations of the radial network, `W` of shape
//! (c_out c_in nf, 128)) and `Kx_ij[f, c, p] = sum_q K_f(r_ij)[p, q] x_j[c, q]`. Everything that
//! consumes messages is linear in them, so the big GEMM with `W` can move from edges to nodes:
//!
//! * weighted sums (pooling, attention-weighted values): `sum_j w_ij m_ij[o, p] =
//!   sum_{c,f,h} W[(o,c,f), h] A_i[h, f, c, p] + sum_{c,f} b[(o,c,f)] B_i[f, c, p]` with
//!   `A_i = sum_j w_ij h_ij (x) Kx_ij` and `B_i = sum_j w_ij Kx_ij`;
//! * attention logits with a query: `sum_{o,p} q_i[o, p] m_ij[o, p] =
//!   sum_{h,c,f,p} h_ij[h] Kx_ij[f, c, p] Wq_i[h, c, f, p] + sum_{c,f,p} Kx_ij[f, c, p] bq_i[c, f, p]` with the
//!   query folded into the weights first, `Wq_i[h, c, f, p] = sum_o q_i[o, p] W[(o,c,f), h]`.
//!
//! Per-edge weights `R_ij` (c_out c_in nf values) are never formed; the multiply-adds with `W` drop by
//! the number of neighbours. These float64 versions pin the algebra for the graph implementations and
//! are tested against the direct form below.

/// How ConvSE3 messages are contracted: per edge with formed radial weights (the library's order), or
/// reassociated around the radial network's last layer (module doc). Both give the same values up to
/// rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Contraction {
    /// Form `R_ij` per edge, as the library does.
    #[default]
    Direct,
    /// Move the last radial layer from edges to nodes.
    Reassociated,
}

use crate::se3_transformer::graph::Graph;
use crate::se3_transformer::oracle::conv::{basis_times_features, radial_input, ConvSe3};
use crate::se3_transformer::oracle::features::{Block, Feats};
use crate::Error;

fn missing() -> Error {
    Error::MissingInput {
        name: "features of a degree of fiber_in",
    }
}

/// `out_i = sum_k w[i k + kk] m_{i, nbr(i, kk)}` for every output degree of `conv` (or only
/// `only_degree`), messages summed over input degrees, no self-interaction; reassociated.
///
/// # Errors
/// `MissingInput` if `x` lacks an input degree of the conv.
pub(crate) fn weighted_message_sum(
    conv: &ConvSe3,
    x: &Feats,
    g: &Graph,
    w: &[f64],
    only_degree: Option<usize>,
) -> Result<Feats, Error> {
    let (n, k) = (g.n, g.k);
    let mut out: Feats = conv
        .fiber_out()
        .iter()
        .filter(|&&(l, _)| only_degree.is_none_or(|d| d == l))
        .map(|&(l, c)| (l, Block::zeros(n, c, 2 * l + 1)))
        .collect();
    let inputs: Vec<Vec<f64>> = (0..n * k)
        .map(|e| {
            radial_input(
                g.dist[e],
                &g.edge_feat[e * g.edge_dim..(e + 1) * g.edge_dim],
                conv.fourier(),
            )
        })
        .collect::<Result<_, _>>()?;
    for p in conv
        .pairs()
        .iter()
        .filter(|p| only_degree.is_none_or(|d| d == p.d_out))
    {
        let xb = x.get(&p.d_in).ok_or_else(missing)?;
        let (mi, mo) = (2 * p.d_in + 1, 2 * p.d_out + 1);
        let nf = 2 * p.d_in.min(p.d_out) + 1;
        let last = p.radial.last();
        let hd = last.n_in;
        let kxw = nf * p.c_in * mo;
        let ob = out.get_mut(&p.d_out).ok_or_else(missing)?;
        for i in 0..n {
            let mut a = vec![0.0; hd * kxw];
            let mut bsum = vec![0.0; kxw];
            for kk in 0..k {
                let e = i * k + kk;
                if w[e] == 0.0 {
                    continue;
                }
                let h = p.radial.hidden(&inputs[e]);
                let kb = g.basis_block(e, p.d_in, p.d_out);
                let kx = basis_times_features(kb, xb.row(g.nbr[e]), nf, p.c_in, mi, mo);
                for (hh, hv) in h.iter().enumerate() {
                    let s = w[e] * hv;
                    for (dst, v) in a[hh * kxw..(hh + 1) * kxw].iter_mut().zip(&kx) {
                        *dst += s * v;
                    }
                }
                for (dst, v) in bsum.iter_mut().zip(&kx) {
                    *dst += w[e] * v;
                }
            }
            let orow = &mut ob.data[i * p.c_out * mo..(i + 1) * p.c_out * mo];
            for o in 0..p.c_out {
                for c in 0..p.c_in {
                    for f in 0..nf {
                        let r = (o * p.c_in + c) * nf + f;
                        let wrow = &last.w[r * hd..(r + 1) * hd];
                        let off = (f * p.c_in + c) * mo;
                        for pm in 0..mo {
                            let mut s = last.b[r] * bsum[off + pm];
                            for (hh, wv) in wrow.iter().enumerate() {
                                s += wv * a[hh * kxw + off + pm];
                            }
                            orow[o * mo + pm] += s;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// `logit[(i k + kk) groups + gi] = sum_{o in group gi, p} q_i[o, p] m_{i, nbr(i, kk)}[o, p]` for output
/// degree `l`, reassociated (query folded into the last radial layer). Output channels are split into
/// `groups` equal consecutive groups (heads).
///
/// # Errors
/// `MissingInput` if `x` or `q` lacks a degree.
pub(crate) fn query_message_logits(
    conv: &ConvSe3,
    x: &Feats,
    g: &Graph,
    q: &Block,
    l: usize,
    groups: usize,
) -> Result<Vec<f64>, Error> {
    let (n, k) = (g.n, g.k);
    let mut logits = vec![0.0; n * k * groups];
    for p in conv.pairs().iter().filter(|p| p.d_out == l) {
        let xb = x.get(&p.d_in).ok_or_else(missing)?;
        let (mi, mo) = (2 * p.d_in + 1, 2 * p.d_out + 1);
        let nf = 2 * p.d_in.min(p.d_out) + 1;
        let last = p.radial.last();
        let hd = last.n_in;
        let kxw = nf * p.c_in * mo;
        let per_group = p.c_out / groups;
        for i in 0..n {
            let qi = q.row(i);
            for gi in 0..groups {
                // Wq[h, (f, c, p)] and bq[(f, c, p)]
                let mut wq = vec![0.0; hd * kxw];
                let mut bq = vec![0.0; kxw];
                for o in gi * per_group..(gi + 1) * per_group {
                    for c in 0..p.c_in {
                        for f in 0..nf {
                            let r = (o * p.c_in + c) * nf + f;
                            let off = (f * p.c_in + c) * mo;
                            for pm in 0..mo {
                                let qv = qi[o * mo + pm];
                                bq[off + pm] += qv * last.b[r];
                                for hh in 0..hd {
                                    wq[hh * kxw + off + pm] += qv * last.w[r * hd + hh];
                                }
                            }
                        }
                    }
                }
                for kk in 0..k {
                    let e = i * k + kk;
                    let input = radial_input(
                        g.dist[e],
                        &g.edge_feat[e * g.edge_dim..(e + 1) * g.edge_dim],
                        conv.fourier(),
                    )?;
                    let h = p.radial.hidden(&input);
                    let kb = g.basis_block(e, p.d_in, p.d_out);
                    let kx = basis_times_features(kb, xb.row(g.nbr[e]), nf, p.c_in, mi, mo);
                    let mut s: f64 = kx.iter().zip(&bq).map(|(a, b)| a * b).sum();
                    for (hh, hv) in h.iter().enumerate() {
                        s += hv
                            * kx.iter()
                                .zip(&wq[hh * kxw..(hh + 1) * kxw])
                                .map(|(a, b)| a * b)
                                .sum::<f64>();
                    }
                    logits[e * groups + gi] += s;
                }
            }
        }
    }
    Ok(logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{KeyRecorder, StateDict, StateDictSource, Tensor, WeightSource};
    use crate::se3_transformer::basis::Se3tBasis;
    use crate::se3_transformer::graph::{build_graph, PairInputs, SelectionParams};
    use crate::se3_transformer::oracle::conv::ConvOpts;
    use rand::{Rng, SeedableRng};

    fn setup(seed: u64) -> Result<(ConvSe3, Feats, Graph, rand::rngs::StdRng), Error> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let fin = vec![(0, 3), (1, 2), (2, 2)];
        let fout = vec![(0, 4), (1, 4), (2, 2)];
        let opts = ConvOpts {
            edge_dim: 2,
            fourier: Some(2),
            self_interaction: false,
            pool: false,
        };
        let mut rec = KeyRecorder::default();
        ConvSe3::load(&mut rec, "c", &fin, &fout, opts)?;
        let mut sd = StateDict::new();
        for (key, shape) in rec.keys {
            let nvals: usize = shape.iter().product();
            let fan = (*shape.last().unwrap_or(&1)) as f64;
            let data = (0..nvals)
                .map(|_| r.gen_range(-1.0..1.0) / fan.sqrt())
                .collect();
            sd.insert(key, Tensor::new(shape, data)?);
        }
        let mut loader = StateDictSource::new(&sd);
        let conv = ConvSe3::load(&mut loader as &mut dyn WeightSource, "c", &fin, &fout, opts)?;
        let n = 7;
        let coors: Vec<[f64; 3]> = (0..n)
            .map(|_| {
                [
                    r.gen_range(-1.0..1.0),
                    r.gen_range(-1.0..1.0),
                    r.gen_range(-1.0..1.0),
                ]
            })
            .collect();
        let edge: Vec<f64> = (0..n * n * 2).map(|_| r.gen_range(-1.0..1.0)).collect();
        let mask = vec![true, true, true, false, true, true, true];
        let sel = SelectionParams {
            num_neighbors: Some(4),
            valid_radius: 1.5,
            causal: false,
            attend_sparse: false,
            max_sparse_neighbors: None,
            num_adj_degrees: None,
        };
        let pin = PairInputs {
            coors: &coors,
            mask: Some(&mask),
            adj: None,
            neighbor_mask: None,
            edge_feat: Some(&edge),
        };
        let g = build_graph(&sel, &pin, None, 0, None, 2, &Se3tBasis::new(2)?)?;
        let x: Feats = fin
            .iter()
            .map(|&(l, c)| {
                let m = 2 * l + 1;
                (
                    l,
                    Block {
                        channels: c,
                        m,
                        data: (0..n * c * m).map(|_| r.gen_range(-1.0..1.0)).collect(),
                    },
                )
            })
            .collect();
        Ok((conv, x, g, r))
    }

    fn max_rel(a: &[f64], b: &[f64]) -> f64 {
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0.0, f64::max)
    }

    #[test]
    fn reassociated_weighted_sum_equals_direct_messages() -> Result<(), Error> {
        let (conv, x, g, mut r) = setup(7)?;
        let w: Vec<f64> = (0..g.n * g.k)
            .map(|e| {
                if g.valid[e] {
                    r.gen_range(0.0..1.0)
                } else {
                    0.0
                }
            })
            .collect();
        let direct = conv.apply(&x, &g)?;
        let fast = weighted_message_sum(&conv, &x, &g, &w, None)?;
        for (l, d) in &direct {
            let mut want = Block::zeros(g.n, d.channels, d.m);
            let width = d.channels * d.m;
            for (e, we) in w.iter().enumerate() {
                let i = e / g.k;
                for (dst, v) in want.data[i * width..(i + 1) * width]
                    .iter_mut()
                    .zip(d.row(e))
                {
                    *dst += we * v;
                }
            }
            let got = &fast[l];
            let err = max_rel(&got.data, &want.data);
            assert!(err < 1e-12, "degree {l}: relative error {err:.3e}");
        }
        Ok(())
    }

    #[test]
    fn reassociated_logits_equal_direct_messages() -> Result<(), Error> {
        let (conv, x, g, mut r) = setup(11)?;
        let direct = conv.apply(&x, &g)?;
        let groups = 2;
        for (l, d) in &direct {
            let q = Block {
                channels: d.channels,
                m: d.m,
                data: (0..g.n * d.channels * d.m)
                    .map(|_| r.gen_range(-1.0..1.0))
                    .collect(),
            };
            let fast = query_message_logits(&conv, &x, &g, &q, *l, groups)?;
            let per = d.channels / groups;
            let mut want = vec![0.0; g.n * g.k * groups];
            for e in 0..g.n * g.k {
                let i = e / g.k;
                for gi in 0..groups {
                    let lo = gi * per * d.m;
                    let hi = (gi + 1) * per * d.m;
                    want[e * groups + gi] = q.row(i)[lo..hi]
                        .iter()
                        .zip(&d.row(e)[lo..hi])
                        .map(|(a, b)| a * b)
                        .sum();
                }
            }
            let err = max_rel(&fast, &want);
            assert!(err < 1e-12, "degree {l}: relative error {err:.3e}");
        }
        Ok(())
    }
}
