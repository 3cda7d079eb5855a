//! The Tensor Field Network convolution (se3-transformer-pytorch's `ConvSE3`) as a graph
//! builder: run-time [`ConvLayer`] and the typed [`Conv<In, Out>`] over it.

use std::marker::PhantomData;

use luminal::prelude::*;
use rand::Rng;

use super::conv_grouped::{self, PairEdges};
use super::edges::{EdgeBasis, EdgeGraph};
use super::graph::{
    bmm, constant, dims, expand_at, mm, permute, reshape, retype, transpose, DegreeGraphTensor,
    FeatureTensors, GraphFeatures, ParamSource, E, N, X,
};
use super::linear::{LinearLayer, LinearLayout};
use super::radial::{RadialBank, RadialMlp, RADIAL_HIDDEN};
use crate::exec::Session;
use crate::fiber::{DegreeSpec, Fiber, FiberSpec};
use crate::ops::{edge_conv, gather3, radial_edge_conv, scatter_add3, PairShape, RadialMode};
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

/// How [`ConvLayer::build`] computes the pooled sums `sum_e w_e m_e` of each degree pair (the
/// same values up to rounding; all five are tested against each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvPath {
    /// The fused radial edge op ([`radial_edge_conv()`], default): the hidden layers of every
    /// pair's radial network in one fused op ([`RadialBank`], `ops::radial_hidden`); from
    /// those hidden activations `h_e`, one kernel per degree pair contracts the kernel basis, the
    /// gathered source rows and the radial network's last layer per destination node in cache,
    /// reassociated (`A_n = sum_e w_e Kx_e (x) h_e`, then the last layer once per node) or,
    /// for nodes with few edges, per edge; per-edge radial weights are never materialised.
    /// Any edge layout, and the fastest backward on CPU (`se3 bench layers`; on grouped
    /// edges [`ConvPath::Contracted`]'s forward is faster).
    #[default]
    Fused,
    /// The reassociated contraction of the compiled SE(3)-Transformer on edges grouped by node
    /// ([`conv_grouped::weighted_sum`] per pair, built from
    /// graph GEMMs). Needs grouped edges ([`EdgeGraph::per_node`]).
    Grouped,
    /// Per-edge messages from batched GEMMs (`R_e (K_e x_src)`, per-edge radial weights
    /// materialised), weighted and scatter-added.
    Gemm,
    /// On edges grouped by node ([`EdgeGraph::per_node`]) with every kernel frequency kept, the
    /// contraction of an attention block's values with the pooling weights as the attention:
    /// the radial networks' hidden layers in one [`RadialBank`] per output degree, then per pair
    /// the reassociated fused edge contraction (`ops::edge_contract`, node tables of the last
    /// layer, register-tiled products); otherwise as [`ConvPath::Fused`]. The fastest forward
    /// on CPU (the SE(3)-Transformer's convolutions at 2 degrees, 128 nodes: 8.5 -> 2.4 ms),
    /// but its backward is slower than the fused radial edge op's, so differentiated graphs
    /// keep [`ConvPath::Fused`].
    Contracted,
    /// Per-edge weight matrices `W_e = w_e sum_f R_f(e) (x) K_f(e)`, flattened to
    /// `(E, c_out (2 d_out + 1), c_in (2 d_in + 1))`, applied to the source rows and
    /// scatter-added by the fused [`edge_conv()`] op (the most per-edge values of all).
    EdgeConv,
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

    /// Its weights' prefix, `<prefix>kernel_unary.(d_in,d_out).` ([`pair_key`]).
    fn key(&self, prefix: &str) -> String {
        pair_key(prefix, self.d_in, self.d_out)
    }
}

/// The checkpoint prefix of the kernel from degree `d_in` to `d_out` (se3-transformer-pytorch's
/// `ConvSE3.kernel_unary["(d_in,d_out)"]`): `<prefix>kernel_unary.(d_in,d_out).`.
fn pair_key(prefix: &str, d_in: usize, d_out: usize) -> String {
    format!("{prefix}kernel_unary.({d_in},{d_out}).")
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
/// + 1))` with `nf` kept frequencies: the full block times a constant 0/1 selection matrix
/// (exact; a chain of luminal slices and concatenations gave wrong values for three or more
/// kept frequencies). The selection is a session constant `<prefix>kernel_unary.(i,o).freqs`.
fn pair_block(
    s: &mut Session,
    prefix: &str,
    basis: &EdgeBasis,
    p: &PairKernel,
) -> Result<GraphTensor<(E, X, X)>, Error> {
    let block = basis.block(p.d_in, p.d_out)?;
    let full = 2 * p.d_in.min(p.d_out) + 1;
    if p.nf() == full {
        return Ok(block);
    }
    let e = dims(block)[0];
    let (di, mo, nf) = (2 * p.d_in + 1, 2 * p.d_out + 1, p.nf());
    let mut sel = vec![0.0; full * mo * nf * mo];
    for (kept, &f) in p.freqs.iter().enumerate() {
        for m in 0..mo {
            sel[(f * mo + m) * nf * mo + kept * mo + m] = 1.0;
        }
    }
    let sel: GraphTensor<(X, X)> = constant(
        s,
        &format!("{}freqs", p.key(prefix)),
        sel,
        &[full * mo, nf * mo],
    )?;
    let rows: GraphTensor<(X, X)> = reshape(block, &[e * di, (full * mo).into()]);
    Ok(reshape(mm(rows, sel), &[e, di.into(), (nf * mo).into()]))
}

/// The radial network of pair `p` with its last layer spread over all `full` frequencies of
/// the pair (zero rows at the dropped ones), for [`conv_grouped::weighted_sum`], which reads
/// only the last layer and every frequency; the hidden layers are placeholders (the hidden
/// activations come from `p.radial` itself).
///
/// # Errors
/// None for a consistent pair (those of [`RadialMlp::from_values`]).
fn all_frequencies(p: &PairKernel, full: usize) -> Result<RadialMlp, Error> {
    let (lw, lb) = p.radial.last_layer()?;
    let hd = RADIAL_HIDDEN;
    let (nf, n_in) = (p.nf(), p.radial.n_in());
    let rows = p.c_out * p.c_in * full;
    let mut w = vec![0.0; rows * hd];
    let mut b = vec![0.0; rows];
    for oc in 0..p.c_out * p.c_in {
        for (kept, &f) in p.freqs.iter().enumerate() {
            let (from, to) = (oc * nf + kept, oc * full + f);
            w[to * hd..(to + 1) * hd].copy_from_slice(&lw[from * hd..(from + 1) * hd]);
            b[to] = lb[from];
        }
    }
    let values = vec![
        vec![0.0; hd * n_in],
        vec![0.0; hd],
        vec![1.0; hd],
        vec![0.0; hd],
        vec![0.0; hd * hd],
        vec![0.0; hd],
        vec![1.0; hd],
        vec![0.0; hd],
        w,
        b,
    ];
    RadialMlp::from_values(n_in, rows, values)
}

/// One degree pair of a convolution on grouped edges ([`ConvLayer::grouped_pairs`]).
#[derive(Debug, Clone, Copy)]
pub struct GroupedPair {
    /// Output degree.
    pub d_out: usize,
    /// `h` and `Kx` of the pair.
    pub edges: PairEdges,
    /// The radial network's last layer, `[(f, c) 128, c_out]`.
    pub w: GraphTensor<(X, X)>,
    /// Its bias, `[(f, c), c_out]`.
    pub b: GraphTensor<(X, X)>,
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
/// with `p_in (-1)^J = p_out` are kept, so the layer is also equivariant under reflections;
/// self-interaction ([`LinearLayer`]) then connects only entries of equal degree and parity:
/// an output degree whose parity differs from the input's at that degree simply gets no
/// self-interaction term (e3nn's rule for linear maps), only its convolution sum.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    fiber_in: FiberSpec,
    fiber_out: FiberSpec,
    options: ConvOptions,
    pairs: Vec<PairKernel>,
    self_interact: Option<LinearLayer>,
    path: ConvPath,
}

/// Whether the fibers have an entry in common, same degree and parity (else self-interaction
/// has no weights).
fn shares_degree(a: &FiberSpec, b: &FiberSpec) -> bool {
    a.degrees().iter().any(|d| {
        b.degrees()
            .iter()
            .any(|o| o.l == d.l && o.parity == d.parity)
    })
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
            path: ConvPath::default(),
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
                &format!("{}rp.", pair_key(prefix, i.l, o.l)),
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
            path: ConvPath::default(),
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

    /// The same layer with its pooled sums computed by `path`.
    #[must_use]
    pub fn with_path(mut self, path: ConvPath) -> Self {
        self.path = path;
        self
    }

    /// How the pooled sums are computed.
    pub fn path(&self) -> ConvPath {
        self.path
    }

    /// The pooled sum of one degree pair through the fused radial edge op
    /// ([`ConvPath::Fused`]) from its radial hidden activations `h (E, 128)`,
    /// `(N, c_out, 2 d_out + 1)`.
    #[allow(clippy::too_many_arguments)]
    fn pair_pooled_fused(
        &self,
        s: &mut Session,
        prefix: &str,
        p: &PairKernel,
        xl: GraphTensor<(N, X, X)>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        h: GraphTensor<(E, X)>,
        w: GraphTensor<(E,)>,
    ) -> Result<GraphTensor<(X, X, X)>, Error> {
        let n = dims(xl)[0];
        let (wl, bl) = p
            .radial
            .declare_last_layer(s, &format!("{}rp.", p.key(prefix)))?;
        let shape = PairShape {
            c_in: p.c_in,
            d_in: p.d_in,
            nf: p.nf(),
            c_out: p.c_out,
            d_out: p.d_out,
        };
        let x2: GraphTensor<(N, X)> = reshape(xl, &[n, (p.c_in * shape.di()).into()]);
        let y = radial_edge_conv::<N, N, E>(
            shape,
            RadialMode::Auto,
            x2,
            pair_block(s, prefix, basis, p)?,
            h,
            wl,
            bl,
            w,
            edges.src,
            edges.dst,
        );
        Ok(reshape(y, &[n, p.c_out.into(), shape.mo().into()]))
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
        let (h, wl, b) = p
            .radial
            .build_hidden(s, &format!("{}rp.", p.key(prefix)), input)?;
        let width = p.c_out * p.c_in * nf;
        let r = mm(retype(h), transpose(wl)) + expand_at::<_, (X, X)>(retype::<_, (X,)>(b), 0, e);
        let r = r * expand_at::<_, (X, X)>(retype::<_, (X,)>(w), 1, width);
        let r: GraphTensor<(X, X, X)> = reshape(r, &[e, (p.c_out * p.c_in).into(), nf.into()]);
        // K[e, q, (f, p)] -> (E, f, (q, p))
        let k: GraphTensor<(X, X, X, X)> = reshape(
            pair_block(s, prefix, basis, p)?,
            &[e, di.into(), nf.into(), mo.into()],
        );
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

    /// The pooled sums of every degree pair, each from `pair(self, s, index of p, p, x_{d_in},
    /// radial input)`, accumulated per output degree.
    fn pooled_pairs(
        &self,
        s: &mut Session,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        mut pair: impl FnMut(
            &Self,
            &mut Session,
            usize,
            &PairKernel,
            GraphTensor<(N, X, X)>,
            GraphTensor<(E, X)>,
        ) -> Result<GraphTensor<(X, X, X)>, Error>,
    ) -> Result<Vec<DegreeGraphTensor>, Error> {
        self.check_input(x, basis)?;
        self.check_edge_dim(edges)?;
        let input = edges.radial_input(s, self.options.fourier)?;
        let mut out: Vec<Option<GraphTensor<(X, X, X)>>> =
            vec![None; self.fiber_out.degrees().len()];
        for (i, p) in self.pairs.iter().enumerate() {
            let xl = self.input_degree(x, p.d_in)?;
            let y = pair(self, s, i, p, xl, input)?;
            self.accumulate(&mut out, p.d_out, y);
        }
        Ok(collect_degrees(out)?.into_iter().map(retype).collect())
    }

    fn check_input(&self, x: &FeatureTensors<N>, basis: &EdgeBasis) -> Result<(), Error> {
        x.expect_fiber(&self.fiber_in, "convolution input")?;
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
        let (h, w, b) = p
            .radial
            .build_hidden(s, &format!("{}rp.", p.key(prefix)), input)?;
        let r = mm(retype(h), transpose(w));
        let cf = p.c_in * nf;
        let r: GraphTensor<(X, X, X)> = reshape(r, &[e, p.c_out.into(), cf.into()]);
        let xs: GraphTensor<(X, X, X)> = retype(gather3::<N, X, X, E>(xl, edges.src));
        // Kx[e, c, (f, o)] = sum_q x[src e, c, q] K[e, q, (f, o)]
        let kx = bmm(xs, retype(pair_block(s, prefix, basis, p)?));
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

    /// The pooled sum of one degree pair on edges grouped by node (`k` per node) through the
    /// shared reassociated contraction [`conv_grouped::weighted_sum`] ([`ConvPath::Grouped`]):
    /// `out_i[o, p] = sum_{c,f,h} W[(o,c,f), h] A_i[h, (c,f), p] + sum_{c,f} b[(o,c,f)]
    /// B_i[(c,f), p]`, `A_i = sum_e w_e h_e (x) Kx_e`, `B_i = sum_e w_e Kx_e`.
    /// `weighted_sum` reads every frequency of the pair, so for E(3) pairs with dropped
    /// frequencies the last layer is handed over with zero rows at the dropped ones.
    #[allow(clippy::too_many_arguments)]
    fn pair_pooled_grouped(
        &self,
        s: &mut Session,
        prefix: &str,
        p: &PairKernel,
        xl: GraphTensor<(N, X, X)>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        input: GraphTensor<(E, X)>,
        w: GraphTensor<(E,)>,
        k: Expression,
    ) -> Result<GraphTensor<(X, X, X)>, Error> {
        let key = p.key(prefix);
        let (h, _, _) = p.radial.build_hidden(s, &format!("{key}rp."), input)?;
        let n = dims(xl)[0];
        let e = dims(edges.dist)[0];
        let (di, mo) = (2 * p.d_in + 1, 2 * p.d_out + 1);
        let full = 2 * p.d_in.min(p.d_out) + 1;
        // [e, q, (f, p)] -> [e, p, q, f], the layout PairEdges reads
        let b4: GraphTensor<(X, X, X, X)> = reshape(
            basis.block(p.d_in, p.d_out)?,
            &[e, di.into(), full.into(), mo.into()],
        );
        let kb = permute(b4, &[0, 3, 1, 2]);
        let pe = PairEdges::new(p.d_in, p.d_out, retype(xl), edges.src, kb, retype(h), n, k);
        let padded;
        let radial = if p.nf() == full {
            &p.radial
        } else {
            padded = all_frequencies(p, full)?;
            &padded
        };
        let a: GraphTensor<(X, X)> = reshape(w, &[n, k]);
        conv_grouped::weighted_sum(s, &format!("{key}grouped."), radial, &pe, a, 0, p.c_out)
    }

    /// Every degree pair on edges grouped by node (`k` per node) up to its radial network's last
    /// layer, for the reassociated contractions of [`conv_grouped`] (attention keys and values):
    /// the pair's [`PairEdges`] and its last layer as graph views of the session weights in the
    /// fused kernels' order, `w [(f, c) 128, c_out]` and `b [(f, c), c_out]` (trainable: the
    /// weights' gradients flow through the views). `None` if some pair keeps only part of its
    /// kernel frequencies (E(3)), which those kernels do not take.
    ///
    /// # Errors
    /// As [`ConvLayer::messages`].
    pub fn grouped_pairs(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        k: Expression,
    ) -> Result<Option<Vec<GroupedPair>>, Error> {
        Ok(
            Self::grouped_pairs_of(&[(self, prefix)], s, x, edges, basis, k)?
                .and_then(|mut all| all.pop()),
        )
    }

    /// [`ConvLayer::grouped_pairs`] of several convolutions on the same input (an attention
    /// block's keys and values), one list per convolution. The radial networks' hidden layers
    /// run in one [`RadialBank`] per output degree (and radial input) over all the
    /// convolutions: the contractions of one output degree (keys and values alike) read only
    /// their bank, so at most one degree's hidden activations need to be alive at a time
    /// (`P_d E 128` floats instead of every pair's).
    ///
    /// # Errors
    /// As [`ConvLayer::grouped_pairs`].
    pub fn grouped_pairs_of(
        convs: &[(&ConvLayer, &str)],
        s: &mut Session,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        k: Expression,
    ) -> Result<Option<Vec<Vec<GroupedPair>>>, Error> {
        let partial = |c: &ConvLayer| {
            c.pairs
                .iter()
                .any(|p| p.nf() != 2 * p.d_in.min(p.d_out) + 1)
        };
        if convs.iter().any(|(c, _)| partial(c)) {
            return Ok(None);
        }
        for (c, _) in convs {
            c.check_input(x, basis)?;
            c.check_edge_dim(edges)?;
        }
        // banks keyed by (radial input, output degree); each pair's place in its bank
        struct Group<'a> {
            fourier: Option<usize>,
            d_out: usize,
            nets: Vec<(String, &'a RadialMlp)>,
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut place: Vec<Vec<(usize, usize)>> = Vec::with_capacity(convs.len());
        for (c, prefix) in convs {
            let mut places = Vec::with_capacity(c.pairs.len());
            for p in &c.pairs {
                let fourier = c.options.fourier;
                let g = match groups
                    .iter()
                    .position(|g| g.fourier == fourier && g.d_out == p.d_out)
                {
                    Some(g) => g,
                    None => {
                        groups.push(Group {
                            fourier,
                            d_out: p.d_out,
                            nets: Vec::new(),
                        });
                        groups.len() - 1
                    }
                };
                places.push((g, groups[g].nets.len()));
                groups[g]
                    .nets
                    .push((format!("{}rp.", p.key(prefix)), &p.radial));
            }
            place.push(places);
        }
        let banks = groups
            .iter()
            .map(|g| {
                let input = edges.radial_input(s, g.fourier)?;
                RadialBank::build_declared(s, &g.nets, input)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let e = dims(edges.dist)[0];
        let mut all = Vec::with_capacity(convs.len());
        for ((c, _), places) in convs.iter().zip(&place) {
            let mut out = Vec::with_capacity(c.pairs.len());
            for (p, &(g, i)) in c.pairs.iter().zip(places) {
                let (group, bank) = (&groups[g], banks[g]);
                let xl = c.input_degree(x, p.d_in)?;
                let n = dims(xl)[0];
                let h = bank.hidden(i)?;
                let (w, b) = p.radial.declare_last_layer(s, &group.nets[i].0)?;
                let (di, mo, nf) = (2 * p.d_in + 1, 2 * p.d_out + 1, p.nf());
                // [e, q, (f, p)] -> [e, p, q, f], the layout PairEdges reads
                let b4: GraphTensor<(X, X, X, X)> = reshape(
                    basis.block(p.d_in, p.d_out)?,
                    &[e, di.into(), nf.into(), mo.into()],
                );
                let kb = permute(b4, &[0, 3, 1, 2]);
                let pe =
                    PairEdges::new(p.d_in, p.d_out, retype(xl), edges.src, kb, retype(h), n, k);
                // the network's rows (o, c, f) -> [(f, c, h), o] and [(f, c), o]
                let w4: GraphTensor<(X, X, X, X)> = reshape(
                    w,
                    &[
                        p.c_out.into(),
                        p.c_in.into(),
                        nf.into(),
                        RADIAL_HIDDEN.into(),
                    ],
                );
                let w = reshape(
                    permute(w4, &[2, 1, 3, 0]),
                    &[(nf * p.c_in * RADIAL_HIDDEN).into(), p.c_out.into()],
                );
                let b3: GraphTensor<(X, X, X)> =
                    reshape(b, &[p.c_out.into(), p.c_in.into(), nf.into()]);
                let b = reshape(
                    permute(b3, &[2, 1, 0]),
                    &[(nf * p.c_in).into(), p.c_out.into()],
                );
                out.push(GroupedPair {
                    d_out: p.d_out,
                    edges: pe,
                    w,
                    b,
                });
            }
            all.push(out);
        }
        Ok(Some(all))
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
    /// Weights are session weights named `<prefix>` + their checkpoint keys. The pooled sums
    /// of each degree pair are computed by [`ConvLayer::path`] (default [`ConvPath::Fused`],
    /// the fused radial edge op on any edge layout; the paths give the same values up to
    /// rounding).
    ///
    /// # Errors
    /// As [`ConvLayer::messages`]; `InvalidOp` for [`ConvPath::Grouped`] on edges not grouped
    /// by node.
    pub fn build(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
    ) -> Result<FeatureTensors<N>, Error> {
        self.build_with_path(s, prefix, x, edges, basis, self.path)
    }

    /// [`ConvLayer::build`] with the pooled sums computed by `path` instead of the layer's own.
    ///
    /// # Errors
    /// As [`ConvLayer::build`].
    pub fn build_with_path(
        &self,
        s: &mut Session,
        prefix: &str,
        x: &FeatureTensors<N>,
        edges: &EdgeGraph,
        basis: &EdgeBasis,
        path: ConvPath,
    ) -> Result<FeatureTensors<N>, Error> {
        let w = match self.options.pool {
            Pool::Mean => edges.mean_weights(),
            Pool::Sum => edges.valid,
        };
        // on edges grouped by node, the contracted path sums like an attention block's values
        // (the pooling weights as the attention)
        let grouped = match (path, edges.per_node) {
            (ConvPath::Contracted, Some(k)) => self
                .grouped_pairs(s, prefix, x, edges, basis, k)?
                .map(|pairs| (pairs, k)),
            _ => None,
        };
        let pooled = match (path, grouped) {
            (_, Some((pairs, k))) => {
                let n = dims(x.tensors()[0])[0];
                let a: GraphTensor<(X, X)> = reshape(w, &[n, k]);
                let mut out: Vec<Option<GraphTensor<(X, X, X)>>> =
                    vec![None; self.fiber_out.degrees().len()];
                for gp in &pairs {
                    let y = conv_grouped::weighted_sum_heads_with(&gp.edges, &[a], gp.w, gp.b);
                    self.accumulate(&mut out, gp.d_out, y);
                }
                collect_degrees(out)?.into_iter().map(retype).collect()
            }
            // the hidden layers of every pair in one fused op (RadialBank), each pair's
            // activations a view of it
            (ConvPath::Fused | ConvPath::Contracted, None) => {
                let mut bank: Option<RadialBank> = None;
                // each pair's hidden layers under its checkpoint keys, stacked in the graph
                let nets: Vec<(String, &RadialMlp)> = self
                    .pairs
                    .iter()
                    .map(|p| (format!("{}rp.", p.key(prefix)), &p.radial))
                    .collect();
                self.pooled_pairs(s, x, edges, basis, |c, s, i, p, xl, input| {
                    let b = match bank {
                        Some(b) => b,
                        None => *bank.insert(RadialBank::build_declared(s, &nets, input)?),
                    };
                    c.pair_pooled_fused(s, prefix, p, xl, edges, basis, b.hidden(i)?, w)
                })?
            }
            (ConvPath::EdgeConv, None) => {
                self.pooled_pairs(s, x, edges, basis, |c, s, _, p, xl, input| {
                    c.pair_pooled_edge_conv(s, prefix, p, xl, edges, basis, input, w)
                })?
            }
            (ConvPath::Grouped, None) => {
                let k = edges.per_node.ok_or(Error::InvalidOp {
                    op: "convolution (ConvPath::Grouped)",
                    problem:
                        "needs edges grouped by node (EdgeGraph::per_node); use ConvPath::Fused",
                })?;
                self.pooled_pairs(s, x, edges, basis, |c, s, _, p, xl, input| {
                    c.pair_pooled_grouped(s, prefix, p, xl, edges, basis, input, w, k)
                })?
            }
            (ConvPath::Gemm, None) => {
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

    /// The typed view of a run-time layer.
    ///
    /// # Errors
    /// `FiberMismatch` if the layer's fibers are not `In` and `Out`.
    pub fn from_layer(layer: ConvLayer) -> Result<Self, Error> {
        In::check_spec(layer.fiber_in())?;
        Out::check_spec(layer.fiber_out())?;
        Ok(Conv {
            layer,
            fibers: PhantomData,
        })
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

impl ConvLayer {
    /// Visits every parameter as `(<prefix><key>, param)`: the radial networks
    /// (`kernel_unary.(d_in,d_out).rp.net.*`), then the self-interaction (`self_interact.*`).
    pub fn visit_params(&self, prefix: &str, f: &mut dyn FnMut(&str, &super::graph::Param)) {
        for pair in &self.pairs {
            pair.radial
                .visit_params(&format!("{}rp.", pair.key(prefix)), f);
        }
        if let Some(si) = &self.self_interact {
            si.visit_params(&format!("{prefix}self_interact."), f);
        }
    }

    /// Visits every parameter mutably, as [`ConvLayer::visit_params`].
    ///
    /// # Errors
    /// The first error of `f`.
    pub fn visit_params_mut(
        &mut self,
        prefix: &str,
        f: &mut dyn FnMut(&str, &mut super::graph::Param) -> Result<(), Error>,
    ) -> Result<(), Error> {
        for pair in &mut self.pairs {
            let key = format!("{}rp.", pair.key(prefix));
            pair.radial.visit_params_mut(&key, f)?;
        }
        if let Some(si) = &mut self.self_interact {
            si.visit_params_mut(&format!("{prefix}self_interact."), f)?;
        }
        Ok(())
    }
}

impl<In: Fiber, Out: Fiber> Conv<In, Out> {
    /// The run-time layer, for the module parameter visitors.
    pub(crate) fn layer_mut(&mut self) -> &mut ConvLayer {
        &mut self.layer
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

    /// Runs `conv` under every path on grouped and ungrouped edges of one random cloud and
    /// checks that all agree; returns the op names of the session.
    fn all_paths_agree(
        conv: &ConvLayer,
        r: &mut rand::rngs::StdRng,
        seed: u64,
        max_degree: usize,
    ) -> Result<Vec<String>, Error> {
        const K: usize = 5;
        let (fin, fout) = (conv.fiber_in().clone(), conv.fiber_out().clone());
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
        let basis = EdgeBasis::new(&mut s, "", &grouped, max_degree)?;
        let mut names = Vec::new();
        for (i, path) in [
            ConvPath::Fused,
            ConvPath::Grouped,
            ConvPath::Gemm,
            ConvPath::EdgeConv,
        ]
        .into_iter()
        .enumerate()
        {
            let c = conv.clone().with_path(path);
            // the same weights under distinct prefixes (a session name holds one tensor)
            for (edges, tag) in [(&grouped, "g"), (&plain, "p")] {
                if path == ConvPath::Grouped && tag == "p" {
                    assert!(matches!(
                        c.build(&mut s, "z.", &x, edges, &basis),
                        Err(Error::InvalidOp { .. })
                    ));
                    continue;
                }
                let name = format!("{path:?}{tag}");
                c.build(&mut s, &format!("{i}{tag}."), &x, edges, &basis)?
                    .output(&mut s, &name);
                names.push(name);
            }
        }
        let n = r.gen_range(6..24);
        let pts: Vec<f32> = (0..n * 3).map(|_| r.gen_range(-2.0..2.0)).collect();
        // masked nodes, and with n < 2 K some nodes have fewer than K valid neighbours
        let m: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i % 5 != 2))).collect();
        s.set("coords", pts, &[n, 3])?;
        s.set("mask", m, &[n])?;
        for d in fin.degrees() {
            let v = (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect();
            s.set(&format!("x.{}", d.l), v, &[n, d.channels, d.width()])?;
        }
        s.run()?;
        let get = |k: &str| -> Result<Vec<f64>, Error> {
            Ok(s.get(k)?.data.iter().map(|&v| f64::from(v)).collect())
        };
        for d in fout.degrees() {
            let want = get(&format!("Gemmp.{}", d.l))?;
            assert!(
                want.iter().any(|v| v.abs() > 1e-6),
                "seed {seed}: zero output"
            );
            for name in &names {
                let err = rel_error(&get(&format!("{name}.{}", d.l))?, &want);
                assert!(
                    err < 1e-5,
                    "seed {seed} degree {}: {name} vs Gemmp: {err}",
                    d.l
                );
            }
        }
        Ok(s.op_names())
    }

    #[test]
    fn every_conv_path_gives_the_same_pooled_sums_and_fused_is_the_default() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let fin: FiberSpec = "0:3, 1:2, 2:2".parse()?;
        // degree 0 with 40 channels: the fused kernel reassociates those nodes, the others
        // (few output channels) go per edge
        let fout: FiberSpec = "0:40, 1:3, 2:1".parse()?;
        for pool in [Pool::Mean, Pool::Sum] {
            let opts = ConvOptions {
                pool,
                ..ConvOptions::default()
            };
            let conv = ConvLayer::new(&fin, &fout, opts, &mut r)?;
            assert_eq!(conv.path(), ConvPath::Fused);
            let names = all_paths_agree(&conv, &mut r, seed, 2)?;
            for op in ["RadialEdgeConv", "EdgeConv"] {
                assert!(
                    names.iter().any(|o| o.starts_with(op)),
                    "no {op} in {names:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn every_conv_path_agrees_on_e3_fibers_with_dropped_frequencies() -> Result<(), Error> {
        let (mut r, seed) = rng();
        let conv = ConvLayer::new(
            &InE3::spec(),
            &OutE3::spec(),
            ConvOptions::default(),
            &mut r,
        )?;
        all_paths_agree(&conv, &mut r, seed, 2)?;
        Ok(())
    }

    #[se3_macros::fiber(0 e:3, 1 e:2, 2 o:2)]
    struct InE3;
    #[se3_macros::fiber(0 o:2, 1 o:3, 2 e:1)]
    struct OutE3;

    /// One E(3) convolution run on `points` and features `x` (per input degree).
    fn run_e3<I: Fiber, O: Fiber>(
        conv: &Conv<I, O>,
        points: &[[f64; 3]],
        mask: &[f32],
        x: &[Vec<f64>],
    ) -> Result<Vec<Vec<f64>>, Error> {
        const K: usize = 4;
        let n = points.len();
        let mut s = Session::new();
        let coords = s.input::<(N, Const<3>)>("coords", InputKind::Coordinates);
        let m = s.input::<(N,)>("mask", InputKind::Mask);
        let gx = GraphFeatures::<I>::input(&mut s, "x");
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
        for (d, v) in I::spec().degrees().iter().zip(x) {
            let v32 = v.iter().map(|&a| a as f32).collect();
            s.set(&format!("x.{}", d.l), v32, &[n, d.channels, d.width()])?;
        }
        s.run()?;
        O::spec()
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

    /// `conv` on fresh random points and features, against the same under a random rotation,
    /// a random reflection and the inversion, each with a random translation; returns the
    /// outputs of the untransformed run.
    fn check_e3_equivariance<I: Fiber, O: Fiber>(
        conv: &Conv<I, O>,
        r: &mut rand::rngs::StdRng,
        seed: u64,
    ) -> Result<Vec<Vec<f64>>, Error> {
        use crate::so3::{wigner_d_o3, Parity};
        use crate::testing::{
            random_reflection, random_rotation, random_vector, random_vectors, rotate_rows,
            transform_points,
        };
        let (fin, fout) = (I::spec(), O::spec());
        let n = r.gen_range(6..16);
        let pts = random_vectors(r, n, 2.0);
        let mask: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i % 5 != 3))).collect();
        let x: Vec<Vec<f64>> = fin
            .degrees()
            .iter()
            .map(|d| (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect())
            .collect();
        let y = run_e3(conv, &pts, &mask, &x)?;
        let mats = [
            random_rotation(r).into_inner(),
            random_reflection(r),
            -nalgebra::Matrix3::identity(),
        ];
        for m in mats {
            let t = random_vector(r, 3.0);
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
            let yt = run_e3(conv, &moved, &mask, &xt)?;
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
        Ok(y)
    }

    #[test]
    fn e3_conv_is_equivariant_under_rotations_reflections_and_translations() -> Result<(), Error> {
        let (mut r, seed) = rng();
        // parity filtering: (1e -> 0o) keeps J = 1, (2o -> 0o) J = 2, (0e -> 0o) nothing;
        // no entry of equal degree and parity, so no self-interaction
        let conv = Conv::<InE3, OutE3>::new(ConvOptions::default(), &mut r)?;
        assert!(conv.layer().self_interact.is_none());
        let y = check_e3_equivariance(&conv, &mut r, seed)?;
        // the pseudoscalar output really is fed (by 1e through J = 1), not zero
        assert!(
            y[0].iter().any(|v| v.abs() > 1e-6),
            "seed {seed}: 0o output is zero"
        );
        Ok(())
    }

    #[se3_macros::fiber(0 e:3, 1 o:2, 2 e:2)]
    struct InMixed;
    #[se3_macros::fiber(0 e:2, 1 e:3, 2 e:2)]
    struct OutMixed;

    #[test]
    fn e3_self_interaction_connects_equal_parities_only_and_stays_equivariant() -> Result<(), Error>
    {
        let (mut r, seed) = rng();
        // 0e -> 0e and 2e -> 2e get self-interaction; degree 1 changes parity (1o -> 1e) and
        // gets none
        let conv = Conv::<InMixed, OutMixed>::new(ConvOptions::default(), &mut r)?;
        let si = conv.layer().self_interact.as_ref().ok_or(Error::Empty {
            what: "self-interaction",
        })?;
        let kept: Vec<usize> = si.fiber_out().degrees().iter().map(|d| d.l).collect();
        assert_eq!(kept, vec![0, 2]);
        let with = check_e3_equivariance(&conv, &mut r, seed)?;
        // the term is really there: switching it off changes degrees 0 and 2, not degree 1
        let mut off = conv.clone();
        off.layer.self_interact = None;
        let without = check_e3_equivariance_same_input(&conv, &off, &mut r)?;
        assert!(
            rel_error(&without.0[0], &without.1[0]) > 1e-3,
            "seed {seed}: 0e unchanged"
        );
        assert!(
            rel_error(&without.0[2], &without.1[2]) > 1e-3,
            "seed {seed}: 2e unchanged"
        );
        assert!(
            rel_error(&without.0[1], &without.1[1]) < 1e-6,
            "seed {seed}: 1e changed"
        );
        assert_eq!(with.len(), 3);
        Ok(())
    }

    /// Two convolutions of the same fibers on the same random input.
    #[allow(clippy::type_complexity)]
    fn check_e3_equivariance_same_input<I: Fiber, O: Fiber>(
        a: &Conv<I, O>,
        b: &Conv<I, O>,
        r: &mut rand::rngs::StdRng,
    ) -> Result<(Vec<Vec<f64>>, Vec<Vec<f64>>), Error> {
        let n = r.gen_range(6..16);
        let pts = crate::testing::random_vectors(r, n, 2.0);
        let mask = vec![1.0; n];
        let x: Vec<Vec<f64>> = I::spec()
            .degrees()
            .iter()
            .map(|d| (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect())
            .collect();
        Ok((run_e3(a, &pts, &mask, &x)?, run_e3(b, &pts, &mask, &x)?))
    }

    #[se3_macros::fiber(1 o:1)]
    struct T1o;
    #[se3_macros::fiber(2 e:1)]
    struct T2e;
    #[se3_macros::fiber(0 e:1)]
    struct T0e;
    #[se3_macros::fiber(1 e:1)]
    struct T1e;
    #[se3_macros::fiber(2 o:1)]
    struct T2o;

    #[test]
    fn e3_single_pairs_into_2e_are_equivariant_whatever_frequencies_they_keep() -> Result<(), Error>
    {
        // kept frequencies J: 0e -> 2e {2}, 1e -> 2e {2}, 1o -> 2e {1, 3}, 2o -> 2e {1, 3},
        // 2e -> 2e {0, 2, 4} (three slices of the basis block)
        let (mut r, seed) = rng();
        let o = ConvOptions {
            self_interaction: false,
            ..ConvOptions::default()
        };
        check_e3_equivariance(&Conv::<T0e, T2e>::new(o, &mut r)?, &mut r, seed)?;
        check_e3_equivariance(&Conv::<T1e, T2e>::new(o, &mut r)?, &mut r, seed)?;
        check_e3_equivariance(&Conv::<T1o, T2e>::new(o, &mut r)?, &mut r, seed)?;
        check_e3_equivariance(&Conv::<T2o, T2e>::new(o, &mut r)?, &mut r, seed)?;
        check_e3_equivariance(&Conv::<T2e, T2e>::new(o, &mut r)?, &mut r, seed)?;
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
        // self-interaction on, but no entry of equal degree and parity: built without it
        let conv = ConvLayer::new(
            &InE3::spec(),
            &OutE3::spec(),
            ConvOptions::default(),
            &mut r,
        )?;
        assert!(conv.self_interact.is_none());
        Ok(())
    }
}
