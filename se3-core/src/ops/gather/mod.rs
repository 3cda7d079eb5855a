//! Gather rows by index: `out[e, :] = table[idx[e], :]`, zeros where `idx[e]` is `-1` (or
//! out of range). Its adjoint is [`scatter_add`](crate::ops::scatter_add()) with the same
//! indices.

pub(crate) mod backward;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use cpu::GatherRows;
use luminal::prelude::*;

use super::logical_dims;

/// Rows of `table` at `idx`: `(N, C)`, `(E,)` → `(E, C)`.
///
/// Indices are f32 holding integers; `-1` gives a zero row. The session checks index inputs
/// (`InputKind::Indices`); indices computed in the graph are in range by construction.
pub fn gather<N: Dimension, C: Dimension, E: Dimension>(
    table: GraphTensor<(N, C)>,
    idx: GraphTensor<(E,)>,
) -> GraphTensor<(E, C)> {
    let dims = [logical_dims(&idx.shape)[0], logical_dims(&table.shape)[1]];
    let id = table
        .graph()
        .add_op(GatherRows)
        .input(table.id, 0, table.shape)
        .input(idx.id, 0, idx.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), table.graph_ref)
}

/// [`gather`] for tables with two trailing axes (e.g. channels x (2l + 1)):
/// `(N, A, B)`, `(E,)` → `(E, A, B)`.
pub fn gather3<N: Dimension, A: Dimension, B: Dimension, E: Dimension>(
    table: GraphTensor<(N, A, B)>,
    idx: GraphTensor<(E,)>,
) -> GraphTensor<(E, A, B)> {
    let t = logical_dims(&table.shape);
    let dims = [logical_dims(&idx.shape)[0], t[1], t[2]];
    let id = table
        .graph()
        .add_op(GatherRows)
        .input(table.id, 0, table.shape)
        .input(idx.id, 0, idx.shape)
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), table.graph_ref)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rel_err, rng, run_both};
    use crate::exec::{IndexBound, InputKind};
    use crate::Error;

    #[test]
    fn gather_matches_plain_rust_with_missing_indices_and_views() -> Result<(), Error> {
        let mut r = rng();
        let (n, c, e) = (r.gen_range(1..30), r.gen_range(1..9), r.gen_range(1..80));
        let table = rand_vec(&mut r, n * c);
        let idx: Vec<f32> = (0..e).map(|_| r.gen_range(-1..n as i64) as f32).collect();
        let build = |s: &mut crate::exec::Session| {
            let t = s.input::<(Dyn<'n'>, Dyn<'c'>)>("t", InputKind::Values);
            let i = s.input::<(Dyn<'e'>,)>(
                "i",
                InputKind::Indices {
                    bound: IndexBound::Dim('n'),
                    allow_missing: true,
                },
            );
            s.output("g", super::gather(t, i));
            // A permuted table: gather columns of the transpose.
            let tt = t
                .permute::<(Dyn<'c'>, Dyn<'n'>), _>()
                .contiguous()
                .permute::<(Dyn<'n'>, Dyn<'c'>), _>();
            s.output("gt", super::gather(tt, i) * 2.0);
        };
        let mut want = vec![];
        for &i in &idx {
            for k in 0..c {
                want.push(if i < 0.0 {
                    0.0
                } else {
                    table[i as usize * c + k]
                });
            }
        }
        let (a, _, _) = run_both(
            build,
            &[("t", table, vec![n, c]), ("i", idx, vec![e])],
            &["g", "gt"],
        )?;
        assert_eq!(a[0].shape, vec![e, c]);
        assert!(rel_err(&a[0].data, &want) == 0.0);
        let twice: Vec<f32> = want.iter().map(|v| v * 2.0).collect();
        assert!(rel_err(&a[1].data, &twice) < 1e-6);
        Ok(())
    }
}
