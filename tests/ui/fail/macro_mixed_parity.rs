// macro validation: parity on some degrees only (neither SE(3) nor E(3)).
use se3::prelude::*;

#[fiber(0 e:8, 1:4)]
struct Polar;

fn main() {
    let _ = Polar::spec();
}
