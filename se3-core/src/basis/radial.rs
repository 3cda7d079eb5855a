//! Radial bases of an edge length `d`: Gaussians, Bessel functions with a smooth polynomial
//! cutoff envelope, and the cosine cutoff.
//!
//! * [`GaussianBasis`]: `exp(-(d - mu_k)^2 / (2 sigma^2))`, centres `mu_k` evenly spaced on
//!   `[start, stop]` (k = 0..count), `sigma` the spacing times `width_factor` (SchNet-style).
//! * [`BesselBasis`]: `sqrt(2/c) sin(n pi d / c) / d * u(d/c)` for n = 1..=count (DimeNet), with
//!   the polynomial envelope [`polynomial_envelope`] `u` of exponent `p`, so every function
//!   and its first two derivatives vanish at the cutoff `c`. At `d = 0` the limit
//!   `sqrt(2/c) n pi / c` is used.
//! * [`cosine_cutoff`]: `(cos(pi d / c) + 1) / 2` for `d < c`, else 0.

use crate::Error;

fn check_positive(what: &'static str, x: f64) -> Result<(), Error> {
    if !(x.is_finite() && x > 0.0) {
        return Err(Error::InvalidParameter {
            what,
            expected: "finite and > 0",
            found: x,
        });
    }
    Ok(())
}

fn check_distance(d: f64) -> Result<(), Error> {
    if !d.is_finite() {
        return Err(Error::NonFinite {
            what: "distance",
            index: 0,
            value: d,
        });
    }
    if d < 0.0 {
        return Err(Error::InvalidParameter {
            what: "distance",
            expected: ">= 0",
            found: d,
        });
    }
    Ok(())
}

/// Gaussian radial basis with evenly spaced centres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaussianBasis {
    start: f64,
    stop: f64,
    count: usize,
    sigma: f64,
}

impl GaussianBasis {
    /// `count` Gaussians centred on `start..=stop`, `sigma = width_factor * spacing`
    /// (`width_factor * (stop - start)` when `count == 1`).
    ///
    /// # Errors
    /// `InvalidParameter` if `count == 0`, `stop <= start` or `width_factor <= 0`.
    pub fn new(start: f64, stop: f64, count: usize, width_factor: f64) -> Result<Self, Error> {
        if count == 0 {
            return Err(Error::InvalidParameter {
                what: "number of Gaussians",
                expected: ">= 1",
                found: 0.0,
            });
        }
        check_positive("Gaussian range stop - start", stop - start)?;
        check_positive("Gaussian width factor", width_factor)?;
        let spacing = if count > 1 {
            (stop - start) / (count - 1) as f64
        } else {
            stop - start
        };
        Ok(GaussianBasis {
            start,
            stop,
            count,
            sigma: width_factor * spacing,
        })
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false (a basis has at least one function).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Centre of function `k`.
    pub fn center(&self, k: usize) -> f64 {
        if self.count == 1 {
            self.start
        } else {
            self.start + (self.stop - self.start) * k as f64 / (self.count - 1) as f64
        }
    }

    /// All functions at distance `d`.
    ///
    /// # Errors
    /// `NonFinite` if `d` is NaN/inf, `InvalidParameter` if `d < 0`.
    pub fn eval(&self, d: f64) -> Result<Vec<f64>, Error> {
        check_distance(d)?;
        let c = -0.5 / (self.sigma * self.sigma);
        Ok((0..self.count)
            .map(|k| (c * (d - self.center(k)).powi(2)).exp())
            .collect())
    }
}

/// DimeNet's polynomial envelope `u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`
/// for `x < 1`, 0 beyond: `u(0) = 1`, and `u`, `u'`, `u''` vanish at `x = 1`.
pub fn polynomial_envelope(x: f64, p: u32) -> f64 {
    if x >= 1.0 {
        return 0.0;
    }
    let pf = p as f64;
    let xp = x.powi(p as i32);
    1.0 - (pf + 1.0) * (pf + 2.0) / 2.0 * xp + pf * (pf + 2.0) * xp * x
        - pf * (pf + 1.0) / 2.0 * xp * x * x
}

/// The cosine cutoff `(cos(pi d / c) + 1) / 2` for `d < c`, 0 for `d >= c`.
///
/// # Errors
/// `NonFinite`/`InvalidParameter` for a bad distance, `InvalidParameter` if `cutoff <= 0`.
pub fn cosine_cutoff(d: f64, cutoff: f64) -> Result<f64, Error> {
    check_distance(d)?;
    check_positive("cutoff", cutoff)?;
    Ok(if d < cutoff {
        0.5 * ((std::f64::consts::PI * d / cutoff).cos() + 1.0)
    } else {
        0.0
    })
}

/// Bessel radial basis with a smooth polynomial cutoff envelope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BesselBasis {
    cutoff: f64,
    count: usize,
    envelope_exponent: u32,
}

impl BesselBasis {
    /// `count` functions `sqrt(2/c) sin(n pi d/c)/d * u(d/c)`, n = 1..=count.
    ///
    /// # Errors
    /// `InvalidParameter` if `cutoff <= 0`, `count == 0` or `envelope_exponent == 0`.
    pub fn new(cutoff: f64, count: usize, envelope_exponent: u32) -> Result<Self, Error> {
        check_positive("cutoff", cutoff)?;
        if count == 0 || envelope_exponent == 0 {
            return Err(Error::InvalidParameter {
                what: "Bessel count and envelope exponent",
                expected: ">= 1",
                found: count.min(envelope_exponent as usize) as f64,
            });
        }
        Ok(BesselBasis {
            cutoff,
            count,
            envelope_exponent,
        })
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false (a basis has at least one function).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// All functions at distance `d`.
    ///
    /// # Errors
    /// `NonFinite` if `d` is NaN/inf, `InvalidParameter` if `d < 0`.
    pub fn eval(&self, d: f64) -> Result<Vec<f64>, Error> {
        check_distance(d)?;
        let c = self.cutoff;
        let pre = (2.0 / c).sqrt();
        let env = polynomial_envelope(d / c, self.envelope_exponent);
        Ok((1..=self.count)
            .map(|n| {
                let w = n as f64 * std::f64::consts::PI / c;
                let s = if d < 1e-8 {
                    // sin(w d)/d -> w (1 - (w d)^2/6)
                    w * (1.0 - (w * d).powi(2) / 6.0)
                } else {
                    (w * d).sin() / d
                };
                pre * s * env
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_smooth_at_the_cutoff() {
        for p in [3, 5, 6] {
            let h = 1e-4;
            let u = |x| polynomial_envelope(x, p);
            assert!((u(0.0) - 1.0).abs() < 1e-15);
            assert!(u(1.0 - 1e-12).abs() < 1e-9);
            let d1 = (u(1.0) - u(1.0 - h)) / h;
            assert!(d1.abs() < 1e-6, "p={p}: u'(1) = {d1}");
        }
    }

    #[test]
    fn bessel_vanishes_beyond_cutoff_and_is_finite_at_zero() -> Result<(), Error> {
        let b = BesselBasis::new(5.0, 8, 5)?;
        assert!(b.eval(5.0)?.iter().all(|&x| x == 0.0));
        assert!(b.eval(6.0)?.iter().all(|&x| x == 0.0));
        let at0 = b.eval(0.0)?;
        let near0 = b.eval(1e-6)?;
        for (a, n) in at0.iter().zip(&near0) {
            assert!((a - n).abs() < 1e-6 * a.abs());
        }
        Ok(())
    }

    #[test]
    fn bessel_functions_are_orthonormal_without_envelope() {
        // int_0^c (sqrt(2/c) sin(n pi d/c)/d)(...m...) d^2 dd = delta_nm.
        let c = 2.0;
        let n = 4000;
        let mut gram = [[0.0f64; 3]; 3];
        for k in 0..n {
            let d = (k as f64 + 0.5) * c / n as f64;
            let f: Vec<f64> = (1..=3)
                .map(|j| (2.0 / c).sqrt() * (j as f64 * std::f64::consts::PI * d / c).sin() / d)
                .collect();
            for a in 0..3 {
                for b in 0..3 {
                    gram[a][b] += f[a] * f[b] * d * d * c / n as f64;
                }
            }
        }
        for (a, row) in gram.iter().enumerate() {
            for (b, g) in row.iter().enumerate() {
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((g - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn gaussians_peak_at_their_centres() -> Result<(), Error> {
        let g = GaussianBasis::new(0.0, 5.0, 6, 1.0)?;
        let v = g.eval(2.0)?;
        assert!((v[2] - 1.0).abs() < 1e-15);
        assert!((v[3] - (-0.5f64).exp()).abs() < 1e-15);
        Ok(())
    }

    #[test]
    fn cosine_cutoff_goes_from_one_to_zero() -> Result<(), Error> {
        assert_eq!(cosine_cutoff(0.0, 3.0)?, 1.0);
        assert!((cosine_cutoff(1.5, 3.0)? - 0.5).abs() < 1e-15);
        assert_eq!(cosine_cutoff(3.0, 3.0)?, 0.0);
        assert!(matches!(
            cosine_cutoff(1.0, -1.0),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(matches!(
            cosine_cutoff(f64::NAN, 1.0),
            Err(Error::NonFinite { .. })
        ));
        Ok(())
    }
}
