//! Softmax over segments: for each destination `n` and column `h`,
//! `out[e, h] = exp(x[e, h] - m) / sum over e' in seg n of exp(x[e', h] - m)` with `m` the
//! segment maximum (numerically stable), over the edges `e` with `seg[e] = n`. Edges with
//! segment `-1` (masked) get 0 and take no part. A segment of one edge gives 1.
//!
//! Adjoint: `dx = y * (g - gather(scatter_add(g * y, seg), seg))`.

pub(crate) mod backward;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;

pub use cpu::SegmentSoftmax;
use luminal::prelude::*;

use super::{logical_dims, size_view};

/// Softmax of `logits (E, H)` over the edges sharing a segment in `seg (E,)`, with `N`
/// segments; output `(E, H)`.
pub fn segment_softmax<N: Dimension, E: Dimension, H: Dimension>(
    logits: GraphTensor<(E, H)>,
    seg: GraphTensor<(E,)>,
) -> GraphTensor<(E, H)> {
    let dims = logical_dims(&logits.shape);
    let id = logits
        .graph()
        .add_op(SegmentSoftmax)
        .input(logits.id, 0, logits.shape)
        .input(seg.id, 0, seg.shape)
        .input(seg.id, 0, size_view(&[N::const_size()]))
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), logits.graph_ref)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rel_err, rng, run_both};
    use crate::exec::{IndexBound, InputKind};
    use crate::Error;

    #[test]
    fn segment_softmax_matches_plain_rust_and_sums_to_one_per_segment() -> Result<(), Error> {
        let mut r = rng();
        let (n, h, e) = (r.gen_range(1..20), r.gen_range(1..4), r.gen_range(1..100));
        let x: Vec<f32> = rand_vec(&mut r, e * h).iter().map(|v| v * 30.0).collect();
        let seg: Vec<f32> = (0..e).map(|_| r.gen_range(-1..n as i64) as f32).collect();
        let build = |s: &mut crate::exec::Session| {
            let x = s.input::<(Dyn<'e'>, Dyn<'h'>)>("x", InputKind::Values);
            let i = s.input::<(Dyn<'e'>,)>(
                "s",
                InputKind::Indices {
                    bound: IndexBound::Dim('n'),
                    allow_missing: true,
                },
            );
            let _ = s.input::<(Dyn<'n'>,)>("nodes", InputKind::Values);
            s.output("y", super::segment_softmax::<Dyn<'n'>, _, _>(x, i));
        };
        let mut want = vec![0.0f32; e * h];
        for d in 0..n {
            for k in 0..h {
                let members: Vec<usize> = (0..e).filter(|&j| seg[j] == d as f32).collect();
                let m = members
                    .iter()
                    .map(|&j| x[j * h + k] as f64)
                    .fold(f64::MIN, f64::max);
                let z: f64 = members
                    .iter()
                    .map(|&j| (x[j * h + k] as f64 - m).exp())
                    .sum();
                for &j in &members {
                    want[j * h + k] = ((x[j * h + k] as f64 - m).exp() / z) as f32;
                }
            }
        }
        let (a, _, _) = run_both(
            build,
            &[
                ("x", x, vec![e, h]),
                ("s", seg, vec![e]),
                ("nodes", vec![0.0; n], vec![n]),
            ],
            &["y"],
        )?;
        assert!(rel_err(&a[0].data, &want) < 1e-5);
        Ok(())
    }
}
