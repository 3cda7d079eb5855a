// macro validation: degrees out of order (they are not sorted silently).
use se3::prelude::*;

#[fiber(1:8, 0:32)]
struct Hidden;

fn main() {
    let _ = Hidden::spec();
}
