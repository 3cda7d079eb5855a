//! Equivariant kernel bases, radial bases and edge encodings.
//!
//! - [`mod@q_j`]: se3-transformer-pytorch's change-of-basis matrices `Q_J` and their sign table.
//! - [`kernel_basis`]: `get_basis`: `K[o, i, f](r) = sum_m Q_J[o, i, m] Y_J(r)[m]`.
//! - [`radial`]: Gaussian and Bessel bases, polynomial envelope, cosine cutoff.
//! - [`zbasis`]: equiformer's constant z-basis of the edge-aligned tensor product.
//! - [`mod@fourier_encode`]: `[sin(x/2^k), cos(x/2^k), x]`.

pub mod fourier_encode;
pub mod kernel_basis;
pub mod q_j;
pub mod radial;
pub mod zbasis;

pub use fourier_encode::{fourier_encode, fourier_encode_batch_f32, fourier_encode_len};
pub use kernel_basis::{pair_shape, BasisFloat, KernelBasis, KernelBasisValues};
pub use q_j::{q_j, qj_sign, QjPrecision};
pub use radial::{cosine_cutoff, polynomial_envelope, BesselBasis, GaussianBasis};
pub use zbasis::equiformer_zbasis;
