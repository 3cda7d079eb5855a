//! The Tensor Field Network convolution (se3-transformer-pytorch's `ConvSE3`) as a graph
//! builder: run-time [`ConvLayer`] and the typed [`Conv<In, Out>`] over it.

use std::marker::PhantomData;

use luminal::prelude::*;
use rand::Rng;

use super::edges::{EdgeBasis, EdgeGraph};
use super::graph::{
    bmm, dims, expand_at, mm, permute, reshape, retype, transpose, DegreeGraphTensor,
    FeatureTensors, GraphFeatures, ParamSource, E, N, X,
};
use super::linear::{LinearLayer, LinearLayout};
use super::radial::RadialMlp;
use crate::exec::Session;
use crate::fiber::{DegreeSpec, Fiber, FiberSpec};
use crate::ops::{edge_conv, gather3, scatter_add3};
use crate::Error;
use luminal::prelude::symbolic::Expression;

/// How messages of a node's edges are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Mean over the node's valid edges (0 for a node without any), as `ConvSE3(pool=True)`.
    Mean,
    /// Sum over the node's valid edges.
    Sum,
}

/// Options of a convolution besides its fibers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    /// Width of the per-edge features fed to the radial network next to the distance.
    pub edge_dim: usize,
    /// Fourier-encode the distance with this many frequencies (`fourier_encode`).
    pub fourier: Option<usize>,
    /// Add a `LinearSE3` of the node's own features (keys `self_interact.weights.<l>`).
    pub self_interaction: bool,
    /// Pooling of messages into nodes.
    pub pool: Pool,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            edge_dim: 0,
            fourier: None,
            self_interaction: true,
            pool: Pool::Mean,
        }
    }
}

/// How the direct (per-edge radial weights) pooled path of [`ConvLayer::build`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectPath {
    /// Per-edge weight matrices `W_e = w_e sum_f R_f(e) (x) K_f(e)`, flattened to
    /// `(E, c_out (2 d_out + 1), c_in (2 d_in + 1))`, applied to the source rows and
    /// scatter-added into destinations by the fused [`edge_conv()`] op. Forms
    /// `(2 l_out + 1)(2 l_in + 1) / nf` times more per-edge values than [`DirectPath::Gemm`]:
    /// slower on CPU today (`se3 bench layers`: 1049 ms against 302 ms fully per edge).
    EdgeConv,
    /// Per-edge messages from batched GEMMs (`R_e (K_e x_src)`), weighted, then summed per
    /// node (grouped edges) or scatter-added (default, the faster one on CPU).
    #[default]
    Gemm,
}

#[derive(Debug, Clone)]
struct PairKernel {
    d_in: usize,
    c_in: usize,
    d_out: usize,
    c_out: usize,
    /// The kept kernel frequencies, as indices `f` of `J = |d_in - d_out| + f` (all of them
    /// for SE(3); for E(3) those with `p_in (-1)^J = p_out`).
    freqs: Vec<usize>,
    radial: RadialMlp,
}

impl PairKernel {
    /// Number of kept frequencies.
    fn nf(&self) -> usize {
        self.freqs.len()
    }
}

/// The frequencies `f` (of `J = |l_in - l_out| + f`) a kernel from `i` to `o` may use: all for
/// SE(3) fibers; for E(3) fibers only those with `p_in (-1)^J = p_out`, since the spherical
/// harmonics of degree `J` have parity `(-1)^J`.
fn allowed_freqs(i: &DegreeSpec, o: &DegreeSpec) -> Vec<usize> {
    let j0 = i.l.abs_diff(o.l);
    (0..2 * i.l.min(o.l) + 1)
        .filter(|f| match (i.parity, o.parity) {
            (Some(pi), Some(po)) => {
                let sign = if (j0 + f).is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                };
                pi.factor() * sign == po.factor()
            }
            _ => true,
        })
        .collect()
}

/// The basis block of pair `p` restricted to its kept frequencies, `(E, 2 d_in + 1, nf (2 d_out
/// + 1))` with `nf` kept frequencies.
fn pair_block(basis: &EdgeBasis, p: &PairKernel) -> Result<GraphTensor<(E, X, X)>, Error> {
    let block = basis.block(p.d_in, p.d_out)?;
    let full = 2 * p.d_in.min(p.d_out) + 1;
    if p.nf() == full {
        return Ok(block);
    }
    let e = dims(block)[0];
    let (di, mo) = (2 * p.d_in + 1, 2 * p.d_out + 1);
    let b4: GraphTensor<(X, X, X, X)> = reshape(block, &[e, di.into(), full.into(), mo.into()]);
    let mut kept: Option<GraphTensor<(X, X, X, X)>> = None;
    for &f in &p.freqs {
        let one: GraphTensor<(X, X, X, X)> = b4
            .slice((.., .., Expression::from(f)..Expression::from(f + 1), ..))
            .contiguous();
        kept = Some(match kept {
            None => one,
            Some(acc) => acc.concat_along::<(X, X, X, X), Axis<2>, _>(one),
        });
    }
    let kept = kept.ok_or(Error::Empty {
        what: "kernel frequencies of a degree pair",
    })?;
    Ok(reshape(kept, &[e, di.into(), (p.nf() * mo).into()]))
}

/// The degree pairs of a convolution with their kept frequencies (pairs without any dropped).
///
/// # Errors
/// `InvalidOp` if one fiber has parities and the other not, or an output degree has no
/// allowed kernel.
fn pair_freqs(
    fiber_in: &FiberSpec,
    fiber_out: &FiberSpec,
) -> Result<Vec<(DegreeSpec, DegreeSpec, Vec<usize>)>, Error> {
    if fiber_in.has_parity() != fiber_out.has_parity() {
        return Err(Error::InvalidOp {
            op: "convolution",
            problem:
                "one fiber is E(3) (parities) and the other SE(3); give both or neither parities",
        });
    }
    let mut pairs = Vec::new();
    for o in fiber_out.degrees() {
        let before = pairs.len();
        for i in fiber_in.degrees() {
            let freqs = allowed_freqs(i, o);
            if !freqs.is_empty() {
                pairs.push((*i, *o, freqs));
            }
        }
        if pairs.len() == before {
            return Err(Error::InvalidOp {
                op: "convolution",
                problem: "an output degree has no kernel of the right parity from any input degree",
            });
        }
    }
    Ok(pairs)
}

/// The TFN / SE(3)-Transformer convolution from `fiber_in` to `fiber_out`:
///
/// `m_e[o, p] = sum_{d_in} sum_{c, f} R_f(|r_e|, a_e)[o, c] sum_q K_f(r_e)[p, q] x_{src e}[c, q]`
///
/// for every output degree, with `K_f` the kernel basis ([`EdgeBasis`]) and `R` a radial
/// network per degree pair ([`RadialMlp`], fed the distance and optional edge features
/// `a_e`), then pooled into `dst e` (mean or sum over valid edges) and plus an optional
/// self-interaction `LinearSE3(x)`. Equivariant because `K_f(R r) = D^{d_out}(R) K_f(r)
/// D^{d_in}(R)^T` and `R` sees only invariants. Weights and keys as se3-transformer-pytorch
/// (`kernel_unary.(d_in,d_out).rp.net.*`, `self_interact.weights.<l>`), so `ConvSE3`
/// checkpoints load. For E(3) fibers (every degree with a parity) only the frequencies `J`
/// with `p_in (-1)^J = p_out` are kept, so the layer is also equivariant under reflections.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    fiber_in: FiberSpec,
    fiber_out: FiberSpec,
    options: ConvOptions,
    pairs: Vec<PairKernel>,
    self_interact: Option<LinearLayer>,
    direct: DirectPath,
}

/// Whether the fibers have a degree in common (else self-interaction has no weights).
fn shares_degree(a: &FiberSpec, b: &FiberSpec) -> bool {
    a.degrees().iter().any(|d| b.channels(d.l).is_some())
}

/// Self-interaction maps degree l to degree l, so on E(3) fibers it needs equal parities there.
///
/// # Errors
/// `InvalidOp` if a degree both fibers have differs in parity and self-interaction is on.
fn check_self_parity(a: &FiberSpec, b: &FiberSpec, options: &ConvOptions) -> Result<(), Error> {
    let clash = a.degrees().iter().any(|d| {
        b.degrees()
            .iter()
            .any(|o| o.l == d.l && o.parity != d.parity)
    });
    if options.self_interaction && clash {
        return Err(Error::InvalidOp {
            op: "convolution self-interaction",
            problem: "a degree of both fibers has different parities; turn self_interaction off",
        });
    }
    Ok(())
}

fn radial_in(o: &ConvOptions) -> usize {
    1 + o.edge_dim + o.fourier.map_or(0, |k| 2 * k)
}

impl ConvLayer {
    /// The input tensor of degree `l`.
    ///
    /// # Errors
    /// `FiberMismatch` if the input fiber lacks degree `l`.
    fn input_degree<R: Dimension>(
        &self,
        x: &FeatureTensors<R>,
        l: usize,
    ) -> Result<DegreeGraphTensor<R>, Error> {
        x.degree(l).ok_or(Error::FiberMismatch {
            fiber: "convolution input",
            expected: self.fiber_in.to_string(),
            found: x.spec().to_string(),
        })
    }

    /// Adds one degree pair's contribution `y` into the output slot of degree `d_out`.
    fn accumulate<S: Shape>(
        &self,
        out: &mut [Option<GraphTensor<S>>],
        d_out: usize,
        y: GraphTensor<S>,
    ) {
        let slot = self
            .fiber_out
            .degrees()
            .iter()
            .position(|d| d.l == d_out)
            .unwrap_or(0);
        out[slot] = Some(match out[slot] {
            None => y,
            Some(acc) => acc + y,
        });
    }
    /// A convolution with freshly initialised weights (self-interaction, if asked for, on the
    /// degrees both fibers have; none if they share no degree).
    ///
    /// # Errors
    /// None for valid fiber specs.
    pub fn new(
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        options: ConvOptions,
        rng: &mut impl Rng,
    ) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        for (i, o, freqs) in pair_freqs(fiber_in, fiber_out)? {
            let nf = freqs.len();
            pairs.push(PairKernel {
                d_in: i.l,
                c_in: i.channels,
                d_out: o.l,
                c_out: o.channels,
                freqs,
                radial: RadialMlp::new(radial_in(&options), nf * i.channels * o.channels, rng),
            });
        }
        check_self_parity(fiber_in, fiber_out, &options)?;
        let self_interact = if options.self_interaction && shares_degree(fiber_in, fiber_out) {
            Some(LinearLayer::new(fiber_in, fiber_out, false, rng)?)
        } else {
            None
        };
        Ok(ConvLayer {
            fiber_in: fiber_in.clone(),
            fiber_out: fiber_out.clone(),
            options,
            pairs,
            self_interact,
            direct: DirectPath::default(),
        })
    }

    /// Loads a `ConvSE3` checkpoint stored under `prefix` (e.g. `"convs.0."`).
    ///
    /// # Errors
    /// `MissingKey`, `WrongShape`, `NonFiniteWeight`.
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        fiber_in: &FiberSpec,
        fiber_out: &FiberSpec,
        options: ConvOptions,
    ) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        for (i, o, freqs) in pair_freqs(fiber_in, fiber_out)? {
            let nf = freqs.len();
            let radial = RadialMlp::load(
                src,
                &format!("{prefix}kernel_unary.({},{}).rp.", i.l, o.l),
                radial_in(&options),
                nf * i.channels * o.channels,
            )?;
            pairs.push(PairKernel {
                d_in: i.l,
                c_in: i.channels,
                d_out: o.l,
                c_out: o.channels,
                freqs,
                radial,
            });
        }
        check_self_parity(fiber_in, fiber_out, &options)?;
        let self_interact = if options.self_interaction && shares_degree(fiber_in, fiber_out) {
            Some(LinearLayer::load(
                src,
                &format!("{prefix}self_interact."),
                fiber_in,
                fiber_out,
                LinearLayout::Se3TransformerPytorch,
                false,
            )?)
        } else {
            None
        };
        Ok(ConvLayer {
            fiber_in: fiber_in.clone(),
            fiber_out: fiber_out.clone(),
            options,
            pairs,
            self_interact,
            direct: DirectPath::default(),
        })
    }

    /// The input fiber.
    pub fn fiber_in(&self) -> &FiberSpec {
        &self.fiber_in
    }

    /// The output fiber.
    pub fn fiber_out(&self) -> &FiberSpec {
        &self.fiber_out
    }

    /// The options.
    pub fn options(&self) -> ConvOptions {
        self.options
    }

    /// The same layer with the direct pooled path run as `direct`.
    #[must_use]
    pub fn with_direct_path(mut self, direct: DirectPath) -> Self {
        self.direct = direct;
        self
    }

    /// How the direct pooled path runs.
    pub fn direct_path(&self) -> DirectPath {
        self.direct
    }

    /// The pooled message of one degree pair through the fused edge op:
    /// `out[n, (o, p)] = sum_{e: dst e = n} sum_{(c, q)} W_e[(o, p), (c, q)] x[src e, (c, q)]` with
    /// `W_e[(o, p), (c, q)] = w_e sum_f R_e[o, c, f] K_e[q, f, p]` (`w_e` the pooling weight),
    /// `(N, c_out, 2 d_out + 1)`.
    #[allow(clippy::too_many_arguments)]
    fn pair_pooled_edge_conv(
        &self,
        s: &mut Session,
        prefix: &str,
        p: &PairKernel,
        xl: GraphTensor<(N, X, X)>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        input: GraphTensor<(E, X)>,
        w: GraphTensor<(E,)>,
    ) -> Result<GraphTensor<(X, X, X)>, Error> {
        let e = dims(edges.dist)[0];
        let n = dims(xl)[0];
        let (di, mo, nf) = (2 * p.d_in + 1, 2 * p.d_out + 1, p.nf());
        let (h, wl, b) = p.radial.build_hidden(
            s,
            &format!("{prefix}kernel_unary.({},{}).rp.", p.d_in, p.d_out),
            input,
        )?;
        let width = p.c_out * p.c_in * nf;
        let r = mm(retype(h), transpose(wl)) + expand_at::<_, (X, X)>(retype::<_, (X,)>(b), 0, e);
        let r = r * expand_at::<_, (X, X)>(retype::<_, (X,)>(w), 1, width);
        let r: GraphTensor<(X, X, X)> = reshape(r, &[e, (p.c_out * p.c_in).into(), nf.into()]);
        // K[e, q, (f, p)] -> (E, f, (q, p))
        let k: GraphTensor<(X, X, X, X)> =
            reshape(pair_block(basis, p)?, &[e, di.into(), nf.into(), mo.into()]);
        let k: GraphTensor<(X, X, X)> =
            reshape(permute(k, &[0, 2, 1, 3]), &[e, nf.into(), (di * mo).into()]);
        // RK[e, (o, c), (q, p)] -> W[e, (o, p), (c, q)]
        let rk: GraphTensor<(X, X, X, X, X)> = reshape(
            bmm(r, k),
            &[e, p.c_out.into(), p.c_in.into(), di.into(), mo.into()],
        );
        let wm: GraphTensor<(E, X, X)> = reshape(
            permute(rk, &[0, 1, 4, 2, 3]),
            &[e, (p.c_out * mo).into(), (p.c_in * di).into()],
        );
        let x2: GraphTensor<(N, X)> = reshape(xl, &[n, (p.c_in * di).into()]);
        let y = edge_conv::<N, N, E, X, X>(x2, wm, edges.src, edges.dst);
        Ok(reshape(y, &[n, p.c_out.into(), mo.into()]))
    }

    /// The pooled sums of every degree pair through [`edge_conv()`] (see
    /// [`DirectPath::EdgeConv`]).
    fn pooled_edge_conv(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        w: GraphTensor<(E,)>,
    ) -> Result<Vec<DegreeGraphTensor>, Error> {
        self.check_input(x, basis)?;
        self.check_edge_dim(edges)?;
        let input = edges.radial_input(s, self.options.fourier)?;
        let mut out: Vec<Option<GraphTensor<(X, X, X)>>> =
            vec![None; self.fiber_out.degrees().len()];
        for p in &self.pairs {
            let xl = self.input_degree(x, p.d_in)?;
            let y = self.pair_pooled_edge_conv(s, prefix, p, xl, edges, basis, input, w)?;
            self.accumulate(&mut out, p.d_out, y);
        }
        Ok(collect_degrees(out)?.into_iter().map(retype).collect())
    }

    fn check_input(&self, x: &FeatureTensors<N>, basis: &EdgeBasis) -> Result<(), Error> {
        if x.spec() != &self.fiber_in {
            return Err(Error::FiberMismatch {
                fiber: "convolution input",
                expected: self.fiber_in.to_string(),
                found: x.spec().to_string(),
            });
        }
        let need = self
            .fiber_in
            .degrees()
            .iter()
            .chain(self.fiber_out.degrees())
            .map(|d| d.l)
            .max()
            .unwrap_or(0);
        if need > basis.max_degree() {
            return Err(Error::DegreeTooHigh {
                l: need,
                max: basis.max_degree(),
            });
        }
        Ok(())
    }

    /// The message of one degree pair on every edge, `(E, c_out, 2 d_out + 1)`, with the
    /// per-edge radial weights formed.
    #[allow(clippy::too_many_arguments)]
    fn pair_message(
        &self,
        s: &mut Session,
        prefix: &str,
        p: &PairKernel,
        xl: GraphTensor<(N, X, X)>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        input: GraphTensor<(E, X)>,
    ) -> Result<GraphTensor<(X, X, X)>, Error> {
        let e = dims(edges.dist)[0];
        let (mo, nf) = (2 * p.d_out + 1, p.nf());
        // R = W h + b: the per-edge part W h, and the bias applied to Kx as one broadcast
        // product b Kx (no pass over the (E, c_out c_in nf) weights to add it).
        let (h, w, b) = p.radial.build_hidden(
            s,
            &format!("{prefix}kernel_unary.({},{}).rp.", p.d_in, p.d_out),
            input,
        )?;
        let r = mm(retype(h), transpose(w));
        let cf = p.c_in * nf;
        let r: GraphTensor<(X, X, X)> = reshape(r, &[e, p.c_out.into(), cf.into()]);
        let xs: GraphTensor<(X, X, X)> = retype(gather3::<N, X, X, E>(xl, edges.src));
        // Kx[e, c, (f, o)] = sum_q x[src e, c, q] K[e, q, (f, o)]
        let kx = bmm(xs, retype(pair_block(basis, p)?));
        let kx: GraphTensor<(X, X, X)> = reshape(kx, &[e, cf.into(), mo.into()]);
        let b2: GraphTensor<(X, X)> = reshape(b, &[p.c_out.into(), cf.into()]);
        Ok(bmm(r, kx) + bmm(expand_at(b2, 0, e), kx))
    }

    /// Per-edge messages `m_e` (`(E, c_out, 2 d_out + 1)` per output degree), before pooling
    /// and self-interaction (the keys and values of attention).
    ///
    /// # Errors
    /// `FiberMismatch` if `x` is not `fiber_in`, `DegreeTooHigh` if `basis` is too small,
    /// `LengthMismatch` if the edge features' width is not `edge_dim`.
    pub fn messages(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors<E>, Error> {
        self.check_input(x, basis)?;
        self.check_edge_dim(edges)?;
        let input = edges.radial_input(s, self.options.fourier)?;
        let mut out: Vec<Option<GraphTensor<(E, X, X)>>> =
            vec![None; self.fiber_out.degrees().len()];
        for p in &self.pairs {
            let xl = self.input_degree(x, p.d_in)?;
            let m = self.pair_message(s, prefix, p, xl, edges, basis, input)?;
            self.accumulate(&mut out, p.d_out, retype(m));
        }
        let degrees = collect_degrees(out)?;
        Ok(FeatureTensors::from_parts(self.fiber_out.clone(), degrees))
    }

    /// The weighted sums `sum_e w_e m_e` into each node, reassociated around the radial
    /// network's last (linear) layer `R = W h + b` (edges grouped by destination, `k` per node):
    ///
    /// `out_i[o, p] = sum_{c,f,h} W[(o,c,f), h] A_i[h, (c,f), p] + sum_{c,f} b[(o,c,f)] B_i[(c,f), p]`,
    /// `A_i = sum_e w_e h_e (x) Kx_e`, `B_i = sum_e w_e Kx_e`,
    ///
    /// so the per-edge weights `R_e` (c_out c_in nf values per edge and pair) are never formed
    /// and the GEMM with `W` runs per node instead of per edge.
    #[allow(clippy::too_many_arguments)]
    fn pooled_reassociated(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        w: GraphTensor<(E,)>,
        k: luminal::prelude::symbolic::Expression,
    ) -> Result<Vec<DegreeGraphTensor>, Error> {
        self.check_input(x, basis)?;
        self.check_edge_dim(edges)?;
        let input = edges.radial_input(s, self.options.fourier)?;
        let e = dims(edges.dist)[0];
        let n = dims(x.tensors()[0])[0];
        let hd = super::radial::RADIAL_HIDDEN;
        let mut out: Vec<Option<GraphTensor<(X, X, X)>>> =
            vec![None; self.fiber_out.degrees().len()];
        for p in &self.pairs {
            let (mo, nf) = (2 * p.d_out + 1, p.nf());
            let cf = p.c_in * nf;
            let xl = self.input_degree(x, p.d_in)?;
            // Reassociate only where it moves less data: per node, A' holds (2 d_out + 1) c_in nf
            // x 128 values against k c_out c_in nf per-edge weights.
            let k_est = k.to_usize().unwrap_or(16);
            if mo * hd >= k_est * p.c_out && self.direct == DirectPath::EdgeConv {
                let y = self.pair_pooled_edge_conv(s, prefix, p, xl, edges, basis, input, w)?;
                self.accumulate(&mut out, p.d_out, y);
                continue;
            }
            if mo * hd >= k_est * p.c_out {
                let m = self.pair_message(s, prefix, p, xl, edges, basis, input)?;
                let w3: GraphTensor<(X, X)> = expand_at(retype::<_, (X,)>(w), 1, p.c_out);
                let mw = m * expand_at::<_, (X, X, X)>(w3, 2, mo);
                let mw: GraphTensor<(X, X, X, X)> = reshape(mw, &[n, k, p.c_out.into(), mo.into()]);
                let y: GraphTensor<(X, X, X)> = mw.sum_reduce::<(X, X, X), Axis<1>>();
                self.accumulate(&mut out, p.d_out, y);
                continue;
            }
            let (h, wl, bl) = p.radial.build_hidden(
                s,
                &format!("{prefix}kernel_unary.({},{}).rp.", p.d_in, p.d_out),
                input,
            )?;
            let xs: GraphTensor<(X, X, X)> = retype(gather3::<N, X, X, E>(xl, edges.src));
            // Kx[e, c, (f, p)] -> weighted, laid out (E, p, (c, f)) -> (N, k, mo cf)
            let kx = bmm(xs, retype(pair_block(basis, p)?));
            let kx: GraphTensor<(X, X, X)> = reshape(kx, &[e, cf.into(), mo.into()]);
            let kx = permute(kx, &[0, 2, 1]);
            let w3: GraphTensor<(X, X)> = expand_at(retype::<_, (X,)>(w), 1, mo);
            let kxw = kx * expand_at::<_, (X, X, X)>(w3, 2, cf);
            let kxw: GraphTensor<(X, X, X)> = reshape(kxw, &[n, k, (mo * cf).into()]);
            // A'[i, (p, c, f), h] = sum_kk Kxw[i, kk, (p, c, f)] h[i, kk, h]: rows (i, p), columns
            // ((c, f), h) of one GEMM with W viewed as ((c, f, h), o).
            let hk: GraphTensor<(X, X, X)> = reshape(h, &[n, k, hd.into()]);
            let a = bmm(permute(kxw, &[0, 2, 1]), hk);
            let a: GraphTensor<(X, X)> = reshape(a, &[n * mo, (cf * hd).into()]);
            let w2 = transpose(reshape(wl, &[p.c_out.into(), (cf * hd).into()]));
            let bsum: GraphTensor<(X, X)> = kxw.sum_reduce::<(X, X), Axis<1>>();
            let bsum: GraphTensor<(X, X)> = reshape(bsum, &[n * mo, cf.into()]);
            let b2 = transpose(reshape(bl, &[p.c_out.into(), cf.into()]));
            let y2 = mm(a, w2) + mm(bsum, b2);
            let y: GraphTensor<(X, X, X)> =
                permute(reshape(y2, &[n, mo.into(), p.c_out.into()]), &[0, 2, 1]);
            self.accumulate(&mut out, p.d_out, y);
        }
        Ok(collect_degrees(out)?.into_iter().map(retype).collect())
    }

    fn check_edge_dim(&self, edges: &EdgeGraph) -> Result<(), Error> {
        let found = edges
            .edge_features
            .map_or(0, |f| dims(f)[1].to_usize().unwrap_or(0));
        if found != self.options.edge_dim {
            return Err(Error::LengthMismatch {
                what: "edge features per edge (the conv's edge_dim)",
                expected: self.options.edge_dim,
                found,
            });
        }
        Ok(())
    }

    /// The convolution: messages pooled into their destinations, plus self-interaction.
    /// Weights are session weights named `<prefix>` + their checkpoint keys. If the edges are
    /// grouped by destination ([`EdgeGraph::per_node`]) the pooled sums are reassociated
    /// around the radial network's last layer (same values up to rounding, per-edge radial
    /// weights never formed) for the degree pairs where that moves less data; the other pairs,
    /// and all pairs of ungrouped edges, take the direct path ([`DirectPath`]: batched GEMMs by
    /// default, or the fused [`edge_conv()`] op on per-edge weight matrices).
    ///
    /// # Errors
    /// As [`ConvLayer::messages`].
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors<N>, Error> {
        let w = match self.options.pool {
            Pool::Mean => edges.mean_weights(),
            Pool::Sum => edges.valid,
        };
        let pooled = match edges.per_node {
            Some(k) => self.pooled_reassociated(s, prefix, x, edges, basis, w, k)?,
            None if self.direct == DirectPath::EdgeConv => {
                self.pooled_edge_conv(s, prefix, x, edges, basis, w)?
            }
            None => {
                let msgs = self.messages(s, prefix, x, edges, basis)?;
                let mut pooled = Vec::new();
                for (t, d) in msgs.tensors().iter().zip(self.fiber_out.degrees()) {
                    let w2: GraphTensor<(E, X)> = expand_at(w, 1, d.channels);
                    let w3: GraphTensor<(E, X, X)> = expand_at(w2, 2, d.width());
                    pooled.push(scatter_add3::<N, X, X, E>(*t * w3, edges.dst));
                }
                pooled
            }
        };
        let out = FeatureTensors::from_parts(self.fiber_out.clone(), pooled);
        match &self.self_interact {
            Some(si) => {
                let r = si.build(s, &format!("{prefix}self_interact."), x)?;
                Ok(out.residual(&r))
            }
            None => Ok(out),
        }
    }
}

/// [`ConvLayer`] typed by its fibers.
#[derive(Debug, Clone)]
pub struct Conv<In: Fiber, Out: Fiber> {
    layer: ConvLayer,
    fibers: PhantomData<fn(In) -> Out>,
}

/// The per-degree outputs, each of which some degree pair must have reached.
///
/// # Errors
/// `Empty` if an output degree got no contribution.
fn collect_degrees<S: Shape>(
    out: Vec<Option<GraphTensor<S>>>,
) -> Result<Vec<GraphTensor<S>>, Error> {
    out.into_iter()
        .map(|t| {
            t.ok_or(Error::Empty {
                what: "convolution input fiber",
            })
        })
        .collect()
}

impl<In: Fiber, Out: Fiber> Conv<In, Out> {
    /// A convolution with fresh weights.
    ///
    /// # Errors
    /// As [`ConvLayer::new`].
    pub fn new(options: ConvOptions, rng: &mut impl Rng) -> Result<Self, Error> {
        Ok(Conv {
            layer: ConvLayer::new(&In::spec(), &Out::spec(), options, rng)?,
            fibers: PhantomData,
        })
    }

    /// Loads a `ConvSE3` checkpoint under `prefix`.
    ///
    /// # Errors
    /// As [`ConvLayer::load`].
    pub fn load(
        src: &mut dyn ParamSource,
        prefix: &str,
        options: ConvOptions,
    ) -> Result<Self, Error> {
        Ok(Conv {
            layer: ConvLayer::load(src, prefix, &In::spec(), &Out::spec(), options)?,
            fibers: PhantomData,
        })
    }

    /// The run-time layer.
    pub fn layer(&self) -> &ConvLayer {
        &self.layer
    }

    /// Adds the convolution to a graph (see [`ConvLayer::build`]).
    ///
    /// # Errors
    /// As [`ConvLayer::build`].
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &GraphFeatures<In>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<GraphFeatures<Out>, Error> {
        Ok(GraphFeatures::wrap(self.layer.build(
            s,
            prefix,
            x.untyped(),
            edges,
            basis,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use luminal::prelude::symbolic::Expression;
    use rand::Rng;

    use super::*;
    use crate::exec::InputKind;
    use crate::ops::{neighbors, NeighborSpec};
    use crate::testing::{rel_error, rng};

    #[test]
    fn reassociated_pooling_matches_per_edge_messages() -> Result<(), Error> {
        const K: usize = 6;
        let (mut r, seed) = rng();
        let fin: FiberSpec = "0:3, 1:2, 2:1".parse()?;
        // degree 0 with 40 channels: 128 (2 * 0 + 1) < 6 * 40, so those pairs reassociate
        let fout: FiberSpec = "0:40, 1:2".parse()?;
        for pool in [Pool::Mean, Pool::Sum] {
            let opts = ConvOptions {
                pool,
                ..ConvOptions::default()
            };
            let conv = ConvLayer::new(&fin, &fout, opts, &mut r)?;
            let mut s = Session::new();
            let coords = s.input::<(N, Const<3>)>("coords", InputKind::Coordinates);
            let mask = s.input::<(N,)>("mask", InputKind::Mask);
            let x = FeatureTensors::input(&mut s, "x", &fin);
            let nb = neighbors::<_, K>(coords, Some(mask), NeighborSpec::default());
            s.derive_dim('e', Expression::from('n') * K);
            let grouped = EdgeGraph::from_neighbors(coords, &nb, None);
            let plain = EdgeGraph {
                per_node: None,
                ..grouped
            };
            let basis = EdgeBasis::new(&mut s, "", &grouped, 2)?;
            conv.build(&mut s, "a.", &x, &grouped, &basis)?
                .output(&mut s, "re");
            conv.build(&mut s, "b.", &x, &plain, &basis)?
                .output(&mut s, "di");
            let n = r.gen_range(5..20);
            let pts: Vec<f32> = (0..n * 3).map(|_| r.gen_range(-2.0..2.0)).collect();
            let m: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i % 4 != 1))).collect();
            s.set("coords", pts, &[n, 3])?;
            s.set("mask", m, &[n])?;
            for d in fin.degrees() {
                let v = (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect();
                s.set(&format!("x.{}", d.l), v, &[n, d.channels, d.width()])?;
            }
            s.run()?;
            for d in fout.degrees() {
                let a: Vec<f64> = s
                    .get(&format!("re.{}", d.l))?
                    .data
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                let b: Vec<f64> = s
                    .get(&format!("di.{}", d.l))?
                    .data
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect();
                let err = rel_error(&a, &b);
                assert!(err < 1e-5, "seed {seed} {pool:?} degree {}: {err}", d.l);
            }
        }
        Ok(())
    }

    #[test]
    fn edge_conv_direct_path_matches_gemm_path_and_compiles_to_fused_op() -> Result<(), Error> {
        const K: usize = 5;
        let (mut r, seed) = rng();
        let fin: FiberSpec = "0:3, 1:2, 2:2".parse()?;
        let fout: FiberSpec = "0:2, 1:3, 2:1".parse()?;
        for pool in [Pool::Mean, Pool::Sum] {
            let opts = ConvOptions {
                pool,
                ..ConvOptions::default()
            };
            let gemm = ConvLayer::new(&fin, &fout, opts, &mut r)?;
            assert_eq!(gemm.direct_path(), DirectPath::Gemm);
            let fused = gemm.clone().with_direct_path(DirectPath::EdgeConv);
            let mut s = Session::new();
            let coords = s.input::<(N, Const<3>)>("coords", InputKind::Coordinates);
            let mask = s.input::<(N,)>("mask", InputKind::Mask);
            let x = FeatureTensors::input(&mut s, "x", &fin);
            let nb = neighbors::<_, K>(coords, Some(mask), NeighborSpec::default());
            s.derive_dim('e', Expression::from('n') * K);
            let grouped = EdgeGraph::from_neighbors(coords, &nb, None);
            let plain = EdgeGraph {
                per_node: None,
                ..grouped
            };
            let basis = EdgeBasis::new(&mut s, "", &grouped, 2)?;
            // the same weights under four prefixes (a session name holds one tensor)
            fused
                .build(&mut s, "a.", &x, &plain, &basis)?
                .output(&mut s, "fp");
            fused
                .build(&mut s, "b.", &x, &grouped, &basis)?
                .output(&mut s, "fg");
            gemm.build(&mut s, "c.", &x, &plain, &basis)?
                .output(&mut s, "gp");
            gemm.build(&mut s, "d.", &x, &grouped, &basis)?
                .output(&mut s, "gg");
            let n = r.gen_range(6..24);
            let pts: Vec<f32> = (0..n * 3).map(|_| r.gen_range(-2.0..2.0)).collect();
            let m: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i % 5 != 2))).collect();
            s.set("coords", pts, &[n, 3])?;
            s.set("mask", m, &[n])?;
            for d in fin.degrees() {
                let v = (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect();
                s.set(&format!("x.{}", d.l), v, &[n, d.channels, d.width()])?;
            }
            s.run()?;
            let names = s.op_names();
            assert!(
                names.iter().any(|o| o.starts_with("EdgeConv")),
                "no fused edge op in {names:?}"
            );
            let get = |s: &Session, k: &str| -> Result<Vec<f64>, Error> {
                Ok(s.get(k)?.data.iter().map(|&v| f64::from(v)).collect())
            };
            for d in fout.degrees() {
                for (a, b) in [("fp", "gp"), ("fg", "gg"), ("fp", "gg")] {
                    let ea = get(&s, &format!("{a}.{}", d.l))?;
                    let eb = get(&s, &format!("{b}.{}", d.l))?;
                    let err = rel_error(&ea, &eb);
                    assert!(
                        err < 1e-5,
                        "seed {seed} {pool:?} degree {} {a} vs {b}: {err}",
                        d.l
                    );
                }
            }
        }
        Ok(())
    }

    #[se3_macros::fiber(0 e:3, 1 e:2, 2 o:2)]
    struct InE3;
    #[se3_macros::fiber(0 o:2, 1 o:3, 2 e:1)]
    struct OutE3;

    /// One E(3) convolution run on `points` and features `x` (per input degree).
    fn run_e3(
        conv: &Conv<InE3, OutE3>,
        points: &[[f64; 3]],
        mask: &[f32],
        x: &[Vec<f64>],
    ) -> Result<Vec<Vec<f64>>, Error> {
        const K: usize = 4;
        let n = points.len();
        let mut s = Session::new();
        let coords = s.input::<(N, Const<3>)>("coords", InputKind::Coordinates);
        let m = s.input::<(N,)>("mask", InputKind::Mask);
        let gx = GraphFeatures::<InE3>::input(&mut s, "x");
        let nb = neighbors::<_, K>(coords, Some(m), NeighborSpec::default());
        s.derive_dim('e', Expression::from('n') * K);
        let edges = EdgeGraph::from_neighbors(coords, &nb, None);
        let basis = EdgeBasis::new(&mut s, "", &edges, 2)?;
        conv.build(&mut s, "c.", &gx, &edges, &basis)?
            .untyped()
            .output(&mut s, "y");
        let flat: Vec<f32> = points.iter().flatten().map(|&v| v as f32).collect();
        s.set("coords", flat, &[n, 3])?;
        s.set("mask", mask.to_vec(), &[n])?;
        for (d, v) in InE3::spec().degrees().iter().zip(x) {
            let v32 = v.iter().map(|&a| a as f32).collect();
            s.set(&format!("x.{}", d.l), v32, &[n, d.channels, d.width()])?;
        }
        s.run()?;
        OutE3::spec()
            .degrees()
            .iter()
            .map(|d| {
                Ok(s.get(&format!("y.{}", d.l))?
                    .data
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect())
            })
            .collect()
    }

    #[test]
    fn e3_conv_is_equivariant_under_rotations_reflections_and_translations() -> Result<(), Error> {
        use crate::so3::{wigner_d_o3, Parity};
        use crate::testing::{
            random_reflection, random_rotation, random_vector, random_vectors, rotate_rows,
            transform_points,
        };
        let (mut r, seed) = rng();
        let fin = InE3::spec();
        let fout = OutE3::spec();
        // parity filtering: (1e -> 0o) keeps J = 1, (2o -> 0o) J = 2, (0e -> 0o) nothing
        let conv = Conv::<InE3, OutE3>::new(
            ConvOptions {
                self_interaction: false,
                ..ConvOptions::default()
            },
            &mut r,
        )?;
        let n = r.gen_range(6..16);
        let pts = random_vectors(&mut r, n, 2.0);
        let mask: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i % 5 != 3))).collect();
        let x: Vec<Vec<f64>> = fin
            .degrees()
            .iter()
            .map(|d| (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect())
            .collect();
        let y = run_e3(&conv, &pts, &mask, &x)?;
        let mats = [
            random_rotation(&mut r).into_inner(),
            random_reflection(&mut r),
            -nalgebra::Matrix3::identity(),
        ];
        for m in mats {
            let t = random_vector(&mut r, 3.0);
            let moved: Vec<[f64; 3]> = transform_points(&m, &pts)
                .into_iter()
                .map(|p| [p[0] + t.x, p[1] + t.y, p[2] + t.z])
                .collect();
            let xt = fin
                .degrees()
                .iter()
                .zip(&x)
                .map(|(d, v)| {
                    let dm = wigner_d_o3(d.l, d.parity.unwrap_or(Parity::Even), &m)?;
                    Ok(rotate_rows(&dm, v))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            let yt = run_e3(&conv, &moved, &mask, &xt)?;
            for ((d, a), b) in fout.degrees().iter().zip(&y).zip(&yt) {
                let dm = wigner_d_o3(d.l, d.parity.unwrap_or(Parity::Even), &m)?;
                let expected = rotate_rows(&dm, a);
                let err = rel_error(b, &expected);
                println!(
                    "det {:+.0} degree {}: rel error {err:.2e}",
                    m.determinant(),
                    d.l
                );
                assert!(
                    err < 1e-4,
                    "seed {seed} det {} degree {}: {err}",
                    m.determinant(),
                    d.l
                );
            }
        }
        // the pseudoscalar output really is fed (by 1e through J = 1), not zero
        assert!(
            y[0].iter().any(|v| v.abs() > 1e-6),
            "seed {seed}: 0o output is zero"
        );
        Ok(())
    }

    #[test]
    fn e3_conv_drops_frequencies_of_wrong_parity_and_rejects_unreachable_outputs(
    ) -> Result<(), Error> {
        let (mut r, _) = rng();
        let opts = ConvOptions {
            self_interaction: false,
            ..ConvOptions::default()
        };
        let conv = ConvLayer::new(&InE3::spec(), &OutE3::spec(), opts, &mut r)?;
        let kept: Vec<(usize, usize, Vec<usize>)> = conv
            .pairs
            .iter()
            .map(|p| (p.d_in, p.d_out, p.freqs.clone()))
            .collect();
        // 0e:3, 1e:2, 2o:2 -> 0o:2, 1o:3, 2e:1 (J = |li - lo| + f, kept iff p_in (-1)^J = p_out)
        assert_eq!(
            kept,
            vec![
                (1, 0, vec![0]),
                (2, 0, vec![0]),
                (0, 1, vec![0]),
                (1, 1, vec![1]),
                (2, 1, vec![1]),
                (0, 2, vec![0]),
                (1, 2, vec![1]),
                (2, 2, vec![1, 3]),
            ]
        );
        let unreachable: FiberSpec = "0o:2".parse()?;
        let only_even: FiberSpec = "0e:2".parse()?;
        assert!(matches!(
            ConvLayer::new(&only_even, &unreachable, opts, &mut r),
            Err(Error::InvalidOp { .. })
        ));
        let se3: FiberSpec = "0:2".parse()?;
        assert!(matches!(
            ConvLayer::new(&se3, &unreachable, opts, &mut r),
            Err(Error::InvalidOp { .. })
        ));
        assert!(matches!(
            ConvLayer::new(
                &InE3::spec(),
                &OutE3::spec(),
                ConvOptions::default(),
                &mut r
            ),
            Err(Error::InvalidOp { .. })
        ));
        Ok(())
    }
}
