//! se3-transformer-pytorch's `fourier_encode` of a scalar edge feature (CONVENTIONS.md 2.7):
//! `[sin(x / 2^k) for k < K, cos(x / 2^k) for k < K, x]` (the trailing `x` only with
//! `include_self`). The se3-transformer encodes the distance this way with
//! `fourier_encode_dist`; egnn-pytorch encodes the squared distance.

use crate::Error;

/// Length of one encoding: `2 K (+ 1 with include_self)`.
pub fn fourier_encode_len(num_encodings: usize, include_self: bool) -> usize {
    2 * num_encodings + usize::from(include_self)
}

/// The encoding of one value, f64.
///
/// # Errors
/// `NonFinite` if `x` is NaN/inf.
pub fn fourier_encode(x: f64, num_encodings: usize, include_self: bool) -> Result<Vec<f64>, Error> {
    if !x.is_finite() {
        return Err(Error::NonFinite {
            what: "fourier_encode input",
            index: 0,
            value: x,
        });
    }
    let mut out = Vec::with_capacity(fourier_encode_len(num_encodings, include_self));
    write(x, num_encodings, include_self, |v| out.push(v));
    Ok(out)
}

fn write(x: f64, k: usize, include_self: bool, mut push: impl FnMut(f64)) {
    let scaled: Vec<f64> = (0..k).map(|i| x / 2f64.powi(i as i32)).collect();
    for s in &scaled {
        push(s.sin());
    }
    for s in &scaled {
        push(s.cos());
    }
    if include_self {
        push(x);
    }
}

/// Batched f32 entry point: `out[i * len ..][..len]` is the encoding of `xs[i]` (computed in
/// f64), `len = `[`fourier_encode_len`].
///
/// # Errors
/// `NonFinite` (with the index) if a value is NaN/inf.
pub fn fourier_encode_batch_f32(
    xs: &[f32],
    num_encodings: usize,
    include_self: bool,
) -> Result<Vec<f32>, Error> {
    let len = fourier_encode_len(num_encodings, include_self);
    let mut out = Vec::with_capacity(xs.len() * len);
    for (i, &x) in xs.iter().enumerate() {
        if !x.is_finite() {
            return Err(Error::NonFinite {
                what: "fourier_encode input",
                index: i,
                value: x as f64,
            });
        }
        write(x as f64, num_encodings, include_self, |v| {
            out.push(v as f32)
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_sines_then_cosines_then_the_value() -> Result<(), Error> {
        let x = 1.7;
        let e = fourier_encode(x, 3, true)?;
        assert_eq!(e.len(), 7);
        assert_eq!(e[0], x.sin());
        assert_eq!(e[1], (x / 2.0).sin());
        assert_eq!(e[2], (x / 4.0).sin());
        assert_eq!(e[3], x.cos());
        assert_eq!(e[5], (x / 4.0).cos());
        assert_eq!(e[6], x);
        assert_eq!(fourier_encode(x, 2, false)?.len(), 4);
        Ok(())
    }

    #[test]
    fn non_finite_input_is_rejected() {
        assert!(matches!(
            fourier_encode_batch_f32(&[1.0, f32::INFINITY], 2, true),
            Err(Error::NonFinite { index: 1, .. })
        ));
    }
}
