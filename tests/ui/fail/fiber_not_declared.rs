// rule: fibers are declared (Fiber) — features of a type that is not a `#[fiber]`.
use se3::prelude::*;

#[derive(Debug, Clone, Copy, Default)]
struct Plain;

fn ignore(_h: &Features<Plain>) {}

fn main() {}
