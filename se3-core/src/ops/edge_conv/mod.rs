//! The fused edge kernel of tensor-product convolutions: gather source features, apply the
//! per-edge weights, and reduce into destinations, in one pass without per-edge intermediates:
//!
//! - matrix weights: `out[n, o] = sum over e with dst[e] = n of sum_i w[e, o, i] x[src[e], i]`
//!   (`x (N, Ci)`, `w (E, Co, Ci)`);
//! - diagonal weights: `out[n, c] = sum over e with dst[e] = n of w[e, c] x[src[e], c]`
//!   (`x (N, C)`, `w (E, C)`, e.g. attention-weighted sums).
//!
//! Edges with `src` or `dst` equal to `-1` contribute nothing. [`edge_conv`] and
//! [`edge_conv_diag`] add the fused op directly; [`edge_conv_unfused`] and
//! [`edge_conv_diag_unfused`] build the same computation from `gather`, a broadcast product, a
//! sum and `scatter_add`, and [`EdgeConvFusion`] (part of `CpuCompiler`) finds that pattern and
//! swaps the fused op in.

mod cpu;
mod pass;

pub use cpu::EdgeConv;
use luminal::prelude::*;
pub use pass::EdgeConvFusion;

use super::{gather, logical_dims, scatter_add, size_view};

fn add<N: Dimension, Co: Dimension>(
    op: EdgeConv,
    x: (NodeIndex, ShapeTracker),
    w: (NodeIndex, ShapeTracker),
    src: (NodeIndex, ShapeTracker),
    dst: (NodeIndex, ShapeTracker),
    co: luminal::prelude::symbolic::Expression,
    graph_ref: *mut Graph,
) -> GraphTensor<(N, Co)> {
    // SAFETY: `graph_ref` comes from a live `GraphTensor` of the caller, whose graph is alive
    // and not otherwise borrowed while graph operations are being built.
    let g = unsafe { &mut *graph_ref };
    let dims = [N::const_size(), co];
    let id = g
        .add_op(op)
        .input(x.0, 0, x.1)
        .input(w.0, 0, w.1)
        .input(src.0, 0, src.1)
        .input(dst.0, 0, dst.1)
        .input(dst.0, 0, size_view(&dims[..1]))
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), graph_ref)
}

/// Fused `out[n] = sum_{e: dst[e] = n} w[e] x[src[e]]` with a matrix per edge:
/// `x (M, Ci)`, `w (E, Co, Ci)`, `src (E,)`, `dst (E,)` → `(N, Co)`.
pub fn edge_conv<N: Dimension, M: Dimension, E: Dimension, Co: Dimension, Ci: Dimension>(
    x: GraphTensor<(M, Ci)>,
    w: GraphTensor<(E, Co, Ci)>,
    src: GraphTensor<(E,)>,
    dst: GraphTensor<(E,)>,
) -> GraphTensor<(N, Co)> {
    let co = logical_dims(&w.shape)[1];
    add(
        EdgeConv { diagonal: false },
        (x.id, x.shape),
        (w.id, w.shape),
        (src.id, src.shape),
        (dst.id, dst.shape),
        co,
        x.graph_ref,
    )
}

/// Fused `out[n, c] = sum_{e: dst[e] = n} w[e, c] x[src[e], c]`:
/// `x (M, C)`, `w (E, C)`, `src (E,)`, `dst (E,)` → `(N, C)`.
pub fn edge_conv_diag<N: Dimension, M: Dimension, E: Dimension, C: Dimension>(
    x: GraphTensor<(M, C)>,
    w: GraphTensor<(E, C)>,
    src: GraphTensor<(E,)>,
    dst: GraphTensor<(E,)>,
) -> GraphTensor<(N, C)> {
    let c = logical_dims(&w.shape)[1];
    add(
        EdgeConv { diagonal: true },
        (x.id, x.shape),
        (w.id, w.shape),
        (src.id, src.shape),
        (dst.id, dst.shape),
        c,
        x.graph_ref,
    )
}

/// [`edge_conv`] built from primitives (gather, broadcast product, sum, scatter-add).
pub fn edge_conv_unfused<N: Dimension, M: Dimension, E: Dimension, Co: Dimension, Ci: Dimension>(
    x: GraphTensor<(M, Ci)>,
    w: GraphTensor<(E, Co, Ci)>,
    src: GraphTensor<(E,)>,
    dst: GraphTensor<(E,)>,
) -> GraphTensor<(N, Co)> {
    let g = gather(x, src);
    let m = (g.expand::<(E, Co, Ci), _>() * w).sum_reduce::<(E, Co), _>();
    scatter_add::<N, Co, E>(m, dst)
}

/// [`edge_conv_diag`] built from primitives (gather, product, scatter-add).
pub fn edge_conv_diag_unfused<N: Dimension, M: Dimension, E: Dimension, C: Dimension>(
    x: GraphTensor<(M, C)>,
    w: GraphTensor<(E, C)>,
    src: GraphTensor<(E,)>,
    dst: GraphTensor<(E,)>,
) -> GraphTensor<(N, C)> {
    scatter_add::<N, C, E>(gather(x, src) * w, dst)
}

#[cfg(test)]
mod tests {
    use luminal::prelude::*;
    use rand::Rng;

    use crate::exec::tests::{rand_vec, rel_err, rng, run_both};
    use crate::exec::{IndexBound, InputKind, Session};
    use crate::Error;

    type N = Dyn<'n'>;
    type E = Dyn<'e'>;

    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        w: &[f32],
        src: &[f32],
        dst: &[f32],
        n: usize,
        co: usize,
        ci: usize,
        diag: bool,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; n * co];
        for e in 0..src.len() {
            if src[e] < 0.0 || dst[e] < 0.0 {
                continue;
            }
            let (s, d) = (src[e] as usize, dst[e] as usize);
            for o in 0..co {
                out[d * co + o] += if diag {
                    w[e * co + o] * x[s * co + o]
                } else {
                    (0..ci)
                        .map(|i| w[(e * co + o) * ci + i] * x[s * ci + i])
                        .sum::<f32>()
                };
            }
        }
        out
    }

    #[test]
    fn fusion_pass_swaps_in_edge_conv_and_matches_unfused_graph_and_plain_rust() -> Result<(), Error>
    {
        let mut r = rng();
        let (n, e, co, ci) = (
            r.gen_range(1..25),
            r.gen_range(1..90),
            r.gen_range(1..6),
            r.gen_range(1..6),
        );
        let x = rand_vec(&mut r, n * ci);
        let xd = rand_vec(&mut r, n * co);
        let w = rand_vec(&mut r, e * co * ci);
        let wd = rand_vec(&mut r, e * co);
        let idx = |r: &mut rand::rngs::StdRng| {
            (0..e)
                .map(|_| r.gen_range(-1..n as i64) as f32)
                .collect::<Vec<f32>>()
        };
        let (src, dst) = (idx(&mut r), idx(&mut r));
        let kind = InputKind::Indices {
            bound: IndexBound::Dim('n'),
            allow_missing: true,
        };
        let build = |s: &mut Session| {
            let x = s.input::<(N, Dyn<'i'>)>("x", InputKind::Values);
            let xd = s.input::<(N, Dyn<'o'>)>("xd", InputKind::Values);
            let w = s.input::<(E, Dyn<'o'>, Dyn<'i'>)>("w", InputKind::Values);
            let wd = s.input::<(E, Dyn<'o'>)>("wd", InputKind::Values);
            let src = s.input::<(E,)>("src", kind);
            let dst = s.input::<(E,)>("dst", kind);
            s.output(
                "m",
                super::edge_conv_unfused::<N, N, E, _, _>(x, w, src, dst),
            );
            s.output(
                "d",
                super::edge_conv_diag_unfused::<N, N, E, _>(xd, wd, src, dst),
            );
            s.output("mf", super::edge_conv::<N, N, E, _, _>(x, w, src, dst));
            s.output("df", super::edge_conv_diag::<N, N, E, _>(xd, wd, src, dst));
        };
        let inputs = [
            ("x", x.clone(), vec![n, ci]),
            ("xd", xd.clone(), vec![n, co]),
            ("w", w.clone(), vec![e, co, ci]),
            ("wd", wd.clone(), vec![e, co]),
            ("src", src.clone(), vec![e]),
            ("dst", dst.clone(), vec![e]),
        ];
        let (a, b, s) = run_both(build, &inputs, &["m", "d", "mf", "df"])?;
        let names = s.op_names();
        assert_eq!(
            names.iter().filter(|o| o.starts_with("EdgeConv")).count(),
            4,
            "{names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|o| o.starts_with("GatherRows") || o.starts_with("ScatterAdd")),
            "{names:?}"
        );
        let rm = reference(&x, &w, &src, &dst, n, co, ci, false);
        let rd = reference(&xd, &wd, &src, &dst, n, co, co, true);
        assert!(rel_err(&a[0].data, &b[0].data) < 1e-5 && rel_err(&a[0].data, &rm) < 1e-5);
        assert!(rel_err(&a[1].data, &b[1].data) < 1e-5 && rel_err(&a[1].data, &rd) < 1e-5);
        assert!(rel_err(&a[2].data, &rm) < 1e-5);
        assert!(rel_err(&a[3].data, &rd) < 1e-5);
        Ok(())
    }
}
