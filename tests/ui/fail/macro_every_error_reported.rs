// macro validation: every problem is reported at once, each on its own token.
use se3::prelude::*;

#[fiber(2:4, 1:0, 2:1, 12:3)]
struct Broken;

fn main() {
    let _ = Broken::spec();
}
