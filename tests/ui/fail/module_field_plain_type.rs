// rule: fields of #[derive(Module)] are layers or modules — a `u32` field is reported by
// name (mark fields outside the network `#[module(skip)]`).
use se3::prelude::*;

#[fiber(0:4)]
struct Atoms;
#[fiber(0:8, 1:2)]
struct Hidden;

#[derive(Module)]
struct Net {
    conv: Conv<Atoms, Hidden>,
    steps: u32,
}

fn main() {}
