//! Real spherical harmonics Y_l as closed-form polynomials of the unit vector, in the
//! conventions of e3nn and se3-transformer-pytorch, single and batched, with gradients.
//!
//! # The polynomial
//! Write the input vector `v = (v0, v1, v2)` in the *polar frame* `(x, y, z) = (v2, v0, v1)`
//! (both reference libraries put the m = 0 axis on `v1`). For a unit vector,
//!
//! ```text
//! Y_{l, m}(u)  = K_{l,|m|} * q_{l,|m|}(z) * Re((x + i y)^m)      m >= 0
//! Y_{l,-m}(u)  = K_{l, m}  * q_{l, m}(z)  * Im((x + i y)^m)      m >  0
//! ```
//!
//! where `q_{l,m}` is the polynomial of degree l - m given by the three-term recurrence
//! `q_{m,m} = 1`, `q_{m+1,m} = (2m+1) z`,
//! `q_{l,m} = ((2l-1) z q_{l-1,m} - (l+m-1) r^2 q_{l-2,m}) / (l-m)` (with `r^2 = 1` on the
//! sphere; with `r^2 = |v|^2` the result is the homogeneous polynomial of degree l that
//! e3nn returns with `normalize=False`), and
//! `K_{l,m} = c_l * sqrt((2l+1) (l-m)!/(l+m)!) * (2m-1)!! * (sqrt 2 if m > 0)`.
//! `Re/Im((x+iy)^m)` are polynomials (`(sin theta)^m cos(m phi)` and `sin(m phi)`), so every
//! `Y_{l,m}` is a polynomial in `(x, y, z)`; [`sh_polynomial`] returns its monomials. The
//! coefficients `K` are computed once in f64 (relative error ~1e-16) and cached.
//!
//! # Conventions
//! * [`Convention::E3nn`]: e3nn `o3.spherical_harmonics(l, v, normalize=True)`: component
//!   normalisation gives `|Y_l(u)|^2 = 2l + 1`, `Y_1(v) = sqrt(3) v / |v|` in the input order.
//!   No Condon-Shortley phase. The zero vector maps to `Y_0 = c_0`, `Y_l = 0` for `l >= 1`.
//! * [`Convention::Se3TransformerPytorch`]: `(-1)^l` times e3nn's values (its polar angle is
//!   `pi - beta`); the library's own scale is [`Normalization::Integral`]. The zero vector is
//!   not special-cased there: it gives the harmonics of the direction `(0, 1, 0)`.
//!
//! [`Normalization`] scales each degree: `Component` (|Y_l|^2 = 2l+1), `Norm` (|Y_l| = 1),
//! `Integral` (each component has unit L2 norm over the sphere, i.e. component / sqrt(4 pi)).

use std::sync::OnceLock;

use nalgebra::{DVector, Vector3};
use rayon::prelude::*;

use crate::Error;

/// The largest degree of spherical harmonics (and Wigner D matrices) se3 computes.
pub const L_MAX: usize = 16;

/// The reference library whose sign, axis order and zero-vector behaviour to follow.
///
/// Both conventions read the input `(v0, v1, v2)` with the m = 0 axis on `v1`; they differ by
/// `(-1)^l` and at the zero vector (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Convention {
    /// e3nn 0.6 `o3.spherical_harmonics` (no Condon-Shortley phase; zero vector -> zero for l >= 1).
    E3nn,
    /// se3-transformer-pytorch 0.9 (and equiformer-pytorch): `(-1)^l` times e3nn; the zero
    /// vector is treated as the direction `(0, 1, 0)`.
    Se3TransformerPytorch,
}

/// How each degree of harmonics is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Normalization {
    /// `|Y_l(u)|^2 = 2l + 1` for unit `u` (e3nn's default).
    Component,
    /// `|Y_l(u)| = 1`: component / sqrt(2l + 1).
    Norm,
    /// Orthonormal on the sphere: component / sqrt(4 pi) (se3-transformer-pytorch's scale).
    Integral,
}

impl Normalization {
    /// The factor that turns component-normalised degree-l harmonics into this normalisation.
    pub fn scale(self, l: usize) -> f64 {
        match self {
            Normalization::Component => 1.0,
            Normalization::Norm => 1.0 / ((2 * l + 1) as f64).sqrt(),
            Normalization::Integral => 1.0 / (4.0 * std::f64::consts::PI).sqrt(),
        }
    }
}

impl Convention {
    /// The overall factor of degree l relative to e3nn's harmonics: 1 or `(-1)^l`.
    pub fn sign(self, l: usize) -> f64 {
        match self {
            Convention::E3nn => 1.0,
            Convention::Se3TransformerPytorch => {
                if l.is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                }
            }
        }
    }
}

/// Number of components of all degrees `0..=lmax`: `(lmax + 1)^2`.
pub const fn sh_len(lmax: usize) -> usize {
    (lmax + 1) * (lmax + 1)
}

/// Offset of degree `l` inside a buffer holding all degrees `0..=lmax`: `l^2`.
pub const fn sh_offset(l: usize) -> usize {
    l * l
}

/// Constant tables of the recurrence, computed once.
struct Tables {
    /// `K_{l,m}` for component normalisation, indexed `l * (L_MAX + 1) + m`.
    k: [f64; W * W],
    /// `(2l-1)/(l-m)` and `(l+m-1)/(l-m)` for l >= m + 2, same index.
    a: [f64; W * W],
    b: [f64; W * W],
}

const W: usize = L_MAX + 1;

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut k = [0.0; W * W];
        let mut a = [0.0; W * W];
        let mut b = [0.0; W * W];
        for l in 0..=L_MAX {
            for m in 0..=l {
                // (l-m)!/(l+m)! as a product of reciprocals: no overflow, one rounding each.
                let mut ratio = 1.0f64;
                for t in (l - m + 1)..=(l + m) {
                    ratio /= t as f64;
                }
                let mut dfact = 1.0f64; // (2m-1)!!
                for t in (1..2 * m).step_by(2) {
                    dfact *= t as f64;
                }
                let mut kk = ((2 * l + 1) as f64 * ratio).sqrt() * dfact;
                if m > 0 {
                    kk *= std::f64::consts::SQRT_2;
                }
                k[l * W + m] = kk;
                if l >= m + 2 {
                    a[l * W + m] = (2 * l - 1) as f64 / (l - m) as f64;
                    b[l * W + m] = (l + m - 1) as f64 / (l - m) as f64;
                }
            }
        }
        Tables { k, a, b }
    })
}

/// The recurrence constants for one call: `k` already multiplied by the per-degree factor
/// `convention sign * normalisation scale`.
struct Coeffs {
    k: [f64; W * W],
    a: &'static [f64; W * W],
    b: &'static [f64; W * W],
}

impl Coeffs {
    fn new(lmax: usize, convention: Convention, normalization: Normalization) -> Self {
        let t = tables();
        let mut k = t.k;
        for l in 0..=lmax.min(L_MAX) {
            let f = convention.sign(l) * normalization.scale(l);
            for m in 0..=l {
                k[l * W + m] *= f;
            }
        }
        Coeffs {
            k,
            a: &t.a,
            b: &t.b,
        }
    }
}

/// Core kernel: harmonics of all degrees `0..=lmax` at the polar-frame point `(x, y, z)`,
/// with `r2` used in the recurrence (1 on the sphere, `x^2+y^2+z^2` for the homogeneous
/// polynomials), written to `out[0..(lmax+1)^2]`. Inlined into callers with a constant
/// `lmax` so that the loops unroll.
#[inline(always)]
fn eval_polar(lmax: usize, x: f64, y: f64, z: f64, r2: f64, c: &Coeffs, out: &mut [f64]) {
    debug_assert!(lmax <= L_MAX && out.len() >= sh_len(lmax));
    let out = &mut out[..sh_len(lmax)];
    // (x + iy)^m for m = 0..=lmax.
    let mut re = [0.0f64; W];
    let mut im = [0.0f64; W];
    re[0] = 1.0;
    for m in 1..=lmax {
        re[m] = re[m - 1] * x - im[m - 1] * y;
        im[m] = re[m - 1] * y + im[m - 1] * x;
    }
    for m in 0..=lmax {
        let mut q_prev = 0.0f64; // q_{l-2,m}
        let mut q = 1.0f64; // q_{l-1,m}
        for l in m..=lmax {
            let q_l = if l == m {
                1.0
            } else if l == m + 1 {
                (2 * m + 1) as f64 * z
            } else {
                c.a[l * W + m] * z * q - c.b[l * W + m] * r2 * q_prev
            };
            if l > m {
                q_prev = q;
            }
            q = q_l;
            let kq = c.k[l * W + m] * q_l;
            let base = l * l + l;
            if m == 0 {
                out[base] = kq;
            } else {
                out[base + m] = kq * re[m];
                out[base - m] = kq * im[m];
            }
        }
    }
}

fn check_degree(l: usize) -> Result<(), Error> {
    if l > L_MAX {
        return Err(Error::DegreeTooHigh { l, max: L_MAX });
    }
    Ok(())
}

fn check_finite(what: &'static str, index: usize, v: &[f64; 3]) -> Result<(), Error> {
    for &c in v {
        if !c.is_finite() {
            return Err(Error::NonFinite {
                what,
                index,
                value: c,
            });
        }
    }
    Ok(())
}

/// `|v|^2` inside this range is normalised directly; outside it (tiny or huge vectors, where
/// `|v|^2` under- or overflows) the vector is first scaled by its largest component.
const SAFE_R2: std::ops::Range<f64> = 1e-280..1e280;

/// The unit vector of a finite `v`, or `None` for the zero vector; exact in range for any
/// finite input (no under- or overflow of `|v|^2`).
#[inline]
fn unit(v: [f64; 3]) -> Option<([f64; 3], f64)> {
    let r2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
    if SAFE_R2.contains(&r2) {
        let r = r2.sqrt();
        let inv = 1.0 / r;
        return Some(([v[0] * inv, v[1] * inv, v[2] * inv], r));
    }
    let m = v[0].abs().max(v[1].abs()).max(v[2].abs());
    if m == 0.0 {
        return None;
    }
    let w = [v[0] / m, v[1] / m, v[2] / m];
    let rw = (w[0] * w[0] + w[1] * w[1] + w[2] * w[2]).sqrt();
    Some(([w[0] / rw, w[1] / rw, w[2] / rw], m * rw))
}

/// Writes the harmonics of all degrees `0..=lmax` of one (checked, finite) vector.
#[inline(always)]
fn eval_vector(lmax: usize, v: [f64; 3], convention: Convention, c: &Coeffs, out: &mut [f64]) {
    match unit(v) {
        Some((u, _)) => eval_polar(lmax, u[2], u[0], u[1], 1.0, c, out),
        None => match convention {
            Convention::E3nn => {
                out[..sh_len(lmax)].fill(0.0);
                out[0] = c.k[0];
            }
            Convention::Se3TransformerPytorch => eval_polar(lmax, 0.0, 0.0, 1.0, 1.0, c, out),
        },
    }
}

/// Real spherical harmonics of degree `l` at the direction of `v`.
///
/// `Y_l(v/|v|)` in R^(2l+1), rows ordered m = -l..=l, equivariant:
/// `Y_l(R v) = D_l(R) Y_l(v)` with [`crate::so3::wigner_d()`]. Convention and scale as in the
/// module documentation (`Convention::E3nn` + `Normalization::Component` is e3nn's default;
/// `Convention::Se3TransformerPytorch` + `Normalization::Integral` is se3-transformer-pytorch).
/// The zero vector follows the convention (see [`Convention`]).
///
/// # Errors
/// `NonFinite` if `v` holds NaN/inf, `DegreeTooHigh` if `l > L_MAX`.
pub fn spherical_harmonics(
    l: usize,
    v: &Vector3<f64>,
    convention: Convention,
    normalization: Normalization,
) -> Result<DVector<f64>, Error> {
    check_degree(l)?;
    let a = [v.x, v.y, v.z];
    check_finite("vector", 0, &a)?;
    let c = Coeffs::new(l, convention, normalization);
    let mut out = vec![0.0; sh_len(l)];
    eval_vector(l, a, convention, &c, &mut out);
    Ok(DVector::from_column_slice(&out[sh_offset(l)..]))
}

/// e3nn's harmonics without normalising the input (`normalize=False`): the homogeneous
/// polynomial of degree `l` in the raw components, `|v|^l Y_l(v/|v|)`.
///
/// # Errors
/// `NonFinite` if `v` holds NaN/inf, `DegreeTooHigh` if `l > L_MAX`.
pub fn spherical_harmonics_unnormalized(
    l: usize,
    v: &Vector3<f64>,
    normalization: Normalization,
) -> Result<DVector<f64>, Error> {
    check_degree(l)?;
    check_finite("vector", 0, &[v.x, v.y, v.z])?;
    let c = Coeffs::new(l, Convention::E3nn, normalization);
    let mut out = vec![0.0; sh_len(l)];
    let r2 = v.norm_squared();
    eval_polar(l, v.z, v.x, v.y, r2, &c, &mut out);
    Ok(DVector::from_column_slice(&out[sh_offset(l)..]))
}

/// Harmonics of all degrees `0..=lmax` for many vectors, in one contiguous buffer.
///
/// Layout: `out[i * (lmax+1)^2 + l^2 + (m + l)]` is `Y_{l,m}(v_i)` (vector-major; inside a
/// vector degree-major, m = -l..=l). Same values as [`spherical_harmonics`]; computed in
/// parallel with rayon.
///
/// # Errors
/// `NonFinite` (with the vector index) if a vector holds NaN/inf, `DegreeTooHigh` if
/// `lmax > L_MAX`.
pub fn spherical_harmonics_batch(
    lmax: usize,
    vectors: &[[f64; 3]],
    convention: Convention,
    normalization: Normalization,
) -> Result<Vec<f64>, Error> {
    let mut out = vec![0.0; vectors.len() * sh_len(lmax)];
    // Plain stores into fresh pages (see `spherical_harmonics_batch_f32`).
    batch_impl(
        lmax,
        vectors,
        convention,
        normalization,
        &mut out,
        |v| *v,
        |o, x| *o = x,
    )?;
    Ok(out)
}

/// [`spherical_harmonics_batch`] into a caller-provided buffer of length
/// `vectors.len() * (lmax+1)^2`.
///
/// # Errors
/// As [`spherical_harmonics_batch`], plus `LengthMismatch` if `out` has the wrong length.
pub fn spherical_harmonics_batch_into(
    lmax: usize,
    vectors: &[[f64; 3]],
    convention: Convention,
    normalization: Normalization,
    out: &mut [f64],
) -> Result<(), Error> {
    batch_impl(
        lmax,
        vectors,
        convention,
        normalization,
        out,
        |v| *v,
        stream_f64,
    )
}

/// f32 entry point of [`spherical_harmonics_batch`]: f32 vectors in, f32 harmonics out,
/// computed in f64 inside.
///
/// # Errors
/// As [`spherical_harmonics_batch`].
pub fn spherical_harmonics_batch_f32(
    lmax: usize,
    vectors: &[[f32; 3]],
    convention: Convention,
    normalization: Normalization,
) -> Result<Vec<f32>, Error> {
    let mut out = vec![0.0f32; vectors.len() * sh_len(lmax)];
    // Plain stores: fresh pages are zeroed into the cache by the kernel when first touched,
    // so streaming stores would only evict them.
    batch_impl(
        lmax,
        vectors,
        convention,
        normalization,
        &mut out,
        |v| [v[0] as f64, v[1] as f64, v[2] as f64],
        |o, x| *o = x as f32,
    )?;
    Ok(out)
}

/// [`spherical_harmonics_batch_f32`] into a caller-provided buffer.
///
/// # Errors
/// As [`spherical_harmonics_batch_into`].
pub fn spherical_harmonics_batch_f32_into(
    lmax: usize,
    vectors: &[[f32; 3]],
    convention: Convention,
    normalization: Normalization,
    out: &mut [f32],
) -> Result<(), Error> {
    batch_impl(
        lmax,
        vectors,
        convention,
        normalization,
        out,
        |v| [v[0] as f64, v[1] as f64, v[2] as f64],
        |o, x| stream_f32(o, x as f32),
    )
}

/// Vectors per rayon task.
const CHUNK: usize = 4096;

/// Non-temporal store of one output value. The batch output is written once and not read
/// back soon, so bypassing the cache saves reading every line before writing it (the batch
/// is memory-bound at 1e6 vectors). Followed by [`store_fence`] at the end of each task.
#[inline(always)]
fn stream_f32(dst: &mut f32, v: f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `dst` is a valid, exclusive, 4-byte aligned location (a `&mut f32`), which is
    // all `movnti` needs; SSE2 is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_stream_si32((dst as *mut f32).cast::<i32>(), v.to_bits() as i32)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        *dst = v;
    }
}

/// f64 version of [`stream_f32`].
#[inline(always)]
fn stream_f64(dst: &mut f64, v: f64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `dst` is a valid, exclusive, 8-byte aligned location (a `&mut f64`), which is
    // all `movnti` needs; SSE2 is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_stream_si64((dst as *mut f64).cast::<i64>(), v.to_bits() as i64)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        *dst = v;
    }
}

/// Orders the non-temporal stores of this thread before anything after it (the end of a
/// rayon task, hence before the batch returns).
#[inline(always)]
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions; SSE is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    }
}

fn batch_impl<V: Sync, O: Send>(
    lmax: usize,
    vectors: &[V],
    convention: Convention,
    normalization: Normalization,
    out: &mut [O],
    load: impl Fn(&V) -> [f64; 3] + Sync,
    store: impl Fn(&mut O, f64) + Sync,
) -> Result<(), Error> {
    check_degree(lmax)?;
    let len = sh_len(lmax);
    if out.len() != vectors.len() * len {
        return Err(Error::LengthMismatch {
            what: "spherical harmonics output buffer",
            expected: vectors.len() * len,
            found: out.len(),
        });
    }
    let c = Coeffs::new(lmax, convention, normalization);
    let result = out
        .par_chunks_mut(CHUNK * len)
        .zip(vectors.par_chunks(CHUNK))
        .enumerate()
        .try_for_each(|(chunk, (o, vs))| {
            // One copy of the loop per small lmax, so that eval_polar unrolls.
            let r = match lmax {
                0 => chunk_kernel(0, vs, o, convention, &c, &load, &store),
                1 => chunk_kernel(1, vs, o, convention, &c, &load, &store),
                2 => chunk_kernel(2, vs, o, convention, &c, &load, &store),
                3 => chunk_kernel(3, vs, o, convention, &c, &load, &store),
                4 => chunk_kernel(4, vs, o, convention, &c, &load, &store),
                // The kernel bases of degree <= 3 and <= 4 use harmonics up to 6 and 8.
                6 => chunk_kernel(6, vs, o, convention, &c, &load, &store),
                8 => chunk_kernel(8, vs, o, convention, &c, &load, &store),
                _ => chunk_kernel(lmax, vs, o, convention, &c, &load, &store),
            }
            .map_err(|i| chunk * CHUNK + i);
            store_fence();
            r
        });
    if result.is_err() {
        // Report the first non-finite vector (chunks may fail in any order).
        for (i, v) in vectors.iter().enumerate() {
            check_finite("vectors", i, &load(v))?;
        }
    }
    Ok(())
}

/// Vectors evaluated together in [`chunk_kernel`] (structure-of-arrays, so the recurrence
/// vectorises across vectors).
const BLOCK: usize = 8;

/// Evaluates one chunk; `Err(i)` names the first non-finite vector of the chunk.
///
/// Vectors go in blocks of [`BLOCK`]: the same recurrence as [`eval_polar`], run lane-wise
/// over the block, then transposed into the vector-major output.
#[inline(always)]
fn chunk_kernel<V, O>(
    lmax: usize,
    vs: &[V],
    o: &mut [O],
    convention: Convention,
    c: &Coeffs,
    load: &impl Fn(&V) -> [f64; 3],
    store: &impl Fn(&mut O, f64),
) -> Result<(), usize> {
    let len = sh_len(lmax);
    for (i, v) in vs.iter().enumerate() {
        let a = load(v);
        if !(a[0].is_finite() && a[1].is_finite() && a[2].is_finite()) {
            return Err(i);
        }
    }
    let mut tmp = [0.0f64; W * W];
    let full = vs.len() / BLOCK * BLOCK;
    let mut yb = [[0.0f64; BLOCK]; W * W];
    for (vb, ob) in vs[..full]
        .chunks_exact(BLOCK)
        .zip(o[..full * len].chunks_exact_mut(BLOCK * len))
    {
        let mut x = [0.0f64; BLOCK];
        let mut y = [0.0f64; BLOCK];
        let mut z = [0.0f64; BLOCK];
        let mut any_zero = false;
        for b in 0..BLOCK {
            let a = load(&vb[b]);
            let r2 = a[0] * a[0] + a[1] * a[1] + a[2] * a[2];
            any_zero |= !SAFE_R2.contains(&r2);
            let inv = 1.0 / r2.sqrt();
            x[b] = a[2] * inv;
            y[b] = a[0] * inv;
            z[b] = a[1] * inv;
        }
        if any_zero {
            // Rare: the per-vector path handles the zero vector's convention and vectors so
            // small or large that |v|^2 under- or overflows.
            for (v, o) in vb.iter().zip(ob.chunks_exact_mut(len)) {
                eval_vector(lmax, load(v), convention, c, &mut tmp);
                for (dst, &src) in o.iter_mut().zip(&tmp[..len]) {
                    store(dst, src);
                }
            }
            continue;
        }
        eval_block(lmax, &x, &y, &z, c, &mut yb);
        for (b, o) in ob.chunks_exact_mut(len).enumerate() {
            for (idx, dst) in o.iter_mut().enumerate() {
                store(dst, yb[idx][b]);
            }
        }
    }
    for (v, o) in vs[full..].iter().zip(o[full * len..].chunks_exact_mut(len)) {
        eval_vector(lmax, load(v), convention, c, &mut tmp);
        for (dst, &src) in o.iter_mut().zip(&tmp[..len]) {
            store(dst, src);
        }
    }
    Ok(())
}

/// [`eval_polar`] on [`BLOCK`] unit vectors at once (lane-wise), `out[idx][lane]`.
#[inline(always)]
fn eval_block(
    lmax: usize,
    x: &[f64; BLOCK],
    y: &[f64; BLOCK],
    z: &[f64; BLOCK],
    c: &Coeffs,
    out: &mut [[f64; BLOCK]; W * W],
) {
    let mut re = [[0.0f64; BLOCK]; W];
    let mut im = [[0.0f64; BLOCK]; W];
    re[0] = [1.0; BLOCK];
    for m in 1..=lmax {
        for b in 0..BLOCK {
            re[m][b] = re[m - 1][b] * x[b] - im[m - 1][b] * y[b];
            im[m][b] = re[m - 1][b] * y[b] + im[m - 1][b] * x[b];
        }
    }
    for m in 0..=lmax {
        let mut q_prev = [0.0f64; BLOCK];
        let mut q = [1.0f64; BLOCK];
        for l in m..=lmax {
            let mut q_l = [0.0f64; BLOCK];
            if l == m {
                q_l = [1.0; BLOCK];
            } else if l == m + 1 {
                let f = (2 * m + 1) as f64;
                for b in 0..BLOCK {
                    q_l[b] = f * z[b];
                }
            } else {
                let (ca, cb) = (c.a[l * W + m], c.b[l * W + m]);
                for b in 0..BLOCK {
                    q_l[b] = ca * z[b] * q[b] - cb * q_prev[b];
                }
            }
            if l > m {
                q_prev = q;
            }
            q = q_l;
            let k = c.k[l * W + m];
            let base = l * l + l;
            if m == 0 {
                for b in 0..BLOCK {
                    out[base][b] = k * q_l[b];
                }
            } else {
                for b in 0..BLOCK {
                    let kq = k * q_l[b];
                    out[base + m][b] = kq * re[m][b];
                    out[base - m][b] = kq * im[m][b];
                }
            }
        }
    }
}

/// Gradients of the harmonics of all degrees `0..=lmax` at the (finite, nonzero) vector `v`:
/// `out[idx * 3 + c] = d Y_idx(v/|v|) / d v_c`, `idx = l^2 + m + l`.
fn grad_all(lmax: usize, v: [f64; 3], c: &Coeffs, out: &mut [f64]) {
    let Some((u, r)) = unit(v) else {
        debug_assert!(false, "grad_all needs a nonzero vector");
        return;
    };
    let u = Vector3::from(u);
    // Polar frame (x, y, z) = (u2, u0, u1).
    let (x, y, z) = (u.z, u.x, u.y);
    let mut re = [0.0f64; W];
    let mut im = [0.0f64; W];
    re[0] = 1.0;
    for m in 1..=lmax {
        re[m] = re[m - 1] * x - im[m - 1] * y;
        im[m] = re[m - 1] * y + im[m - 1] * x;
    }
    // Writes the tangential part of a polar-frame gradient, divided by |v|, in input order.
    let mut put = |idx: usize, gx: f64, gy: f64, gz: f64| {
        let g = Vector3::new(gy, gz, gx);
        let t = (g - u * g.dot(&u)) / r;
        out[idx * 3..idx * 3 + 3].copy_from_slice(&[t.x, t.y, t.z]);
    };
    for m in 0..=lmax {
        // q_{l,m}(z) and dq/dz by the recurrence with r^2 = 1.
        let (mut q0, mut d0) = (0.0f64, 0.0f64);
        let (mut q1, mut d1) = (1.0f64, 0.0f64);
        for l in m..=lmax {
            if l > m {
                let (q2, d2) = if l == m + 1 {
                    let f = (2 * m + 1) as f64;
                    (f * z, f)
                } else {
                    let (a, b) = (c.a[l * W + m], c.b[l * W + m]);
                    (a * z * q1 - b * q0, a * (q1 + z * d1) - b * d0)
                };
                q0 = q1;
                d0 = d1;
                q1 = q2;
                d1 = d2;
            }
            let k = c.k[l * W + m];
            let base = l * l + l;
            if m == 0 {
                put(base, 0.0, 0.0, k * d1);
            } else {
                // d Re/dx = m Re_{m-1}, d Re/dy = -m Im_{m-1}; d Im/dx = m Im_{m-1},
                // d Im/dy = m Re_{m-1}.
                let mf = m as f64;
                put(
                    base + m,
                    k * q1 * mf * re[m - 1],
                    -k * q1 * mf * im[m - 1],
                    k * d1 * re[m],
                );
                put(
                    base - m,
                    k * q1 * mf * im[m - 1],
                    k * q1 * mf * re[m - 1],
                    k * d1 * im[m],
                );
            }
        }
    }
}

fn check_direction(what: &'static str, index: usize, v: &[f64; 3]) -> Result<(), Error> {
    check_finite(what, index, v)?;
    if v[0] == 0.0 && v[1] == 0.0 && v[2] == 0.0 {
        return Err(Error::ZeroVector { what, index });
    }
    Ok(())
}

/// Gradient of [`spherical_harmonics`] of degree `l` with respect to the input vector.
///
/// Returns a `(2l+1) x 3` matrix, row `m + l` is `d Y_{l,m}(v/|v|) / d v` in the input's
/// component order. Because `Y` depends on the direction only, each row is orthogonal to `v`
/// and scales like `1/|v|`: it is `(I - u u^T) grad p(u) / |v|` with `p` the polynomial of
/// the module documentation (differentiated through the same recurrence).
///
/// # Errors
/// `NonFinite` if `v` holds NaN/inf, `ZeroVector` if `v = 0` (no direction, no gradient),
/// `DegreeTooHigh` if `l > L_MAX`.
pub fn spherical_harmonics_grad(
    l: usize,
    v: &Vector3<f64>,
    convention: Convention,
    normalization: Normalization,
) -> Result<nalgebra::DMatrix<f64>, Error> {
    check_degree(l)?;
    let a = [v.x, v.y, v.z];
    check_direction("vector", 0, &a)?;
    let c = Coeffs::new(l, convention, normalization);
    let mut out = vec![0.0; sh_len(l) * 3];
    grad_all(l, a, &c, &mut out);
    Ok(nalgebra::DMatrix::from_row_slice(
        2 * l + 1,
        3,
        &out[sh_offset(l) * 3..],
    ))
}

/// Gradients of the harmonics of all degrees `0..=lmax` for many vectors:
/// `out[(i * (lmax+1)^2 + l^2 + m + l) * 3 + c] = d Y_{l,m}(v_i/|v_i|) / d v_{i,c}`.
/// Same values as [`spherical_harmonics_grad`]; computed in parallel.
///
/// # Errors
/// `NonFinite` or `ZeroVector` with the index of the first bad vector, `DegreeTooHigh` if
/// `lmax > L_MAX`.
pub fn spherical_harmonics_grad_batch(
    lmax: usize,
    vectors: &[[f64; 3]],
    convention: Convention,
    normalization: Normalization,
) -> Result<Vec<f64>, Error> {
    check_degree(lmax)?;
    for (i, v) in vectors.iter().enumerate() {
        check_direction("vectors", i, v)?;
    }
    let c = Coeffs::new(lmax, convention, normalization);
    let len = sh_len(lmax) * 3;
    let mut out = vec![0.0; vectors.len() * len];
    out.par_chunks_mut(len)
        .zip(vectors.par_iter())
        .for_each(|(o, v)| grad_all(lmax, *v, &c, o));
    Ok(out)
}

/// One monomial `coefficient * x^a * y^b * z^c` of a harmonic, in the input's component order
/// (`x` = v0, `y` = v1, `z` = v2) of the unit vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Monomial {
    /// The coefficient (f64, computed once).
    pub coefficient: f64,
    /// Powers of v0, v1, v2.
    pub powers: [u8; 3],
}

/// The closed-form polynomial of `Y_{l,m}` on the unit sphere, as a sum of monomials in the
/// unit vector's components `(u0, u1, u2)` (input order), for emitting the harmonics as graph
/// operations. Evaluating it at a unit vector gives [`spherical_harmonics`] up to rounding.
///
/// The polynomial is the one of the module documentation with `r^2 = 1`, expanded; it is
/// not homogeneous (it agrees with the harmonic on the sphere only).
///
/// # Errors
/// `DegreeTooHigh` if `l > L_MAX`, `IndexOutOfRange` if `|m| > l`.
pub fn sh_polynomial(
    l: usize,
    m: i64,
    convention: Convention,
    normalization: Normalization,
) -> Result<Vec<Monomial>, Error> {
    check_degree(l)?;
    if m.unsigned_abs() as usize > l {
        return Err(Error::IndexOutOfRange {
            what: "order m of a spherical harmonic",
            position: 0,
            index: m,
            len: 2 * l + 1,
        });
    }
    let am = m.unsigned_abs() as usize;
    let t = tables();
    // q_{l,am}(z) as coefficients in z (index = power), recurrence with r^2 = 1.
    let mut q0: Vec<f64> = vec![];
    let mut q1: Vec<f64> = vec![1.0];
    for ll in (am + 1)..=l {
        let mut q2 = vec![0.0; ll - am + 1];
        if ll == am + 1 {
            q2[1] = (2 * am + 1) as f64;
        } else {
            let a = t.a[ll * W + am];
            let b = t.b[ll * W + am];
            for (p, c) in q1.iter().enumerate() {
                q2[p + 1] += a * c;
            }
            for (p, c) in q0.iter().enumerate() {
                q2[p] -= b * c;
            }
        }
        q0 = q1;
        q1 = q2;
    }
    // Re or Im of (x + iy)^am in the polar frame: sum_k binom(am,k) x^(am-k) (iy)^k.
    let mut azimuth: Vec<(f64, usize, usize)> = vec![]; // (coef, power of x, power of y)
    let mut binom = 1.0f64;
    for k in 0..=am {
        if k > 0 {
            binom = binom * (am - k + 1) as f64 / k as f64;
        }
        // i^k: real for even k (sign (-1)^(k/2)), imaginary for odd k (sign (-1)^((k-1)/2)).
        let take = if m >= 0 { k % 2 == 0 } else { k % 2 == 1 };
        if take {
            let sign = if (k / 2) % 2 == 0 { 1.0 } else { -1.0 };
            azimuth.push((sign * binom, am - k, k));
        }
    }
    let k = t.k[l * W + am] * convention.sign(l) * normalization.scale(l);
    let mut terms: Vec<Monomial> = vec![];
    for (pz, &cz) in q1.iter().enumerate() {
        if cz == 0.0 {
            continue;
        }
        for &(ca, px, py) in &azimuth {
            // Polar frame (x, y, z) = (u2, u0, u1): powers of (u0, u1, u2) = (py, pz, px).
            terms.push(Monomial {
                coefficient: k * cz * ca,
                powers: [py as u8, pz as u8, px as u8],
            });
        }
    }
    Ok(terms)
}

/// The polynomials of all harmonics of degrees `0..=lmax`, in buffer order (`l^2 + m + l`).
///
/// # Errors
/// `DegreeTooHigh` if `lmax > L_MAX`.
pub fn sh_polynomials(
    lmax: usize,
    convention: Convention,
    normalization: Normalization,
) -> Result<Vec<Vec<Monomial>>, Error> {
    check_degree(lmax)?;
    let mut out = Vec::with_capacity(sh_len(lmax));
    for l in 0..=lmax {
        for m in -(l as i64)..=(l as i64) {
            out.push(sh_polynomial(l, m, convention, normalization)?);
        }
    }
    Ok(out)
}

/// Evaluates monomials (from [`sh_polynomial`]) at `u`.
pub fn eval_monomials(terms: &[Monomial], u: &Vector3<f64>) -> f64 {
    terms
        .iter()
        .map(|t| {
            t.coefficient
                * u.x.powi(t.powers[0] as i32)
                * u.y.powi(t.powers[1] as i32)
                * u.z.powi(t.powers[2] as i32)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn degree_one_is_sqrt3_times_the_unit_vector() -> R {
        let v = Vector3::new(0.3, -1.2, 2.0);
        let y = spherical_harmonics(1, &v, Convention::E3nn, Normalization::Component)?;
        let u = v.normalize() * 3f64.sqrt();
        assert!((y - u).amax() < 1e-15);
        Ok(())
    }

    #[test]
    fn component_normalisation_gives_squared_norm_2l_plus_1() -> R {
        let v = Vector3::new(-0.7, 0.1, 0.4);
        for l in 0..=L_MAX {
            let y = spherical_harmonics(l, &v, Convention::E3nn, Normalization::Component)?;
            let n2 = y.norm_squared();
            assert!((n2 - (2 * l + 1) as f64).abs() < 1e-12 * n2, "l={l}: {n2}");
        }
        Ok(())
    }

    #[test]
    fn all_polynomials_come_in_buffer_order() -> R {
        let u = Vector3::new(-0.6, 0.0, 0.8);
        let ps = sh_polynomials(
            5,
            Convention::Se3TransformerPytorch,
            Normalization::Integral,
        )?;
        let y = spherical_harmonics_batch(
            5,
            &[[u.x, u.y, u.z]],
            Convention::Se3TransformerPytorch,
            Normalization::Integral,
        )?;
        assert_eq!(ps.len(), y.len());
        for (p, want) in ps.iter().zip(&y) {
            assert!((eval_monomials(p, &u) - want).abs() < 1e-13);
        }
        Ok(())
    }

    #[test]
    fn polynomial_matches_the_recurrence() -> R {
        let v = Vector3::new(0.2, -0.5, 0.8).normalize();
        for l in 0..=10 {
            let y = spherical_harmonics(l, &v, Convention::E3nn, Normalization::Component)?;
            for m in -(l as i64)..=(l as i64) {
                let p = sh_polynomial(l, m, Convention::E3nn, Normalization::Component)?;
                let val = eval_monomials(&p, &v);
                let want = y[(m + l as i64) as usize];
                assert!((val - want).abs() < 1e-11, "l={l} m={m}: {val} vs {want}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> R {
        let v = Vector3::new(0.4, -0.9, 0.3);
        let h = 1e-6;
        for l in 0..=8 {
            let g = spherical_harmonics_grad(
                l,
                &v,
                Convention::Se3TransformerPytorch,
                Normalization::Integral,
            )?;
            for c in 0..3 {
                let mut vp = v;
                let mut vm = v;
                vp[c] += h;
                vm[c] -= h;
                let yp = spherical_harmonics(
                    l,
                    &vp,
                    Convention::Se3TransformerPytorch,
                    Normalization::Integral,
                )?;
                let ym = spherical_harmonics(
                    l,
                    &vm,
                    Convention::Se3TransformerPytorch,
                    Normalization::Integral,
                )?;
                let fd = (yp - ym) / (2.0 * h);
                for row in 0..(2 * l + 1) {
                    assert!(
                        (fd[row] - g[(row, c)]).abs() < 1e-7,
                        "l={l} row={row} c={c}: {} vs {}",
                        fd[row],
                        g[(row, c)]
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn batched_gradient_matches_single() -> R {
        let vs = [[0.1, 0.2, 0.3], [-1.0, 0.5, 2.0]];
        let g = spherical_harmonics_grad_batch(5, &vs, Convention::E3nn, Normalization::Integral)?;
        for (i, v) in vs.iter().enumerate() {
            for l in 0..=5 {
                let s = spherical_harmonics_grad(
                    l,
                    &Vector3::from(*v),
                    Convention::E3nn,
                    Normalization::Integral,
                )?;
                for row in 0..(2 * l + 1) {
                    for c in 0..3 {
                        assert_eq!(g[(i * 36 + l * l + row) * 3 + c], s[(row, c)]);
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn batch_matches_single_and_f32() -> R {
        let vs = [[0.1, 0.2, 0.3], [-1.0, 0.5, 2.0], [0.0, 0.0, 0.0]];
        let b = spherical_harmonics_batch(4, &vs, Convention::E3nn, Normalization::Norm)?;
        let vs32: Vec<[f32; 3]> = vs
            .iter()
            .map(|v| [v[0] as f32, v[1] as f32, v[2] as f32])
            .collect();
        let b32 = spherical_harmonics_batch_f32(4, &vs32, Convention::E3nn, Normalization::Norm)?;
        for (i, v) in vs.iter().enumerate() {
            for l in 0..=4 {
                let y = spherical_harmonics(
                    l,
                    &Vector3::from(*v),
                    Convention::E3nn,
                    Normalization::Norm,
                )?;
                for k in 0..(2 * l + 1) {
                    let got = b[i * 25 + l * l + k];
                    assert_eq!(got, y[k]);
                    assert!((b32[i * 25 + l * l + k] as f64 - got).abs() < 1e-6);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn tiny_and_huge_vectors_keep_their_direction() -> R {
        let d = Vector3::new(0.3, -0.5, 0.8);
        let want = spherical_harmonics(4, &d, Convention::E3nn, Normalization::Component)?;
        let g = spherical_harmonics_grad(4, &d, Convention::E3nn, Normalization::Component)?;
        for s in [1e-170, 1e-300, 1e170, 1e300] {
            let y = spherical_harmonics(4, &(d * s), Convention::E3nn, Normalization::Component)?;
            assert!((y - &want).amax() < 1e-14, "scale {s}");
            let b = spherical_harmonics_batch(
                4,
                &[[d.x * s, d.y * s, d.z * s]; 9],
                Convention::E3nn,
                Normalization::Component,
            )?;
            assert!((b[16 + 8 * 25] - want[0]).abs() < 1e-14 && (b[24] - want[8]).abs() < 1e-14);
            let gs =
                spherical_harmonics_grad(4, &(d * s), Convention::E3nn, Normalization::Component)?;
            assert!((gs * s - &g).amax() < 1e-13, "scale {s}");
        }
        Ok(())
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let nan = Vector3::new(f64::NAN, 0.0, 1.0);
        assert!(matches!(
            spherical_harmonics(2, &nan, Convention::E3nn, Normalization::Component),
            Err(Error::NonFinite { .. })
        ));
        assert!(matches!(
            spherical_harmonics(
                L_MAX + 1,
                &Vector3::x(),
                Convention::E3nn,
                Normalization::Component
            ),
            Err(Error::DegreeTooHigh { .. })
        ));
        assert!(matches!(
            spherical_harmonics_grad(
                1,
                &Vector3::zeros(),
                Convention::E3nn,
                Normalization::Component
            ),
            Err(Error::ZeroVector { .. })
        ));
    }
}
