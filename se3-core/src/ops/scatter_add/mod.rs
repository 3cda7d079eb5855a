//! Scatter-add (segment sum): `out[n, :] = sum over e with idx[e] = n of src[e, :]`; edges with
//! index `-1` are skipped and destinations without edges get zeros. Summation order is the
//! edge order (deterministic). Its adjoint is [`gather`](crate::ops::gather()).

pub(crate) mod backward;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

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

/// [`scatter_add`] for rows with two trailing axes: `(E, A, B)`, `(E,)` → `(N, A, B)`.
pub fn scatter_add3<N: Dimension, A: Dimension, B: Dimension, E: Dimension>(
    src: GraphTensor<(E, A, B)>,
    idx: GraphTensor<(E,)>,
) -> GraphTensor<(N, A, B)> {
    let s = logical_dims(&src.shape);
    let dims = [N::const_size(), s[1], s[2]];
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

    #[test]
    fn serial_and_bucketed_scatter_paths_agree_bit_for_bit() {
        let mut r = rng();
        let (n, c, e) = (600, 512, 3000);
        let src = rand_vec(&mut r, e * c);
        let idx: Vec<f32> = (0..e).map(|_| r.gen_range(-1..n as i64) as f32).collect();
        let mut big = vec![0.0f32; n * c];
        super::cpu::scatter_rows(&src, c, &idx, &mut big);
        // The first 8 columns alone fit the serial path.
        let narrow: Vec<f32> = src.chunks(c).flat_map(|row| row[..8].to_vec()).collect();
        let mut small = vec![0.0f32; n * 8];
        super::cpu::scatter_rows(&narrow, 8, &idx, &mut small);
        for d in 0..n {
            assert_eq!(&big[d * c..d * c + 8], &small[d * 8..(d + 1) * 8]);
        }
    }

    #[test]
    fn rank3_gather_and_scatter_move_whole_blocks_through_permuted_views() -> Result<(), Error> {
        let mut r = rng();
        let (n, a, b, e) = (
            r.gen_range(1..12),
            r.gen_range(1..4),
            r.gen_range(1..6),
            r.gen_range(1..40),
        );
        let t = rand_vec(&mut r, n * b * a);
        let idx: Vec<f32> = (0..e).map(|_| r.gen_range(-1..n as i64) as f32).collect();
        let build = |s: &mut crate::exec::Session| {
            // Stored as (n, b, a), used as (n, a, b) through a permuted view.
            let t = s.input::<(Dyn<'n'>, Dyn<'b'>, Dyn<'a'>)>("t", InputKind::Values);
            let i = s.input::<(Dyn<'e'>,)>(
                "i",
                InputKind::Indices {
                    bound: IndexBound::Dim('n'),
                    allow_missing: true,
                },
            );
            let tp = t.permute::<(Dyn<'n'>, Dyn<'a'>, Dyn<'b'>), _>();
            let g = crate::ops::gather::gather3(tp, i);
            s.output("g", g);
            s.output("s", super::scatter_add3::<Dyn<'n'>, _, _, _>(g, i));
        };
        let at = |p: usize, q: usize, k: usize| t[(p * b + k) * a + q];
        let mut g = vec![];
        let mut sc = vec![0.0f32; n * a * b];
        for &i in &idx {
            for q in 0..a {
                for k in 0..b {
                    let v = if i < 0.0 { 0.0 } else { at(i as usize, q, k) };
                    g.push(v);
                    if i >= 0.0 {
                        sc[(i as usize * a + q) * b + k] += v;
                    }
                }
            }
        }
        let (x, y, _) = run_both(
            build,
            &[("t", t.clone(), vec![n, b, a]), ("i", idx, vec![e])],
            &["g", "s"],
        )?;
        assert_eq!(x[0].shape, vec![e, a, b]);
        assert!(rel_err(&x[0].data, &g) == 0.0 && rel_err(&x[1].data, &sc) < 1e-6);
        assert!(rel_err(&x[1].data, &y[1].data) < 1e-6);
        Ok(())
    }
}
