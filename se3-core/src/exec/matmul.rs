//! Matrix products on a real GEMM: the pass finds luminal's matmul pattern (a broadcast `Mul`
//! of `[.., m, n(fake), k]` and `[.., m(fake), n, k]` summed over `k`) in any rank from 3 to 6,
//! and replaces it by [`MatMul`], which calls `matrixmultiply::sgemm` on the input buffers with
//! their strides (permuted, sliced and broadcast inputs need no copy). Batched products run
//! their batches in parallel.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::{petgraph::Direction, *};
use rayon::prelude::*;

use super::elementwise::{is_plain, replace_node, sources};
use super::view::{buffer, dot8, Axis, View};

/// Multiply-adds above which a matmul is split across threads.
const PAR_FLOPS: usize = 1 << 18;

/// Batched matrix product `C[.., m, n] = sum_k A[.., m, k] B[.., n, k]`; inputs are the
/// rank-r broadcast views of the matched pattern (A fake on axis r-2, B fake on axis r-3).
#[derive(Debug, Clone, PartialEq)]
pub struct MatMul;

fn base_offset(axes: &[Axis], idx: &[usize]) -> i64 {
    axes.iter()
        .zip(idx)
        .filter(|(a, _)| !a.fake)
        .map(|(a, &i)| (i as i64 + a.offset) * a.stride as i64)
        .sum()
}

/// Largest buffer position the view can touch, `None` if some position is negative.
fn reach(view: &View) -> Option<i64> {
    let mut lo = 0i64;
    let mut hi = 0i64;
    for a in view.axes.iter().filter(|a| !a.fake && a.len > 0) {
        let first = a.offset * a.stride as i64;
        let last = (a.len as i64 - 1 + a.offset) * a.stride as i64;
        lo += first.min(last);
        hi += first.max(last);
    }
    (lo >= 0).then_some(hi)
}

impl Operator for MatMul {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let empty = Default::default();
        let (va, vb) = (View::new(&inp[0].1, &empty), View::new(&inp[1].1, &empty));
        let (a, b) = (buffer(&inp[0].0), buffer(&inp[1].0));
        let r = va.axes.len();
        let (m, n, k) = (va.axes[r - 3].len, va.axes[r - 2].len, va.axes[r - 1].len);
        let batch_shape: Vec<usize> = va.axes[..r - 3].iter().map(|a| a.len).collect();
        let batches: usize = batch_shape.iter().product();
        let mut out = super::pool::take(batches * m * n);
        if m == 0 || n == 0 || batches == 0 {
            return super::pool::finish(inp, out);
        }
        let in_bounds =
            |v: &View, buf: &[f32]| reach(v).map(|h| (h as usize) < buf.len()).unwrap_or(false);
        let no_pad = |v: &View| {
            v.axes
                .iter()
                .all(|x| x.fake || (x.lo <= 0 && x.hi >= x.len as i64))
        };
        let fast = k > 0 && in_bounds(&va, a) && in_bounds(&vb, b) && no_pad(&va) && no_pad(&vb);
        let (am, ak) = (va.axes[r - 3], va.axes[r - 1]);
        let (bn, bk) = (vb.axes[r - 2], vb.axes[r - 1]);
        if !fast {
            let run = |(bi, c): (usize, &mut [f32])| {
                let mut row_a = vec![0.0f32; k];
                let mut row_b = vec![0.0f32; k];
                let lin = |i: usize, j: usize| ((bi * m + i) * n + j) * k;
                for i in 0..m {
                    va.gather(a, lin(i, 0), &mut row_a);
                    for j in 0..n {
                        vb.gather(b, lin(i, j), &mut row_b);
                        c[i * n + j] = dot8(&row_a, &row_b);
                    }
                }
            };
            if batches > 1 && batches * m * n * k >= PAR_FLOPS {
                out.par_chunks_mut(m * n).enumerate().for_each(run);
            } else {
                out.chunks_mut(m * n).enumerate().for_each(run);
            }
            return super::pool::finish(inp, out);
        }
        // Fold trailing batch axes over which B is broadcast into the rows of A: one GEMM of
        // (batch x m) rows instead of many small ones (each of which would pack B again).
        let mut outer = r - 3;
        let (mut rows, mut row_stride) = (m, am.stride);
        while outer > 0 {
            let (xa, xb) = (va.axes[outer - 1], vb.axes[outer - 1]);
            if !(xb.fake || xb.len == 1) {
                break;
            }
            if xa.len == 1 {
            } else if xa.fake {
                break;
            } else if rows == 1 {
                (rows, row_stride) = (xa.len, xa.stride);
            } else if xa.stride == rows * row_stride {
                rows *= xa.len;
            } else {
                break;
            }
            outer -= 1;
        }
        let outer_shape = &batch_shape[..outer];
        // buffer offsets of batch `bi`'s first A row and first B column
        let offsets = |bi: usize| {
            let mut idx = vec![0usize; r - 3];
            let mut rem = bi;
            for d in (0..outer).rev() {
                idx[d] = rem % outer_shape[d];
                rem /= outer_shape[d];
            }
            let oa = base_offset(&va.axes[..r - 3], &idx)
                + am.offset * am.stride as i64
                + ak.offset * ak.stride as i64;
            let ob = base_offset(&vb.axes[..r - 3], &idx)
                + bn.offset * bn.stride as i64
                + bk.offset * bk.stride as i64;
            (oa, ob)
        };
        let outer_batches: usize = outer_shape.iter().product();
        let work = batches * m * n * k;
        let strided = !(am.fake || ak.fake || bn.fake || bk.fake);
        if outer_batches > 1 && rows * n * k <= SMALL_GEMM && strided {
            // many tiny products (per-edge kernels): direct loops, no packing
            let direct = |bi: usize, c: &mut [f32]| {
                let (oa, ob) = offsets(bi);
                small_product(
                    (a, oa as usize, row_stride, ak.stride),
                    (b, ob as usize, bn.stride, bk.stride),
                    k,
                    n,
                    c,
                );
            };
            if work >= PAR_FLOPS {
                out.par_chunks_mut(rows * n)
                    .enumerate()
                    .for_each(|(bi, c)| direct(bi, c));
            } else {
                for (bi, c) in out.chunks_mut(rows * n).enumerate() {
                    direct(bi, c);
                }
            }
            return super::pool::finish(inp, out);
        }
        let gemm = |bi: usize, c: &mut [f32]| {
            let (oa, ob) = offsets(bi);
            let rows_here = c.len() / n;
            // SAFETY: `fast` checked that every element the views address lies inside the
            // buffers; the folded rows step through A with the stride of the merged axes.
            unsafe {
                matrixmultiply::sgemm(
                    rows_here,
                    k,
                    n,
                    1.0,
                    a.as_ptr().offset(oa as isize),
                    row_stride as isize,
                    ak.stride as isize,
                    b.as_ptr().offset(ob as isize),
                    bk.stride as isize,
                    bn.stride as isize,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
        };
        if outer_batches > 1 && work >= PAR_FLOPS {
            out.par_chunks_mut(rows * n)
                .enumerate()
                .for_each(|(bi, c)| gemm(bi, c));
        } else if work < SINGLE_THREAD_WORK && strided {
            // small products on this thread: waking matrixmultiply's threads for a product
            // of a few tens of microseconds costs about as much as it saves
            for (bi, c) in out.chunks_mut(rows * n).enumerate() {
                let (oa, ob) = offsets(bi);
                let rows_here = c.len() / n;
                gemm_single(
                    rows_here,
                    k,
                    n,
                    &a[oa as usize..],
                    (row_stride, ak.stride),
                    &b[ob as usize..],
                    (bk.stride, bn.stride),
                    c,
                    0.0,
                );
            }
        } else {
            // one GEMM (matrixmultiply threads it when large) or small ones in a row
            for (bi, c) in out.chunks_mut(rows * n).enumerate() {
                gemm(bi, c);
            }
        }
        super::pool::finish(inp, out)
    }
}

/// Multiply-adds of a whole product below which it runs on the calling thread
/// ([`gemm_single`]), whatever matrixmultiply's threading heuristic would pick.
const SINGLE_THREAD_WORK: usize = 1 << 21;

/// Multiply-adds of one product of a batch at or below which it runs as direct loops
/// ([`small_product`]): packing operands for `sgemm` costs more than such a product.
const SMALL_GEMM: usize = 1 << 13;

/// `C (rows x n) = A (rows x k) B^T` for one small product, `A[i, kk] = a[oa + i rsa + kk csa]`,
/// `B[j, kk] = b[ob + j rsb + kk csb]` (positions checked in bounds by the caller's views):
/// contiguous dot products when both `k` axes have stride 1, else row updates over `k`.
/// Compiled for the best instruction set of the CPU ([`super::simd::isa`]): the row updates
/// vectorise over `n`.
fn small_product(
    a: (&[f32], usize, usize, usize),
    b: (&[f32], usize, usize, usize),
    k: usize,
    n: usize,
    c: &mut [f32],
) {
    match super::simd::isa() {
        // SAFETY: `simd::isa()` detected these features on this CPU.
        #[cfg(target_arch = "x86_64")]
        super::simd::Isa::Avx512 => unsafe { small_product_avx512(a, b, k, n, c) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        super::simd::Isa::Avx2 => unsafe { small_product_avx2(a, b, k, n, c) },
        _ => small_product_impl(a, b, k, n, c),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn small_product_avx512(
    a: (&[f32], usize, usize, usize),
    b: (&[f32], usize, usize, usize),
    k: usize,
    n: usize,
    c: &mut [f32],
) {
    small_product_impl(a, b, k, n, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn small_product_avx2(
    a: (&[f32], usize, usize, usize),
    b: (&[f32], usize, usize, usize),
    k: usize,
    n: usize,
    c: &mut [f32],
) {
    small_product_impl(a, b, k, n, c);
}

#[inline(always)]
fn small_product_impl(
    (a, oa, rsa, csa): (&[f32], usize, usize, usize),
    (b, ob, rsb, csb): (&[f32], usize, usize, usize),
    k: usize,
    n: usize,
    c: &mut [f32],
) {
    for (i, row) in c.chunks_mut(n).enumerate() {
        let ra = oa + i * rsa;
        if csa == 1 && csb == 1 {
            let xa = &a[ra..ra + k];
            for (j, v) in row.iter_mut().enumerate() {
                let rb = ob + j * rsb;
                *v = dot8(xa, &b[rb..rb + k]);
            }
        } else if rsb == 1 {
            // rows of B contiguous: axpy updates over whole slices (vectorised)
            row.fill(0.0);
            for kk in 0..k {
                let x = a[ra + kk * csa];
                let rb = ob + kk * csb;
                for (v, &y) in row.iter_mut().zip(&b[rb..rb + n]) {
                    *v += x * y;
                }
            }
        } else {
            row.fill(0.0);
            for kk in 0..k {
                let x = a[ra + kk * csa];
                let rb = ob + kk * csb;
                for (j, v) in row.iter_mut().enumerate() {
                    *v += x * b[rb + j * rsb];
                }
            }
        }
    }
}

/// Largest `m k + k n` for which `matrixmultiply` stays on the calling thread (its threading
/// heuristic); the kernel runs inside rayon workers, so nested threads would only contend.
const SINGLE_THREAD_SIZE: usize = (1 << 15) - 1;

/// `C (m x n) = A (m x k) B (k x n) + beta C` on strided slices (row stride, column stride),
/// split along `k` into products small enough to stay single-threaded.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_single(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    c: &mut [f32],
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].iter_mut().for_each(|v| *v *= beta);
        return;
    }
    // every addressed element lies inside the slices
    assert!((m - 1) * rsa + (k - 1) * csa < a.len());
    assert!((k - 1) * rsb + (n - 1) * csb < b.len());
    assert!(m * n <= c.len());
    // columns first (small k, wide n: the query fold), then the inner dimension
    let nc = if m * k + k * n <= SINGLE_THREAD_SIZE {
        n
    } else {
        (SINGLE_THREAD_SIZE.saturating_sub(m * k) / k).clamp(64, n.max(64))
    };
    let mut n0 = 0;
    while n0 < n {
        let ncur = nc.min(n - n0);
        let chunk = (SINGLE_THREAD_SIZE / (m + ncur)).max(1);
        let mut k0 = 0;
        let mut beta = beta;
        while k0 < k {
            let kc = chunk.min(k - k0);
            // SAFETY: the strides address elements inside `a`, `b` and `c` (asserted above);
            // `c` is a distinct mutable slice.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    kc,
                    ncur,
                    1.0,
                    a.as_ptr().add(k0 * csa),
                    rsa as isize,
                    csa as isize,
                    b.as_ptr().add(k0 * rsb + n0 * csb),
                    rsb as isize,
                    csb as isize,
                    beta,
                    c.as_mut_ptr().add(n0),
                    n as isize,
                    1,
                );
            }
            beta = 1.0;
            k0 += kc;
        }
        n0 += ncur;
    }
}

fn logical_fake(st: &ShapeTracker, k: usize) -> bool {
    st.fake[st.indexes[k]]
}

/// Compiler pass: `Mul` → `SumReduce(last)` in matmul form becomes [`MatMul`].
#[derive(Debug, Default)]
pub struct MatMulPass;

impl Compiler for MatMulPass {
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, mut remap: T) {
        let nodes: Vec<NodeIndex> = graph.graph.node_indices().collect();
        for red in nodes {
            let Some(axis) = graph
                .graph
                .node_weight(red)
                .and_then(|o| o.as_any().downcast_ref::<luminal::op::SumReduce>())
                .map(|s| s.0)
            else {
                continue;
            };
            let rsrc = sources(graph, red);
            if rsrc.len() != 1 {
                continue;
            }
            let (mul, _, rst) = rsrc[0];
            let r = rst.len();
            if !(3..=6).contains(&r)
                || axis != r - 1
                || !is_plain(&rst)
                || graph.no_delete.contains(&mul)
            {
                continue;
            }
            if !graph
                .graph
                .node_weight(mul)
                .map(|o| o.as_any().is::<luminal::op::Mul>())
                .unwrap_or(false)
            {
                continue;
            }
            if graph.graph.edges_directed(mul, Direction::Outgoing).count() != 1 {
                continue;
            }
            let msrc = sources(graph, mul);
            if msrc.len() != 2 || msrc.iter().any(|s| s.2.len() != r || s.2.is_padded()) {
                continue;
            }
            let is_a = |st: &ShapeTracker| {
                logical_fake(st, r - 2) && !logical_fake(st, r - 3) && !logical_fake(st, r - 1)
            };
            let is_b = |st: &ShapeTracker| {
                logical_fake(st, r - 3) && !logical_fake(st, r - 2) && !logical_fake(st, r - 1)
            };
            let inputs = if is_a(&msrc[0].2) && is_b(&msrc[1].2) {
                vec![msrc[0], msrc[1]]
            } else if is_a(&msrc[1].2) && is_b(&msrc[0].2) {
                vec![msrc[1], msrc[0]]
            } else {
                continue;
            };
            replace_node(graph, &mut remap, red, MatMul, &inputs);
            let remaining = graph.graph.edges_directed(mul, Direction::Outgoing).count();
            if remaining == 0 {
                graph.graph.remove_node(mul);
            }
        }
    }
}

/// `C (m x n) = A (m x k) B (k x n) + beta C` for row-contiguous operands (`A[i, l]` at
/// `a[i * lda + l]`, `B[l, j]` at `b[l * ldb + j]`, `C[i, j]` at `c[i * ldc + j]`) without packing:
/// AVX-512 register tiles read `A` by broadcast and `B` by rows, for products where one operand
/// is used by few rows or columns (packing would cost as much as the product). Falls back to
/// [`gemm_single`] without AVX-512.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rows(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(k == 0 || ((m - 1) * lda + k <= a.len() && (k - 1) * ldb + n <= b.len()));
    assert!((m - 1) * ldc + n <= c.len());
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::isa() == super::simd::Isa::Avx512 {
            // SAFETY: the CPU has AVX-512F; the asserts above bound every access.
            unsafe { rows_avx512::gemm(m, k, n, a, lda, b, ldb, c, ldc, beta) };
            return;
        }
    }
    if ldc == n {
        gemm_single(m, k, n, a, (lda, 1), b, (ldb, 1), c, beta);
    } else {
        for i in 0..m {
            gemm_single(
                1,
                k,
                n,
                &a[i * lda..],
                (lda, 1),
                b,
                (ldb, 1),
                &mut c[i * ldc..],
                beta,
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod rows_avx512 {
    //! Register tiles of `MR` rows x `NV` vectors of 16 columns: per step `l` of `k`, `NV`
    //! loads of `B`'s row `l`, one broadcast of `A[i, l]` per row, `MR NV` FMAs into
    //! accumulators that stay in the 32 zmm registers (at most 24 of them, leaving room for the
    //! `B` vectors). `k` runs in blocks whose `B` panel (`kc` rows x `NV` vectors) stays in L1
    //! over all row tiles; the first block applies `beta`, the next ones add.
    use std::arch::x86_64::*;

    /// Bytes of `B`'s column panel that one `k` block may hold (L1 is 48 KiB).
    const PANEL_BYTES: usize = 32 * 1024;

    /// One tile: rows `MR`, `NV` vectors of 16 columns (`masks` for the partial last one);
    /// `C = A B + beta C` with `C` not read when `beta = 0`. Index loops over the const sizes
    /// keep the tile in registers.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MR: usize, const NV: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        beta: f32,
        masks: [__mmask16; NV],
    ) {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let mut brow = b;
        // four steps of `l` per pass: each row's values of A are one address apart, so the
        // row addresses are formed once per four steps (a chain of MR address increments per
        // MR NV FMAs would otherwise pace the loop)
        let mut l = 0;
        while l + 4 <= k {
            let mut bq = [[_mm512_setzero_ps(); NV]; 4];
            for (u, bu) in bq.iter_mut().enumerate() {
                for v in 0..NV {
                    bu[v] = _mm512_maskz_loadu_ps(masks[v], brow.add(u * ldb + 16 * v));
                }
            }
            brow = brow.add(4 * ldb);
            for r in 0..MR {
                let ar = a.add(r * lda + l);
                for (u, bu) in bq.iter().enumerate() {
                    let au = _mm512_set1_ps(*ar.add(u));
                    for v in 0..NV {
                        acc[r][v] = _mm512_fmadd_ps(au, bu[v], acc[r][v]);
                    }
                }
            }
            l += 4;
        }
        while l < k {
            let mut bv = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                bv[v] = _mm512_maskz_loadu_ps(masks[v], brow.add(16 * v));
            }
            brow = brow.add(ldb);
            for r in 0..MR {
                let av = _mm512_set1_ps(*a.add(r * lda + l));
                for v in 0..NV {
                    acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                }
            }
            l += 1;
        }
        for r in 0..MR {
            for v in 0..NV {
                let p = c.add(r * ldc + 16 * v);
                let mut x = acc[r][v];
                if beta != 0.0 {
                    let old = _mm512_maskz_loadu_ps(masks[v], p);
                    x = _mm512_fmadd_ps(_mm512_set1_ps(beta), old, x);
                }
                _mm512_mask_storeu_ps(p, masks[v], x);
            }
        }
    }

    /// All rows of one column panel: tiles of `MR` rows, the last `m mod MR` rows in tiles of
    /// at most 4; `k` in blocks of [`PANEL_BYTES`].
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows<const MR: usize, const NV: usize>(
        m: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
        beta: f32,
        masks: [__mmask16; NV],
    ) {
        let kc = (PANEL_BYTES / (64 * NV)).max(1);
        let (mut k0, mut beta) = (0, beta);
        loop {
            let kb = kc.min(k - k0);
            let (ak, bk) = (a.add(k0), b.add(k0 * ldb));
            let at = |i: usize| (ak.add(i * lda), c.add(i * ldc));
            let mut i = 0;
            while i + MR <= m {
                let (ai, ci) = at(i);
                tile::<MR, NV>(kb, ai, lda, bk, ldb, ci, ldc, beta, masks);
                i += MR;
            }
            while i < m {
                let (ai, ci) = at(i);
                let r = (m - i).min(4);
                match r {
                    4 => tile::<4, NV>(kb, ai, lda, bk, ldb, ci, ldc, beta, masks),
                    3 => tile::<3, NV>(kb, ai, lda, bk, ldb, ci, ldc, beta, masks),
                    2 => tile::<2, NV>(kb, ai, lda, bk, ldb, ci, ldc, beta, masks),
                    _ => tile::<1, NV>(kb, ai, lda, bk, ldb, ci, ldc, beta, masks),
                }
                i += r;
            }
            k0 += kb;
            beta = 1.0;
            if k0 >= k {
                break;
            }
        }
    }

    fn mask(cols: usize) -> __mmask16 {
        if cols >= 16 {
            0xffff
        } else {
            ((1u32 << cols) - 1) as __mmask16
        }
    }

    /// See [`super::gemm_rows`]. Column panels of 64 columns (6 x 4 tiles), the rest in one
    /// panel of 48 (8 x 3), 32 (12 x 2) or 16 (16 x 1).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        ldb: usize,
        c: &mut [f32],
        ldc: usize,
        beta: f32,
    ) {
        let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let mut j = 0;
        while j < n {
            let rem = n - j;
            let (bj, cj) = (b.add(j), c.add(j));
            let m1 = |v: usize| mask(rem.saturating_sub(16 * v));
            match rem.div_ceil(16) {
                1 => rows::<16, 1>(m, k, a, lda, bj, ldb, cj, ldc, beta, [m1(0)]),
                2 => rows::<12, 2>(m, k, a, lda, bj, ldb, cj, ldc, beta, [m1(0), m1(1)]),
                3 => rows::<8, 3>(m, k, a, lda, bj, ldb, cj, ldc, beta, [m1(0), m1(1), m1(2)]),
                _ => rows::<6, 4>(
                    m,
                    k,
                    a,
                    lda,
                    bj,
                    ldb,
                    cj,
                    ldc,
                    beta,
                    [m1(0), m1(1), m1(2), m1(3)],
                ),
            }
            j += 64;
        }
    }
}

#[cfg(test)]
#[path = "gemm_rows_tests.rs"]
mod gemm_rows_tests;
