//! CPU kernel of the fused radial edge convolution ([`super::radial_edge_conv`]): one degree
//! pair of a TFN convolution, from the radial network's hidden activations to the pooled
//! node outputs, without per-edge weight matrices.
//!
//! Per destination node `n` (edges bucketed by destination, summed in edge order, so results
//! do not depend on the thread count), in a per-thread scratch that stays in cache:
//!
//! 1. `Kx_e[(p, c, f)] = w_e sum_q x[src e, c, q] K_e[q, f, p]` for the node's edges;
//! 2. either **reassociated** around the radial network's last (linear) layer `R = W h + b`:
//!    `A[(p, c, f), :] = sum_e Kx_e[(p, c, f)] h_e`, `B[(p, c, f)] = sum_e Kx_e[(p, c, f)]`,
//!    then `out[n, o, p] = sum_{(c, f)} W[(o, c, f), :] . A[(p, c, f), :] + b[(o, c, f)]
//!    B[(p, c, f)]` (`deg (2 l_out + 1) c_in nf + (2 l_out + 1) c_in nf c_out` multiply-adds of
//!    width `hd` per node), or **direct**: `R_e = W h_e + b` per edge, then `out[n, o, p] +=
//!    sum_{(c, f)} R_e[(o, c, f)] Kx_e[(p, c, f)]` (`deg c_out c_in nf` of width `hd`);
//!    [`Mode::Auto`] takes the cheaper per node (direct only for nodes with few edges).
//!
//! The inner loops are written once over a small vector trait and compiled three times
//! (AVX-512, AVX2 + FMA, portable), picked at run time.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use crate::exec::simd::{self, Isa, Plain, Simd};
use crate::exec::view::{buffer, View};
use crate::ops::scatter_add::cpu_buckets;

/// The sizes of one degree pair of the fused radial edge convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairShape {
    /// Input channels.
    pub c_in: usize,
    /// Input degree.
    pub d_in: usize,
    /// Kernel frequencies (basis functions) kept.
    pub nf: usize,
    /// Output channels.
    pub c_out: usize,
    /// Output degree.
    pub d_out: usize,
}

impl PairShape {
    /// `2 d_in + 1`.
    pub fn di(&self) -> usize {
        2 * self.d_in + 1
    }

    /// `2 d_out + 1`.
    pub fn mo(&self) -> usize {
        2 * self.d_out + 1
    }

    /// `c_in nf`, the radial outputs per output channel.
    pub fn cf(&self) -> usize {
        self.c_in * self.nf
    }
}

/// How the fused kernel contracts a node's edges with the radial network's last layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Per node, the cheaper of the two below (by multiply-adds).
    #[default]
    Auto,
    /// Always reassociated (per node sums before the last layer).
    Reassociated,
    /// Always direct (per-edge radial weights, formed in cache one edge at a time).
    Direct,
}

/// The fused radial edge convolution of one degree pair. Inputs: `x (M, c_in (2 d_in + 1))`,
/// basis `(E, 2 d_in + 1, nf (2 d_out + 1))`, hidden activations `h (E, hd)`, last-layer weight
/// `(c_out c_in nf, hd)` and bias `(c_out c_in nf,)`, edge weights `(E,)`, `src (E,)`,
/// `dst (E,)`, size carrier `(N,)`; output `(N, c_out (2 d_out + 1))`.
#[derive(Debug, Clone, PartialEq)]
pub struct RadialEdgeConv {
    /// The pair's sizes.
    pub shape: PairShape,
    /// Reassociated, direct, or per node the cheaper.
    pub mode: Mode,
}

/// Work below which the kernel stays on the calling thread (multiply-adds).
const PAR_WORK: usize = 1 << 20;

struct Kernel<'a> {
    shape: PairShape,
    mode: Mode,
    hd: usize,
    m: usize,
    x: &'a [f32],
    basis: &'a [f32],
    h: &'a [f32],
    weight: &'a [f32],
    bias: &'a [f32],
    w: &'a [f32],
    src: &'a [f32],
    start: &'a [usize],
    order: &'a [usize],
}

#[derive(Default)]
struct Scratch {
    /// `(edge, source, weight)` of the node's contributing edges.
    edges: Vec<(usize, usize, f32)>,
    /// Offsets of the edges' hidden rows in `h`.
    hoff: Vec<usize>,
    /// `Kx` rows, `[deg, (p, c, f)]`.
    kx: Vec<f32>,
    /// `A`, `[(p, c, f), hd]`.
    a: Vec<f32>,
    /// `B`, `[(p, c, f)]`.
    b: Vec<f32>,
    /// One edge's radial weights `[(o, c, f)]` (direct mode).
    r: Vec<f32>,
    /// `Kx` of one input channel, `[(f, p)]`.
    t: Vec<f32>,
}

/// `dot(x[..len], w[off..off + len])`, four vector accumulators (independent chains).
#[inline(always)]
fn dot<S: Simd>(x: &[f32], w: &[f32], off: usize, len: usize) -> f32 {
    let (x, w) = (&x[..len], &w[off..off + len]);
    let step = 4 * S::W;
    let full = len / step * step;
    let mut acc = [S::zero(); 4];
    let mut i = 0;
    while i < full {
        for (v, a) in acc.iter_mut().enumerate() {
            let at = i + v * S::W;
            *a = S::fmadd(S::load(x, at), S::load(w, at), *a);
        }
        i += step;
    }
    let total = S::add(S::add(acc[0], acc[1]), S::add(acc[2], acc[3]));
    let tail: f32 = x[full..].iter().zip(&w[full..]).map(|(a, b)| a * b).sum();
    S::sum(total) + tail
}

/// `out[r][p] = dot(a[p len..][..len], w[(o0 + r) len..][..len])` for `RW` rows of `w` and
/// all `MO` rows of `a` at once: every loaded vector of `w` serves `MO` products and every
/// vector of `a` serves `RW` (`RW MO` independent accumulators).
#[inline(always)]
fn tile<S: Simd, const RW: usize, const MO: usize>(
    a: &[f32],
    w: &[f32],
    o0: usize,
    len: usize,
) -> [[f32; MO]; RW] {
    let full = len / S::W * S::W;
    let mut acc = [[S::zero(); MO]; RW];
    let mut k = 0;
    while k < full {
        let av: [S::V; MO] = std::array::from_fn(|p| S::load(a, p * len + k));
        for (r, ar) in acc.iter_mut().enumerate() {
            let wv = S::load(w, (o0 + r) * len + k);
            for (p, apv) in ar.iter_mut().enumerate() {
                *apv = S::fmadd(wv, av[p], *apv);
            }
        }
        k += S::W;
    }
    std::array::from_fn(|r| {
        std::array::from_fn(|p| {
            let tail: f32 = (full..len)
                .map(|k| a[p * len + k] * w[(o0 + r) * len + k])
                .sum();
            S::sum(acc[r][p]) + tail
        })
    })
}

/// `a[r, :] = sum_j kx[j, col0 + r] h[hoff[j] ..][..hd]` for `R` consecutive columns, two
/// vectors of `hd` per row at a time (`2 R` independent accumulators).
#[inline(always)]
fn outer_rows<S: Simd, const R: usize>(
    kx: &[f32],
    width: usize,
    col0: usize,
    h: &[f32],
    hoff: &[usize],
    hd: usize,
    a: &mut [f32],
) {
    let step = 2 * S::W;
    let full = hd / step * step;
    let mut c = 0;
    while c < full {
        let mut acc = [[S::zero(); 2]; R];
        for (j, &o) in hoff.iter().enumerate() {
            let h0 = S::load(h, o + c);
            let h1 = S::load(h, o + c + S::W);
            for (r, ar) in acc.iter_mut().enumerate() {
                let coef = S::splat(kx[j * width + col0 + r]);
                ar[0] = S::fmadd(coef, h0, ar[0]);
                ar[1] = S::fmadd(coef, h1, ar[1]);
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            S::store(ar[0], a, r * hd + c);
            S::store(ar[1], a, r * hd + c + S::W);
        }
        c += step;
    }
    for c in full..hd {
        for r in 0..R {
            a[r * hd + c] = hoff
                .iter()
                .enumerate()
                .map(|(j, &o)| kx[j * width + col0 + r] * h[o + c])
                .sum();
        }
    }
}

impl Kernel<'_> {
    /// Output row of node `i` (`[c_out, 2 d_out + 1]`, zero on entry).
    #[inline(always)]
    fn node<S: Simd>(&self, i: usize, out: &mut [f32], sc: &mut Scratch) {
        let s = self.shape;
        let (ci, di, nf, mo, co, cf) = (s.c_in, s.di(), s.nf, s.mo(), s.c_out, s.cf());
        let (hd, width) = (self.hd, mo * cf);
        sc.edges.clear();
        for &e in &self.order[self.start[i]..self.start[i + 1]] {
            let sv = self.src[e];
            let we = self.w[e];
            if sv < 0.0 || sv as usize >= self.m || we == 0.0 {
                continue;
            }
            sc.edges.push((e, sv as usize, we));
        }
        let deg = sc.edges.len();
        if deg == 0 {
            return;
        }
        // 1. Kx rows, [(p, c, f)]: per input channel c, t[(f, p)] = w_e sum_q x[c, q] K[q, (f, p)]
        // (contiguous multiply-adds over (f, p)), then placed at (p, c, f)
        sc.kx.clear();
        sc.kx.resize(deg * width, 0.0);
        sc.hoff.clear();
        let fm = nf * mo;
        let kw = di * fm;
        sc.t.clear();
        sc.t.resize(fm, 0.0);
        for (j, &(e, sv, we)) in sc.edges.iter().enumerate() {
            sc.hoff.push(e * hd);
            let xs = &self.x[sv * ci * di..(sv + 1) * ci * di];
            let kb = &self.basis[e * kw..(e + 1) * kw];
            let row = &mut sc.kx[j * width..(j + 1) * width];
            for c in 0..ci {
                sc.t.fill(0.0);
                for (q, kq) in kb.chunks_exact(fm).enumerate() {
                    let xv = we * xs[c * di + q];
                    for (tv, kv) in sc.t.iter_mut().zip(kq) {
                        *tv += xv * kv;
                    }
                }
                for f in 0..nf {
                    for p in 0..mo {
                        row[(p * ci + c) * nf + f] = sc.t[f * mo + p];
                    }
                }
            }
        }
        let direct = match self.mode {
            Mode::Direct => true,
            Mode::Reassociated => false,
            Mode::Auto => deg * co < mo * (deg + co),
        };
        if direct {
            self.direct::<S>(out, sc);
        } else {
            self.reassociated::<S>(out, sc);
        }
    }

    #[inline(always)]
    fn direct<S: Simd>(&self, out: &mut [f32], sc: &mut Scratch) {
        let s = self.shape;
        let (mo, co, cf) = (s.mo(), s.c_out, s.cf());
        let (hd, width) = (self.hd, mo * cf);
        let rows = co * cf;
        sc.r.clear();
        sc.r.resize(rows, 0.0);
        for (j, &ho) in sc.hoff.iter().enumerate() {
            let hj = &self.h[ho..ho + hd];
            for (r, rv) in sc.r.iter_mut().enumerate() {
                *rv = dot::<S>(hj, self.weight, r * hd, hd);
            }
            for (rv, bv) in sc.r.iter_mut().zip(self.bias) {
                *rv += bv;
            }
            let kxj = &sc.kx[j * width..(j + 1) * width];
            for o in 0..co {
                let ro = &sc.r[o * cf..(o + 1) * cf];
                for p in 0..mo {
                    let kp = &kxj[p * cf..(p + 1) * cf];
                    out[o * mo + p] += ro.iter().zip(kp).map(|(a, b)| a * b).sum::<f32>();
                }
            }
        }
    }

    #[inline(always)]
    fn reassociated<S: Simd>(&self, out: &mut [f32], sc: &mut Scratch) {
        let s = self.shape;
        let (mo, co, cf) = (s.mo(), s.c_out, s.cf());
        let (hd, width) = (self.hd, mo * cf);
        sc.a.clear();
        sc.a.resize(width * hd, 0.0);
        let mut col = 0;
        while col + 4 <= width {
            outer_rows::<S, 4>(
                &sc.kx,
                width,
                col,
                self.h,
                &sc.hoff,
                hd,
                &mut sc.a[col * hd..(col + 4) * hd],
            );
            col += 4;
        }
        while col < width {
            outer_rows::<S, 1>(
                &sc.kx,
                width,
                col,
                self.h,
                &sc.hoff,
                hd,
                &mut sc.a[col * hd..(col + 1) * hd],
            );
            col += 1;
        }
        sc.b.clear();
        sc.b.resize(width, 0.0);
        for row in sc.kx.chunks_exact(width) {
            for (b, k) in sc.b.iter_mut().zip(row) {
                *b += k;
            }
        }
        let len = cf * hd;
        // the last layer: out[o, p] = W[o] . A[p], in register tiles of output channels x orders
        let done = match mo {
            1 => self.last_layer::<S, 8, 1>(out, &sc.a, len),
            3 => self.last_layer::<S, 4, 3>(out, &sc.a, len),
            5 => self.last_layer::<S, 4, 5>(out, &sc.a, len),
            _ => 0,
        };
        for p in 0..mo {
            let ap = &sc.a[p * len..(p + 1) * len];
            let bp = &sc.b[p * cf..(p + 1) * cf];
            for o in done..co {
                out[o * mo + p] = dot::<S>(ap, self.weight, o * len, len);
            }
            for o in 0..co {
                let bo = &self.bias[o * cf..(o + 1) * cf];
                out[o * mo + p] += bo.iter().zip(bp).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
}

impl Kernel<'_> {
    /// `out[o, p] = W[o] . A[p]` for the output channels `0..done` that fill whole tiles of
    /// `RW`; returns `done`.
    #[inline(always)]
    fn last_layer<S: Simd, const RW: usize, const MO: usize>(
        &self,
        out: &mut [f32],
        a: &[f32],
        len: usize,
    ) -> usize {
        let co = self.shape.c_out;
        let mut o0 = 0;
        while o0 + RW <= co {
            let t = tile::<S, RW, MO>(a, self.weight, o0, len);
            for (r, tr) in t.iter().enumerate() {
                for (p, v) in tr.iter().enumerate() {
                    out[(o0 + r) * MO + p] = *v;
                }
            }
            o0 += RW;
        }
        o0
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn node_avx512(k: &Kernel<'_>, i: usize, out: &mut [f32], sc: &mut Scratch) {
    k.node::<simd::x86::Avx512>(i, out, sc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn node_avx2(k: &Kernel<'_>, i: usize, out: &mut [f32], sc: &mut Scratch) {
    k.node::<simd::x86::Avx2>(i, out, sc);
}

fn node_plain(k: &Kernel<'_>, i: usize, out: &mut [f32], sc: &mut Scratch) {
    k.node::<Plain>(i, out, sc);
}

fn run_node(isa: Isa, k: &Kernel<'_>, i: usize, out: &mut [f32], sc: &mut Scratch) {
    match isa {
        // SAFETY: `simd::isa()` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { node_avx512(k, i, out, sc) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { node_avx2(k, i, out, sc) },
        Isa::Plain => node_plain(k, i, out, sc),
    }
}

impl Operator for RadialEdgeConv {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let views: Vec<View> = inp.iter().map(|(_, st)| View::new(st, &empty)).collect();
        let s = self.shape;
        let m = views[0].axes[0].len;
        let hd = views[2].axes.get(1).map_or(0, |a| a.len);
        let n = views[8].axes[0].len;
        let row = s.c_out * s.mo();
        let mat = |i: usize| views[i].borrow_or_copy(buffer(&inp[i].0));
        let (x, basis, h, weight, bias) = (mat(0), mat(1), mat(2), mat(3), mat(4));
        let (w, src, dst) = (mat(5), mat(6), mat(7));
        let b = cpu_buckets(&dst, n);
        let mut out = crate::exec::pool::take(n * row);
        if row == 0 || n == 0 {
            drop((x, basis, h, weight, bias, w, src, dst));
            return crate::exec::pool::finish(inp, out);
        }
        let k = Kernel {
            shape: s,
            mode: self.mode,
            hd,
            m,
            x: &x,
            basis: &basis,
            h: &h,
            weight: &weight,
            bias: &bias,
            w: &w,
            src: &src,
            start: &b.start,
            order: &b.order,
        };
        let isa = simd::isa();
        let work = b.order.len() * s.cf() * s.mo() * hd.max(1);
        if work >= PAR_WORK {
            out.par_chunks_mut(row)
                .enumerate()
                .with_min_len(4)
                .for_each_init(Scratch::default, |sc, (i, o)| run_node(isa, &k, i, o, sc));
        } else {
            let mut sc = Scratch::default();
            for (i, o) in out.chunks_mut(row).enumerate() {
                run_node(isa, &k, i, o, &mut sc);
            }
        }
        drop((x, basis, h, weight, bias, w, src, dst));
        crate::exec::pool::finish(inp, out)
    }
}
