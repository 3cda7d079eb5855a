// macro validation: zero channels (span on the `0` count).
use se3::prelude::*;

#[fiber(0:32, 1:0)]
struct Hidden;

fn main() {
    let _ = Hidden::spec();
}
