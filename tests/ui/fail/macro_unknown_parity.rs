// macro validation: an unknown parity letter (`x`, not `e` or `o`).
use se3::prelude::*;

#[fiber(0 e:8, 1x:4)]
struct Polar;

fn main() {
    let _ = Polar::spec();
}
