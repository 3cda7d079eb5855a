// rule: has degree (DegreeOf, from HasDegree) — asking a scalar fiber for its degree-1 block.
use se3::prelude::*;

#[fiber(0:16)]
struct Atoms;

fn main() {
    let a = Features::<Atoms>::zeros(4);
    let _vectors = a.degree::<Degree<1>>();
}
