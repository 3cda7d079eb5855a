//! The rotation group SO(3) and O(3): real spherical harmonics, Wigner D matrices,
//! Clebsch-Gordan coefficients and parity.
