//! The rotation group SO(3) and O(3): real spherical harmonics, Wigner D matrices,
//! Clebsch-Gordan coefficients and parity, in the conventions of e3nn and
//! se3-transformer-pytorch (tests/reference/CONVENTIONS.md sections 1-3).
//!
//! One concept a file:
//! - [`mod@spherical_harmonics`]: `Y_l` as polynomials, single, batched (f64/f32), gradients.
//! - [`mod@wigner_d`]: `D^l(R)` from rotations, quaternions, e3nn Euler angles.
//! - [`mod@clebsch_gordan`]: e3nn's real `wigner_3j`, cached.
//! - [`parity`]: inversion and improper rotations.
//! - [`rotation`]: Euler-angle conventions and checked rotation matrices.
//! - [`edge_align`]: equiformer's edge-aligned rotations.
//!
//! ```
//! use nalgebra::Vector3;
//! use se3_core::so3::{rotation::euler_e3nn, spherical_harmonics, wigner_d, Convention, Normalization};
//!
//! let r = euler_e3nn(0.3, 1.2, -0.7);
//! let v = Vector3::new(0.5, -1.0, 2.0);
//! let (conv, norm) = (Convention::E3nn, Normalization::Component);
//! // Y_l(R v) = D^l(R) Y_l(v)
//! let lhs = spherical_harmonics(3, &(r * v), conv, norm)?;
//! let rhs = wigner_d(3, &r)? * spherical_harmonics(3, &v, conv, norm)?;
//! assert!((lhs - rhs).amax() < 1e-12);
//! # Ok::<(), se3_core::Error>(())
//! ```

pub mod clebsch_gordan;
pub mod edge_align;
pub mod parity;
pub mod rotation;
pub mod spherical_harmonics;
pub mod wigner_d;

pub use clebsch_gordan::{clebsch_gordan, is_coupled, wigner_3j, ClebschGordan};
pub use edge_align::{
    equiformer_edge_rotation, equiformer_edge_wigner_d, equiformer_edge_wigner_d_batch,
    equiformer_euler_angles,
};
pub use parity::{sh_parity, wigner_d_o3, Parity};
pub use rotation::{euler_e3nn, euler_zyz, rotation_from_matrix};
pub use spherical_harmonics::{
    sh_len, sh_offset, sh_polynomial, sh_polynomials, spherical_harmonics,
    spherical_harmonics_batch, spherical_harmonics_batch_f32, spherical_harmonics_grad,
    spherical_harmonics_grad_batch, spherical_harmonics_unnormalized, Convention, Monomial,
    Normalization, L_MAX,
};
pub use wigner_d::{
    wigner_d, wigner_d_all, wigner_d_batch, wigner_d_from_euler, wigner_d_from_matrix,
    wigner_d_from_quaternion, wigner_d_len, wigner_d_offset,
};
