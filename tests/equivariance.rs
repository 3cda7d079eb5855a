//! Equivariance properties on fresh random rotations and inputs (seed printed; replay with
//! `SE3_SEED`), one module per area.

#[path = "equivariance/math.rs"]
mod math;

#[path = "equivariance/layers.rs"]
mod layers;

#[path = "equivariance/layers_typed.rs"]
mod layers_typed;
