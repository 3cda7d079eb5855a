//! Bad input gets a typed error, never a panic: each case asserts the variant with
//! `matches!`. One module per area.

#[path = "errors/math.rs"]
mod math;

#[path = "errors/layers.rs"]
mod layers;

#[path = "errors/untrusted_files.rs"]
mod untrusted_files;
