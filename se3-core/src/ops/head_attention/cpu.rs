//! CPU kernel of [`head_attention`](super::head_attention): per batch element the heads are
//! packed into contiguous `(n, c * dh)` matrices once, then for each block of query rows and
//! head, the logits block is formed with one GEMM, the softmax taken in place (exp without
//! library calls, vectorised on AVX2 / AVX-512; rows in parallel), and the output block with a
//! second GEMM, written straight into the channel-last output. The GEMMs run one after the
//! other, each threaded by `matrixmultiply` (tasks of ours calling a threaded GEMM at once
//! would make its threads wait for each other). The `n x n` attention matrix never exists
//! whole: a block holds at most [`BLOCK_LOGITS`] logits (all 512 rows at n = 512).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use rayon::prelude::*;

use super::HeadLogits;
use crate::exec::simd::{self, Isa};
use crate::exec::view::{buffer, View};
use crate::ops::layer_norm_gelu::exp_neg;

/// Query rows per task of the backward pass.
pub(super) const ROWS: usize = 128;

/// Logits a forward block holds at most (1 MiB of f32).
const BLOCK_LOGITS: usize = 1 << 18;

/// Rows of a softmax task.
const SOFTMAX_ROWS: usize = 16;

/// Query rows of a forward block over `n` keys: all of them when the `(rows, n)` logits fit in
/// [`BLOCK_LOGITS`], else a multiple of 64 (the GEMM's row panel) that fits, at least 64.
fn query_block(n: usize) -> usize {
    if n * n <= BLOCK_LOGITS {
        return n.max(1);
    }
    ((BLOCK_LOGITS / n.max(1)) / 64 * 64).clamp(64, n.max(64))
}

/// Multi-head softmax attention over all key nodes on channel-last inputs: `q`, `k`, `v`
/// `(b, n, c, heads * dh)`, key mask `(b, n)` (non-zero = attend); output `(b, n, c, heads * dh)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadAttention {
    /// Number of heads `H` (the last axis is `H * dh`, head-major).
    pub heads: usize,
    /// Scale `s` of the dot products.
    pub scale: f32,
    /// How logits are formed.
    pub logits: HeadLogits,
    /// A batch element whose keys are all masked gets zero outputs (else uniform weights).
    pub zero_if_all_masked: bool,
}

/// `x (b, n, c, H * dh)` as `(b, H, n, c * dh)`: each head's vectors contiguous per node (a
/// buffer of the operator pool: hand it back with `pool::give` when done).
pub(super) fn pack_heads(x: &[f32], n: usize, c: usize, heads: usize, dh: usize) -> Vec<f32> {
    let w = heads * dh;
    let mut out = crate::exec::pool::take(x.len());
    out.par_chunks_mut(n * c * dh)
        .enumerate()
        .for_each(|(g, dst)| {
            let (bi, h) = (g / heads, g % heads);
            for j in 0..n {
                for cc in 0..c {
                    let src = ((bi * n + j) * c + cc) * w + h * dh;
                    let to = (j * c + cc) * dh;
                    dst[to..to + dh].copy_from_slice(&x[src..src + dh]);
                }
            }
        });
    out
}

/// Partial results kept per lane by the softmax reductions, so that they vectorise.
const LANES: usize = 16;

/// Row-wise softmax of `logits (rows, n)` in place over the keys with `keep[j]`, the others
/// getting weight 0. The row maximum and the sum of the exponentials are reduced in
/// [`LANES`] interleaved partial results (the maximum is exact in any order; the sum is
/// that of `LANES` strided partial sums, then of those).
#[inline(always)]
fn softmax_rows_impl(logits: &mut [f32], n: usize, keep: &[bool]) {
    for row in logits.chunks_mut(n) {
        for (v, &k) in row.iter_mut().zip(keep) {
            if !k {
                *v = f32::NEG_INFINITY;
            }
        }
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &v) in lanes.iter_mut().zip(c) {
                *m = m.max(v);
            }
        }
        let mx = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        for v in row.iter_mut() {
            *v = if *v == f32::NEG_INFINITY {
                0.0
            } else {
                exp_neg(*v - mx)
            };
        }
        let mut lanes = [0.0f32; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (s, &v) in lanes.iter_mut().zip(c) {
                *s += v;
            }
        }
        let sum: f32 = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn softmax_rows_avx512(logits: &mut [f32], n: usize, keep: &[bool]) {
    softmax_rows_impl(logits, n, keep);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_rows_avx2(logits: &mut [f32], n: usize, keep: &[bool]) {
    softmax_rows_impl(logits, n, keep);
}

pub(super) fn softmax_rows(logits: &mut [f32], n: usize, keep: &[bool]) {
    match simd::isa() {
        // SAFETY: `simd::isa()` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { softmax_rows_avx512(logits, n, keep) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { softmax_rows_avx2(logits, n, keep) },
        Isa::Plain => softmax_rows_impl(logits, n, keep),
    }
}

/// `c (m, n) = alpha a (m, k) b (k, n)` with row/column strides.
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    a: &[f32],
    (rsa, csa): (isize, isize),
    b: &[f32],
    (rsb, csb): (isize, isize),
    c: &mut [f32],
) {
    debug_assert!(c.len() >= m * n);
    // SAFETY: every index `r * rs + q * cs` read is within `a` / `b` (callers pass the
    // slices of exactly the matrices described), `c` holds `m * n` values, row-major.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

impl Operator for HeadAttention {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let qv = View::new(&inp[0].1, &empty);
        let shape = qv.shape();
        let (b, n, c, w) = (shape[0], shape[1], shape[2], shape[3]);
        let heads = self.heads.max(1);
        let dh = w / heads;
        let d = c * dh;
        let pack = |i: usize| {
            let x = View::new(&inp[i].1, &empty).materialize(buffer(&inp[i].0));
            pack_heads(&x, n, c, heads, dh)
        };
        let (q, k, v) = (pack(0), pack(1), pack(2));
        let mask = View::new(&inp[3].1, &empty).materialize(buffer(&inp[3].0));
        let keep: Vec<bool> = mask.iter().map(|&m| m != 0.0).collect();
        // |k_j|^2 per (batch, head, node) for L2 logits
        let sq = |x: &[f32]| -> Vec<f32> {
            x.chunks(d).map(|r| r.iter().map(|v| v * v).sum()).collect()
        };
        let (qq, kk) = match self.logits {
            HeadLogits::L2Distance => (sq(&q), sq(&k)),
            HeadLogits::Dot => (Vec::new(), Vec::new()),
        };
        let alpha = match self.logits {
            HeadLogits::Dot => self.scale,
            HeadLogits::L2Distance => 2.0 * self.scale,
        };
        let mut out = crate::exec::pool::take(b * n * c * w);
        // Blocks of query rows, head by head: the GEMMs run one at a time, threaded by
        // `matrixmultiply` itself (so its threads never wait behind tasks of ours, and each
        // head's keys and values are packed once a block), the softmax rows in parallel.
        let block = query_block(n);
        let mut logits = crate::exec::pool::take(block * n);
        let mut o = crate::exec::pool::take(block * d);
        let all = vec![true; n];
        for (bi, batch) in out.chunks_mut((n * c * w).max(1)).enumerate() {
            let keys = &keep[bi * n..(bi + 1) * n];
            let any = keys.iter().any(|&k| k);
            if !any && self.zero_if_all_masked {
                batch.fill(0.0);
                continue;
            }
            let keys = if any { keys } else { &all[..] };
            for (blk, dst) in batch.chunks_mut((block * c * w).max(1)).enumerate() {
                let i0 = blk * block;
                let rows = dst.len() / (c * w);
                let logits = &mut logits[..rows * n];
                let o = &mut o[..rows * d];
                for h in 0..heads {
                    let g = (bi * heads + h) * n;
                    let (qg, kg, vg) = (
                        &q[(g + i0) * d..(g + i0 + rows) * d],
                        &k[g * d..(g + n) * d],
                        &v[g * d..(g + n) * d],
                    );
                    gemm(
                        (rows, d, n),
                        alpha,
                        qg,
                        (d as isize, 1),
                        kg,
                        (1, d as isize),
                        logits,
                    );
                    let (qq, kk, l2) = (&qq, &kk, self.logits == HeadLogits::L2Distance);
                    logits
                        .par_chunks_mut(n * SOFTMAX_ROWS)
                        .enumerate()
                        .for_each(|(t, part)| {
                            if !any {
                                // every key masked: equal logits, uniform weights
                                part.fill(0.0);
                            } else if l2 {
                                for (r, row) in part.chunks_mut(n).enumerate() {
                                    let qi = qq[g + i0 + t * SOFTMAX_ROWS + r];
                                    for (x, kj) in row.iter_mut().zip(&kk[g..g + n]) {
                                        *x -= qi + kj;
                                    }
                                }
                            }
                            softmax_rows(part, n, keys);
                        });
                    gemm(
                        (rows, n, d),
                        1.0,
                        logits,
                        (n as isize, 1),
                        vg,
                        (d as isize, 1),
                        o,
                    );
                    for r in 0..rows {
                        for cc in 0..c {
                            let to = (r * c + cc) * w + h * dh;
                            let from = (r * c + cc) * dh;
                            dst[to..to + dh].copy_from_slice(&o[from..from + dh]);
                        }
                    }
                }
            }
        }
        crate::exec::pool::give(logits);
        crate::exec::pool::give(o);
        for packed in [q, k, v] {
            crate::exec::pool::give(packed);
        }
        drop(mask);
        crate::exec::pool::finish(inp, out)
    }
}
