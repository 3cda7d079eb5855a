//! Fuzz target `qj_signs`: the body is `se3_fuzz::qj_signs` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = se3_fuzz::qj_signs(data);
});
