// rule: scalar-only ops (ScalarOnly) — a bias added to degree-1 features.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;

fn main() -> Result<(), Error> {
    let h = Features::<Hidden>::zeros(4);
    let _ = h.add_bias::<Degree<1>>(&[0.5; 8])?;
    Ok(())
}
