//! `assert_module_equivariant`: a compiled module run on a random cloud and on the same cloud
//! moved rigidly (rotated, translated, and reflected if its fibers have parities), its
//! outputs compared degree by degree with the transformed originals.

use nalgebra::{Matrix3, Vector3};
use rand::Rng;

use super::{random_rotation, random_vector, random_vectors, rel_error, rotate_rows};
use crate::fiber::{DegreeTensor, Features, Fiber};
use crate::module::{Cloud, Compiled, Forward};
use crate::so3::wigner_d;
use crate::Error;

/// The equivariance error of one output degree: `|f(g x) - rho(g) f(x)| / |rho(g) f(x)|`
/// (largest absolute difference over largest magnitude, [`rel_error`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DegreeError {
    /// The degree.
    pub l: usize,
    /// The relative error.
    pub error: f64,
}

/// What [`module_equivariance`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct EquivarianceReport {
    /// One entry per output degree, in degree order.
    pub degrees: Vec<DegreeError>,
    /// Whether the motion included a reflection (E(3) fibers).
    pub reflected: bool,
}

impl EquivarianceReport {
    /// The largest error over the degrees.
    pub fn max_error(&self) -> f64 {
        self.degrees.iter().map(|d| d.error).fold(0.0, f64::max)
    }
}

impl std::fmt::Display for EquivarianceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let motion = if self.reflected {
            "rotation, reflection and translation"
        } else {
            "rotation and translation"
        };
        write!(f, "equivariance under a random {motion}:")?;
        for d in &self.degrees {
            write!(f, " degree {} {:.2e};", d.l, d.error)?;
        }
        Ok(())
    }
}

/// A module that failed [`assert_module_equivariant`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EquivarianceFailure {
    /// The module did not run.
    #[error(transparent)]
    Run(#[from] Error),
    /// An output degree is off by more than the tolerance.
    #[error(
        "degree-{l} output is not equivariant: relative error {error:.3e} > {tol:.1e} ({report})"
    )]
    Exceeds {
        l: usize,
        error: f64,
        tol: f64,
        report: EquivarianceReport,
    },
}

/// `x` moved by `R` (each degree-l row times `D_l(R)`, times the parity under a reflection).
fn transform<F: Fiber>(
    x: &Features<F>,
    rot: &nalgebra::Rotation3<f64>,
    reflect: bool,
) -> Result<Features<F>, Error> {
    let blocks = F::degrees()
        .as_slice()
        .iter()
        .zip(x.blocks())
        .map(|(d, b)| {
            let sign = match (reflect, d.parity) {
                (true, Some(p)) => p.factor(),
                _ => 1.0,
            };
            let rows: Vec<f64> = b.data().iter().map(|&v| f64::from(v) * sign).collect();
            let moved = rotate_rows(&wigner_d(d.l, rot)?, &rows);
            DegreeTensor::from_vec(b.shape(), moved.iter().map(|&v| v as f32).collect())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Features::from_blocks(blocks)
}

/// Runs `net` on a cloud of `nodes` random points with random input features, then on the
/// cloud and features moved by a random rotation and translation (composed with the
/// inversion `-I` if the input and output fibers all have parities), and returns the error
/// of every output degree against the moved original output.
///
/// # Errors
/// Those of the module's run.
pub fn module_equivariance<M: Forward, R: Rng + ?Sized>(
    net: &mut Compiled<M>,
    rng: &mut R,
    nodes: usize,
) -> Result<EquivarianceReport, Error> {
    let cloud = Cloud::new(random_vectors(rng, nodes, 2.0));
    let x = Features::<M::In>::from_fn(nodes, |_, _, _, _| rng.gen_range(-1.0..1.0));
    let reflect = M::In::spec().has_parity() && M::Out::spec().has_parity();
    let rot = random_rotation(rng);
    let shift: Vector3<f64> = random_vector(rng, 5.0);
    let m: Matrix3<f64> = if reflect {
        -rot.into_inner()
    } else {
        rot.into_inner()
    };
    let y = net.forward(&cloud, &x)?;
    let y_moved = net.forward(&cloud.moved(&m, &shift), &transform(&x, &rot, reflect)?)?;
    let want = transform(&y, &rot, reflect)?;
    let degrees = M::Out::degrees()
        .as_slice()
        .iter()
        .zip(y_moved.blocks().iter().zip(want.blocks()))
        .map(|(d, (a, b))| {
            let a: Vec<f64> = a.data().iter().map(|&v| f64::from(v)).collect();
            let b: Vec<f64> = b.data().iter().map(|&v| f64::from(v)).collect();
            DegreeError {
                l: d.l,
                error: rel_error(&a, &b),
            }
        })
        .collect();
    Ok(EquivarianceReport {
        degrees,
        reflected: reflect,
    })
}

/// [`module_equivariance`], failing if an output degree's error exceeds `tol`.
///
/// # Errors
/// `Run` if the module does not run, `Exceeds` naming the first degree over `tol`.
pub fn assert_module_equivariant<M: Forward, R: Rng + ?Sized>(
    net: &mut Compiled<M>,
    rng: &mut R,
    nodes: usize,
    tol: f64,
) -> Result<EquivarianceReport, EquivarianceFailure> {
    let report = module_equivariance(net, rng, nodes)?;
    match report
        .degrees
        .iter()
        .find(|d| d.error > tol || d.error.is_nan())
    {
        Some(d) => Err(EquivarianceFailure::Exceeds {
            l: d.l,
            error: d.error,
            tol,
            report: report.clone(),
        }),
        None => Ok(report),
    }
}
