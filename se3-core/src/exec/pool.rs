//! A pool of f32 buffers reused across operators and runs.
//!
//! Every operator output used to be a fresh `vec![0.0; n]`: large ones are fresh `mmap`s whose
//! pages fault in one by one on first write and go back to the kernel when the last consumer
//! drops them, so a forward pass of a model faulted in far more memory than it ever held at
//! once. Our operators now take their output from [`take`] and hand the inputs they own (the
//! ones luminal passes as `InputTensor::Owned`: this operator was the last consumer) back with
//! [`recycle`]. A taken buffer is always zero-filled and exactly `n` long, so kernels see the
//! same thing as before. The contiguous copies kernels gather of strided or broadcast inputs
//! (`View::materialize`) come from the pool too and go back to it when dropped (the Equiformer at
//! degrees 0-2, 512 nodes: peak resident set 140 -> 120 MiB).
//!
//! Bounds: only buffers of at least [`MIN_ELEMS`] elements are pooled (malloc serves small ones
//! well), a buffer is reused only for a request of at least half its capacity (no large buffer
//! pinned for a small tensor), and the pool never holds more than [`CAP_BYTES`]; beyond that the
//! oldest buffers are freed. The session's executor lowers that bound as it runs
//! ([`set_budget`]): to the headroom below the most bytes a run has held alive (its high water)
//! minus what is alive now, plus a slack (from the high water, 4-32 MiB: [`set_slack_for`]), so idle pooled bytes raise the
//! peak resident memory by at most that slack above the high water. Between runs the pool keeps
//! at most the slack (the session lowers the budget to it when a run ends).
//! The pool and its budget are process-wide: sessions running at once on several threads share
//! them (which only costs reuse, never correctness).

use std::sync::Mutex;

use luminal::op::InputTensor;
use luminal::prelude::{ShapeTracker, Tensor};

/// Smallest buffer (in f32 elements) worth pooling: 64 KiB.
pub(crate) const MIN_ELEMS: usize = 16 * 1024;
/// Most bytes the pool keeps.
pub(crate) const CAP_BYTES: usize = 96 << 20;
/// Least bytes the pool may keep above the headroom of [`set_budget`] ([`set_slack_for`]): 4 MiB
/// of idle buffers buy the reuse that matters for small graphs (the SE(3)-Transformer at 2
/// degrees, 512 nodes: the same forward time as with 16 MiB, 74.6 instead of 84 MiB peak
/// resident memory; with 1 MiB about 5% slower from page faults).
pub(crate) const SLACK_BYTES: usize = 4 << 20;
/// Most bytes of slack: graphs with large intermediates of many sizes fault in pages when
/// their buffers cannot be reused (the Equiformer at degrees 0-1, 512 nodes: 0.26-0.31 s with
/// 4 MiB of slack, 0.22-0.23 s with 32, peak 67 -> 93 MiB).
pub(crate) const MAX_SLACK_BYTES: usize = 32 << 20;

/// The slack of [`set_budget`], in bytes ([`set_slack_for`]).
static SLACK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(SLACK_BYTES);

/// Sets the slack from the most bytes a graph's runs have held alive (`high_water`, `h`): half
/// of it up to `h = 64 MiB` (where it reaches [`MAX_SLACK_BYTES`]), then falling as `1 / h`
/// (graphs that large, such as training steps, reuse their own headroom below the high water;
/// a fixed slack would only add to their peak), never below [`SLACK_BYTES`].
pub(crate) fn set_slack_for(high_water: usize) {
    let knee = 2 * MAX_SLACK_BYTES;
    let slack = if high_water <= knee {
        high_water / 2
    } else {
        MAX_SLACK_BYTES / (high_water / knee).max(1)
    }
    .clamp(SLACK_BYTES, MAX_SLACK_BYTES);
    SLACK.store(slack, std::sync::atomic::Ordering::Relaxed);
}

struct Pool {
    /// Free buffers, oldest first.
    free: Vec<Vec<f32>>,
    bytes: usize,
    /// Most bytes to keep ([`set_budget`]).
    budget: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
    budget: CAP_BYTES,
});

fn bytes(v: &Vec<f32>) -> usize {
    v.capacity() * std::mem::size_of::<f32>()
}

/// A zero-filled buffer of exactly `n` elements, from the pool when one fits.
pub(crate) fn take(n: usize) -> Vec<f32> {
    if n >= MIN_ELEMS {
        let found = POOL.lock().ok().and_then(|mut pool| {
            let want = n * std::mem::size_of::<f32>();
            // what is in use grows by the request either way: so much less may stay idle
            pool.budget = pool.budget.saturating_sub(want);
            // best fit: the smallest free buffer holding n, if at most twice n
            let best = pool
                .free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.capacity() >= n && v.capacity() <= 2 * n)
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i);
            let found = best.map(|i| {
                let v = pool.free.remove(i);
                pool.bytes -= bytes(&v);
                v
            });
            trim(&mut pool);
            found
        });
        if let Some(mut v) = found {
            v.clear();
            v.resize(n, 0.0);
            return v;
        }
    }
    vec![0.0; n]
}

/// Frees the oldest buffers until the pool holds at most its budget.
fn trim(pool: &mut Pool) {
    while pool.bytes > pool.budget && !pool.free.is_empty() {
        let old = pool.free.remove(0);
        pool.bytes -= bytes(&old);
    }
}

/// Sets the bytes the pool may keep idle (at most [`CAP_BYTES`]): the headroom between what is in
/// use now and the most that was ever in use, plus the slack ([`set_slack_for`]). Taking a buffer lowers it by the buffer's size (the
/// buffer is now in use), giving one back raises it by as much.
pub(crate) fn set_budget(bytes: usize) {
    let bytes = bytes + SLACK.load(std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut pool) = POOL.lock() {
        pool.budget = bytes.min(CAP_BYTES);
        trim(&mut pool);
    }
}

/// Returns a buffer to the pool (or frees it when too small or beyond the budget).
pub(crate) fn give(v: Vec<f32>) {
    if v.capacity() < MIN_ELEMS {
        return;
    }
    let Ok(mut pool) = POOL.lock() else {
        return;
    };
    pool.budget = (pool.budget + bytes(&v)).min(CAP_BYTES);
    if bytes(&v) > pool.budget {
        return;
    }
    pool.bytes += bytes(&v);
    pool.free.push(v);
    trim(&mut pool);
}

/// Makes glibc return freed large buffers to the OS at once: pins its mmap threshold at 512 KiB
/// (glibc otherwise raises it up to 32 MiB after a large buffer is freed; buffers below it then
/// come from the heap, where freed ones stay resident between live ones). The SE(3)-Transformer
/// benchmark at 3 degrees: 224 MiB peak instead of 309 (even with `malloc_trim` after each run);
/// 128 KiB gains a few MiB more for twice the page faults. For programs that run big graphs and
/// care about their peak resident memory (the `se3` benchmarks); a no-op elsewhere than Linux
/// with glibc.
///
/// Pinning the mmap threshold also stops glibc from raising its trim threshold (128 KiB by
/// default), so every free at the top of the heap gave its pages back and the next run faulted
/// them in again (EGNN, 512 nodes x 16 neighbours: ~8% of its CPU time in page faults, brk and
/// munmap). The trim threshold is set to [`TRIM_THRESHOLD_BYTES`]: at most that much freed heap
/// (buffers below the mmap threshold only) stays resident between runs.
pub fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        /// glibc's `M_TRIM_THRESHOLD` parameter of `mallopt`.
        const M_TRIM_THRESHOLD: i32 = -1;
        /// glibc's `M_MMAP_THRESHOLD` parameter of `mallopt`.
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: `mallopt` is glibc's thread-safe setter of allocator parameters; these calls
        // only change which allocations are served by mmap and when the heap top is returned.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 512 * 1024);
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES as i32);
        }
    }
}

/// Free bytes at the top of glibc's heap kept resident by [`pin_mmap_threshold`].
pub const TRIM_THRESHOLD_BYTES: usize = 4 << 20;

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

/// Frees every pooled buffer (and lifts the budget back to [`CAP_BYTES`]).
pub fn clear() {
    if let Ok(mut pool) = POOL.lock() {
        pool.free.clear();
        pool.bytes = 0;
        pool.budget = CAP_BYTES;
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
