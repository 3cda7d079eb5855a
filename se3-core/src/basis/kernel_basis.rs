//! The equivariant kernel basis of Tensor Field Networks / SE(3)-Transformers, laid out as
//! se3-transformer-pytorch's `get_basis(r, max_degree)` (CONVENTIONS.md 2.4).
//!
//! For every pair of degrees `(d_in, d_out)` and frequency `f = 0..2 min(d_in, d_out)` with
//! `J = |d_in - d_out| + f`:
//!
//! ```text
//! K[o, i, f](r) = sum_m Q_J[o (2 d_in+1) + i, m] * Y_J(r)[m]
//! ```
//!
//! with `Q_J` of [`super::q_j()`] and `Y_J` the harmonics in
//! `Convention::Se3TransformerPytorch` / `Normalization::Integral` (so the zero vector is the
//! direction `(0, 1, 0)`, as in the library). It is equivariant per frequency:
//! `K(R r) = D^{d_out}(R) K(r) D^{d_in}(R)^T`.
//!
//! Layout of one pair's block: edge-major, then `o` (2 d_out + 1), `i` (2 d_in + 1), `f`
//! (2 min + 1), i.e. the library's `(edges, 1, 2 d_out+1, 1, 2 d_in+1, nf)` with the unit axes
//! dropped.

use rayon::prelude::*;

use super::q_j::{q_j, QjPrecision};
use crate::so3::spherical_harmonics::{
    sh_len, sh_offset, spherical_harmonics_batch_into, Convention, Normalization, L_MAX,
};
use crate::Error;

/// Precomputed change-of-basis matrices of one pair of degrees, as a sparse matrix from the
/// harmonics of all degrees `0..=2 max_degree` to the pair's block (compressed rows: output
/// entry `idx = (o (2 d_in+1) + i) nf + f` is `sum_t vals[t] * Y[cols[t]]` for
/// `t in row_ptr[idx]..row_ptr[idx+1]`).
#[derive(Debug, Clone)]
struct Pair {
    d_in: usize,
    d_out: usize,
    nf: usize,
    row_ptr: Vec<u32>,
    cols: Vec<u32>,
    vals: Vec<f64>,
}

/// The kernel basis for all pairs of degrees up to `max_degree`, ready to evaluate on edges.
#[derive(Debug, Clone)]
pub struct KernelBasis {
    max_degree: usize,
    pairs: Vec<Pair>,
}

/// Evaluated kernel bases: one contiguous block per pair `(d_in, d_out)`.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelBasisValues<T> {
    /// Largest degree.
    pub max_degree: usize,
    /// Number of edges evaluated.
    pub edges: usize,
    /// Block of pair `(d_in, d_out)` at index `d_in * (max_degree + 1) + d_out`.
    pub blocks: Vec<Vec<T>>,
}

impl<T> KernelBasisValues<T> {
    /// The block of pair `(d_in, d_out)`, layout `[edge][o][i][f]`.
    ///
    /// # Errors
    /// `DegreeTooHigh` if a degree exceeds `max_degree`.
    pub fn block(&self, d_in: usize, d_out: usize) -> Result<&[T], Error> {
        let l = d_in.max(d_out);
        if l > self.max_degree {
            return Err(Error::DegreeTooHigh {
                l,
                max: self.max_degree,
            });
        }
        Ok(&self.blocks[d_in * (self.max_degree + 1) + d_out])
    }
}

/// Shape `(2 d_out+1, 2 d_in+1, 2 min(d_in, d_out)+1)` of one edge's kernel block.
pub fn pair_shape(d_in: usize, d_out: usize) -> [usize; 3] {
    [2 * d_out + 1, 2 * d_in + 1, 2 * d_in.min(d_out) + 1]
}

/// Edges per rayon task.
const CHUNK: usize = 1024;
/// Edges evaluated together (structure-of-arrays) inside a task.
const LANES: usize = 8;

impl KernelBasis {
    /// The basis for every pair of degrees `0..=max_degree`, with `Q_J` exact or rounded to f32
    /// like the library.
    ///
    /// # Errors
    /// `DegreeTooHigh` if `2 * max_degree > L_MAX` (the harmonics go up to `2 max_degree`).
    pub fn new(max_degree: usize, precision: QjPrecision) -> Result<Self, Error> {
        if 2 * max_degree > L_MAX {
            return Err(Error::DegreeTooHigh {
                l: max_degree,
                max: L_MAX / 2,
            });
        }
        let mut pairs = Vec::new();
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                let [no, ni, nf] = pair_shape(d_in, d_out);
                let qs: Vec<_> = (0..nf)
                    .map(|f| q_j(d_in.abs_diff(d_out) + f, d_in, d_out, precision))
                    .collect::<Result<_, _>>()?;
                let mut row_ptr = vec![0u32];
                let (mut cols, mut vals) = (Vec::new(), Vec::new());
                for row in 0..no * ni {
                    for (f, q) in qs.iter().enumerate() {
                        let j = d_in.abs_diff(d_out) + f;
                        for m in 0..q.ncols() {
                            let v = q[(row, m)];
                            // Entries below 1e-15 are rounding noise of exact zeros.
                            if v.abs() > 1e-15 {
                                cols.push((sh_offset(j) + m) as u32);
                                vals.push(v);
                            }
                        }
                        row_ptr.push(cols.len() as u32);
                    }
                }
                pairs.push(Pair {
                    d_in,
                    d_out,
                    nf,
                    row_ptr,
                    cols,
                    vals,
                });
            }
        }
        Ok(KernelBasis { max_degree, pairs })
    }

    /// The largest degree.
    pub fn max_degree(&self) -> usize {
        self.max_degree
    }

    /// Number of values one edge produces over all pairs.
    pub fn values_per_edge(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| (2 * p.d_out + 1) * (2 * p.d_in + 1) * p.nf)
            .sum()
    }

    /// Evaluates the basis on relative positions `r` (f64).
    ///
    /// # Errors
    /// `NonFinite` (with the edge index) if a vector holds NaN/inf.
    pub fn compute(&self, rel_pos: &[[f64; 3]]) -> Result<KernelBasisValues<f64>, Error> {
        let mut out = self.allocate(rel_pos.len());
        self.compute_into(rel_pos, &mut out)?;
        Ok(out)
    }

    /// f32 entry point: f32 positions in, f32 basis out, f64 inside.
    ///
    /// # Errors
    /// As [`KernelBasis::compute`].
    pub fn compute_f32(&self, rel_pos: &[[f32; 3]]) -> Result<KernelBasisValues<f32>, Error> {
        let mut out = self.allocate(rel_pos.len());
        self.compute_into(rel_pos, &mut out)?;
        Ok(out)
    }

    /// Zeroed output blocks for `edges` edges.
    pub fn allocate<T: BasisFloat>(&self, edges: usize) -> KernelBasisValues<T> {
        KernelBasisValues {
            max_degree: self.max_degree,
            edges,
            blocks: self
                .pairs
                .iter()
                .map(|p| vec![T::default(); edges * (2 * p.d_out + 1) * (2 * p.d_in + 1) * p.nf])
                .collect(),
        }
    }

    /// Evaluates into existing blocks (from [`KernelBasis::allocate`] with the same edge count).
    ///
    /// # Errors
    /// `NonFinite` if a vector holds NaN/inf, `LengthMismatch` if `out` was allocated for
    /// another number of edges or another basis.
    pub fn compute_into<T: BasisFloat>(
        &self,
        rel_pos: &[[T; 3]],
        out: &mut KernelBasisValues<T>,
    ) -> Result<(), Error> {
        let n = rel_pos.len();
        if out.edges != n || out.blocks.len() != self.pairs.len() {
            return Err(Error::LengthMismatch {
                what: "kernel basis output (edges)",
                expected: n,
                found: out.edges,
            });
        }
        let vecs: Vec<[f64; 3]> = rel_pos
            .iter()
            .map(|v| [v[0].to_f64(), v[1].to_f64(), v[2].to_f64()])
            .collect();
        for (i, v) in vecs.iter().enumerate() {
            for &c in v {
                if !c.is_finite() {
                    return Err(Error::NonFinite {
                        what: "relative positions",
                        index: i,
                        value: c,
                    });
                }
            }
        }
        let nchunks = n.div_ceil(CHUNK);
        let mut per_chunk: Vec<Vec<&mut [T]>> = (0..nchunks).map(|_| Vec::new()).collect();
        for (p, block) in self.pairs.iter().zip(out.blocks.iter_mut()) {
            let per_edge = (2 * p.d_out + 1) * (2 * p.d_in + 1) * p.nf;
            if block.len() != n * per_edge {
                return Err(Error::LengthMismatch {
                    what: "kernel basis output block",
                    expected: n * per_edge,
                    found: block.len(),
                });
            }
            if per_edge == 0 || n == 0 {
                continue;
            }
            for (c, s) in block.chunks_mut(CHUNK * per_edge).enumerate() {
                per_chunk[c].push(s);
            }
        }
        let lmax = 2 * self.max_degree;
        let len = sh_len(lmax);
        per_chunk
            .into_par_iter()
            .zip(vecs.par_chunks(CHUNK))
            .try_for_each(|(mut slices, edges)| -> Result<(), Error> {
                let mut y = vec![0.0f64; edges.len() * len];
                spherical_harmonics_batch_into(
                    lmax,
                    edges,
                    Convention::Se3TransformerPytorch,
                    Normalization::Integral,
                    &mut y,
                )?;
                let ne = edges.len();
                let full = ne / LANES * LANES;
                // Blocks of LANES edges, harmonics transposed to [idx][lane], so each sparse
                // term is loaded once and applied lane-wise.
                let mut yb = vec![[0.0f64; LANES]; len];
                let mut acc = vec![[0.0f64; LANES]; self.max_values_per_edge()];
                for e0 in (0..full).step_by(LANES) {
                    for (lane, ye) in y[e0 * len..(e0 + LANES) * len]
                        .chunks_exact(len)
                        .enumerate()
                    {
                        for (idx, &v) in ye.iter().enumerate() {
                            yb[idx][lane] = v;
                        }
                    }
                    for (p, dst) in self.pairs.iter().zip(slices.iter_mut()) {
                        let per_edge = (2 * p.d_out + 1) * (2 * p.d_in + 1) * p.nf;
                        for (idx, a_idx) in acc[..per_edge].iter_mut().enumerate() {
                            let (a, b) = (p.row_ptr[idx] as usize, p.row_ptr[idx + 1] as usize);
                            let mut sum = [0.0f64; LANES];
                            for (&v, &c) in p.vals[a..b].iter().zip(&p.cols[a..b]) {
                                let yc = &yb[c as usize];
                                for lane in 0..LANES {
                                    sum[lane] += v * yc[lane];
                                }
                            }
                            *a_idx = sum;
                        }
                        // Each edge's block is contiguous: stream it out in order.
                        let d = &mut dst[e0 * per_edge..(e0 + LANES) * per_edge];
                        for (lane, de) in d.chunks_exact_mut(per_edge).enumerate() {
                            for (o, a) in de.iter_mut().zip(&acc[..per_edge]) {
                                T::stream(o, T::from_f64(a[lane]));
                            }
                        }
                    }
                }
                for (p, dst) in self.pairs.iter().zip(slices.iter_mut()) {
                    let per_edge = (2 * p.d_out + 1) * (2 * p.d_in + 1) * p.nf;
                    for e in full..ne {
                        let ye = &y[e * len..(e + 1) * len];
                        let d = &mut dst[e * per_edge..(e + 1) * per_edge];
                        for (idx, o) in d.iter_mut().enumerate() {
                            let (a, b) = (p.row_ptr[idx] as usize, p.row_ptr[idx + 1] as usize);
                            let mut acc = 0.0;
                            for t in a..b {
                                acc += p.vals[t] * ye[p.cols[t] as usize];
                            }
                            *o = T::from_f64(acc);
                        }
                    }
                }
                stream_fence();
                Ok(())
            })
    }

    /// The largest block one edge produces for one pair.
    fn max_values_per_edge(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| (2 * p.d_out + 1) * (2 * p.d_in + 1) * p.nf)
            .max()
            .unwrap_or(0)
    }
}

/// The float types the basis can be written in (f64, f32).
pub trait BasisFloat: Copy + Default + Send + Sync {
    /// From f64 (rounding for f32).
    fn from_f64(x: f64) -> Self;
    /// To f64.
    fn to_f64(self) -> f64;
    /// Stores `v` to `dst` bypassing the cache where the target allows (the basis is written
    /// once per forward pass and is larger than the caches); the evaluation fences at the end.
    fn stream(dst: &mut Self, v: Self) {
        *dst = v;
    }
}

impl BasisFloat for f64 {
    fn from_f64(x: f64) -> Self {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn stream(dst: &mut Self, v: Self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `dst` is a valid, exclusive, 8-byte aligned location (a `&mut f64`), which
        // is all `movnti` needs; SSE2 is part of the x86_64 baseline.
        unsafe {
            core::arch::x86_64::_mm_stream_si64((dst as *mut f64).cast::<i64>(), v.to_bits() as i64)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            *dst = v;
        }
    }
}

impl BasisFloat for f32 {
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn stream(dst: &mut Self, v: Self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `dst` is a valid, exclusive, 4-byte aligned location (a `&mut f32`), which
        // is all `movnti` needs; SSE2 is part of the x86_64 baseline.
        unsafe {
            core::arch::x86_64::_mm_stream_si32((dst as *mut f32).cast::<i32>(), v.to_bits() as i32)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            *dst = v;
        }
    }
}

/// Orders this thread's streaming stores before what follows (end of a rayon task).
fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions; SSE is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::so3::rotation::euler_e3nn;
    use crate::so3::wigner_d::wigner_d;
    use nalgebra::{DMatrix, Vector3};

    #[test]
    fn kernel_rotates_with_d_out_and_d_in() -> Result<(), Error> {
        let kb = KernelBasis::new(2, QjPrecision::Exact)?;
        let r = euler_e3nn(0.4, 2.1, -0.9);
        let v = Vector3::new(0.3, -1.1, 0.6);
        let rv = r * v;
        let a = kb.compute(&[[v.x, v.y, v.z]])?;
        let b = kb.compute(&[[rv.x, rv.y, rv.z]])?;
        for d_in in 0..=2 {
            for d_out in 0..=2 {
                let [no, ni, nf] = pair_shape(d_in, d_out);
                let (din, dout) = (wigner_d(d_in, &r)?, wigner_d(d_out, &r)?);
                for f in 0..nf {
                    let k =
                        |blk: &[f64]| DMatrix::from_fn(no, ni, |o, i| blk[(o * ni + i) * nf + f]);
                    let lhs = k(b.block(d_in, d_out)?);
                    let rhs = &dout * k(a.block(d_in, d_out)?) * din.transpose();
                    assert!((lhs - rhs).amax() < 1e-13);
                }
            }
        }
        Ok(())
    }
}
