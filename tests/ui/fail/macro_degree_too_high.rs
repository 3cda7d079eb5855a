// macro validation: a degree above the supported maximum 10.
use se3::prelude::*;

#[fiber(0:4, 10:1, 11:1)]
struct Deep;

fn main() {
    let _ = Deep::spec();
}
