// rule: fields of #[derive(Module)] are layers or modules (ModuleField) — a `Vec<f32>`
// field is reported with the field's name.
use se3::prelude::*;

#[fiber(0:4)]
struct Atoms;
#[fiber(0:8, 1:2)]
struct Hidden;

#[derive(Module)]
struct Net {
    conv: Conv<Atoms, Hidden>,
    scales: Vec<f32>,
}

fn main() {}
