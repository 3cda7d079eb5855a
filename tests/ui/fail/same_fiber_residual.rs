// rule: same fiber (SameFiber) — a residual connection across two fibers.
use se3::prelude::*;

#[fiber(0:32, 1:8)]
struct Hidden;
#[fiber(0:32, 1:16)]
struct Wide;

fn main() -> Result<(), Error> {
    let h = Features::<Hidden>::zeros(4);
    let skip = Features::<Wide>::zeros(4);
    let _ = h.residual(&skip)?;
    Ok(())
}
