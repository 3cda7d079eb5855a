// rule: gate fibers (GateFibers) — odd (pseudo)scalars cannot gate: sigmoid of a sign-flipping
// scalar is not a sign-flipping scalar.
use se3::prelude::*;

#[fiber("0o:5, 1o:3")]
struct GateIn;
#[fiber("0o:2, 1o:3")]
struct Polar;

fn main() -> Result<(), Error> {
    let _gate = Gate::<GateIn, Polar>::new()?;
    Ok(())
}
