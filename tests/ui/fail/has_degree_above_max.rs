// rule: has degree (DegreeOf) — Degree<11> is above the maximum 10, no fiber has it.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;

fn main() {
    let h = Features::<Hidden>::zeros(4);
    let _ = h.degree::<Degree<11>>();
}
