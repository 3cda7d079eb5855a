// rule: gate fibers (GateFibers, channel count) — 6 degree-0 channels cannot hold 2 scalars
// and 3 + 2 gates (7 are needed); reported by `cargo build`, not `cargo check`.
use se3::prelude::*;

#[fiber(0:6, 1:3, 2:2)]
struct GateIn;
#[fiber(0:2, 1:3, 2:2)]
struct Hidden;

fn main() -> Result<(), Error> {
    let _gate = Gate::<GateIn, Hidden>::new()?;
    Ok(())
}
