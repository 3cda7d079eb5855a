// macro validation: `fiber_type!` checks its list like `#[fiber]` (first problem shown).
use se3::prelude::*;

type Bad = fiber_type!(0:16, 1:0);

fn main() {
    let _ = <Bad as Fiber>::spec();
}
