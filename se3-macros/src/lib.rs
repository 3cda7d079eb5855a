//! The `#[fiber]` attribute macro of se3.
