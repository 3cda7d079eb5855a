//! A pool of f32 buffers reused across operators and runs.
//!
//! Every operator output used to be a fresh `vec![0.0; n]`: large ones are fresh `mmap`s whose
//! pages fault in one by one on first write and go back to the kernel when the last consumer
//! drops them, so a forward pass of a model faulted in far more memory than it ever held at
//! once. Our operators now take their output from [`take`] and hand the inputs they own (the
//! ones luminal passes as `InputTensor::Owned`: this operator was the last consumer) back with
//! [`recycle`]. A taken buffer is always zero-filled and exactly `n` long, so kernels see the
//! same thing as before.
//!
//! Bounds: only buffers of at least [`MIN_ELEMS`] elements are pooled (malloc serves small ones
//! well), a buffer is reused only for a request of at least half its capacity (no large buffer
//! pinned for a small tensor), and the pool never holds more than [`CAP_BYTES`]; beyond that the
//! oldest buffers are freed. So the pool adds at most `CAP_BYTES` to the peak resident memory,
//! and usually nothing: a freed buffer is mostly taken again by the next operators of the same
//! shape.

use std::sync::Mutex;

use luminal::op::InputTensor;
use luminal::prelude::{ShapeTracker, Tensor};

/// Smallest buffer (in f32 elements) worth pooling: 64 KiB.
pub(crate) const MIN_ELEMS: usize = 16 * 1024;
/// Most bytes the pool keeps.
pub(crate) const CAP_BYTES: usize = 96 << 20;

struct Pool {
    /// Free buffers, oldest first.
    free: Vec<Vec<f32>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

fn bytes(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

/// A zero-filled buffer of exactly `n` elements, from the pool when one fits.
pub(crate) fn take(n: usize) -> Vec<f32> {
    if n >= MIN_ELEMS {
        let found = POOL.lock().ok().and_then(|mut pool| {
            // best fit: the smallest free buffer holding n, if at most twice n
            let best = pool
                .free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= n && v.capacity() <= 2 * n)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)?;
            let v = pool.free.remove(best);
            pool.bytes -= bytes(&v);
            Some(v)
        });
        if let Some(mut v) = found {
            v.clear();
            v.resize(n, 0.0);
            return v;
        }
    }
    vec![0.0; n]
}

/// Returns a buffer to the pool (or frees it when too small or when the pool is full).
pub(crate) fn give(v: Vec<f32>) {
    if v.capacity() < MIN_ELEMS || bytes(&v) > CAP_BYTES {
        return;
    }
    let Ok(mut pool) = POOL.lock() else {
        return;
    };
    pool.bytes += bytes(&v);
    pool.free.push(v);
    while pool.bytes > CAP_BYTES {
        let old = pool.free.remove(0);
        pool.bytes -= bytes(&old);
    }
}

/// Hands the f32 buffers of the inputs this operator owns back to the pool.
pub(crate) fn recycle(inp: Vec<(InputTensor, ShapeTracker)>) {
    for (t, _) in inp {
        if let InputTensor::Owned(mut t) = t {
            if let Some(v) = t.data.as_any_mut().downcast_mut::<Vec<f32>>() {
                give(std::mem::take(v));
            }
        }
    }
}

/// The operator result `out`, after handing the owned inputs back to the pool.
pub(crate) fn finish(inp: Vec<(InputTensor, ShapeTracker)>, out: Vec<f32>) -> Vec<Tensor> {
    recycle(inp);
    vec![Tensor::new(out)]
}

/// Frees every pooled buffer.
pub fn clear() {
    if let Ok(mut pool) = POOL.lock() {
        pool.free.clear();
        pool.bytes = 0;
    }
}

/// Bytes currently held by the pool.
pub fn pooled_bytes() -> usize {
    POOL.lock().map(|p| p.bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_buffers_are_zeroed_and_sized_whatever_was_given() -> Result<(), crate::Error> {
        let n = MIN_ELEMS * 3;
        give(vec![7.0; n + 5]);
        let v = take(n);
        assert_eq!(v.len(), n);
        assert!(v.iter().all(|x| *x == 0.0));
        // a buffer much larger than the request is not used for it
        let big = take(MIN_ELEMS * 8);
        give(big);
        let small = take(MIN_ELEMS);
        assert!(small.capacity() < MIN_ELEMS * 8);
        assert!(pooled_bytes() <= CAP_BYTES);
        Ok(())
    }
}
