//! Property tests of the neighbour kernel against brute force: clouds on a coarse integer
//! lattice (so equal distances, duplicate points and points exactly on the radius are common),
//! random masks, radii, `k`, `exclude_self` and batch ids, small clouds (every pair compared)
//! and clouds above the grid threshold (the cell search).

use proptest::prelude::*;

use super::cpu::knn;

/// Brute force with the module rules: candidates of the same batch id, both unmasked, not the
/// point itself when `exclude_self`, within the radius (`d <= r^2` in f32 with the kernel's
/// formula); sorted by (distance, index); the first `k`, `-1` after.
fn brute(
    x: &[f32],
    mask: &[bool],
    batch: &[f32],
    k: usize,
    radius: Option<f32>,
    exclude_self: bool,
) -> Vec<f32> {
    let n = mask.len();
    let r2 = radius.map(|r| r * r).unwrap_or(f32::INFINITY);
    let mut out = vec![-1.0; n * k];
    for i in (0..n).filter(|&i| mask[i]) {
        let mut c: Vec<(f32, usize)> = (0..n)
            .filter(|&j| mask[j] && batch[j] == batch[i] && !(exclude_self && i == j))
            .map(|j| {
                let (dx, dy, dz) = (
                    x[3 * j] - x[3 * i],
                    x[3 * j + 1] - x[3 * i + 1],
                    x[3 * j + 2] - x[3 * i + 2],
                );
                (dx * dx + dy * dy + dz * dz, j)
            })
            .filter(|&(d, _)| d <= r2)
            .collect();
        c.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (s, &(_, j)) in c.iter().take(k).enumerate() {
            out[i * k + s] = j as f32;
        }
    }
    out
}

/// A cloud of `min_n..=max_n` points on the lattice `{0..side}^3 * scale`, with a mask and batch ids.
fn cloud(
    min_n: usize,
    max_n: usize,
) -> impl Strategy<Value = (Vec<f32>, Vec<bool>, Vec<f32>, f32)> {
    (
        min_n..=max_n,
        1..6u32,
        prop_oneof![Just(1.0f32), Just(0.25), Just(1e3)],
    )
        .prop_flat_map(|(n, side, scale)| {
            (
                prop::collection::vec(0..side, 3 * n)
                    .prop_map(move |v| v.into_iter().map(|c| c as f32 * scale).collect()),
                prop::collection::vec(prop::bool::weighted(0.85), n),
                prop::collection::vec(prop_oneof![Just(0.0f32), Just(1.0)], n),
                Just(scale),
            )
        })
}

/// No radius, or a radius that is a lattice distance (points exactly on it), or between two.
fn radius(scale: f32) -> impl Strategy<Value = Option<f32>> {
    prop_oneof![
        Just(None),
        (0..5u32).prop_map(move |r| Some(r as f32 * scale)),
        (0..20u32).prop_map(move |r| Some((r as f32 * 0.37 + 0.1) * scale)),
    ]
}

fn check(
    (x, mask, batch, scale): (Vec<f32>, Vec<bool>, Vec<f32>, f32),
    k: usize,
    exclude_self: bool,
    batched: bool,
    radius: Option<f32>,
) -> Result<(), TestCaseError> {
    let maskf: Vec<f32> = mask.iter().map(|&m| f32::from(u8::from(m))).collect();
    let batch = if batched {
        batch
    } else {
        vec![0.0; mask.len()]
    };
    let got = knn(
        &x,
        Some(&maskf),
        batched.then_some(batch.as_slice()),
        k,
        radius,
        exclude_self,
    );
    let want = brute(&x, &mask, &batch, k, radius, exclude_self);
    prop_assert_eq!(got, want, "scale {} radius {:?}", scale, radius);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn small_clouds_match_brute_force_with_ties_masks_and_duplicates(
        (c, r) in cloud(1, 40).prop_flat_map(|c| { let s = c.3; (Just(c), radius(s)) }),
        k in 1..9usize,
        exclude_self in any::<bool>(),
        batched in any::<bool>(),
    ) {
        check(c, k, exclude_self, batched, r)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn grid_search_matches_brute_force_with_ties_masks_and_duplicates(
        (c, r) in cloud(900, 1400).prop_flat_map(|c| { let s = c.3; (Just(c), radius(s)) }),
        k in 1..17usize,
        exclude_self in any::<bool>(),
        batched in any::<bool>(),
    ) {
        check(c, k, exclude_self, batched, r)?;
    }
}

/// The float64 search (hosts that select in double precision) against a float64 brute force:
/// the same rules, distances in f64.
fn check_f64(
    (x, mask, batch, scale): (Vec<f32>, Vec<bool>, Vec<f32>, f32),
    k: usize,
    exclude_self: bool,
    radius: Option<f32>,
) -> Result<(), TestCaseError> {
    use super::grid::{nearest_neighbors, SearchSpec};
    // an irrational stretch keeps the lattice's ties (equal distances stay equal after scaling
    // every coordinate alike) while leaving the float32 grid
    let pts: Vec<[f64; 3]> = x
        .chunks_exact(3)
        .map(|p| [0, 1, 2].map(|a| f64::from(p[a]) * std::f64::consts::SQRT_2))
        .collect();
    let bits: Vec<u32> = batch.iter().map(|b| b.to_bits()).collect();
    let r2 = radius.map_or(f64::INFINITY, |r| {
        let r = f64::from(r) * std::f64::consts::SQRT_2;
        r * r
    });
    let spec = SearchSpec {
        k,
        radius2: r2,
        exclude_self,
        mask: Some(&mask),
        batch: Some(&bits),
    };
    let got = nearest_neighbors(&pts, &spec);
    let n = pts.len();
    for i in 0..n {
        let mut c: Vec<(f64, usize)> = (0..n)
            .filter(|&j| mask[i] && mask[j] && bits[i] == bits[j] && !(exclude_self && i == j))
            .map(|j| {
                let d: Vec<f64> = (0..3).map(|a| pts[j][a] - pts[i][a]).collect();
                (d[0] * d[0] + d[1] * d[1] + d[2] * d[2], j)
            })
            .filter(|&(d, _)| d <= r2)
            .collect();
        c.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        c.truncate(k);
        let row: Vec<(f64, usize)> = got.row(i).map(|(j, d)| (d, j)).collect();
        prop_assert_eq!(row, c, "point {} scale {} radius {:?}", i, scale, radius);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn float64_grid_search_matches_brute_force_with_ties_masks_and_batches(
        (c, r) in cloud(900, 1200).prop_flat_map(|c| { let s = c.3; (Just(c), radius(s)) }),
        k in 1..17usize,
        exclude_self in any::<bool>(),
    ) {
        check_f64(c, k, exclude_self, r)?;
    }
}
