// macro validation: a degree listed twice (span on the second `1`).
use se3::prelude::*;

#[fiber(0:32, 1:8, 1:4)]
struct Hidden;

fn main() {
    let _ = Hidden::spec();
}
