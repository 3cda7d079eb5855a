//! Test helpers (feature `testing`): seeded randomness, random rotations, tolerances.

/// Relative tolerance for comparing float32 results with float64 truth.
pub const TOL_F32: f64 = 1e-4;
/// Relative tolerance for float64 results.
pub const TOL_F64: f64 = 1e-10;

/// The seed of this test run: `SE3_SEED` if set, else drawn fresh and printed so that a
/// failure can be replayed.
pub fn seed() -> u64 {
    if let Some(s) = std::env::var("SE3_SEED").ok().and_then(|s| s.parse().ok()) {
        return s;
    }
    let s = rand::random::<u64>();
    eprintln!("SE3_SEED={s}");
    s
}
