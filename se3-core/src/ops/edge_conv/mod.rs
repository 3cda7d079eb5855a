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
//!
//! [`radial_edge_conv`] is the fused form of one degree pair of a TFN convolution: it takes
//! the radial network's hidden activations instead of per-edge weight matrices and contracts
//! the kernel basis, the radial network's last layer and the gathered source rows per
//! destination node in cache ([`RadialEdgeConv`]); [`radial_edge_conv_unfused`] is the same
//! computation from plain graph operations (per-edge radial weights and messages).

pub(crate) mod backward;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod pass;
mod radial;
#[cfg(feature = "cuda")]
pub(crate) mod radial_cuda;

pub use cpu::EdgeConv;
use luminal::prelude::*;
pub use pass::EdgeConvFusion;
pub use radial::{Mode as RadialMode, PairShape, RadialEdgeConv};

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

/// Any axis of the fused radial edge convolution's inputs.
type A = Dyn<'-'>;

/// One degree pair of a TFN convolution, fused: for every node `n`,
///
/// `out[n, o, p] = sum_{e: dst e = n} w_e sum_{c, f} R_e[o, c, f] sum_q K_e[q, f, p] x[src e, c, q]`,
/// `R_e[(o, c, f)] = sum_h weight[(o, c, f), h] h_e[h] + bias[(o, c, f)]`
///
/// (the radial network's last layer applied to its hidden activations `h_e`), with `x (M, c_in
/// (2 d_in + 1))` rows `(c, q)`, the basis block `(E, 2 d_in + 1, nf (2 d_out + 1))` laid out `[q,
/// (f, p)]`, `h (E, hd)`, `weight (c_out c_in nf, hd)`, `bias (c_out c_in nf,)`, pooling weights
/// `w (E,)`, `src`, `dst (E,)` (`-1`: no edge) → `(N, c_out (2 d_out + 1))` rows `(o, p)`. The
/// per-edge weights `R_e` are never materialised: the kernel sums `w_e Kx_e (x) h_e` per node
/// and applies the last layer once per node (or, for nodes with few edges, forms `R_e` one
/// edge at a time in cache), see [`RadialEdgeConv`].
#[allow(clippy::too_many_arguments)]
pub fn radial_edge_conv<N: Dimension, M: Dimension, E: Dimension>(
    shape: PairShape,
    mode: RadialMode,
    x: GraphTensor<(M, A)>,
    basis: GraphTensor<(E, A, A)>,
    h: GraphTensor<(E, A)>,
    weight: GraphTensor<(A, A)>,
    bias: GraphTensor<(A,)>,
    w: GraphTensor<(E,)>,
    src: GraphTensor<(E,)>,
    dst: GraphTensor<(E,)>,
) -> GraphTensor<(N, A)> {
    // SAFETY: `x.graph_ref` points to the live graph all these tensors belong to, not otherwise
    // borrowed while the op is added.
    let g = unsafe { &mut *x.graph_ref };
    let dims = [
        N::const_size(),
        luminal::prelude::symbolic::Expression::from(shape.c_out * shape.mo()),
    ];
    let id = g
        .add_op(RadialEdgeConv { shape, mode })
        .input(x.id, 0, x.shape)
        .input(basis.id, 0, basis.shape)
        .input(h.id, 0, h.shape)
        .input(weight.id, 0, weight.shape)
        .input(bias.id, 0, bias.shape)
        .input(w.id, 0, w.shape)
        .input(src.id, 0, src.shape)
        .input(dst.id, 0, dst.shape)
        .input(dst.id, 0, size_view(&dims[..1]))
        .finish();
    GraphTensor::from_id(id, ShapeTracker::new(&dims), x.graph_ref)
}

/// [`radial_edge_conv`] from plain graph operations: per-edge radial weights `R = h W^T + b`,
/// `Kx` per edge, messages `R Kx`, weighted and scatter-added.
#[allow(clippy::too_many_arguments)]
pub fn radial_edge_conv_unfused<N: Dimension, M: Dimension, E: Dimension>(
    shape: PairShape,
    x: GraphTensor<(M, A)>,
    basis: GraphTensor<(E, A, A)>,
    h: GraphTensor<(E, A)>,
    weight: GraphTensor<(A, A)>,
    bias: GraphTensor<(A,)>,
    w: GraphTensor<(E,)>,
    src: GraphTensor<(E,)>,
    dst: GraphTensor<(E,)>,
) -> GraphTensor<(N, A)> {
    use crate::layers::graph::{bmm, expand_at, mm, reshape, retype, transpose};
    let (ci, di, mo, co, cf) = (shape.c_in, shape.di(), shape.mo(), shape.c_out, shape.cf());
    let e = logical_dims(&w.shape)[0];
    // R[e, (o, c, f)] = h W^T + b
    let r: GraphTensor<(A, A)> = mm(retype(h), transpose(weight)) + expand_at(bias, 0, e);
    let r: GraphTensor<(A, A, A)> = reshape(r, &[e, co.into(), cf.into()]);
    // Kx[e, (c, f), p] = sum_q x[src e, c, q] K[e, q, (f, p)]
    let xs: GraphTensor<(E, A)> = gather(x, src);
    let xs: GraphTensor<(A, A, A)> = reshape(xs, &[e, ci.into(), di.into()]);
    let kx = bmm(xs, retype(basis));
    let kx: GraphTensor<(A, A, A)> = reshape(kx, &[e, cf.into(), mo.into()]);
    let msg = bmm(r, kx);
    let wa: GraphTensor<(A, A)> = expand_at(retype::<_, (A,)>(w), 1, co);
    let msg = msg * expand_at::<_, (A, A, A)>(wa, 2, mo);
    let msg: GraphTensor<(E, A)> = reshape(msg, &[e, (co * mo).into()]);
    scatter_add::<N, A, E>(msg, dst)
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

    /// Plain-Rust reference of `radial_edge_conv` (per-edge radial weights, f64).
    #[allow(clippy::too_many_arguments)]
    fn radial_reference(
        sh: super::PairShape,
        x: &[f32],
        basis: &[f32],
        h: &[f32],
        wl: &[f32],
        bl: &[f32],
        w: &[f32],
        src: &[f32],
        dst: &[f32],
        n: usize,
        hd: usize,
    ) -> Vec<f32> {
        let (ci, di, nf, mo, co) = (sh.c_in, sh.di(), sh.nf, sh.mo(), sh.c_out);
        let mut out = vec![0.0f64; n * co * mo];
        for e in 0..src.len() {
            if src[e] < 0.0 || dst[e] < 0.0 {
                continue;
            }
            let (s, d) = (src[e] as usize, dst[e] as usize);
            for o in 0..co {
                for p in 0..mo {
                    let mut acc = 0.0f64;
                    for c in 0..ci {
                        for f in 0..nf {
                            let row = (o * ci + c) * nf + f;
                            let r: f64 = bl[row] as f64
                                + (0..hd)
                                    .map(|k| wl[row * hd + k] as f64 * h[e * hd + k] as f64)
                                    .sum::<f64>();
                            let kx: f64 = (0..di)
                                .map(|q| {
                                    x[s * ci * di + c * di + q] as f64
                                        * basis[e * di * nf * mo + (q * nf + f) * mo + p] as f64
                                })
                                .sum();
                            acc += r * kx;
                        }
                    }
                    out[(d * co + o) * mo + p] += w[e] as f64 * acc;
                }
            }
        }
        out.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn radial_edge_conv_matches_unfused_graph_and_plain_rust_in_every_mode() -> Result<(), Error> {
        use super::{PairShape, RadialMode};
        let mut r = rng();
        // (c_in, d_in, nf, c_out, d_out): degree 0 out with many channels (reassociated per
        // node, last layer in tiles of 8 channels and a remainder), degree 1 out (tiles of
        // 4 x 3), degree 2 out with few channels (direct for small nodes), a sliced frequency
        // count, and hidden widths that are not multiples of the vector lanes
        for (sh, hd) in [
            ((3, 1, 1, 9, 0), 32),
            ((2, 1, 3, 6, 1), 128),
            ((2, 2, 5, 2, 2), 21),
            ((4, 1, 2, 5, 2), 48),
        ] {
            let sh = PairShape {
                c_in: sh.0,
                d_in: sh.1,
                nf: sh.2,
                c_out: sh.3,
                d_out: sh.4,
            };
            let (n, e) = (r.gen_range(2..20), r.gen_range(1..120));
            let (di, mo, rows) = (sh.di(), sh.mo(), sh.c_out * sh.cf());
            let x = rand_vec(&mut r, n * sh.c_in * di);
            let basis = rand_vec(&mut r, e * di * sh.nf * mo);
            let h = rand_vec(&mut r, e * hd);
            let wl = rand_vec(&mut r, rows * hd);
            let bl = rand_vec(&mut r, rows);
            let w = rand_vec(&mut r, e);
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
            type A = Dyn<'-'>;
            let build = |s: &mut Session| {
                use crate::layers::graph::retype;
                // distinct symbols per axis (inputs sharing one symbol must agree in size)
                let xg: GraphTensor<(N, A)> =
                    retype(s.input::<(N, Dyn<'i'>)>("x", InputKind::Values));
                let bg: GraphTensor<(E, A, A)> =
                    retype(s.input::<(E, Dyn<'q'>, Dyn<'p'>)>("basis", InputKind::Values));
                let hg: GraphTensor<(E, A)> =
                    retype(s.input::<(E, Dyn<'h'>)>("h", InputKind::Values));
                let wg: GraphTensor<(A, A)> =
                    retype(s.input::<(Dyn<'r'>, Dyn<'h'>)>("wl", InputKind::Values));
                let blg: GraphTensor<(A,)> =
                    retype(s.input::<(Dyn<'r'>,)>("bl", InputKind::Values));
                let pw = s.input::<(E,)>("w", InputKind::Values);
                let sg = s.input::<(E,)>("src", kind);
                let dg = s.input::<(E,)>("dst", kind);
                for (name, mode) in [
                    ("auto", RadialMode::Auto),
                    ("re", RadialMode::Reassociated),
                    ("di", RadialMode::Direct),
                ] {
                    let y = super::radial_edge_conv::<N, N, E>(
                        sh, mode, xg, bg, hg, wg, blg, pw, sg, dg,
                    );
                    s.output(name, y);
                }
                let y =
                    super::radial_edge_conv_unfused::<N, N, E>(sh, xg, bg, hg, wg, blg, pw, sg, dg);
                s.output("unfused", y);
            };
            let inputs = [
                ("x", x.clone(), vec![n, sh.c_in * di]),
                ("basis", basis.clone(), vec![e, di, sh.nf * mo]),
                ("h", h.clone(), vec![e, hd]),
                ("wl", wl.clone(), vec![rows, hd]),
                ("bl", bl.clone(), vec![rows]),
                ("w", w.clone(), vec![e]),
                ("src", src.clone(), vec![e]),
                ("dst", dst.clone(), vec![e]),
            ];
            let (a, b, _) = run_both(build, &inputs, &["auto", "re", "di", "unfused"])?;
            let want = radial_reference(sh, &x, &basis, &h, &wl, &bl, &w, &src, &dst, n, hd);
            for (i, name) in ["auto", "re", "di", "unfused"].iter().enumerate() {
                let err = rel_err(&a[i].data, &want);
                assert!(err < 1e-5, "{sh:?} {name} (compiled): {err}");
                let err = rel_err(&b[i].data, &want);
                assert!(err < 1e-5, "{sh:?} {name} (plain luminal): {err}");
            }
        }
        Ok(())
    }
}
