// rule: has degree (DegreeOf) — also for inline `fiber_type!` fibers.
use se3::prelude::*;

type Scalars = fiber_type!(0:16);

fn main() {
    let a = Features::<Scalars>::zeros(4);
    let _ = a.degree::<Degree<1>>();
}
