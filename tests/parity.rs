//! Parity with the reference libraries: every file under `tests/reference/`, one module per
//! area. Failures name the file, key, max relative error and index.

#[path = "parity/reference.rs"]
mod reference;

#[path = "parity/math.rs"]
mod math;

#[path = "parity/layers.rs"]
mod layers;
