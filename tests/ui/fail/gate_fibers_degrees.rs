// rule: gate fibers (GateFibers) — the gate output drops the degree-2 block of its input.
use se3::prelude::*;

#[fiber(0:7, 1:3, 2:2)]
struct GateIn;
#[fiber(0:2, 1:3)]
struct Hidden;

fn main() -> Result<(), Error> {
    let _gate = Gate::<GateIn, Hidden>::new()?;
    Ok(())
}
