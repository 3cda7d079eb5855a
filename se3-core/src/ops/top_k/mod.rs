//! Top-k per row: the indices of the `K` smallest (or largest) entries of each row of a score
//! matrix, ordered best first, ties broken by increasing column index; entries with mask 0
//! and NaN entries are never chosen, and rows with fewer than `K` candidates are padded with `-1`. With a
//! distance matrix this is k-nearest neighbours under any metric or override (e.g. bonded
//! pairs given distance 0 so they are always picked). [`take_along_rows`] reads the chosen
//! entries (or any `(N, M)` values) back: `out[i, k] = values[i, idx[i, k]]`, 0 for `-1`.

mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use cpu::{TakeAlongRows, TopK};
use luminal::prelude::*;

use super::logical_dims;
use super::neighbors::IndexValid;

/// Indices of the best `K` entries per row, and their 1/0 validity.
#[derive(Debug, Clone, Copy)]
pub struct Selected<N: Dimension, const K: usize> {
    pub idx: GraphTensor<(N, Const<K>)>,
    pub valid: GraphTensor<(N, Const<K>)>,
}

/// The `K` smallest (`largest = false`) or largest entries of each row of `scores (N, M)`,
/// among those with `mask` 1 (see the module rules).
pub fn top_k<N: Dimension, M: Dimension, const K: usize>(
    scores: GraphTensor<(N, M)>,
    mask: Option<GraphTensor<(N, M)>>,
    largest: bool,
) -> Selected<N, K> {
    let dims = [logical_dims(&scores.shape)[0], K.into()];
    let mut b = scores
        .graph()
        .add_op(TopK {
            k: K,
            largest,
            masked: mask.is_some(),
        })
        .input(scores.id, 0, scores.shape);
    if let Some(m) = mask {
        b = b.input(m.id, 0, m.shape);
    }
    let id = b.finish();
    let shape = ShapeTracker::new(&dims);
    let vid = scores
        .graph()
        .add_op(IndexValid)
        .input(id, 0, shape)
        .finish();
    Selected {
        idx: GraphTensor::from_id(id, shape, scores.graph_ref),
        valid: GraphTensor::from_id(vid, shape, scores.graph_ref),
    }
}

/// `out[i, k] = values[i, idx[i, k]]` (0 where the index is `-1`): `(N, M)`, `(N, K)` → `(N, K)`.
pub fn take_along_rows<N: Dimension, M: Dimension, K: Dimension>(
    values: GraphTensor<(N, M)>,
    idx: GraphTensor<(N, K)>,
) -> GraphTensor<(N, K)> {
    let dims = logical_dims(&idx.shape);
    let id = values
        .graph()
        .add_op(TakeAlongRows)
        .input(values.id, 0, values.shape)
        .input(idx.id, 0, idx.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), values.graph_ref)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::rng;
    use crate::exec::{InputKind, Session};
    use crate::Error;

    const K: usize = 4;

    #[test]
    fn top_k_matches_a_stable_sort_with_masks_ties_and_short_rows() -> Result<(), Error> {
        let mut r = rng();
        let (n, m) = (r.gen_range(1..12), r.gen_range(1..10));
        // Small integers: many ties.
        let scores: Vec<f32> = (0..n * m).map(|_| r.gen_range(-3..4) as f32).collect();
        let mask: Vec<f32> = (0..n * m)
            .map(|_| if r.gen_bool(0.7) { 1.0 } else { 0.0 })
            .collect();
        for largest in [false, true] {
            let mut s = Session::new();
            let sc = s.input::<(Dyn<'n'>, Dyn<'m'>)>("s", InputKind::Values);
            let mk = s.input::<(Dyn<'n'>, Dyn<'m'>)>("mask", InputKind::Mask);
            let t = super::top_k::<_, _, K>(sc, Some(mk), largest);
            s.output("idx", t.idx);
            s.output("valid", t.valid);
            s.output("vals", super::take_along_rows(sc, t.idx));
            s.set("s", scores.clone(), &[n, m])?;
            s.set("mask", mask.clone(), &[n, m])?;
            s.run()?;
            let (mut idx, mut vals) = (vec![], vec![]);
            for i in 0..n {
                let mut c: Vec<usize> = (0..m).filter(|&j| mask[i * m + j] == 1.0).collect();
                c.sort_by(|&a, &b| {
                    let (x, y) = (scores[i * m + a], scores[i * m + b]);
                    let o = if largest {
                        y.total_cmp(&x)
                    } else {
                        x.total_cmp(&y)
                    };
                    o.then(a.cmp(&b))
                });
                for k in 0..K {
                    idx.push(c.get(k).map(|&j| j as f32).unwrap_or(-1.0));
                    vals.push(c.get(k).map(|&j| scores[i * m + j]).unwrap_or(0.0));
                }
            }
            assert_eq!(s.get("idx")?.data, idx, "largest = {largest}");
            assert_eq!(s.get("vals")?.data, vals);
            let valid: Vec<f32> = idx
                .iter()
                .map(|i| if *i >= 0.0 { 1.0 } else { 0.0 })
                .collect();
            assert_eq!(s.get("valid")?.data, valid);
        }
        Ok(())
    }
}
