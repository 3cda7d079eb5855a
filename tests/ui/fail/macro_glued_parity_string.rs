// macro validation: the string form reports its problems on the string.
use se3::prelude::*;

#[fiber("0e:8, 1q:4, 2o:0")]
struct Polar;

fn main() {
    let _ = Polar::spec();
}
