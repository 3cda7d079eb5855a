//! Fuzz target `config_json`: the body is `se3_fuzz::config_json` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = se3_fuzz::config_json(data);
});
