//! Strided views: a luminal `ShapeTracker` with its dimensions resolved, turned into per-axis
//! strides, offsets and valid ranges, so kernels read a producer's buffer with integer arithmetic
//! instead of interpreting a symbolic index expression per element.
//!
//! The reading rule is exactly the one of `ShapeTracker::index_expression` and
//! `valid_expression` (luminal 0.2): for a logical axis over physical dimension `i` with size `sh`,
//! padding `(p0, p1)`, slice `(s0, s1)`: length `min(sh + p0 + p1, s1) - s0`, physical index
//! `q + s0 - min(p0, s0) - p0` for logical index `q`, valid when
//! `p0 - min(s0, p0) <= q < min(sh + p0, s1)`; invalid elements read as 0. Fake (expanded) axes
//! have stride 0 and are always valid.

use luminal::prelude::{symbolic::Expression, ShapeTracker};
use rustc_hash::FxHashMap;

/// One logical axis of a [`View`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Axis {
    pub len: usize,
    pub stride: usize,
    pub offset: i64,
    pub lo: i64,
    pub hi: i64,
    pub fake: bool,
}

impl Axis {
    fn always_valid(&self) -> bool {
        self.fake || (self.lo <= 0 && self.hi >= self.len as i64)
    }
}

/// The buffer range `(start, len)` of `count` elements of a unit-stride innermost axis from
/// logical index `q0`, if they are all inside its valid (unpadded) range.
fn contiguous_run(inner: Axis, q0: usize, count: usize, base: i64) -> Option<(usize, usize)> {
    let (q0, q1) = (q0 as i64, (q0 + count) as i64);
    if inner.stride != 1 || q0 < inner.lo || q1 > inner.hi {
        return None;
    }
    usize::try_from(base + q0 + inner.offset)
        .ok()
        .map(|p| (p, count))
}

/// For `count` elements of a unit-stride innermost axis from logical index `q0`: the part
/// inside its valid range, as `(first, end)` within the run and the buffer position of
/// `first` (`(0, 0, 0)` if none is valid; `None` for another stride).
fn valid_part(inner: Axis, q0: usize, count: usize, base: i64) -> Option<(usize, usize, usize)> {
    if inner.stride != 1 {
        return None;
    }
    let (q0, q1) = (q0 as i64, (q0 + count) as i64);
    let (a, b) = (q0.max(inner.lo), q1.min(inner.hi));
    if a >= b {
        // nothing valid: all zeros
        return Some((0, 0, 0));
    }
    let p = usize::try_from(base + a + inner.offset).ok()?;
    Some(((a - q0) as usize, (b - q0) as usize, p))
}

/// A resolved strided view of a buffer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    pub axes: Vec<Axis>,
    /// Number of logical elements (product of the axis lengths).
    pub n: usize,
    /// The view reads the buffer as is: element `i` is `buf[i]`.
    pub plain: bool,
}

fn value(e: &Expression, dyn_map: &FxHashMap<char, usize>) -> i64 {
    // Dimensions are resolved before kernels run; a symbol left means an unset dynamic
    // dimension, which the session rules out before execution.
    e.exec(dyn_map)
        .map(|v| v as i64)
        .or_else(|| e.to_usize().map(|v| v as i64))
        .unwrap_or(0)
}

/// Converts an expression that may hold `i32::MAX` (luminal's "no upper slice") to i64.
fn bound(e: &Expression, dyn_map: &FxHashMap<char, usize>) -> i64 {
    let v = value(e, dyn_map);
    if v >= i32::MAX as i64 {
        i64::MAX / 4
    } else {
        v
    }
}

impl View {
    /// The view described by `st`, with dynamic dimensions looked up in `dyn_map`.
    pub fn new(st: &ShapeTracker, dyn_map: &FxHashMap<char, usize>) -> View {
        let rank = st.dims.len();
        let mut phys_stride = vec![0usize; rank];
        let mut acc = 1usize;
        for i in (0..rank).rev() {
            phys_stride[i] = acc;
            if !st.fake[i] {
                acc *= value(&st.dims[i], dyn_map).max(0) as usize;
            }
        }
        let mut axes = Vec::with_capacity(rank);
        for k in 0..rank {
            let i = st.indexes[k];
            let sh = value(&st.dims[i], dyn_map);
            let (p0, p1) = (
                value(&st.padding[i].0, dyn_map),
                value(&st.padding[i].1, dyn_map),
            );
            let (s0, s1) = (
                value(&st.slices[i].0, dyn_map),
                bound(&st.slices[i].1, dyn_map),
            );
            let len = ((sh + p0 + p1).min(s1) - s0).max(0) as usize;
            axes.push(Axis {
                len,
                stride: phys_stride[i],
                offset: s0 - p0.min(s0) - p0,
                lo: p0 - s0.min(p0),
                hi: (sh + p0).min(s1),
                fake: st.fake[i],
            });
        }
        let n = axes.iter().map(|a| a.len).product();
        let mut plain = true;
        let mut expect = 1usize;
        for a in axes.iter().rev() {
            if a.fake || a.offset != 0 || !a.always_valid() || (a.len > 1 && a.stride != expect) {
                plain = false;
                break;
            }
            expect *= a.len;
        }
        View { axes, n, plain }
    }

    /// Logical shape.
    pub fn shape(&self) -> Vec<usize> {
        self.axes.iter().map(|a| a.len).collect()
    }

    /// Every element reads the same buffer position (all axes fake or of length 1).
    pub fn is_broadcast_scalar(&self) -> bool {
        self.axes
            .iter()
            .all(|a| (a.fake || a.len == 1) && a.always_valid())
            && { self.axes.iter().all(|a| a.fake || a.offset == 0) }
    }

    /// Fills `out` with logical elements `start .. start + out.len()` read from `src`.
    ///
    /// Rows whose innermost axis has unit stride and lies inside the view's valid range are
    /// copied in one piece; other rows are read element by element.
    pub fn gather(&self, src: &[f32], start: usize, out: &mut [f32]) {
        if out.is_empty() {
            return;
        }
        if self.plain {
            let end = (start + out.len()).min(src.len());
            let m = end.saturating_sub(start);
            out[..m].copy_from_slice(&src[start..end]);
            out[m..].fill(0.0);
            return;
        }
        if self.axes.is_empty() {
            out.fill(src.first().copied().unwrap_or(0.0));
            return;
        }
        // inner axes that tile a unit-stride run merge into one axis (e.g. `[e, c, 3]` padded
        // along `c`: rows of `3 c` instead of 3), so rows are copied in long pieces
        let mut ax = [Axis {
            len: 0,
            stride: 0,
            offset: 0,
            lo: 0,
            hi: 0,
            fake: false,
        }; 8];
        // axes of length 1 whose one index is inside the view add a constant to every
        // position: folded into `const_off`, so that e.g. `[e, c, 1]` copies rows of `c`, not
        // runs of 1
        let mut rank = 0;
        let mut const_off: i64 = 0;
        let last = self.axes.len().min(8) - 1;
        for (k, a) in self.axes.iter().take(8).enumerate() {
            if a.len == 1 && a.lo <= 0 && a.hi >= 1 && (k < last || rank > 0) {
                if !a.fake {
                    const_off += a.offset * a.stride as i64;
                }
                continue;
            }
            ax[rank] = *a;
            rank += 1;
        }
        while rank >= 2 {
            let (outer, inner) = (ax[rank - 2], ax[rank - 1]);
            let full = !inner.fake
                && inner.stride == 1
                && inner.offset == 0
                && inner.lo <= 0
                && inner.hi >= inner.len as i64;
            if !full || outer.fake || outer.stride != inner.len || inner.len == 0 {
                break;
            }
            let l = inner.len as i64;
            let clamp = |v: i64| v.clamp(0, outer.len as i64) * l;
            ax[rank - 2] = Axis {
                len: outer.len * inner.len,
                stride: 1,
                offset: outer.offset * l,
                lo: clamp(outer.lo),
                hi: clamp(outer.hi),
                fake: false,
            };
            rank -= 1;
        }
        let axes = &ax[..rank];
        let mut idx = [0usize; 8];
        let mut rem = start;
        for k in (0..rank).rev() {
            let len = axes[k].len.max(1);
            idx[k] = rem % len;
            rem /= len;
        }
        let inner = axes[rank - 1];
        let mut pos = 0;
        while pos < out.len() {
            let mut base: i64 = const_off;
            let mut valid = true;
            for (k, a) in axes[..rank - 1].iter().enumerate() {
                if a.fake {
                    continue;
                }
                let q = idx[k] as i64;
                if q < a.lo || q >= a.hi {
                    valid = false;
                }
                base += (q + a.offset) * a.stride as i64;
            }
            let count = (inner.len - idx[rank - 1]).min(out.len() - pos);
            let dst = &mut out[pos..pos + count];
            if !valid {
                dst.fill(0.0);
            } else if inner.fake {
                let v = usize::try_from(base)
                    .ok()
                    .and_then(|b| src.get(b))
                    .copied()
                    .unwrap_or(0.0);
                dst.fill(v);
            } else if let Some(row) = contiguous_run(inner, idx[rank - 1], count, base)
                .and_then(|(p, c)| src.get(p..p + c))
            {
                // a unit-stride run fully inside the view and the buffer: one copy
                dst.copy_from_slice(row);
            } else if let Some((a, b, row)) = valid_part(inner, idx[rank - 1], count, base)
                .and_then(|(a, b, p)| src.get(p..p + (b - a)).map(|r| (a, b, r)))
            {
                // a unit-stride run partly padded: zeros, one copy, zeros
                dst[..a].fill(0.0);
                dst[a..b].copy_from_slice(row);
                dst[b..].fill(0.0);
            } else {
                let s = inner.stride as i64;
                for (j, d) in dst.iter_mut().enumerate() {
                    let q = (idx[rank - 1] + j) as i64;
                    *d = if q >= inner.lo && q < inner.hi {
                        let p = base + (q + inner.offset) * s;
                        usize::try_from(p)
                            .ok()
                            .and_then(|p| src.get(p))
                            .copied()
                            .unwrap_or(0.0)
                    } else {
                        0.0
                    };
                }
            }
            pos += count;
            idx[rank - 1] += count;
            let mut k = rank - 1;
            while idx[k] >= axes[k].len && k > 0 {
                idx[k] = 0;
                k -= 1;
                idx[k] += 1;
            }
        }
    }

    /// Number of buffer elements the view addresses: the product of its real (non-fake)
    /// physical dimensions, before padding and slicing.
    pub fn physical_len(&self) -> usize {
        self.axes
            .iter()
            .filter(|a| !a.fake && a.len > 0)
            .map(|a| {
                let last = (a.len as i64 - 1 + a.offset).max(a.hi - 1 + a.offset);
                (last.max(0) as usize) * a.stride
            })
            .sum::<usize>()
            + 1
    }

    /// The inverse of [`View::gather`]: writes logical elements `values` (row-major) into
    /// `out` at the positions the view reads them from; positions the view pads are skipped.
    pub fn scatter(&self, values: &[f32], out: &mut [f32]) {
        let rank = self.axes.len();
        let mut idx = [0usize; 8];
        for &v in values.iter() {
            let mut p: i64 = 0;
            let mut valid = true;
            for (k, a) in self.axes.iter().enumerate() {
                if a.fake {
                    continue;
                }
                let q = idx[k] as i64;
                valid &= q >= a.lo && q < a.hi;
                p += (q + a.offset) * a.stride as i64;
            }
            if valid {
                if let Some(o) = usize::try_from(p).ok().and_then(|p| out.get_mut(p)) {
                    *o = v;
                }
            }
            let mut k = rank;
            while k > 0 {
                k -= 1;
                idx[k] += 1;
                if idx[k] < self.axes[k].len {
                    break;
                }
                idx[k] = 0;
            }
        }
    }

    /// The logical elements as a slice of `src` when the view reads one contiguous row-major
    /// range of it (plain views, and slices along the outer axes such as one network of a
    /// stacked `[P, e, hidden]` tensor), else a contiguous copy.
    pub fn borrow_or_copy<'a>(&self, src: &'a [f32]) -> Materialized<'a> {
        let mut expect = 1usize;
        let mut ok = true;
        let mut base = 0i64;
        for a in self.axes.iter().rev() {
            if a.len > 1 && (a.fake || a.stride != expect || !a.always_valid()) {
                ok = false;
                break;
            }
            if !a.fake {
                base += a.offset * a.stride as i64;
            }
            expect *= a.len;
        }
        if ok {
            if let Some(s) = usize::try_from(base)
                .ok()
                .and_then(|b| src.get(b..b + self.n))
            {
                return Materialized::Borrowed(s);
            }
        }
        self.materialize(src)
    }

    /// The logical elements as a contiguous buffer (borrowed when the view is plain).
    pub fn materialize<'a>(&self, src: &'a [f32]) -> Materialized<'a> {
        if self.plain && src.len() == self.n {
            return Materialized::Borrowed(src);
        }
        let mut out = super::pool::take(self.n);
        if let Some(t) = self.transposed_blocks(src.len()) {
            t.copy(src, &mut out, self.n >= PAR_MIN);
            return Materialized::Owned(out);
        }
        if self.n >= PAR_MIN {
            use rayon::prelude::*;
            out.par_chunks_mut(BLOCK)
                .enumerate()
                .for_each(|(c, chunk)| self.gather(src, c * BLOCK, chunk));
        } else {
            self.gather(src, 0, &mut out);
        }
        Materialized::Owned(out)
    }
}

impl View {
    /// The view as a batch of 2-d transposes, if it is one: every axis real, unpadded and
    /// unsliced, the last two of lengths `a`, `b` with strides 1 and `s > 1` (the logical
    /// `[.., a, b]` reads the buffer's `[.., b, a]` blocks, e.g. a permuted weight), and every
    /// position inside a buffer of `len` elements.
    fn transposed_blocks(&self, len: usize) -> Option<Transposes> {
        let rank = self.axes.len();
        if rank < 2 || self.n == 0 {
            return None;
        }
        if self
            .axes
            .iter()
            .any(|x| x.fake || x.offset != 0 || !x.always_valid())
        {
            return None;
        }
        let (a, b) = (self.axes[rank - 2], self.axes[rank - 1]);
        // (small sides too: `[e, c, 3]` read from `[e, 3, c]` element by element in `gather`
        // would take a row per 3 values)
        if a.stride != 1 || b.stride <= 1 || a.len < 2 || b.len < 2 {
            return None;
        }
        let outer = self.axes[..rank - 2].to_vec();
        let last: usize = self.axes.iter().map(|x| (x.len - 1) * x.stride).sum();
        (last < len).then_some(Transposes {
            outer,
            rows: a.len,
            cols: b.len,
            stride: b.stride,
        })
    }
}

/// A batch of 2-d transposes ([`View::transposed_blocks`]): for each index of the `outer`
/// axes, `out[i, j] = src[base + i + j stride]`, `i < rows`, `j < cols`.
struct Transposes {
    outer: Vec<Axis>,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl Transposes {
    /// Tile edge: a tile's reads are `TILE` runs of `TILE` consecutive elements.
    const TILE: usize = 8;

    fn copy(&self, src: &[f32], out: &mut [f32], parallel: bool) {
        let block = self.rows * self.cols;
        let one = |(o, dst): (usize, &mut [f32])| {
            let mut rem = o;
            let mut base = 0usize;
            for x in self.outer.iter().rev() {
                base += (rem % x.len) * x.stride;
                rem /= x.len;
            }
            self.block(src, base, dst);
        };
        if parallel {
            use rayon::prelude::*;
            // tasks of at least 16 Ki elements (small blocks would each be a task)
            out.par_chunks_mut(block)
                .enumerate()
                .with_min_len((1 << 14) / block.max(1))
                .for_each(one);
        } else {
            out.chunks_mut(block).enumerate().for_each(one);
        }
    }

    /// One `[rows, cols]` block from `src[base..]` (positions checked by the caller).
    fn block(&self, src: &[f32], base: usize, dst: &mut [f32]) {
        if self.rows < Self::TILE {
            // a few long rows (`[3, c]` from `[c, 3]`): each written in one pass, its reads
            // strided through a block that stays in cache
            let block = &src[base..base + self.rows + (self.cols - 1) * self.stride];
            for (i, row) in dst.chunks_exact_mut(self.cols).enumerate() {
                for (j, d) in row.iter_mut().enumerate() {
                    *d = block[i + j * self.stride];
                }
            }
            return;
        }
        let t = Self::TILE;
        for j0 in (0..self.cols).step_by(t) {
            let j1 = (j0 + t).min(self.cols);
            for i0 in (0..self.rows).step_by(t) {
                let i1 = (i0 + t).min(self.rows);
                for j in j0..j1 {
                    let from = &src[base + j * self.stride + i0..base + j * self.stride + i1];
                    for (i, v) in (i0..i1).zip(from) {
                        dst[i * self.cols + j] = *v;
                    }
                }
            }
        }
    }
}

/// A view's elements as one contiguous slice ([`View::materialize`]): the source itself when the
/// view is plain, else a gathered copy in a pooled buffer ([`super::pool`]) that goes back to the
/// pool when dropped, so gathers of the same sizes run after run reuse resident pages instead of
/// faulting in fresh ones.
pub enum Materialized<'a> {
    /// The source buffer (the view was plain).
    Borrowed(&'a [f32]),
    /// The gathered copy.
    Owned(Vec<f32>),
}

impl std::ops::Deref for Materialized<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Self::Borrowed(s) => s,
            Self::Owned(v) => v,
        }
    }
}

impl Materialized<'_> {
    /// The elements as an owned buffer (the gathered copy itself, or a copy of the source).
    pub fn into_owned(mut self) -> Vec<f32> {
        match &mut self {
            Self::Borrowed(s) => s.to_vec(),
            Self::Owned(v) => std::mem::take(v),
        }
    }
}

impl Drop for Materialized<'_> {
    fn drop(&mut self) {
        if let Self::Owned(v) = self {
            super::pool::give(std::mem::take(v));
        }
    }
}

/// Elements processed per block by the blocked kernels.
pub(crate) const BLOCK: usize = 4096;
/// Element count above which kernels split work across threads.
pub(crate) const PAR_MIN: usize = 1 << 16;

/// The f32 buffer inside a host tensor (all CPU kernels use `Vec<f32>`). The executor checks
/// buffer locations before a kernel runs (`device::check_inputs`), so a device buffer never
/// reaches here; the empty slice is unreachable in a run.
pub(crate) fn buffer<'a>(t: &'a luminal::op::InputTensor<'a>) -> &'a [f32] {
    t.borrowed()
        .data
        .as_any()
        .downcast_ref::<Vec<f32>>()
        .map(|v| v.as_slice())
        .unwrap_or(&[])
}

/// Wraps a buffer as a luminal tensor.
pub(crate) fn tensor(v: Vec<f32>) -> luminal::prelude::Tensor {
    luminal::prelude::Tensor::new(v)
}

/// Sum with eight independent accumulators (vectorises; the order differs from a serial sum
/// by rounding only).
#[inline]
pub(crate) fn sum8(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Dot product with eight independent accumulators.
#[inline]
pub(crate) fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rng;
    use rand::Rng;

    /// Permuted views whose last two axes are a transpose take the tiled copy
    /// ([`View::transposed_blocks`]); it must give the element-by-element reading of
    /// [`View::gather`], on random sizes and permutations, sequential and parallel.
    #[test]
    fn transposed_blocks_match_the_elementwise_gather() {
        let (mut r, seed) = rng();
        for case in 0..12 {
            let rank = r.gen_range(2..5);
            let big = case % 4 == 3;
            let dims: Vec<usize> = (0..rank)
                .map(|_| r.gen_range(if big { 4..40 } else { 1..20 }))
                .collect();
            let mut perm: Vec<usize> = (0..rank).collect();
            for i in (1..rank).rev() {
                perm.swap(i, r.gen_range(0..=i));
            }
            let mut st = ShapeTracker::new(
                &dims
                    .iter()
                    .map(|&d| Expression::from(d))
                    .collect::<Vec<_>>(),
            );
            st.permute(&perm);
            let n: usize = dims.iter().product();
            let src: Vec<f32> = (0..n).map(|_| r.gen_range(-1.0..1.0)).collect();
            let view = View::new(&st, &FxHashMap::default());
            let mut want = vec![0.0; n];
            view.gather(&src, 0, &mut want);
            let got = view.materialize(&src);
            assert_eq!(
                &got[..],
                &want[..],
                "seed {seed}: dims {dims:?} permutation {perm:?} (tiled: {})",
                view.transposed_blocks(src.len()).is_some()
            );
        }
        // the radial last layer's rearrangement, [c_out, c, f, 128] -> [f, c, 128, c_out]
        let dims = [64usize, 32, 3, 128];
        let mut st = ShapeTracker::new(&dims.map(Expression::from));
        st.permute(&[2, 1, 3, 0]);
        let n: usize = dims.iter().product();
        let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let view = View::new(&st, &FxHashMap::default());
        assert!(
            view.transposed_blocks(n).is_some(),
            "not taken as transposes"
        );
        let mut want = vec![0.0; n];
        view.gather(&src, 0, &mut want);
        assert_eq!(&view.materialize(&src)[..], &want[..]);
    }

    /// [`View::gather`] on random views (permuted, sliced, padded, expanded axes; inner axes
    /// that merge into long rows and padded rows that are copied in one piece) from random
    /// starts, against luminal's own index and validity expressions element by element.
    #[test]
    fn gather_reads_what_the_shape_tracker_says() {
        let (mut r, seed) = rng();
        for case in 0..200 {
            let rank = r.gen_range(1..5);
            let dims: Vec<usize> = (0..rank).map(|_| r.gen_range(1..7)).collect();
            let mut st = ShapeTracker::new(
                &dims
                    .iter()
                    .map(|&d| Expression::from(d))
                    .collect::<Vec<_>>(),
            );
            if r.gen_bool(0.3) {
                let mut perm: Vec<usize> = (0..rank).collect();
                for i in (1..rank).rev() {
                    perm.swap(i, r.gen_range(0..=i));
                }
                st.permute(&perm);
            }
            // pad (zeros around) or slice some axes, never both on one axis
            let logical: Vec<usize> = st
                .shape()
                .iter()
                .map(|d| d.to_usize().unwrap_or(1))
                .collect();
            let mut pads = vec![(Expression::from(0), Expression::from(0)); rank];
            let mut slices = vec![(Expression::from(0), Expression::from(i32::MAX)); rank];
            for k in 0..rank {
                match r.gen_range(0..4) {
                    0 => pads[k] = (r.gen_range(0..3).into(), r.gen_range(0..4).into()),
                    1 if logical[k] > 1 => {
                        let a = r.gen_range(0..logical[k] - 1);
                        slices[k] = (a.into(), r.gen_range(a + 1..=logical[k]).into());
                    }
                    _ => {}
                }
            }
            st.slice(&slices);
            st.pad(&pads);
            if r.gen_bool(0.25) {
                let axis = r.gen_range(0..=rank);
                st.expand(axis, r.gen_range(1..4).into());
            }
            let n_src: usize = dims.iter().product();
            let src: Vec<f32> = (0..n_src).map(|i| i as f32 + 1.0).collect();
            let view = View::new(&st, &FxHashMap::default());
            let (index, valid) = (st.index_expression(), st.valid_expression());
            let want: Vec<f32> = (0..view.n)
                .map(|i| {
                    if valid.exec_single_var(i) != 0 {
                        src.get(index.exec_single_var(i)).copied().unwrap_or(0.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            let start = r.gen_range(0..view.n.max(1));
            let len = r.gen_range(0..=view.n - start);
            let mut got = vec![f32::NAN; len];
            view.gather(&src, start, &mut got);
            assert_eq!(
                got,
                want[start..start + len],
                "seed {seed}, case {case}: dims {dims:?}, view {st:?}, elements {start}..{}",
                start + len
            );
        }
    }
}
