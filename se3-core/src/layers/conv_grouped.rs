//! The reassociated ConvSE3 contraction on edges grouped by destination node (`k` edges per
//! node, edge `i k + kk` is neighbour `kk` of node `i`), for attention and pooling.
//!
//! Per degree pair `(d_in, d_out)`: the radial network's hidden activations `h` (`[n, k, 128]`,
//! from [`RadialMlp::build_hidden`] or a [`RadialBank`](super::RadialBank)) and `Kx` (`[n, k,
//! F]`, `F = (p, c, f)`: output order `p`, input channel `c`, basis index `f`, `Kx[f, c, p] =
//! sum_q K_f[p, q] x_j[c, q]`), held by [`PairEdges`]. The radial network's last layer `R = W h +
//! b` is linear, so
//! - neighbour sums `sum_j a_ij m_ij` (mean pooling, attention-weighted values) are taken of
//!   `a_ij h_ij (x) Kx_ij` per node before multiplying by `W` ([`weighted_sum`]), and
//! - attention logits `q_i . m_ij` fold the query into `W` first ([`query_logits`]),
//!
//! so the per-edge weights `R_ij` (c_out c_in nf values per edge and pair) are never formed and
//! the big GEMM runs per node. Both run on the fused [`edge_contract`](crate::ops::edge_contract)
//! kernel (gather, `Kx`, the products and the last layer per block of nodes in cache, never `Kx`
//! or `A_i` of the whole graph); [`weighted_sum_heads`] and [`query_logits_heads`] do several
//! attention heads in one call (one `Kx` for all). [`direct_message`] forms degree-0 messages per edge, for where a
//! per-edge map sits between message and sum (rotary embeddings).

use luminal::prelude::{symbolic::Expression, *};

use super::graph::{constant, dims, expand_at, mm, reshape, retype, X};
use super::radial::{RadialMlp, RADIAL_HIDDEN};
use crate::exec::Session;
use crate::ops::{
    edge_contract_logits, edge_contract_logits_heads, edge_contract_sum, edge_contract_sum_heads,
    gather3,
};
use crate::Error;

/// One degree pair of a convolution on grouped edges, evaluated up to the radial network's last
/// layer (module doc).
#[derive(Debug, Clone, Copy)]
pub struct PairEdges {
    /// Input degree.
    pub d_in: usize,
    /// Output degree.
    pub d_out: usize,
    /// Input channels.
    pub c_in: usize,
    /// Radial hidden activations, `[n, k, 128]`.
    pub h: GraphTensor<(X, X, X)>,
    /// `Kx`, `[n, k, F]`, `F = (2 d_out + 1) c_in nf` (graph nodes built on first use only:
    /// [`weighted_sum`] and [`query_logits`] run the fused [`edge_contract`](crate::ops::edge_contract)
    /// kernel on `x`, `nbr` and the basis instead; unused nodes are dropped by the compiler).
    pub kx: GraphTensor<(X, X, X)>,
    x: GraphTensor<(X, X, X)>,
    nbr: GraphTensor<(X,)>,
    basis: GraphTensor<(X, X, X, X)>,
    /// `h` as given (any view of `[e, 128]` in row-major order), read by the fused kernel.
    h_view: GraphTensor<(X, X, X)>,
    n: Expression,
    k: Expression,
}

impl PairEdges {
    /// `h` and `Kx` of the pair from node features `x` (`[n, c_in, 2 d_in + 1]`), neighbour
    /// indices `nbr` (`[n k]`, grouped by node), the kernel basis block `basis` (`[n k, 2 d_out +
    /// 1, 2 d_in + 1, nf]`) and the radial hidden activations `h` (`[n k, 128]`).
    #[allow(clippy::too_many_arguments)]
    pub fn new<E: Dimension>(
        d_in: usize,
        d_out: usize,
        x: GraphTensor<(X, X, X)>,
        nbr: GraphTensor<(E,)>,
        basis: GraphTensor<(X, X, X, X)>,
        h: GraphTensor<(X, X)>,
        n: Expression,
        k: Expression,
    ) -> Self {
        Self::with_hidden_view(d_in, d_out, x, nbr, basis, h, n, k)
    }

    /// As [`PairEdges::new`], with the radial hidden activations given as any view whose
    /// logical elements are `[n k, 128]` in row-major order (e.g. one network's slice of a
    /// stacked `[P, n k, 128]` tensor from [`radial_hidden`](crate::ops::radial_hidden())): the
    /// fused kernel reads it in place.
    #[allow(clippy::too_many_arguments)]
    pub fn with_hidden_view<E: Dimension, S: Shape>(
        d_in: usize,
        d_out: usize,
        x: GraphTensor<(X, X, X)>,
        nbr: GraphTensor<(E,)>,
        basis: GraphTensor<(X, X, X, X)>,
        h: GraphTensor<S>,
        n: Expression,
        k: Expression,
    ) -> Self {
        let mo = 2 * d_out + 1;
        let nf = 2 * d_in.min(d_out) + 1;
        let c_in = dims(x)[1].to_usize().unwrap_or(1);
        let xj: GraphTensor<(X, X, X)> = retype(gather3::<X, X, X, E>(x, nbr));
        // Kx[e, p, c, f] = sum_q K[e, p, q, f] x_j[e, c, q]
        let k5: GraphTensor<(X, X, X, X, X)> = expand_at(basis, 2, c_in);
        let x4: GraphTensor<(X, X, X, X)> = expand_at(xj, 1, mo);
        let x5: GraphTensor<(X, X, X, X, X)> = expand_at(x4, 4, nf);
        let kx: GraphTensor<(X, X, X, X)> = (k5 * x5).sum_reduce::<_, Axis<3>>();
        let width = mo * c_in * nf;
        PairEdges {
            d_in,
            d_out,
            c_in,
            h: reshape(h, &[n, k, RADIAL_HIDDEN.into()]),
            kx: reshape(kx, &[n, k, width.into()]),
            h_view: retype(h),
            x,
            nbr: retype(nbr),
            basis,
            n,
            k,
        }
    }

    fn nf(&self) -> usize {
        2 * self.d_in.min(self.d_out) + 1
    }

    /// `F`, the width of `Kx`.
    pub fn width(&self) -> usize {
        (2 * self.d_out + 1) * self.c_in * self.nf()
    }
}

/// The last layer of `radial` for output channels `c0..c0 + cnt` of a pair with `cf = c_in nf`
/// (channel, basis function) rows, as `[(f, c, h), o]` and its bias as `[(f, c), o]` (the order of
/// [`edge_contract`](crate::ops::edge_contract); the radial network's own output order is
/// `(o, c, f)`).
fn last_layer(
    radial: &RadialMlp,
    cf: usize,
    nf: usize,
    c0: usize,
    cnt: usize,
) -> Result<(Vec<f32>, Vec<f32>), Error> {
    let (lw, lb) = radial.last_layer()?;
    let hd = RADIAL_HIDDEN;
    let c_in = cf / nf.max(1);
    let mut w = vec![0.0; cf * hd * cnt];
    let mut b = vec![0.0; cf * cnt];
    for o in 0..cnt {
        for j in 0..cf {
            // j = f c_in + c here; the network's row of (o, c, f) is (o cf + c nf + f)
            let (f, c) = (j / c_in, j % c_in);
            let row = (c0 + o) * cf + c * nf + f;
            for h in 0..hd {
                w[(j * hd + h) * cnt + o] = lw[row * hd + h];
            }
            b[j * cnt + o] = lb[row];
        }
    }
    Ok((w, b))
}

/// `sum_j a_ij m_ij` for output channels `c0..c0 + cnt` of the pair, reassociated: `A_i = sum_j
/// a_ij h_ij (x) Kx_ij` per node, then the last radial layer; `[n, cnt, 2 d_out + 1]`. `a` is
/// `[n, k]`; weights are session weights `<prefix>w`, `<prefix>b`.
///
/// # Errors
/// Those of `Session::set_weight`.
pub fn weighted_sum(
    s: &mut Session,
    prefix: &str,
    radial: &RadialMlp,
    pe: &PairEdges,
    a: GraphTensor<(X, X)>,
    c0: usize,
    cnt: usize,
) -> Result<GraphTensor<(X, X, X)>, Error> {
    let cf = pe.c_in * pe.nf();
    let (w, b) = last_layer(radial, cf, pe.nf(), c0, cnt)?;
    let wt: GraphTensor<(X, X)> =
        constant(s, &format!("{prefix}w"), w, &[cf * RADIAL_HIDDEN, cnt])?;
    let bt: GraphTensor<(X, X)> = constant(s, &format!("{prefix}b"), b, &[cf, cnt])?;
    Ok(edge_contract_sum(
        pe.x, pe.nbr, pe.basis, pe.h_view, a, wt, bt,
    ))
}

/// `sum_{o,p} q_i[o, p] m_ij[c0 + o, p]` per edge, the query (`[n, cnt, 2 d_out + 1]`) folded
/// into the last radial layer: `[n, k]`.
///
/// # Errors
/// Those of `Session::set_weight`.
pub fn query_logits(
    s: &mut Session,
    prefix: &str,
    radial: &RadialMlp,
    pe: &PairEdges,
    q: GraphTensor<(X, X, X)>,
    c0: usize,
    cnt: usize,
) -> Result<GraphTensor<(X, X)>, Error> {
    let cf = pe.c_in * pe.nf();
    let (w, b) = last_layer(radial, cf, pe.nf(), c0, cnt)?;
    let wt: GraphTensor<(X, X)> =
        constant(s, &format!("{prefix}w"), w, &[cf * RADIAL_HIDDEN, cnt])?;
    let bt: GraphTensor<(X, X)> = constant(s, &format!("{prefix}b"), b, &[cf, cnt])?;
    Ok(edge_contract_logits(
        pe.x, pe.nbr, pe.basis, pe.h_view, q, wt, bt, pe.k,
    ))
}

/// The last layer of `radial` for output channels `c0 .. c0 + cnt` of every `c0` of `c0s`, side
/// by side: `[(c, f, h), (head, o)]` and `[(c, f), (head, o)]`.
fn last_layer_heads(
    radial: &RadialMlp,
    cf: usize,
    nf: usize,
    c0s: &[usize],
    cnt: usize,
) -> Result<(Vec<f32>, Vec<f32>), Error> {
    let heads = c0s.len();
    let all = heads * cnt;
    let hd = RADIAL_HIDDEN;
    let mut w = vec![0.0; cf * hd * all];
    let mut b = vec![0.0; cf * all];
    for (t, &c0) in c0s.iter().enumerate() {
        let (wt, bt) = last_layer(radial, cf, nf, c0, cnt)?;
        for r in 0..cf * hd {
            w[r * all + t * cnt..r * all + (t + 1) * cnt]
                .copy_from_slice(&wt[r * cnt..(r + 1) * cnt]);
        }
        for r in 0..cf {
            b[r * all + t * cnt..r * all + (t + 1) * cnt]
                .copy_from_slice(&bt[r * cnt..(r + 1) * cnt]);
        }
    }
    Ok((w, b))
}

/// The last layer of `radial` for the heads' output channels (`c0s[t] .. c0s[t] + cnt` for
/// head `t`) as session constants `<prefix>w` `[(c, f) 128, H cnt]` and `<prefix>b`
/// `[(c, f), H cnt]` ([`last_layer_heads`]), as the fused edge contractions read them.
///
/// # Errors
/// Those of `Session::set_weight`.
#[allow(clippy::type_complexity)]
fn head_weights(
    s: &mut Session,
    prefix: &str,
    radial: &RadialMlp,
    pe: &PairEdges,
    c0s: &[usize],
    cnt: usize,
) -> Result<(GraphTensor<(X, X)>, GraphTensor<(X, X)>), Error> {
    let cf = pe.c_in * pe.nf();
    let all = c0s.len() * cnt;
    let (w, b) = last_layer_heads(radial, cf, pe.nf(), c0s, cnt)?;
    Ok((
        constant(s, &format!("{prefix}w"), w, &[cf * RADIAL_HIDDEN, all])?,
        constant(s, &format!("{prefix}b"), b, &[cf, all])?,
    ))
}

/// [`weighted_sum`] for several heads at once on one fused kernel (one `Kx` for all): head `t`
/// sums with weights `a[t]` (`[n, k]`) over output channels `c0s[t] .. c0s[t] + cnt`; the result
/// is `[n, H cnt, 2 d_out + 1]`, head `t` at channels `t cnt .. (t + 1) cnt`.
///
/// # Errors
/// `LengthMismatch` if `a` and `c0s` differ in length; those of `Session::set_weight`.
#[allow(clippy::too_many_arguments)]
pub fn weighted_sum_heads(
    s: &mut Session,
    prefix: &str,
    radial: &RadialMlp,
    pe: &PairEdges,
    a: &[GraphTensor<(X, X)>],
    c0s: &[usize],
    cnt: usize,
) -> Result<GraphTensor<(X, X, X)>, Error> {
    if a.len() != c0s.len() {
        return Err(Error::LengthMismatch {
            what: "attention weights (one per head)",
            expected: c0s.len(),
            found: a.len(),
        });
    }
    let (wt, bt) = head_weights(s, prefix, radial, pe, c0s, cnt)?;
    Ok(edge_contract_sum_heads(
        pe.x, pe.nbr, pe.basis, pe.h_view, a, wt, bt,
    ))
}

/// [`query_logits`] for several heads at once on one fused kernel: head `t` with query `q[t]`
/// (`[n, cnt, 2 d_out + 1]`) over output channels `c0s[t] .. c0s[t] + cnt`; `[H, n, k]`.
///
/// # Errors
/// `LengthMismatch` if `q` and `c0s` differ in length; those of `Session::set_weight`.
#[allow(clippy::too_many_arguments)]
pub fn query_logits_heads(
    s: &mut Session,
    prefix: &str,
    radial: &RadialMlp,
    pe: &PairEdges,
    q: &[GraphTensor<(X, X, X)>],
    c0s: &[usize],
    cnt: usize,
) -> Result<GraphTensor<(X, X, X)>, Error> {
    if q.len() != c0s.len() {
        return Err(Error::LengthMismatch {
            what: "queries (one per head)",
            expected: c0s.len(),
            found: q.len(),
        });
    }
    let (wt, bt) = head_weights(s, prefix, radial, pe, c0s, cnt)?;
    Ok(edge_contract_logits_heads(
        pe.x, pe.nbr, pe.basis, pe.h_view, q, wt, bt, pe.k,
    ))
}

/// [`weighted_sum_heads`] with the last layer given as graph tensors in the fused kernels'
/// order (`w [(f, c) 128, H cnt]`, `b [(f, c), H cnt]`, head `t` at columns `t cnt ..`), e.g.
/// trainable views of session weights ([`crate::layers::ConvLayer::grouped_pairs`]).
pub fn weighted_sum_heads_with(
    pe: &PairEdges,
    a: &[GraphTensor<(X, X)>],
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
) -> GraphTensor<(X, X, X)> {
    edge_contract_sum_heads(pe.x, pe.nbr, pe.basis, pe.h_view, a, w, b)
}

/// [`query_logits_heads`] with the last layer given as graph tensors (as
/// [`weighted_sum_heads_with`]): `[H, n, k]`.
pub fn query_logits_heads_with(
    pe: &PairEdges,
    q: &[GraphTensor<(X, X, X)>],
    w: GraphTensor<(X, X)>,
    b: GraphTensor<(X, X)>,
) -> GraphTensor<(X, X, X)> {
    edge_contract_logits_heads(pe.x, pe.nbr, pe.basis, pe.h_view, q, w, b, pe.k)
}

/// Per-edge messages of a pair with output degree 0, formed directly (radial weights per edge),
/// for output channels `c0..c0 + cnt`: `[n k, cnt]`.
///
/// # Errors
/// `DegreeTooHigh` if the pair's output degree is not 0; those of `Session::set_weight`.
pub fn direct_message(
    s: &mut Session,
    prefix: &str,
    radial: &RadialMlp,
    pe: &PairEdges,
    c0: usize,
    cnt: usize,
) -> Result<GraphTensor<(X, X)>, Error> {
    if pe.d_out != 0 {
        return Err(Error::DegreeTooHigh {
            l: pe.d_out,
            max: 0,
        });
    }
    let e = pe.n * pe.k;
    let cf = pe.width(); // d_out = 0: one basis function, one output component
    let (lw, lb) = radial.last_layer()?;
    let hd = RADIAL_HIDDEN;
    let mut w = vec![0.0; hd * cnt * cf];
    let mut b = vec![0.0; cnt * cf];
    for o in 0..cnt {
        for j in 0..cf {
            let row = (c0 + o) * cf + j;
            for h in 0..hd {
                w[h * cnt * cf + o * cf + j] = lw[row * hd + h];
            }
            b[o * cf + j] = lb[row];
        }
    }
    let wt: GraphTensor<(X, X)> = constant(s, &format!("{prefix}w"), w, &[hd, cnt * cf])?;
    let bt: GraphTensor<(X,)> = constant(s, &format!("{prefix}b"), b, &[cnt * cf])?;
    let h2: GraphTensor<(X, X)> = reshape(pe.h, &[e, hd.into()]);
    let r = mm(h2, wt) + expand_at::<_, (X, X)>(bt, 0, e);
    let r3: GraphTensor<(X, X, X)> = reshape(r, &[e, cnt.into(), cf.into()]);
    let kx2: GraphTensor<(X, X)> = reshape(pe.kx, &[e, cf.into()]);
    Ok((r3 * expand_at::<_, (X, X, X)>(kx2, 1, cnt)).sum_reduce::<_, Axis<2>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rng;
    use rand::Rng;

    fn random(r: &mut impl Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| r.gen_range(-1.0..1.0)).collect()
    }

    /// The reassociated neighbour sum and query logits against the per-edge messages formed
    /// directly (`R_ij = W h_ij + b` per edge), on a degree pair 1 -> 0.
    #[test]
    fn reassociated_sums_and_logits_match_direct_messages() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let (n, k, c_in, c_out) = (4usize, 3usize, 2usize, 3usize);
        let e = n * k;
        let radial = RadialMlp::new(1, c_out * c_in, &mut r);
        let mut s = Session::new();
        let x: GraphTensor<(X, X, X)> =
            constant(&mut s, "x", random(&mut r, n * c_in * 3), &[n, c_in, 3])?;
        let idx: Vec<f32> = (0..e).map(|_| r.gen_range(0..n) as f32).collect();
        let nbr: GraphTensor<(X,)> = constant(&mut s, "nbr", idx, &[e])?;
        let basis: GraphTensor<(X, X, X, X)> =
            constant(&mut s, "basis", random(&mut r, e * 3), &[e, 1, 3, 1])?;
        let h: GraphTensor<(X, X)> = constant(
            &mut s,
            "h",
            random(&mut r, e * RADIAL_HIDDEN),
            &[e, RADIAL_HIDDEN],
        )?;
        let a_data = random(&mut r, n * k);
        let q_data = random(&mut r, n * c_out);
        let a: GraphTensor<(X, X)> = constant(&mut s, "a", a_data.clone(), &[n, k])?;
        let q: GraphTensor<(X, X, X)> = constant(&mut s, "q", q_data.clone(), &[n, c_out, 1])?;
        let pe = PairEdges::new(1, 0, x, nbr, basis, h, n.into(), k.into());
        let direct = direct_message(&mut s, "d.", &radial, &pe, 0, c_out)?;
        let sum = weighted_sum(&mut s, "s.", &radial, &pe, a, 0, c_out)?;
        let logits = query_logits(&mut s, "l.", &radial, &pe, q, 0, c_out)?;
        s.output("direct", direct);
        s.output("sum", sum);
        s.output("logits", logits);
        s.run()?;
        let direct = s.get("direct")?.data; // [e, c_out]
        let sum = s.get("sum")?.data; // [n, c_out, 1]
        let logits = s.get("logits")?.data; // [n, k]
        let close = |got: f32, want: f32, what: &str| {
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "seed {seed}: {what}: reassociated {got}, direct {want}"
            );
        };
        for i in 0..n {
            for o in 0..c_out {
                let want: f32 = (0..k)
                    .map(|kk| a_data[i * k + kk] * direct[(i * k + kk) * c_out + o])
                    .sum();
                close(sum[i * c_out + o], want, "weighted sum");
            }
            for kk in 0..k {
                let want: f32 = (0..c_out)
                    .map(|o| q_data[i * c_out + o] * direct[(i * k + kk) * c_out + o])
                    .sum();
                close(logits[i * k + kk], want, "query logits");
            }
        }
        Ok(())
    }
}
