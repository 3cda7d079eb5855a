//! Fuzz target `infer`: the body is `se3_fuzz::infer` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = se3_fuzz::infer(data);
});
