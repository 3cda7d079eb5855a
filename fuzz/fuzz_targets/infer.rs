//! Fuzz target `infer`: the body is `se3_fuzz::infer` (fuzz/src/lib.rs).
//!
//! A custom mutator keeps the checkpoint section unchanged in 7 of 8 mutations (mutating the
//! config or the inputs section instead, its length prefix updated), and mutates the whole input
//! as libFuzzer does in the 8th: the checkpoint is 99% of a seed's bytes, so plain mutation
//! almost always changes it and every execution would build and compile a model again, while
//! with it unchanged `infer` reuses the model built from the same config and checkpoint. Every
//! byte stays reachable by mutation; only how often each section changes differs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = se3_fuzz::infer(data);
});

/// `(start, len)` of the three length-prefixed sections' bodies, if `data` has them.
fn sections(data: &[u8]) -> Option<[(usize, usize); 3]> {
    let mut out = [(0, 0); 3];
    let mut at = 0;
    for s in &mut out {
        let len = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        let start = at + 4;
        if data.len() < start.checked_add(len)? {
            return None;
        }
        *s = (start, len);
        at = start + len;
    }
    Some(out)
}

libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let whole = |data: &mut [u8]| libfuzzer_sys::fuzzer_mutate(data, size, max_size);
    let Some(secs) = sections(&data[..size]) else {
        return whole(data);
    };
    // 0: whole input; 1..=3: config; 4..=7: inputs
    let pick = match seed % 8 {
        0 => return whole(data),
        1..=3 => 0,
        _ => 2,
    };
    let (start, len) = secs[pick];
    let room = max_size.saturating_sub(size - len);
    if room == 0 {
        return whole(data);
    }
    let mut body = data[start..start + len].to_vec();
    body.resize(len.max(room), 0);
    let new_len = libfuzzer_sys::fuzzer_mutate(&mut body, len, room);
    let tail = data[start + len..size].to_vec();
    let total = start + new_len + tail.len();
    if total > max_size || total > data.len() {
        return whole(data);
    }
    data[start - 4..start].copy_from_slice(&(new_len as u32).to_le_bytes());
    data[start..start + new_len].copy_from_slice(&body[..new_len]);
    data[start + new_len..total].copy_from_slice(&tail);
    total
});
