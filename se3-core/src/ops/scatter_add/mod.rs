//! Scatter-add (segment sum): `out[n, :] = sum over e with idx[e] = n of src[e, :]`; edges with
//! index `-1` are skipped and destinations without edges get zeros. Summation order is the
//! edge order (deterministic). Its adjoint is [`gather`](crate::ops::gather).

mod cpu;

pub(crate) use cpu::buckets as cpu_buckets;
pub use cpu::ScatterAdd;
use luminal::prelude::*;

use super::{logical_dims, size_view};

/// Sums the rows of `src` into `N` destinations: `(E, C)`, `(E,)` → `(N, C)`; the size of `N`
/// is read from its type (`Dyn<'n'>` takes the run's value of `n`).
pub fn scatter_add<N: Dimension, C: Dimension, E: Dimension>(
    src: GraphTensor<(E, C)>,
    idx: GraphTensor<(E,)>,
) -> GraphTensor<(N, C)> {
    let dims = [N::const_size(), logical_dims(&src.shape)[1]];
    let id = src
        .graph()
        .add_op(ScatterAdd)
        .input(src.id, 0, src.shape)
        .input(idx.id, 0, idx.shape)
        .input(idx.id, 0, size_view(&dims[..1]))
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), src.graph_ref)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rel_err, rng, run_both};
    use crate::exec::{IndexBound, InputKind};
    use crate::Error;

    #[test]
    fn scatter_add_matches_plain_rust_and_is_adjoint_of_gather() -> Result<(), Error> {
        let mut r = rng();
        let (n, c, e) = (r.gen_range(1..30), r.gen_range(1..9), r.gen_range(1..120));
        let src = rand_vec(&mut r, e * c);
        let y = rand_vec(&mut r, n * c);
        let idx: Vec<f32> = (0..e).map(|_| r.gen_range(-1..n as i64) as f32).collect();
        let build = |s: &mut crate::exec::Session| {
            let x = s.input::<(Dyn<'e'>, Dyn<'c'>)>("x", InputKind::Values);
            let y = s.input::<(Dyn<'n'>, Dyn<'c'>)>("y", InputKind::Values);
            let i = s.input::<(Dyn<'e'>,)>(
                "i",
                InputKind::Indices {
                    bound: IndexBound::Dim('n'),
                    allow_missing: true,
                },
            );
            s.output("s", super::scatter_add::<Dyn<'n'>, _, _>(x, i));
            s.output("g", crate::ops::gather(y, i));
        };
        let mut want = vec![0.0f32; n * c];
        for (k, &i) in idx.iter().enumerate() {
            if i >= 0.0 {
                for j in 0..c {
                    want[i as usize * c + j] += src[k * c + j];
                }
            }
        }
        let (a, _, _) = run_both(
            build,
            &[
                ("x", src.clone(), vec![e, c]),
                ("y", y.clone(), vec![n, c]),
                ("i", idx, vec![e]),
            ],
            &["s", "g"],
        )?;
        assert_eq!(a[0].shape, vec![n, c]);
        assert!(rel_err(&a[0].data, &want) < 1e-6);
        // <scatter(x), y> = <x, gather(y)>
        let lhs: f64 = a[0].data.iter().zip(&y).map(|(p, q)| (p * q) as f64).sum();
        let rhs: f64 = src
            .iter()
            .zip(&a[1].data)
            .map(|(p, q)| (p * q) as f64)
            .sum();
        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()));
        Ok(())
    }
}
