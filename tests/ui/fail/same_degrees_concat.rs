// rule: same degrees (SameDegrees) — concatenating fibers whose degrees differ.
use se3::prelude::*;

#[fiber(0:16)]
struct Atoms;
#[fiber(0:32, 1:8)]
struct Hidden;

fn main() -> Result<(), Error> {
    let h = Features::<Hidden>::zeros(4);
    let a = Features::<Atoms>::zeros(4);
    let _ = h.concat(&a)?;
    Ok(())
}
