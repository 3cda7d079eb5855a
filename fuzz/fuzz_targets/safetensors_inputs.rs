//! Fuzz target `safetensors_inputs`: the body is `se3_fuzz::safetensors_inputs` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = se3_fuzz::safetensors_inputs(data);
});
