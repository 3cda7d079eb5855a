//! Per-edge geometry as graph compositions of [`gather()`], so gradients
//! flow to the coordinates: relative positions `x[center] - x[neighbor]` (the
//! se3-transformer-pytorch convention, `rel_pos[i, j] = x_i - x_j`) and their lengths.

use luminal::prelude::*;

use super::gather;

/// `x[center[e]] - x[neighbor[e]]`: `(N, 3)`, `(E,)`, `(E,)` → `(E, 3)`. Edges with a `-1`
/// index read that end as the origin; mask them downstream.
pub fn relative_positions<N: Dimension, E: Dimension>(
    coords: GraphTensor<(N, Const<3>)>,
    center: GraphTensor<(E,)>,
    neighbor: GraphTensor<(E,)>,
) -> GraphTensor<(E, Const<3>)> {
    gather(coords, center) - gather(coords, neighbor)
}

/// Euclidean lengths of rows: `(E, 3)` → `(E,)`; 0 for zero-length edges (coincident points),
/// never NaN.
pub fn distances<E: Dimension>(rel: GraphTensor<(E, Const<3>)>) -> GraphTensor<(E,)> {
    (rel * rel).sum_reduce::<(E,), _>().sqrt()
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rel_err, rng, run_both};
    use crate::exec::{IndexBound, InputKind};
    use crate::Error;

    #[test]
    fn relative_positions_and_distances_match_plain_rust_including_zero_length() -> Result<(), Error>
    {
        let mut r = rng();
        let (n, e) = (r.gen_range(1..20), r.gen_range(1..60));
        let x = rand_vec(&mut r, n * 3);
        let ci: Vec<f32> = (0..e).map(|_| r.gen_range(0..n) as f32).collect();
        let mut ni: Vec<f32> = (0..e).map(|_| r.gen_range(0..n) as f32).collect();
        ni[0] = ci[0]; // a zero-length edge
        let bound = InputKind::Indices {
            bound: IndexBound::Dim('n'),
            allow_missing: false,
        };
        let build = |s: &mut crate::exec::Session| {
            let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
            let c = s.input::<(Dyn<'e'>,)>("c", bound);
            let nb = s.input::<(Dyn<'e'>,)>("nb", bound);
            let rel = super::relative_positions(x, c, nb);
            s.output("rel", rel);
            s.output("d", super::distances(rel));
        };
        let mut rel = vec![];
        let mut d = vec![];
        for k in 0..e {
            let (i, j) = (ci[k] as usize, ni[k] as usize);
            let v: Vec<f32> = (0..3).map(|a| x[i * 3 + a] - x[j * 3 + a]).collect();
            d.push(v.iter().map(|q| q * q).sum::<f32>().sqrt());
            rel.extend(v);
        }
        let (a, b, _) = run_both(
            build,
            &[
                ("x", x, vec![n, 3]),
                ("c", ci, vec![e]),
                ("nb", ni, vec![e]),
            ],
            &["rel", "d"],
        )?;
        assert!(rel_err(&a[0].data, &rel) < 1e-6 && rel_err(&a[1].data, &d) < 1e-6);
        assert!(rel_err(&a[1].data, &b[1].data) < 1e-6);
        assert_eq!(a[1].data[0], 0.0);
        Ok(())
    }
}
