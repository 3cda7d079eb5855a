//! Fuzz target `safetensors_weights`: the body is `se3_fuzz::safetensors_weights` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = se3_fuzz::safetensors_weights(data);
});
