//! The order in which PyTorch's CPU `topk(k, largest = False)` picks among *equal* values.
//!
//! Neighbour selection ranks pairs by a modified distance in which excluded pairs (neighbor_mask,
//! causal) all share the float maximum and bonded pairs all share 0. When such a tie straddles the
//! cut at `k`, which of the tied pairs are selected is decided by the sorting algorithm, and it can
//! change outputs (EGNN higher-degree updates use every selected slot; a row whose every slot is
//! masked attends uniformly to the selected values). PyTorch's CPU kernel (`topk_impl_loop`) fills a
//! queue of `(value, index)` and, comparing values only, runs `std::partial_sort` of the first `k`
//! when `64 k <= len`, else `std::nth_element` at `k - 1` followed by `std::sort` of the first `k - 1`;
//! the wheels use libstdc++'s introselect / introsort / heap algorithms, reproduced step by step here
//! (checked against torch 2.15 on 20000 random tie-heavy rows of lengths 2 to 200).

type Elem = (f64, usize);

fn less(a: &Elem, b: &Elem) -> bool {
    a.0 < b.0
}

fn lg(n: usize) -> usize {
    (usize::BITS - 1 - n.leading_zeros()) as usize
}

fn insertion_sort(a: &mut [Elem], first: usize, last: usize) {
    if first == last {
        return;
    }
    for i in first + 1..last {
        let val = a[i];
        if less(&val, &a[first]) {
            a.copy_within(first..i, first + 1);
            a[first] = val;
        } else {
            let mut hole = i;
            while less(&val, &a[hole - 1]) {
                a[hole] = a[hole - 1];
                hole -= 1;
            }
            a[hole] = val;
        }
    }
}

fn unguarded_insertion_sort(a: &mut [Elem], first: usize, last: usize) {
    for i in first..last {
        let val = a[i];
        let mut hole = i;
        while less(&val, &a[hole - 1]) {
            a[hole] = a[hole - 1];
            hole -= 1;
        }
        a[hole] = val;
    }
}

fn move_median_to_first(a: &mut [Elem], result: usize, x: usize, y: usize, z: usize) {
    let pick = if less(&a[x], &a[y]) {
        if less(&a[y], &a[z]) {
            y
        } else if less(&a[x], &a[z]) {
            z
        } else {
            x
        }
    } else if less(&a[x], &a[z]) {
        x
    } else if less(&a[y], &a[z]) {
        z
    } else {
        y
    };
    a.swap(result, pick);
}

fn unguarded_partition(a: &mut [Elem], mut first: usize, mut last: usize, pivot: usize) -> usize {
    loop {
        while less(&a[first], &a[pivot]) {
            first += 1;
        }
        last -= 1;
        while less(&a[pivot], &a[last]) {
            last -= 1;
        }
        if first >= last {
            return first;
        }
        a.swap(first, last);
        first += 1;
    }
}

fn unguarded_partition_pivot(a: &mut [Elem], first: usize, last: usize) -> usize {
    let mid = first + (last - first) / 2;
    move_median_to_first(a, first, first + 1, mid, last - 1);
    unguarded_partition(a, first + 1, last, first)
}

fn push_heap(a: &mut [Elem], first: usize, mut hole: usize, top: usize, val: Elem) {
    while hole > top {
        let parent = (hole - 1) / 2;
        if !less(&a[first + parent], &val) {
            break;
        }
        a[first + hole] = a[first + parent];
        hole = parent;
    }
    a[first + hole] = val;
}

fn adjust_heap(a: &mut [Elem], first: usize, mut hole: usize, len: usize, val: Elem) {
    let top = hole;
    let mut second = hole;
    while second < (len - 1) / 2 {
        second = 2 * (second + 1);
        if less(&a[first + second], &a[first + second - 1]) {
            second -= 1;
        }
        a[first + hole] = a[first + second];
        hole = second;
    }
    if len.is_multiple_of(2) && len >= 2 && second == (len - 2) / 2 {
        second = 2 * (second + 1);
        a[first + hole] = a[first + second - 1];
        hole = second - 1;
    }
    push_heap(a, first, hole, top, val);
}

fn make_heap(a: &mut [Elem], first: usize, last: usize) {
    let len = last - first;
    if len < 2 {
        return;
    }
    let mut parent = (len - 2) / 2;
    loop {
        let val = a[first + parent];
        adjust_heap(a, first, parent, len, val);
        if parent == 0 {
            return;
        }
        parent -= 1;
    }
}

fn pop_heap(a: &mut [Elem], first: usize, last: usize, result: usize) {
    let val = a[result];
    a[result] = a[first];
    adjust_heap(a, first, 0, last - first, val);
}

fn heap_select(a: &mut [Elem], first: usize, middle: usize, last: usize) {
    make_heap(a, first, middle);
    for i in middle..last {
        if less(&a[i], &a[first]) {
            pop_heap(a, first, middle, i);
        }
    }
}

fn partial_sort(a: &mut [Elem], first: usize, middle: usize, last: usize) {
    heap_select(a, first, middle, last);
    let mut end = middle;
    while end - first > 1 {
        end -= 1;
        pop_heap(a, first, end, end);
    }
}

fn introselect(a: &mut [Elem], mut first: usize, nth: usize, mut last: usize, mut depth: usize) {
    while last - first > 3 {
        if depth == 0 {
            heap_select(a, first, nth + 1, last);
            a.swap(first, nth);
            return;
        }
        depth -= 1;
        let cut = unguarded_partition_pivot(a, first, last);
        if cut <= nth {
            first = cut;
        } else {
            last = cut;
        }
    }
    insertion_sort(a, first, last);
}

fn introsort_loop(a: &mut [Elem], first: usize, mut last: usize, mut depth: usize) {
    while last - first > 16 {
        if depth == 0 {
            partial_sort(a, first, last, last);
            return;
        }
        depth -= 1;
        let cut = unguarded_partition_pivot(a, first, last);
        introsort_loop(a, cut, last, depth);
        last = cut;
    }
}

fn std_sort(a: &mut [Elem], first: usize, last: usize) {
    if first == last {
        return;
    }
    introsort_loop(a, first, last, 2 * lg(last - first));
    if last - first > 16 {
        insertion_sort(a, first, first + 16);
        unguarded_insertion_sort(a, first + 16, last);
    } else {
        insertion_sort(a, first, last);
    }
}

/// Positions (into `values`) of the `k` smallest values, in the order PyTorch's CPU
/// `topk(k, largest = False)` returns them, ties included. `values` must not contain NaN.
///
/// When the `k` smallest values are distinct and none of the others equals the largest of
/// them, every algorithm returns them in ascending order; they are then found in one pass
/// ([`distinct_smallest`]), and only rows with ties run the emulation of libstdc++.
pub(crate) fn topk_smallest(values: &[f64], k: usize) -> Vec<usize> {
    let mut picked = Vec::new();
    topk_smallest_into(values, k, &mut Vec::new(), &mut picked);
    picked
}

/// [`topk_smallest`] into `picked` (cleared first), with `scratch` for the candidates: no
/// allocation once both have grown to size (for callers that rank many rows). Inlined, so
/// that a caller compiled for a wider instruction set scans with it.
#[inline(always)]
pub(crate) fn topk_smallest_into(
    values: &[f64],
    k: usize,
    scratch: &mut Vec<Elem>,
    picked: &mut Vec<usize>,
) {
    picked.clear();
    let n = values.len();
    let k = k.min(n);
    if k == 0 {
        return;
    }
    if distinct_smallest_into(values, k, scratch) {
        picked.extend(scratch[..k].iter().map(|e| e.1));
        return;
    }
    let mut q: Vec<Elem> = values.iter().copied().zip(0..).collect();
    if k * 64 <= n {
        partial_sort(&mut q, 0, k, n);
    } else {
        introselect(&mut q, 0, k - 1, n, 2 * lg(n));
        std_sort(&mut q, 0, k - 1);
    }
    picked.extend(q[..k].iter().map(|e| e.1));
}

/// Groups of the bound of [`distinct_smallest`]: value `j` belongs to group `j % GROUPS`.
const GROUPS: usize = 64;

/// Candidates at most this many are ordered by insertion (no calls, no recursion).
const INSERTION_SORT_MAX: usize = 64;

/// The positions of the `k` (`1..=len`) smallest values in ascending order, if that order
/// is unique: the `k` values are distinct and every other value is larger than the largest of
/// them; else `None` (ties decide, or a NaN is present).
#[cfg(test)]
fn distinct_smallest(values: &[f64], k: usize) -> Option<Vec<usize>> {
    let mut cand = Vec::new();
    distinct_smallest_into(values, k, &mut cand).then(|| cand[..k].iter().map(|e| e.1).collect())
}

/// [`distinct_smallest`] with the candidates in `cand`: true if the order is unique, and then
/// `cand[..k]` holds the `k` smallest `(value, position)` in ascending order.
///
/// The minima of disjoint groups of the values are values, so the `k`-th smallest of the
/// minima of [`GROUPS`] groups (value `j` in group `j % GROUPS`) bounds the `k`-th smallest
/// value from above. One pass (vectorised: a running minimum per group) gives the bound, a
/// second keeps the candidates not above it (every value not above the `k`-th among them,
/// about `k` + a few for points in space), which are then ordered and counted.
#[inline(always)]
fn distinct_smallest_into(values: &[f64], k: usize, cand: &mut Vec<Elem>) -> bool {
    // (a reduction without an early exit, so that it vectorises)
    if k == 0 || k > values.len() || values.iter().fold(false, |a, v| a | v.is_nan()) {
        return false;
    }
    let bound = if k <= GROUPS {
        let mut minima = [f64::INFINITY; GROUPS];
        let mut rows = values.chunks_exact(GROUPS);
        for row in &mut rows {
            for (m, &v) in minima.iter_mut().zip(row) {
                *m = if v < *m { v } else { *m };
            }
        }
        for (m, &v) in minima.iter_mut().zip(rows.remainder()) {
            *m = if v < *m { v } else { *m };
        }
        let (_, kth, _) = minima.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
        *kth
    } else {
        f64::INFINITY
    };
    // branch-free filter: every value is written at the end, which advances when kept (the
    // buffer only grows, so a reused one is not written twice)
    if cand.len() <= values.len() {
        cand.resize(values.len() + 1, (0.0, 0));
    }
    // blocks of 8 values without a candidate (most of them) are passed by one vector test
    let mut kept = 0;
    for (b, block) in values.chunks(8).enumerate() {
        if block.iter().fold(false, |a, &v| a | (v <= bound)) {
            for (i, &v) in block.iter().enumerate() {
                cand[kept] = (v, 8 * b + i);
                kept += usize::from(v <= bound);
            }
        }
    }
    let cand = &mut cand[..kept];
    if kept <= INSERTION_SORT_MAX {
        for i in 1..kept {
            let e = cand[i];
            let mut hole = i;
            while hole > 0 && e.0 < cand[hole - 1].0 {
                cand[hole] = cand[hole - 1];
                hole -= 1;
            }
            cand[hole] = e;
        }
    } else {
        cand.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    }
    let Some(kth) = cand.get(k - 1).map(|e| e.0) else {
        return false;
    };
    let increasing = cand[..k].windows(2).all(|w| w[0].0 < w[1].0);
    let not_above = cand.iter().filter(|e| e.0 <= kth).count();
    increasing && not_above == k
}

#[cfg(test)]
mod tests {
    use super::topk_smallest;

    #[test]
    fn one_pass_selection_agrees_with_the_emulation() {
        use rand::Rng;
        let (mut r, _seed) = se3_core::testing::rng();
        for _ in 0..2000 {
            let n = r.gen_range(1..300);
            let k = r.gen_range(1..=n);
            // a few distinct levels (ties) or continuous values
            let levels = r.gen_range(0..6);
            let values: Vec<f64> = (0..n)
                .map(|_| {
                    if levels > 0 && r.gen_bool(0.5) {
                        f64::from(r.gen_range(0..levels))
                    } else {
                        r.gen_range(-1.0..10.0)
                    }
                })
                .collect();
            let mut q: Vec<(f64, usize)> = values.iter().copied().zip(0..).collect();
            let want = if k * 64 <= n {
                super::partial_sort(&mut q, 0, k, n);
                q[..k].iter().map(|e| e.1).collect::<Vec<_>>()
            } else {
                super::introselect(&mut q, 0, k - 1, n, 2 * super::lg(n));
                super::std_sort(&mut q, 0, k - 1);
                q[..k].iter().map(|e| e.1).collect()
            };
            assert_eq!(topk_smallest(&values, k), want, "k {k} of {values:?}");
            if let Some(fast) = super::distinct_smallest(&values, k) {
                assert_eq!(fast, want, "one-pass selection, k {k} of {values:?}");
            }
        }
    }

    #[test]
    fn ties_are_picked_as_torch_does() {
        // outputs of torch 2.15 CPU `topk(k, largest=False).indices` on these rows
        let m = f64::MAX;
        assert_eq!(topk_smallest(&[m; 6], 3), vec![3, 5, 4]);
        assert_eq!(topk_smallest(&[m, 1.0, m, m, m, m], 3), vec![1, 4, 5]);
        assert_eq!(topk_smallest(&[m; 11], 4), vec![8, 6, 7, 5]);
    }

    #[test]
    fn distinct_values_come_sorted_ascending() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0, 0.5, 9.0];
        assert_eq!(topk_smallest(&v, 4), vec![5, 1, 3, 4]);
        let long: Vec<f64> = (0..300).map(|i| f64::from((i * 37) % 300)).collect();
        assert_eq!(topk_smallest(&long, 3), vec![0, 73, 146]);
    }
}
