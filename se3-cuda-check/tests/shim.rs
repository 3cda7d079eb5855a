//! Every CUDA kernel executed on the CPU through the shim (`shim/cuda_shim.h`) and compared
//! with se3's CPU backend (a `Session` running the same op) on fresh random inputs: sizes that
//! are not multiples of the block size, small grids (the grid-stride loops wrap), empty
//! segments, masked (-1) indices and duplicate indices. Each test prints its largest error.
//!
//! `kernel_report_registers_spills_and_shim_errors` runs every case again and compiles every
//! kernel with NVRTC + ptxas for sm_80 and sm_90, then prints one table: per kernel its
//! registers, stack and spills on each architecture and the largest CPU-shim error; it fails
//! on a compile error, a spill in a hot kernel, or a listed kernel that no case executed.
//! Without the compilers (`scripts/install-cuda-compilers` not run) it prints the errors with
//! a skip note for the compile columns, unless `SE3_REQUIRE_CUDA_COMPILERS` is set (CI), where
//! their absence fails.

use std::cell::RefCell;
use std::collections::BTreeMap;

use luminal::prelude::{symbolic::Expression, *};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3_core::exec::kernels::{DeviceInstr, ViewDesc};
use se3_core::exec::{IndexBound, InputKind, Session};
use se3_core::Error;
use se3_cuda_check::shim::{self, Launch};

/// Launch shapes: one small grid of odd-sized blocks and one of a warp multiple.
const LAUNCHES: [Launch; 2] = [
    Launch { grid: 3, block: 96 },
    Launch {
        grid: 2,
        block: 160,
    },
];

thread_local! {
    /// The largest error per kernel of the cases run on this thread, while a report collects.
    static RECORDED: RefCell<Option<BTreeMap<&'static str, f32>>> = const { RefCell::new(None) };
}

/// Notes `err` as an error of `kernel` (kept if it is the largest so far, NaN always).
fn record(kernel: &'static str, err: f32) {
    RECORDED.with(|r| {
        if let Some(m) = r.borrow_mut().as_mut() {
            let e = m.entry(kernel).or_insert(0.0);
            if err.is_nan() || err > *e {
                *e = err;
            }
        }
    });
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(rand::thread_rng().gen())
}

fn rand_vec(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-2.0f32..2.0)).collect()
}

/// Indices in `-1..n` with duplicates; some of `0..n` unused (empty segments).
fn rand_idx(r: &mut StdRng, e: usize, n: usize) -> Vec<f32> {
    (0..e)
        .map(|_| {
            if r.gen_bool(0.15) {
                -1.0
            } else {
                // the upper quarter of the destinations stays empty
                r.gen_range(0..(3 * n / 4).max(1)) as f32
            }
        })
        .collect()
}

/// max |a - b| / max(1, |b|) (0 for equal NaN positions); fails on a length mismatch.
fn max_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() && y.is_nan() {
                0.0
            } else {
                (x - y).abs() / y.abs().max(1.0)
            }
        })
        .fold(
            0.0,
            |m: f32, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        )
}

fn indices(n: char) -> InputKind {
    InputKind::Indices {
        bound: IndexBound::Dim(n),
        allow_missing: true,
    }
}

#[test]
fn gather_rows_matches_cpu() -> Result<(), Error> {
    let mut r = rng();
    let (n, c, e) = (r.gen_range(2..40), r.gen_range(1..9), r.gen_range(300..700));
    let (table, idx) = (rand_vec(&mut r, n * c), rand_idx(&mut r, e, n));
    let mut s = Session::new();
    let t = s.input::<(Dyn<'n'>, Dyn<'c'>)>("t", InputKind::Values);
    let i = s.input::<(Dyn<'e'>,)>("i", indices('n'));
    s.output("g", se3_core::ops::gather(t, i));
    s.set("t", table.clone(), &[n, c])?;
    s.set("i", idx.clone(), &[e])?;
    s.run()?;
    let want = s.get("g")?.data;
    for l in LAUNCHES {
        let err = max_err(&shim::gather_rows(l, &table, &idx, c), &want);
        println!("gather_rows {l:?}: max error {err:e}");
        record("gather_rows", err);
        assert_eq!(err, 0.0);
    }
    Ok(())
}

fn cpu_scatter(src: &[f32], idx: &[f32], n: usize, c: usize) -> Result<Vec<f32>, Error> {
    let mut s = Session::new();
    s.set_dim('n', n);
    let x = s.input::<(Dyn<'e'>, Dyn<'c'>)>("x", InputKind::Values);
    let i = s.input::<(Dyn<'e'>,)>("i", indices('n'));
    s.output("s", se3_core::ops::scatter_add::<Dyn<'n'>, _, _>(x, i));
    s.set("x", src.to_vec(), &[idx.len(), c])?;
    s.set("i", idx.to_vec(), &[idx.len()])?;
    s.run()?;
    Ok(s.get("s")?.data)
}

#[test]
fn scatter_add_atomic_and_deterministic_match_cpu() -> Result<(), Error> {
    let mut r = rng();
    let (n, c, e) = (r.gen_range(4..50), r.gen_range(1..7), r.gen_range(300..900));
    let (src, idx) = (rand_vec(&mut r, e * c), rand_idx(&mut r, e, n));
    let want = cpu_scatter(&src, &idx, n, c)?;
    for l in LAUNCHES {
        let det = max_err(&shim::scatter_add_sorted(l, &src, &idx, n, c), &want);
        let atomic = max_err(&shim::scatter_add_atomic(l, &src, &idx, n, c), &want);
        println!("scatter_add {l:?}: deterministic max error {det:e}, atomic {atomic:e}");
        record("scatter_add_sorted", det);
        record("scatter_add_atomic", atomic);
        // the deterministic mode sums in edge order, as the CPU kernel: bit for bit
        assert_eq!(det, 0.0);
        assert!(atomic < 1e-5, "atomic scatter-add error {atomic}");
    }
    Ok(())
}

#[test]
fn buckets_are_stable_counting_sort_with_empty_segments() -> Result<(), Error> {
    let mut r = rng();
    let (n, e) = (r.gen_range(5..60), r.gen_range(200..500));
    let idx = rand_idx(&mut r, e, n);
    let (start, order) = shim::buckets(LAUNCHES[0], &idx, n);
    let mut want_start = vec![0u32; n + 1];
    let mut want_order = Vec::new();
    for d in 0..n {
        let into: Vec<u32> = (0..e as u32)
            .filter(|&j| idx[j as usize] == d as f32)
            .collect();
        want_start[d + 1] = want_start[d] + into.len() as u32;
        want_order.extend(into);
    }
    let differ = |a: &[u32], b: &[u32]| {
        (a.len().abs_diff(b.len()) + a.iter().zip(b).filter(|(x, y)| x != y).count()) as f32
    };
    // the four bucket kernels run together: their error is the number of wrong entries
    let wrong = differ(&start, &want_start) + differ(&order, &want_order);
    for k in ["bucket_count", "bucket_scan", "bucket_fill", "bucket_sort"] {
        record(k, wrong);
    }
    assert_eq!(start, want_start);
    assert_eq!(order, want_order);
    assert!(
        (0..n).any(|d| start[d] == start[d + 1]),
        "no empty segment drawn"
    );
    Ok(())
}

#[test]
fn segment_softmax_matches_cpu() -> Result<(), Error> {
    let mut r = rng();
    let (n, h, e) = (r.gen_range(4..40), r.gen_range(1..5), r.gen_range(300..700));
    let (x, seg) = (rand_vec(&mut r, e * h), rand_idx(&mut r, e, n));
    let mut s = Session::new();
    s.set_dim('n', n);
    let xt = s.input::<(Dyn<'e'>, Dyn<'h'>)>("x", InputKind::Values);
    let st = s.input::<(Dyn<'e'>,)>("s", indices('n'));
    s.output(
        "y",
        se3_core::ops::segment_softmax::<Dyn<'n'>, _, _>(xt, st),
    );
    s.set("x", x.clone(), &[e, h])?;
    s.set("s", seg.clone(), &[e])?;
    s.run()?;
    let want = s.get("y")?.data;
    for l in LAUNCHES {
        let err = max_err(&shim::segment_softmax(l, &x, &seg, n, h), &want);
        println!("segment_softmax_sorted {l:?}: max error {err:e}");
        record("segment_softmax_sorted", err);
        assert!(err < 1e-6, "segment softmax error {err}");
    }
    Ok(())
}

#[test]
fn relative_positions_match_cpu() -> Result<(), Error> {
    let mut r = rng();
    let (n, e) = (r.gen_range(3..40), r.gen_range(300..700));
    let coords = rand_vec(&mut r, n * 3);
    let (a, b) = (rand_idx(&mut r, e, n), rand_idx(&mut r, e, n));
    let mut s = Session::new();
    let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
    let ct = s.input::<(Dyn<'e'>,)>("a", indices('n'));
    let nt = s.input::<(Dyn<'e'>,)>("b", indices('n'));
    let rel = se3_core::ops::relative_positions(x, ct, nt);
    s.output("rel", rel);
    s.output("dist", se3_core::ops::distances(rel));
    s.set("x", coords.clone(), &[n, 3])?;
    s.set("a", a.clone(), &[e])?;
    s.set("b", b.clone(), &[e])?;
    s.run()?;
    let (want_rel, want_dist) = (s.get("rel")?.data, s.get("dist")?.data);
    for l in LAUNCHES {
        let (rel, dist) = shim::relative_positions(l, &coords, &a, &b);
        let (e1, e2) = (max_err(&rel, &want_rel), max_err(&dist, &want_dist));
        println!("relative_positions {l:?}: max error rel {e1:e}, dist {e2:e}");
        record("relative_positions", e1.max(e2));
        assert_eq!(e1, 0.0);
        assert!(e2 < 1e-6, "distance error {e2}");
    }
    Ok(())
}

#[test]
fn layer_norm_gelu_matches_cpu() -> Result<(), Error> {
    let mut r = rng();
    let (rows, w) = (r.gen_range(20..90), r.gen_range(2..80));
    let x = rand_vec(&mut r, rows * w);
    let (b, g, be) = (
        rand_vec(&mut r, w),
        rand_vec(&mut r, w),
        rand_vec(&mut r, w),
    );
    let mut s = Session::new();
    let xt = s.input::<(Dyn<'r'>, Dyn<'w'>)>("x", InputKind::Values);
    let bt = s.input::<(Dyn<'w'>,)>("b", InputKind::Values);
    let gt = s.input::<(Dyn<'w'>,)>("g", InputKind::Values);
    let et = s.input::<(Dyn<'w'>,)>("e", InputKind::Values);
    s.output("y", se3_core::ops::layer_norm_gelu(xt, bt, gt, et, 1e-5));
    s.set("x", x.clone(), &[rows, w])?;
    s.set("b", b.clone(), &[w])?;
    s.set("g", g.clone(), &[w])?;
    s.set("e", be.clone(), &[w])?;
    s.run()?;
    let want = s.get("y")?.data;
    for l in [
        Launch { grid: 2, block: 64 },
        Launch {
            grid: 3,
            block: 128,
        },
    ] {
        let err = max_err(&shim::layer_norm_gelu(l, &x, &b, &g, &be, 1e-5), &want);
        println!("layer_norm_gelu_rows {l:?}: max error {err:e}");
        record("layer_norm_gelu_rows", err);
        assert!(err < 1e-5, "layer_norm_gelu error {err}");
    }
    Ok(())
}

#[test]
fn layer_norm_gelu_grad_matches_cpu() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    use se3_core::ops::layer_norm_gelu::LayerNormGeluGrad;
    let mut r = rng();
    // widths below, at and above one warp's 32 lanes
    for w in [r.gen_range(8..32), 32, r.gen_range(33..150)] {
        let rows = r.gen_range(20..90);
        let x = rand_vec(&mut r, rows * w);
        let g = rand_vec(&mut r, rows * w);
        let (b, ga, be) = (
            rand_vec(&mut r, w),
            rand_vec(&mut r, w),
            rand_vec(&mut r, w),
        );
        let mut s = Session::new();
        let wd = [Expression::from(w)];
        let xt = s.input_with_shape::<(X, X)>("x", InputKind::Values, &['r'.into(), w.into()]);
        let gt = s.input_with_shape::<(X, X)>("g", InputKind::Values, &['r'.into(), w.into()]);
        let vt: Vec<GraphTensor<(X,)>> = ["b", "ga", "be"]
            .iter()
            .map(|n| s.input_with_shape::<(X,)>(n, InputKind::Values, &wd))
            .collect();
        let id = xt
            .graph()
            .add_op(LayerNormGeluGrad { eps: 1e-5 })
            .input(xt.id, 0, xt.shape)
            .input(vt[0].id, 0, vt[0].shape)
            .input(vt[1].id, 0, vt[1].shape)
            .input(vt[2].id, 0, vt[2].shape)
            .input(gt.id, 0, gt.shape)
            .finish();
        s.output(
            "d",
            GraphTensor::<(X, X)>::from_id(
                id,
                ShapeTracker::new(&[Expression::from('r') + 3, w.into()]),
                xt.graph_ref,
            ),
        );
        s.set("x", x.clone(), &[rows, w])?;
        s.set("g", g.clone(), &[rows, w])?;
        s.set("b", b.clone(), &[w])?;
        s.set("ga", ga.clone(), &[w])?;
        s.set("be", be.clone(), &[w])?;
        s.run()?;
        let want = s.get("d")?.data;
        for l in [Launch { grid: 2, block: 64 }, Launch { grid: 3, block: 96 }] {
            let got = shim::layer_norm_gelu_grad(l, &x, &b, &ga, &be, &g, 1e-5);
            // rows of the input's gradient, then the column sums over all rows (their scale)
            let (gx, gs) = got.split_at(rows * w);
            let (wx, ws) = want.split_at(rows * w);
            let err = max_err(gx, wx).max(max_err(gs, ws));
            println!("layer_norm_gelu_grad_rows w {w} {l:?}: max error {err:e}");
            record("layer_norm_gelu_grad_rows", err);
            assert!(err < 1e-4, "layer_norm_gelu_grad error {err} (w {w})");
        }
    }
    Ok(())
}

/// [`max_err`] of LayerNorm rows of width `w`, each row's error divided by
/// `max(1, 0.1 / sqrt(var + eps))`, `var` the float64 variance of `silu(z)` over the row of
/// pre-activations `z`: a row whose activations are nearly equal (std below 0.1) amplifies
/// float32 rounding by `1 / std`, so it is held to a proportionally looser bound.
fn layer_norm_err(got: &[f32], want: &[f32], z: &[f64], w: usize, eps: f64) -> f32 {
    assert_eq!(z.len(), want.len(), "lengths differ");
    got.chunks(w)
        .zip(want.chunks(w))
        .zip(z.chunks(w))
        .map(|((g, wa), zr)| {
            let h: Vec<f64> = zr.iter().map(|z| z / (1.0 + (-z).exp())).collect();
            let mean = h.iter().sum::<f64>() / w as f64;
            let var = h.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / w as f64;
            let scale = (0.1 / (var + eps).sqrt()).max(1.0) as f32;
            max_err(g, wa) / scale
        })
        .fold(
            0.0,
            |m: f32, e| if e.is_nan() { f32::INFINITY } else { m.max(e) },
        )
}

#[test]
fn silu_layer_norm_both_forms_match_cpu_across_widths() -> Result<(), Error> {
    let mut r = rng();
    // widths below, at and above one warp's 32 lanes and two warps' 64
    let widths = [
        r.gen_range(1..32),
        32,
        r.gen_range(33..64),
        64,
        r.gen_range(65..200),
    ];
    for w in widths {
        let (rows, n_in) = (r.gen_range(20..90), r.gen_range(1..=8));
        // arguments up to 12 in size: SiLU saturates both ways
        let x: Vec<f32> = (0..rows * w).map(|_| r.gen_range(-12.0..12.0)).collect();
        let (f, wt) = (rand_vec(&mut r, rows * n_in), rand_vec(&mut r, n_in * w));
        let (b, g, be) = (
            rand_vec(&mut r, w),
            rand_vec(&mut r, w),
            rand_vec(&mut r, w),
        );
        let mut s = Session::new();
        let xt = s.input::<(Dyn<'r'>, Dyn<'w'>)>("x", InputKind::Values);
        let ft = s.input::<(Dyn<'r'>, Dyn<'f'>)>("f", InputKind::Values);
        let wtt = s.input::<(Dyn<'f'>, Dyn<'w'>)>("wt", InputKind::Values);
        let bt = s.input::<(Dyn<'w'>,)>("b", InputKind::Values);
        let gt = s.input::<(Dyn<'w'>,)>("g", InputKind::Values);
        let et = s.input::<(Dyn<'w'>,)>("e", InputKind::Values);
        s.output("y", se3_core::ops::silu_layer_norm(xt, bt, gt, et, 1e-5));
        s.output(
            "y_linear",
            se3_core::ops::linear_silu_layer_norm(ft, wtt, bt, gt, et, 1e-5),
        );
        s.set("x", x.clone(), &[rows, w])?;
        s.set("f", f.clone(), &[rows, n_in])?;
        s.set("wt", wt.clone(), &[n_in, w])?;
        s.set("b", b.clone(), &[w])?;
        s.set("g", g.clone(), &[w])?;
        s.set("e", be.clone(), &[w])?;
        s.run()?;
        let (want, want_linear) = (s.get("y")?.data, s.get("y_linear")?.data);
        // the pre-activations in float64, for each row's conditioning
        let z: Vec<f64> = (0..rows * w)
            .map(|i| f64::from(x[i]) + f64::from(b[i % w]))
            .collect();
        let z_linear: Vec<f64> = (0..rows * w)
            .map(|i| {
                let (row, k) = (i / w, i % w);
                (0..n_in)
                    .map(|q| f64::from(f[row * n_in + q]) * f64::from(wt[q * w + k]))
                    .sum::<f64>()
                    + f64::from(b[k])
            })
            .collect();
        for l in LAUNCHES {
            let e1 = layer_norm_err(
                &shim::silu_layer_norm(l, &x, None, &b, &g, &be, 1e-5),
                &want,
                &z,
                w,
                1e-5,
            );
            let e2 = layer_norm_err(
                &shim::silu_layer_norm(l, &f, Some((&wt, n_in)), &b, &g, &be, 1e-5),
                &want_linear,
                &z_linear,
                w,
                1e-5,
            );
            println!(
                "silu_layer_norm_rows {l:?} (rows {rows}, width {w}, inputs {n_in}): \
                 max error {e1:e}, first-layer form {e2:e}"
            );
            record("silu_layer_norm_rows", e1.max(e2));
            assert!(e1 < 1e-5, "silu_layer_norm error {e1} (width {w})");
            assert!(e2 < 1e-5, "linear_silu_layer_norm error {e2} (width {w})");
        }
    }
    Ok(())
}

#[test]
fn top_k_matches_cpu_with_masks_nan_and_ties() -> Result<(), Error> {
    const K: usize = 5;
    let mut r = rng();
    let (n, m) = (r.gen_range(100..300), r.gen_range(2..12));
    // values on a coarse grid give ties; some NaN; a mask drops entries
    let mut scores: Vec<f32> = (0..n * m).map(|_| r.gen_range(0..6) as f32).collect();
    for v in scores.iter_mut() {
        if r.gen_bool(0.05) {
            *v = f32::NAN;
        }
    }
    let mask: Vec<f32> = (0..n * m).map(|_| f32::from(r.gen_bool(0.8))).collect();
    for largest in [false, true] {
        let mut s = Session::new();
        let st = s.input::<(Dyn<'n'>, Dyn<'m'>)>("s", InputKind::Values);
        let mt = s.input::<(Dyn<'n'>, Dyn<'m'>)>("m", InputKind::Mask);
        s.output(
            "k",
            se3_core::ops::top_k::<_, _, K>(st, Some(mt), largest).idx,
        );
        s.set("s", scores.clone(), &[n, m])?;
        s.set("m", mask.clone(), &[n, m])?;
        s.run()?;
        let want = s.get("k")?.data;
        for l in LAUNCHES {
            let got = shim::top_k(l, &scores, Some(&mask), m, K, largest);
            println!(
                "top_k_rows {l:?} largest={largest}: max error {:e}",
                max_err(&got, &want)
            );
            record("top_k_rows", max_err(&got, &want));
            assert_eq!(got, want);
        }
    }
    Ok(())
}

#[test]
fn reductions_match_cpu() -> Result<(), Error> {
    let mut r = rng();
    let (a, b, c) = (r.gen_range(2..20), r.gen_range(1..30), r.gen_range(2..20));
    let x = rand_vec(&mut r, a * b * c);
    let mut s = Session::new();
    let xt = s.input::<(Dyn<'a'>, Dyn<'b'>, Dyn<'c'>)>("x", InputKind::Values);
    s.output("sum", xt.sum_reduce::<(Dyn<'a'>, Dyn<'c'>), _>());
    s.output("max", xt.max_reduce::<(Dyn<'a'>, Dyn<'c'>), _>());
    s.set("x", x.clone(), &[a, b, c])?;
    s.run()?;
    let (want_sum, want_max) = (s.get("sum")?.data, s.get("max")?.data);
    for l in LAUNCHES {
        let es = max_err(&shim::reduce(l, &x, a, b, c, false), &want_sum);
        let em = max_err(&shim::reduce(l, &x, a, b, c, true), &want_max);
        println!("reduce_sum/reduce_max {l:?}: max error {es:e} / {em:e}");
        record("reduce_sum", es);
        record("reduce_max", em);
        assert!(es < 1e-5, "sum error {es}");
        assert_eq!(em, 0.0);
    }
    Ok(())
}

#[test]
fn view_copy_reads_permuted_sliced_padded_and_expanded_views_as_cpu() -> Result<(), Error> {
    let mut r = rng();
    let (a, b) = (r.gen_range(3..20), r.gen_range(3..20));
    let x = rand_vec(&mut r, a * b);
    let mut s = Session::new();
    s.set_dim('p', b + 3);
    s.set_dim('q', a - 1);
    let xt = s.input::<(Dyn<'a'>, Dyn<'b'>)>("x", InputKind::Values);
    // a permuted view, a sliced + padded one, and one with an expanded (fake) axis
    let views: Vec<(ShapeTracker, GraphTensor<(Dyn<'b'>, Dyn<'a'>)>)> = {
        let p = xt.permute::<(Dyn<'b'>, Dyn<'a'>), _>();
        vec![(p.shape, p)]
    };
    let sliced = xt
        .slice((Expression::from(1)..Expression::from('a'), ..))
        .pad::<(Dyn<'q'>, Dyn<'p'>), _, _>(&[(0, 0), (2, 1)]);
    let expanded = xt.expand::<(Dyn<'a'>, Const<4>, Dyn<'b'>), _>();
    s.output("perm", views[0].1.contiguous());
    s.output("sliced", sliced.contiguous());
    s.output("expanded", expanded.contiguous());
    s.set("x", x.clone(), &[a, b])?;
    s.run()?;
    let dims: rustc_hash::FxHashMap<char, usize> = [('a', a), ('b', b), ('p', b + 3), ('q', a - 1)]
        .into_iter()
        .collect();
    for (name, st) in [
        ("perm", views[0].0),
        ("sliced", sliced.shape),
        ("expanded", expanded.shape),
    ] {
        let want = s.get(name)?.data;
        let desc = ViewDesc::new(&st, &dims);
        for l in LAUNCHES {
            let err = max_err(&shim::view_copy(l, &x, &desc), &want);
            println!("view_copy {name} {l:?}: max error {err:e}");
            record("view_copy", err);
            assert_eq!(err, 0.0);
        }
    }
    Ok(())
}

#[test]
fn elementwise_program_matches_cpu_chain() -> Result<(), Error> {
    use se3_core::exec::elementwise::{BinaryFn, Instr, UnaryFn};
    let mut r = rng();
    let n = r.gen_range(300..800);
    let (x, y) = (rand_vec(&mut r, n), rand_vec(&mut r, n));
    let mut s = Session::new();
    let xt = s.input::<(Dyn<'n'>,)>("x", InputKind::Values);
    let yt = s.input::<(Dyn<'n'>,)>("y", InputKind::Values);
    // sqrt(x * y + 3) * sin(x) + exp2(y) % 0.7, and 1 / (x < y)
    s.output("f", ((xt * yt + 3.0).sqrt() * xt.sin() + yt.exp2()) % 0.7);
    s.output("lt", xt.less_than(yt));
    s.set("x", x.clone(), &[n])?;
    s.set("y", y.clone(), &[n])?;
    s.run()?;
    let (want_f, want_lt) = (s.get("f")?.data, s.get("lt")?.data);
    let prog = [
        Instr::Input(0),
        Instr::Input(1),
        Instr::Binary(BinaryFn::Mul, 0, 1),
        Instr::Const(3.0),
        Instr::Binary(BinaryFn::Add, 2, 3),
        Instr::Unary(UnaryFn::Sqrt, 4),
        Instr::Unary(UnaryFn::Sin, 0),
        Instr::Binary(BinaryFn::Mul, 5, 6),
        Instr::Unary(UnaryFn::Exp2, 1),
        Instr::Binary(BinaryFn::Add, 7, 8),
        Instr::Input(2),
        Instr::Binary(BinaryFn::Mod, 9, 10),
        Instr::Binary(BinaryFn::LessThan, 0, 1),
    ];
    let dev: Vec<DeviceInstr> = prog.iter().map(DeviceInstr::encode).collect();
    let seven = [0.7f32];
    for l in LAUNCHES {
        let f = shim::elementwise(l, &dev, 11, &[&x, &y, &seven], n);
        let lt = shim::elementwise(l, &dev, 12, &[&x, &y, &seven], n);
        let (ef, el) = (max_err(&f, &want_f), max_err(&lt, &want_lt));
        println!("elementwise_program {l:?}: max error {ef:e} (chain), {el:e} (less-than)");
        record("elementwise_program", ef.max(el));
        assert!(ef < 1e-5, "elementwise chain error {ef}");
        assert_eq!(el, 0.0);
    }
    Ok(())
}

#[test]
fn edge_conv_matrix_and_diagonal_match_cpu() -> Result<(), Error> {
    let mut r = rng();
    let (n, m, e) = (
        r.gen_range(4..40),
        r.gen_range(3..40),
        r.gen_range(300..600),
    );
    let (ci, co) = (r.gen_range(1..9), r.gen_range(1..7));
    let x = rand_vec(&mut r, m * ci);
    let xd = rand_vec(&mut r, m * co);
    let (w, wd) = (rand_vec(&mut r, e * co * ci), rand_vec(&mut r, e * co));
    let (src, dst) = (rand_idx(&mut r, e, m), rand_idx(&mut r, e, n));
    let mut s = Session::new();
    s.set_dim('n', n);
    let xt = s.input::<(Dyn<'m'>, Dyn<'i'>)>("x", InputKind::Values);
    let xdt = s.input::<(Dyn<'m'>, Dyn<'o'>)>("xd", InputKind::Values);
    let wt = s.input::<(Dyn<'e'>, Dyn<'o'>, Dyn<'i'>)>("w", InputKind::Values);
    let wdt = s.input::<(Dyn<'e'>, Dyn<'o'>)>("wd", InputKind::Values);
    let st = s.input::<(Dyn<'e'>,)>(
        "src",
        InputKind::Indices {
            bound: IndexBound::Dim('m'),
            allow_missing: true,
        },
    );
    let dt = s.input::<(Dyn<'e'>,)>("dst", indices('n'));
    s.output(
        "mat",
        se3_core::ops::edge_conv::<Dyn<'n'>, _, _, _, _>(xt, wt, st, dt),
    );
    s.output(
        "diag",
        se3_core::ops::edge_conv_diag::<Dyn<'n'>, _, _, _>(xdt, wdt, st, dt),
    );
    s.set("x", x.clone(), &[m, ci])?;
    s.set("xd", xd.clone(), &[m, co])?;
    s.set("w", w.clone(), &[e, co, ci])?;
    s.set("wd", wd.clone(), &[e, co])?;
    s.set("src", src.clone(), &[e])?;
    s.set("dst", dst.clone(), &[e])?;
    s.run()?;
    let (want_mat, want_diag) = (s.get("mat")?.data, s.get("diag")?.data);
    for l in LAUNCHES {
        let em = max_err(
            &shim::edge_conv(l, &x, &w, &src, &dst, n, ci, co, false),
            &want_mat,
        );
        let ed = max_err(
            &shim::edge_conv(l, &xd, &wd, &src, &dst, n, co, co, true),
            &want_diag,
        );
        println!("edge_conv_sorted {l:?}: max error matrix {em:e}, diagonal {ed:e}");
        record("edge_conv_sorted", em.max(ed));
        assert!(em < 1e-5, "edge_conv error {em}");
        assert_eq!(ed, 0.0);
    }
    Ok(())
}

#[test]
fn knn_matches_cpu_with_masks_batches_radius_and_ties() -> Result<(), Error> {
    const K: usize = 7;
    let mut r = rng();
    // above 384 points per cloud the CPU kernel searches a grid, below it compares every pair
    for (round, n) in [r.gen_range(20..200), r.gen_range(400..700)]
        .into_iter()
        .enumerate()
    {
        // half the coordinates on a coarse grid: exact ties and duplicate points
        let x: Vec<f32> = (0..n * 3)
            .map(|i| {
                if (i / 3) % 2 == 0 {
                    r.gen_range(-3..4) as f32
                } else {
                    r.gen_range(-3.0f32..3.0)
                }
            })
            .collect();
        let mask: Vec<f32> = (0..n).map(|_| f32::from(r.gen_bool(0.85))).collect();
        let batch: Vec<f32> = (0..n).map(|i| (3 * i / n) as f32).collect();
        let radius = (round == 1).then(|| r.gen_range(1.0f32..3.0));
        for (batched, exclude_self) in [(false, true), (true, false), (true, true)] {
            let spec = se3_core::ops::NeighborSpec {
                radius,
                exclude_self,
            };
            let mut s = Session::new();
            let c = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
            let m = s.input::<(Dyn<'n'>,)>("m", InputKind::Mask);
            let b = batched.then(|| s.input::<(Dyn<'n'>,)>("b", InputKind::Values));
            let nb = se3_core::ops::neighbors_in_batches::<_, K>(c, Some(m), b, spec);
            s.output("idx", nb.idx);
            s.set("x", x.clone(), &[n, 3])?;
            s.set("m", mask.clone(), &[n])?;
            if batched {
                s.set("b", batch.clone(), &[n])?;
            }
            s.run()?;
            let want = s.get("idx")?.data;
            let r2 = radius.map_or(f32::INFINITY, |r| r * r);
            for l in LAUNCHES {
                let got = shim::knn(
                    l,
                    &x,
                    Some(&mask),
                    batched.then_some(batch.as_slice()),
                    K,
                    r2,
                    exclude_self,
                );
                let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                println!(
                    "knn_rows {l:?} n={n} radius={radius:?} batched={batched} \
                     exclude_self={exclude_self}: {differ} slots differ"
                );
                record("knn_rows", max_err(&got, &want));
                assert_eq!(got, want);
            }
        }
    }
    Ok(())
}

#[test]
fn radial_hidden_matches_cpu() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    let mut r = rng();
    // edges not a multiple of the CPU's edge block; units above and not a multiple of the
    // warp width, so lanes own unequal numbers of units
    let (np, e, n_in, h) = (
        r.gen_range(1..4),
        r.gen_range(70..160),
        r.gen_range(1..5),
        r.gen_range(33..70),
    );
    let mut vec_p = || rand_vec(&mut r, np * h);
    let (b0, g1, be1, b3, g4, be4) = (vec_p(), vec_p(), vec_p(), vec_p(), vec_p(), vec_p());
    let w = shim::RadialWeights {
        w0: rand_vec(&mut r, np * n_in * h),
        b0,
        g1,
        be1,
        w3: rand_vec(&mut r, np * h * h),
        b3,
        g4,
        be4,
    };
    let x = rand_vec(&mut r, e * n_in);
    let mut s = Session::new();
    let dims = |d: &[usize]| d.iter().map(|&v| Expression::from(v)).collect::<Vec<_>>();
    let t3 = |s: &mut Session, name: &str, d: &[usize]| {
        s.input_with_shape::<(X, X, X)>(name, InputKind::Values, &dims(d))
    };
    let (w0t, w3t) = (
        t3(&mut s, "w0", &[np, n_in, h]),
        t3(&mut s, "w3", &[np, h, h]),
    );
    let t2 = |s: &mut Session, name: &str| {
        s.input_with_shape::<(X, X)>(name, InputKind::Values, &dims(&[np, h]))
    };
    let weights = se3_core::ops::RadialHiddenWeights {
        w0: w0t,
        b0: t2(&mut s, "b0"),
        g1: t2(&mut s, "g1"),
        be1: t2(&mut s, "be1"),
        w3: w3t,
        b3: t2(&mut s, "b3"),
        g4: t2(&mut s, "g4"),
        be4: t2(&mut s, "be4"),
    };
    let xt = s.input_with_shape::<(X, X)>("x", InputKind::Values, &dims(&[e, n_in]));
    s.output("h", se3_core::ops::radial_hidden(xt, &weights, 1e-5));
    s.set("x", x.clone(), &[e, n_in])?;
    s.set("w0", w.w0.clone(), &[np, n_in, h])?;
    s.set("w3", w.w3.clone(), &[np, h, h])?;
    for (name, v) in [
        ("b0", &w.b0),
        ("g1", &w.g1),
        ("be1", &w.be1),
        ("b3", &w.b3),
        ("g4", &w.g4),
        ("be4", &w.be4),
    ] {
        s.set(name, v.clone(), &[np, h])?;
    }
    s.run()?;
    let want = s.get("h")?.data;
    for l in [
        Launch { grid: 3, block: 64 },
        Launch {
            grid: 2,
            block: 160,
        },
    ] {
        let err = max_err(&shim::radial_hidden(l, &x, &w, np, n_in, h, 1e-5), &want);
        println!(
            "radial_hidden_rows {l:?} (np {np}, e {e}, n_in {n_in}, h {h}): max error {err:e}"
        );
        record("radial_hidden_rows", err);
        assert!(err < 1e-4, "radial_hidden error {err}");
    }
    Ok(())
}

#[test]
fn edge_contract_sum_and_logits_match_cpu_with_heads_and_missing_neighbours() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    let mut r = rng();
    // second round: hidden width 128 (the models'), d_out >= 1 and many (f, c) rows, so the
    // kernel works through several chunks of rows per node
    for chunked in [false, true] {
        let (d_in, d_out) = (r.gen_range(0..3), r.gen_range(usize::from(chunked)..3));
        let (n, k, heads) = (r.gen_range(5..40), r.gen_range(1..9), r.gen_range(1..4));
        let (c_in, cnt) = (
            if chunked {
                r.gen_range(11..16)
            } else {
                r.gen_range(1..6)
            },
            r.gen_range(1..7),
        );
        let hd = if chunked { 128 } else { r.gen_range(1..20) };
        let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
        let sz = shim::ContractSizes {
            n,
            k,
            c_in,
            mi,
            mo,
            nf,
            hd,
            cols: heads * cnt,
        };
        let (e, cf) = (n * k, nf * c_in);
        let d = shim::ContractInputs {
            x: rand_vec(&mut r, n * c_in * mi),
            nbr: rand_idx(&mut r, e, n),
            basis: rand_vec(&mut r, e * mo * mi * nf),
            hidden: rand_vec(&mut r, e * hd),
            w: rand_vec(&mut r, cf * hd * sz.cols),
            b: rand_vec(&mut r, cf * sz.cols),
            a: (0..heads).map(|_| rand_vec(&mut r, e)).collect(),
        };
        let mut s = Session::new();
        let ex = |v: &[usize]| v.iter().map(|&t| Expression::from(t)).collect::<Vec<_>>();
        let xt = s.input_with_shape::<(X, X, X)>("x", InputKind::Values, &ex(&[n, c_in, mi]));
        let nt = s.input_with_shape::<(X,)>("nbr", InputKind::Values, &ex(&[e]));
        let bt =
            s.input_with_shape::<(X, X, X, X)>("basis", InputKind::Values, &ex(&[e, mo, mi, nf]));
        let ht = s.input_with_shape::<(X, X)>("h", InputKind::Values, &ex(&[e, hd]));
        let wt = s.input_with_shape::<(X, X)>("w", InputKind::Values, &ex(&[cf * hd, sz.cols]));
        let bb = s.input_with_shape::<(X, X)>("b", InputKind::Values, &ex(&[cf, sz.cols]));
        let at: Vec<GraphTensor<(X, X)>> = (0..heads)
            .map(|t| s.input_with_shape(&format!("a{t}"), InputKind::Values, &ex(&[n, k])))
            .collect();
        s.output(
            "y",
            se3_core::ops::edge_contract_sum_heads(xt, nt, bt, ht, &at, wt, bb),
        );
        let qs: Vec<Vec<f32>> = (0..heads).map(|_| rand_vec(&mut r, n * cnt * mo)).collect();
        let qt: Vec<GraphTensor<(X, X, X)>> = (0..heads)
            .map(|t| s.input_with_shape(&format!("q{t}"), InputKind::Values, &ex(&[n, cnt, mo])))
            .collect();
        s.output(
            "l",
            se3_core::ops::edge_contract_logits_heads(xt, nt, bt, ht, &qt, wt, bb, k),
        );
        for (t, q) in qs.iter().enumerate() {
            s.set(&format!("q{t}"), q.clone(), &[n, cnt, mo])?;
        }
        s.set("x", d.x.clone(), &[n, c_in, mi])?;
        s.set("nbr", d.nbr.clone(), &[e])?;
        s.set("basis", d.basis.clone(), &[e, mo, mi, nf])?;
        s.set("h", d.hidden.clone(), &[e, hd])?;
        s.set("w", d.w.clone(), &[cf * hd, sz.cols])?;
        s.set("b", d.b.clone(), &[cf, sz.cols])?;
        for (t, a) in d.a.iter().enumerate() {
            s.set(&format!("a{t}"), a.clone(), &[n, k])?;
        }
        s.run()?;
        let want = s.get("y")?.data;
        // sums of k cf hd products: errors relative to the output's largest magnitude
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for l in LAUNCHES {
            let got = shim::edge_contract_sum(l, sz, &d);
            assert_eq!(got.len(), want.len());
            let abs = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            println!(
                "edge_contract_sum_nodes {l:?} ({sz:?}, heads {heads}): max abs error {abs:e}, \
             relative to the largest output {:e}",
                abs / scale
            );
            record("edge_contract_sum_nodes", abs / scale);
            assert!(
                abs / scale < 1e-5,
                "edge_contract_sum error {}",
                abs / scale
            );
        }
        let want = s.get("l")?.data;
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for l in LAUNCHES {
            let got = shim::edge_contract_logits(l, sz, &d, &qs);
            assert_eq!(got.len(), want.len());
            let abs = got
                .iter()
                .zip(&want)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            println!(
                "edge_contract_logits_nodes {l:?}: max abs error {abs:e}, relative to the \
                 largest logit {:e}",
                abs / scale
            );
            record("edge_contract_logits_nodes", abs / scale);
            assert!(
                abs / scale < 1e-5,
                "edge_contract_logits error {}",
                abs / scale
            );
        }
    }
    Ok(())
}

#[test]
fn edge_contract_grad_matches_cpu_with_heads_and_missing_neighbours() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    use se3_core::ops::edge_contract::{EdgeContractGrad, LastLayerGrad};
    let mut r = rng();
    // second round: hidden width 128 and many (f, c) rows, several chunks per node
    for chunked in [false, true] {
        let (d_in, d_out) = (r.gen_range(0..3), r.gen_range(usize::from(chunked)..3));
        let (n, k, heads) = (r.gen_range(5..40), r.gen_range(1..9), r.gen_range(1..4));
        let c_in = if chunked {
            r.gen_range(11..16)
        } else {
            r.gen_range(1..6)
        };
        let cnt = r.gen_range(1..7);
        let hd = if chunked { 128 } else { r.gen_range(1..20) };
        let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
        let sz = shim::ContractSizes {
            n,
            k,
            c_in,
            mi,
            mo,
            nf,
            hd,
            cols: heads * cnt,
        };
        let (e, cf) = (n * k, nf * c_in);
        let d = shim::ContractInputs {
            x: rand_vec(&mut r, n * c_in * mi),
            nbr: rand_idx(&mut r, e, n),
            basis: rand_vec(&mut r, e * mo * mi * nf),
            hidden: rand_vec(&mut r, e * hd),
            w: rand_vec(&mut r, cf * hd * sz.cols),
            b: rand_vec(&mut r, cf * sz.cols),
            a: (0..heads).map(|_| rand_vec(&mut r, e)).collect(),
        };
        let rows: Vec<Vec<f32>> = (0..heads).map(|_| rand_vec(&mut r, n * cnt * mo)).collect();
        let cases = [(true, true), (false, true), (true, false)].map(|(hidden, message)| {
            (
                LastLayerGrad::Edges { hidden, message },
                Some((hidden, message)),
            )
        });
        for (wrt, edges) in cases.into_iter().chain([(LastLayerGrad::Weights, None)]) {
            let mut s = Session::new();
            let ex = |v: &[usize]| v.iter().map(|&t| Expression::from(t)).collect::<Vec<_>>();
            let xt = s.input_with_shape::<(X, X, X)>("x", InputKind::Values, &ex(&[n, c_in, mi]));
            let mut ids = vec![xt.id];
            let mut shapes = vec![xt.shape];
            for (name, dims) in [
                ("nbr", vec![e]),
                ("basis", vec![e, mo, mi, nf]),
                ("h", vec![e, hd]),
                ("w", vec![cf * hd, sz.cols]),
                ("b", vec![cf, sz.cols]),
            ] {
                let t = s.input_with_shape::<()>(name, InputKind::Values, &ex(&dims));
                ids.push(t.id);
                shapes.push(t.shape);
            }
            for t in 0..heads {
                let rt = s.input_with_shape::<()>(
                    &format!("r{t}"),
                    InputKind::Values,
                    &ex(&[n, cnt, mo]),
                );
                ids.push(rt.id);
                shapes.push(rt.shape);
            }
            for t in 0..heads {
                let ut =
                    s.input_with_shape::<()>(&format!("u{t}"), InputKind::Values, &ex(&[n, k]));
                ids.push(ut.id);
                shapes.push(ut.shape);
            }
            let mut op = xt.graph().add_op(EdgeContractGrad { wrt, hidden: hd });
            for (id, st) in ids.iter().zip(&shapes) {
                op = op.input(*id, 0, *st);
            }
            let out_dims = match edges {
                Some((h, m)) => vec![e, if h { hd } else { 0 } + if m { mo * cf } else { 0 }],
                None => vec![cf * hd + cf, sz.cols],
            };
            s.output(
                "g",
                GraphTensor::<(X, X)>::from_id(
                    op.finish(),
                    ShapeTracker::new(&ex(&out_dims)),
                    xt.graph_ref,
                ),
            );
            s.set("x", d.x.clone(), &[n, c_in, mi])?;
            s.set("nbr", d.nbr.clone(), &[e])?;
            s.set("basis", d.basis.clone(), &[e, mo, mi, nf])?;
            s.set("h", d.hidden.clone(), &[e, hd])?;
            s.set("w", d.w.clone(), &[cf * hd, sz.cols])?;
            s.set("b", d.b.clone(), &[cf, sz.cols])?;
            for (t, (rt, ut)) in rows.iter().zip(&d.a).enumerate() {
                s.set(&format!("r{t}"), rt.clone(), &[n, cnt, mo])?;
                s.set(&format!("u{t}"), ut.clone(), &[n, k])?;
            }
            s.run()?;
            let want = s.get("g")?.data;
            let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let kernel = if edges.is_some() {
                "edge_contract_edge_grad_nodes"
            } else {
                "edge_contract_weight_grad_nodes"
            };
            for l in LAUNCHES {
                let got = shim::edge_contract_grad(l, sz, &d, &rows, edges);
                assert_eq!(got.len(), want.len());
                let abs = got
                    .iter()
                    .zip(&want)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
                println!(
                    "{kernel} {l:?} ({sz:?}, heads {heads}): max abs error {abs:e}, relative to \
                     the largest output {:e}",
                    abs / scale
                );
                record(kernel, abs / scale);
                assert!(abs / scale < 1e-5, "{kernel} error {}", abs / scale);
            }
        }
    }
    Ok(())
}

#[test]
fn radial_edge_conv_matches_cpu_with_missing_edges_and_zero_weights() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    use se3_core::ops::{PairShape, RadialMode};
    let mut r = rng();
    // second round: hidden width 128 and many (c, f) columns, several chunks per node
    for chunked in [false, true] {
        let (d_in, d_out) = (r.gen_range(0..3), r.gen_range(usize::from(chunked)..3));
        let sh = PairShape {
            c_in: if chunked {
                r.gen_range(11..16)
            } else {
                r.gen_range(1..5)
            },
            d_in,
            nf: 2 * d_in.min(d_out) + 1,
            c_out: r.gen_range(1..6),
            d_out,
        };
        let (n, m, e) = (r.gen_range(4..30), r.gen_range(3..30), r.gen_range(40..200));
        let hd = if chunked { 128 } else { r.gen_range(1..20) };
        let sz = shim::RadialConvSizes {
            m,
            n,
            c_in: sh.c_in,
            di: sh.di(),
            nf: sh.nf,
            mo: sh.mo(),
            c_out: sh.c_out,
            hd,
        };
        let rows = sh.c_out * sh.cf();
        // a tenth of the pooling weights exactly 0 (those edges are skipped)
        let w: Vec<f32> = (0..e)
            .map(|_| {
                if r.gen_bool(0.1) {
                    0.0
                } else {
                    r.gen_range(-2.0f32..2.0)
                }
            })
            .collect();
        let d = shim::RadialConvInputs {
            x: rand_vec(&mut r, m * sh.c_in * sh.di()),
            basis: rand_vec(&mut r, e * sh.di() * sh.nf * sh.mo()),
            hidden: rand_vec(&mut r, e * hd),
            weight: rand_vec(&mut r, rows * hd),
            bias: rand_vec(&mut r, rows),
            w,
            src: rand_idx(&mut r, e, m),
            dst: rand_idx(&mut r, e, n),
        };
        let mut s = Session::new();
        s.set_dim('n', n);
        let ex = |v: &[usize]| v.iter().map(|&t| Expression::from(t)).collect::<Vec<_>>();
        let shapes: [(&str, &Vec<f32>, Vec<usize>); 8] = [
            ("x", &d.x, vec![m, sh.c_in * sh.di()]),
            ("basis", &d.basis, vec![e, sh.di(), sh.nf * sh.mo()]),
            ("h", &d.hidden, vec![e, hd]),
            ("wl", &d.weight, vec![rows, hd]),
            ("bl", &d.bias, vec![rows]),
            ("w", &d.w, vec![e]),
            ("src", &d.src, vec![e]),
            ("dst", &d.dst, vec![e]),
        ];
        let xt = s.input_with_shape::<(X, X)>("x", InputKind::Values, &ex(&shapes[0].2));
        let bt = s.input_with_shape::<(X, X, X)>("basis", InputKind::Values, &ex(&shapes[1].2));
        let ht = s.input_with_shape::<(X, X)>("h", InputKind::Values, &ex(&shapes[2].2));
        let wl = s.input_with_shape::<(X, X)>("wl", InputKind::Values, &ex(&shapes[3].2));
        let bl = s.input_with_shape::<(X,)>("bl", InputKind::Values, &ex(&shapes[4].2));
        let [pw, st, dt] = ["w", "src", "dst"]
            .map(|name| s.input_with_shape::<(X,)>(name, InputKind::Values, &ex(&[e])));
        for (name, mode) in [("re", RadialMode::Reassociated), ("di", RadialMode::Direct)] {
            s.output(
                name,
                se3_core::ops::radial_edge_conv::<Dyn<'n'>, X, X>(
                    sh, mode, xt, bt, ht, wl, bl, pw, st, dt,
                ),
            );
        }
        for (name, data, dims) in &shapes {
            s.set(name, (*data).clone(), dims)?;
        }
        s.run()?;
        let (want_re, want_di) = (s.get("re")?.data, s.get("di")?.data);
        let scale = want_re.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for l in LAUNCHES {
            let got = shim::radial_edge_conv(l, sz, &d);
            assert_eq!(got.len(), want_re.len());
            let abs = |want: &[f32]| {
                got.iter()
                    .zip(want)
                    .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
                    / scale
            };
            let (er, ed) = (abs(&want_re), abs(&want_di));
            println!(
                "radial_edge_conv_sorted {l:?} ({sz:?}, e {e}): max error relative to the \
                 largest output: {er:e} (CPU reassociated), {ed:e} (CPU direct)"
            );
            record("radial_edge_conv_sorted", er);
            assert!(er < 1e-5 && ed < 1e-5, "radial_edge_conv error {er} {ed}");
        }
    }
    Ok(())
}

#[test]
fn adjacency_degrees_match_cpu() -> Result<(), Error> {
    let mut r = rng();
    let n = r.gen_range(20..70);
    // a sparse symmetric bond pattern with isolated nodes
    let mut adj = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..i {
            if r.gen_bool(0.06) {
                adj[i * n + j] = 1.0;
                adj[j * n + i] = 1.0;
            }
        }
    }
    let degrees = r.gen_range(2..5);
    let mut s = Session::new();
    let a = s.input::<(Dyn<'n'>, Dyn<'n'>)>("a", InputKind::Values);
    s.output("y", se3_core::ops::adjacency_degrees(a, degrees));
    s.set("a", adj.clone(), &[n, n])?;
    s.run()?;
    let want = s.get("y")?.data;
    for l in LAUNCHES {
        let got = shim::adjacency_degrees(l, &adj, n, degrees);
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!("adjacency {l:?} n={n} degrees={degrees}: {differ} entries differ");
        record("adjacency_init", max_err(&got, &want));
        record("adjacency_step", max_err(&got, &want));
        assert_eq!(got, want);
    }
    Ok(())
}

#[test]
fn egnn_edge_matches_cpu_with_missing_neighbours_and_every_option() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    use se3_core::ops::egnn_edge::{egnn_edge, EgnnCoorsWeights, EgnnEdgeInputs, EgnnEdgeKernel};
    let mut r = rng();
    for case in 0..4 {
        let (h, m_dim, f) = (r.gen_range(1..70), r.gen_range(1..20), r.gen_range(0..3));
        let (rows, k) = (r.gen_range(1..25), r.gen_range(1..9));
        let small = |r: &mut StdRng, n: usize| -> Vec<f32> {
            (0..n).map(|_| r.gen_range(-0.6f32..0.6)).collect()
        };
        let kernel = EgnnEdgeKernel {
            hidden: h,
            m_dim,
            fourier_features: f,
            phi_t: small(&mut r, (2 * f + 1) * h),
            edge_out_t: small(&mut r, h * m_dim),
            edge_out_bias: small(&mut r, m_dim),
            gate: (case % 2 == 0).then(|| (small(&mut r, m_dim), r.gen_range(-0.5..0.5))),
            coors: (case != 1).then(|| EgnnCoorsWeights {
                hidden_t: small(&mut r, m_dim * 4 * m_dim),
                hidden_bias: small(&mut r, 4 * m_dim),
                out: small(&mut r, 4 * m_dim),
                out_bias: r.gen_range(-0.5..0.5),
            }),
            coors_scale: (case >= 2).then(|| r.gen_range(0.1..2.0)),
            clamp: (case == 3).then(|| r.gen_range(0.05..1.0)),
            pool_messages: case != 2,
            edge_term: case == 3,
        };
        let (hi, hj) = (small(&mut r, rows * h), small(&mut r, rows * h));
        let coors = rand_vec(&mut r, rows * 3);
        // -1 neighbours (and out-of-range ones) read zeros; some edges invalid
        let src: Vec<f32> = (0..rows * k)
            .map(|_| {
                if r.gen_bool(0.2) {
                    -1.0
                } else {
                    r.gen_range(0..rows) as f32
                }
            })
            .collect();
        let valid: Vec<f32> = (0..rows * k).map(|_| f32::from(r.gen_bool(0.8))).collect();
        let term = kernel.edge_term.then(|| small(&mut r, rows * k * h));
        let mut s = Session::new();
        let ex = |d: &[usize]| d.iter().map(|&v| Expression::from(v)).collect::<Vec<_>>();
        let inp = |s: &mut Session, name: &str, d: &[usize]| {
            s.input_with_shape::<(X, X)>(name, InputKind::Values, &ex(d))
        };
        let inputs = EgnnEdgeInputs {
            dst_term: inp(&mut s, "hi", &[rows, h]),
            src_term: inp(&mut s, "hj", &[rows, h]),
            coors: inp(&mut s, "x", &[rows, 3]),
            src: s.input_with_shape::<(X,)>("src", InputKind::Values, &ex(&[rows * k])),
            valid: inp(&mut s, "valid", &[rows, k]),
        };
        let term_t = kernel
            .edge_term
            .then(|| inp(&mut s, "term", &[rows * k, h]));
        s.output("y", egnn_edge(inputs, term_t, kernel.clone()));
        s.set("hi", hi.clone(), &[rows, h])?;
        s.set("hj", hj.clone(), &[rows, h])?;
        s.set("x", coors.clone(), &[rows, 3])?;
        s.set("src", src.clone(), &[rows * k])?;
        s.set("valid", valid.clone(), &[rows, k])?;
        if let Some(t) = &term {
            s.set("term", t.clone(), &[rows * k, h])?;
        }
        s.run()?;
        let want = s.get("y")?.data;
        let d = shim::EgnnInputs {
            hi: &hi,
            hj: &hj,
            coors: &coors,
            src: &src,
            valid: &valid,
            edge_term: term.as_deref(),
        };
        for l in [Launch { grid: 2, block: 64 }, Launch { grid: 3, block: 96 }] {
            let err = max_err(&shim::egnn_edge(l, &kernel, &d, k), &want);
            println!(
                "egnn_edge_nodes {l:?} case {case} (rows {rows}, k {k}, H {h}, M {m_dim}, F {f}): \
                 max error {err:e}"
            );
            record("egnn_edge_nodes", err);
            // two MLPs and k-edge sums in another order, the CPU's exp a polynomial
            assert!(err < 5e-5, "egnn_edge error {err}");
        }
    }
    Ok(())
}

#[test]
fn spherical_harmonics_and_kernel_basis_match_cpu_including_zero_length_edges() -> Result<(), Error>
{
    use se3_core::layers::EdgeBasis;
    use se3_core::ops::edge_basis::PolynomialTable;
    use se3_core::so3::spherical_harmonics::{spherical_harmonics, Convention, Normalization};
    let mut r = rng();
    let e = r.gen_range(200..500);
    let mut rel = rand_vec(&mut r, e * 3);
    // zero-length edges (coincident points) take the direction (0, 1, 0)
    for k in 0..e {
        if r.gen_bool(0.05) {
            rel[k * 3..k * 3 + 3].fill(0.0);
        }
    }
    // harmonics against the host's float64 harmonics, both conventions
    let lmax = r.gen_range(1..5);
    for (convention, normalization) in [
        (Convention::E3nn, Normalization::Component),
        (Convention::Se3TransformerPytorch, Normalization::Integral),
    ] {
        let table = PolynomialTable::spherical_harmonics(lmax, convention, normalization)?;
        let mut want = Vec::with_capacity(e * table.cols);
        for k in 0..e {
            let v = nalgebra::Vector3::from_iterator(
                rel[k * 3..k * 3 + 3].iter().map(|&x| f64::from(x)),
            );
            let v = if v.norm() == 0.0 {
                nalgebra::Vector3::y()
            } else {
                v
            };
            for l in 0..=lmax {
                want.extend(
                    spherical_harmonics(l, &v, convention, normalization)?
                        .iter()
                        .map(|&y| y as f32),
                );
            }
        }
        for l in LAUNCHES {
            let err = max_err(&shim::spherical_harmonics(l, &rel, &table), &want);
            println!(
                "spherical_harmonics_rows {l:?} lmax {lmax} {convention:?}: max error {err:e}"
            );
            record("spherical_harmonics_rows", err);
            assert!(err < 1e-5, "spherical harmonics error {err}");
        }
    }
    // the kernel basis against the graph of EdgeBasis::from_geometry on the CPU backend
    let max_degree = r.gen_range(1..4);
    let flips = [(1, 1, 1), (2, 1, 2), (1, 2, 2)];
    let mut s = Session::new();
    let rt = s.input::<(Dyn<'e'>, Const<3>)>("rel", InputKind::Values);
    let dist = se3_core::ops::distances(rt);
    let basis = EdgeBasis::from_geometry(&mut s, "", rt, dist, max_degree, &flips)?;
    s.output("dist", dist);
    for d_in in 0..=max_degree {
        for d_out in 0..=max_degree {
            s.output(&format!("b{d_in}.{d_out}"), basis.block(d_in, d_out)?);
        }
    }
    s.set("rel", rel.clone(), &[e, 3])?;
    s.run()?;
    let d = s.get("dist")?.data;
    let table = PolynomialTable::kernel_basis(max_degree, &flips)?;
    for l in LAUNCHES {
        let got = shim::kernel_basis(l, &rel, &d, &table);
        let mut block = 0;
        let mut err = 0.0f32;
        for d_in in 0..=max_degree {
            for d_out in 0..=max_degree {
                let want = s.get(&format!("b{d_in}.{d_out}"))?.data;
                let (c0, c1) = (table.block_start[block], table.block_start[block + 1]);
                let mine: Vec<f32> = (0..e)
                    .flat_map(|k| {
                        got[k * table.cols + c0..k * table.cols + c1]
                            .iter()
                            .copied()
                    })
                    .collect();
                err = err.max(max_err(&mine, &want));
                block += 1;
            }
        }
        println!("kernel_basis_rows {l:?} max degree {max_degree}: max error {err:e}");
        record("kernel_basis_rows", err);
        assert!(err < 1e-5, "kernel basis error {err}");
    }
    Ok(())
}

#[test]
fn head_attention_matches_cpu_with_masked_and_fully_masked_batches() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    use se3_core::ops::head_attention::{head_attention, HeadAttention, HeadLogits};
    let mut r = rng();
    for case in 0..4 {
        // (the shim runs each block's barriers as OS threads: sizes kept small)
        let (b, n, c) = (r.gen_range(1..3), r.gen_range(1..40), r.gen_range(1..4));
        let (heads, dh) = (r.gen_range(1..4), r.gen_range(1..9));
        let op = HeadAttention {
            heads,
            scale: r.gen_range(0.1..0.6),
            logits: if case % 2 == 0 {
                HeadLogits::Dot
            } else {
                HeadLogits::L2Distance
            },
            zero_if_all_masked: case >= 2,
        };
        let total = b * n * c * heads * dh;
        let (q, k, v) = (
            rand_vec(&mut r, total),
            rand_vec(&mut r, total),
            rand_vec(&mut r, total),
        );
        // batch element 0 fully masked in half the cases, the rest partly
        let mask: Vec<f32> = (0..b * n)
            .map(|i| f32::from(!(case % 2 == 1 && i < n) && r.gen_bool(0.7)))
            .collect();
        let mut s = Session::new();
        let ex = |d: &[usize]| d.iter().map(|&v| Expression::from(v)).collect::<Vec<_>>();
        let dims = [b, n, c, heads * dh];
        let qt = s.input_with_shape::<(X, X, X, X)>("q", InputKind::Values, &ex(&dims));
        let kt = s.input_with_shape::<(X, X, X, X)>("k", InputKind::Values, &ex(&dims));
        let vt = s.input_with_shape::<(X, X, X, X)>("v", InputKind::Values, &ex(&dims));
        let mt = s.input_with_shape::<(X, X)>("m", InputKind::Mask, &ex(&[b, n]));
        s.output(
            "y",
            head_attention(
                qt,
                kt,
                vt,
                mt,
                heads,
                op.scale,
                op.logits,
                op.zero_if_all_masked,
            ),
        );
        s.set("q", q.clone(), &dims)?;
        s.set("k", k.clone(), &dims)?;
        s.set("v", v.clone(), &dims)?;
        s.set("m", mask.clone(), &[b, n])?;
        s.run()?;
        let want = s.get("y")?.data;
        for l in [Launch { grid: 3, block: 32 }, Launch { grid: 2, block: 64 }] {
            let got = shim::head_attention(l, &op, (&q, &k, &v, &mask), (b, n, c, dh));
            let err = max_err(&got, &want);
            println!(
                "head_attention_rows {l:?} case {case} (b {b}, n {n}, c {c}, heads {heads}, \
                 dh {dh}, {:?}): max error {err:e}",
                op.logits
            );
            record("head_attention_rows", err);
            assert!(err < 1e-5, "head attention error {err}");
        }
    }
    Ok(())
}

#[test]
fn index_rows_and_take_along_rows_match_cpu() -> Result<(), Error> {
    const K: usize = 6;
    let mut r = rng();
    // neighbour lists with missing slots (masked points, a radius): their validity and centres
    let n = r.gen_range(10..120);
    let x = rand_vec(&mut r, n * 3);
    let mask: Vec<f32> = (0..n).map(|_| f32::from(r.gen_bool(0.7))).collect();
    let mut s = Session::new();
    s.derive_dim('e', Expression::from('n') * K);
    let c = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
    let m = s.input::<(Dyn<'n'>,)>("m", InputKind::Mask);
    let spec = se3_core::ops::NeighborSpec {
        radius: Some(1.5),
        exclude_self: true,
    };
    let nb = se3_core::ops::neighbors_in_batches::<_, K>(c, Some(m), None, spec);
    s.output("idx", nb.idx);
    s.output("valid", nb.valid);
    s.output("dst", nb.edges::<Dyn<'e'>>().dst);
    s.set("x", x.clone(), &[n, 3])?;
    s.set("m", mask.clone(), &[n])?;
    s.run()?;
    let idx = s.get("idx")?.data;
    let (want_valid, want_dst) = (s.get("valid")?.data, s.get("dst")?.data);
    assert!(idx.contains(&-1.0), "no missing neighbour drawn");
    // values gathered along rows at indices with -1
    let (rows, cols, k) = (r.gen_range(5..60), r.gen_range(1..20), r.gen_range(1..9));
    let values = rand_vec(&mut r, rows * cols);
    let at: Vec<f32> = (0..rows * k)
        .map(|_| r.gen_range(-1..cols as i64) as f32)
        .collect();
    let mut s = Session::new();
    let vt = s.input::<(Dyn<'r'>, Dyn<'c'>)>("v", InputKind::Values);
    let it = s.input::<(Dyn<'r'>, Dyn<'k'>)>("i", InputKind::Values);
    s.output("t", se3_core::ops::take_along_rows(vt, it));
    s.set("v", values.clone(), &[rows, cols])?;
    s.set("i", at.clone(), &[rows, k])?;
    s.run()?;
    let want_take = s.get("t")?.data;
    for l in LAUNCHES {
        let ev = max_err(&shim::index_valid(l, &idx), &want_valid);
        let ec = max_err(&shim::edge_centers(l, &idx, K), &want_dst);
        let et = max_err(&shim::take_along_rows(l, &values, &at, cols, k), &want_take);
        println!(
            "index_valid / edge_centers / take_along_rows {l:?}: max error {ev:e} / {ec:e} / {et:e}"
        );
        record("index_valid", ev);
        record("edge_centers", ec);
        record("take_along_rows", et);
        assert_eq!((ev, ec, et), (0.0, 0.0, 0.0));
    }
    Ok(())
}

#[test]
fn stack_and_grad_scale_match_cpu() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    let mut r = rng();
    // p transposed (a, b) matrices: the kernels read each dense view (made by view_copy)
    let (p, a, b) = (r.gen_range(1..6), r.gen_range(1..40), r.gen_range(1..40));
    let mut s = Session::new();
    let mut parts = vec![];
    let mut dense = vec![];
    for i in 0..p {
        let d = rand_vec(&mut r, a * b);
        let t = s.input_with_shape::<(X, X)>(
            &format!("t{i}"),
            InputKind::Values,
            &[a.into(), b.into()],
        );
        s.set(&format!("t{i}"), d.clone(), &[a, b])?;
        parts.push(t.permute::<(X, X), _>());
        dense.push(
            (0..b * a)
                .map(|j| d[(j % a) * b + j / a])
                .collect::<Vec<f32>>(),
        );
    }
    let stacked: GraphTensor<(X, X, X)> =
        se3_core::ops::stack(&parts).ok_or(Error::Empty { what: "parts" })?;
    s.output("stack", stacked);
    s.output("scaled", se3_core::ops::grad_scale(parts[0], 0.3));
    s.run()?;
    let (want_stack, want_scaled) = (s.get("stack")?.data, s.get("scaled")?.data);
    let views: Vec<&[f32]> = dense.iter().map(|d| d.as_slice()).collect();
    for l in LAUNCHES {
        let es = max_err(&shim::stack(l, &views), &want_stack);
        let eg = max_err(&shim::grad_scale_forward(l, &dense[0]), &want_scaled);
        println!(
            "stack_slot / grad_scale_forward {l:?} (p {p}, {a}x{b}): max error {es:e} / {eg:e}"
        );
        record("stack_slot", es);
        record("grad_scale_forward", eg);
        assert_eq!((es, eg), (0.0, 0.0));
    }
    Ok(())
}

/// Sizes and options of one attention case.
struct AttentionCase {
    op: se3_core::ops::head_attention::HeadAttention,
    sizes: (usize, usize, usize, usize),
    /// Batch element 0 has every key masked.
    fully_masked: bool,
}

/// The forward output and the gradients of q, k, v for the output gradient `g`, from the CPU
/// backend (the fused forward and its fused backward through `autodiff`).
#[allow(clippy::type_complexity)]
fn attention_cpu(
    case: &AttentionCase,
    (q, k, v, mask, g): (&[f32], &[f32], &[f32], &[f32], &[f32]),
) -> Result<(Vec<f32>, [Vec<f32>; 3]), Error> {
    use se3_core::layers::graph::X;
    use se3_core::ops::head_attention::head_attention;
    let (b, n, c, dh) = case.sizes;
    let op = &case.op;
    let dims = [b, n, c, op.heads * dh];
    let ex = |d: &[usize]| d.iter().map(|&v| Expression::from(v)).collect::<Vec<_>>();
    let mut s = Session::new();
    let qt = s.input_with_shape::<(X, X, X, X)>("q", InputKind::Values, &ex(&dims));
    let kt = s.input_with_shape::<(X, X, X, X)>("k", InputKind::Values, &ex(&dims));
    let vt = s.input_with_shape::<(X, X, X, X)>("v", InputKind::Values, &ex(&dims));
    let mt = s.input_with_shape::<(X, X)>("m", InputKind::Mask, &ex(&[b, n]));
    let gt = s.input_with_shape::<(X, X, X, X)>("g", InputKind::Values, &ex(&dims));
    let y = head_attention(
        qt,
        kt,
        vt,
        mt,
        op.heads,
        op.scale,
        op.logits,
        op.zero_if_all_masked,
    );
    s.output("y", y);
    let loss = (y * gt).sum_reduce::<(), Axes4<0, 1, 2, 3>>();
    let grads = se3_core::autodiff::grad(
        loss.no_shape(),
        &[qt.no_shape(), kt.no_shape(), vt.no_shape()],
    )?;
    for (name, t) in ["dq", "dk", "dv"].iter().zip(&grads) {
        s.output(name, *t);
    }
    s.compile();
    for (name, data) in [("q", q), ("k", k), ("v", v), ("g", g)] {
        s.set(name, data.to_vec(), &dims)?;
    }
    s.set("m", mask.to_vec(), &[b, n])?;
    s.run()?;
    Ok((
        s.get("y")?.data,
        [s.get("dq")?.data, s.get("dk")?.data, s.get("dv")?.data],
    ))
}

#[test]
fn head_attention_backward_matches_cpu_with_masks_and_a_wide_head() -> Result<(), Error> {
    use se3_core::ops::head_attention::{AttentionInput, HeadAttention, HeadLogits};
    let mut r = rng();
    let mut cases = vec![];
    for case in 0..4 {
        let (b, n, c) = (r.gen_range(1..3), r.gen_range(1..40), r.gen_range(1..4));
        let (heads, dh) = (r.gen_range(1..4), r.gen_range(1..9));
        cases.push(AttentionCase {
            op: HeadAttention {
                heads,
                scale: r.gen_range(0.1..0.6),
                logits: if case % 2 == 0 {
                    HeadLogits::Dot
                } else {
                    HeadLogits::L2Distance
                },
                zero_if_all_masked: case >= 2,
            },
            sizes: (b, n, c, dh),
            fully_masked: case % 2 == 1,
        });
    }
    // a head vector c dh above the shared-memory bound: the wide forward kernel
    let dh = r.gen_range(shim::HEAD_MAX_D / 3 + 1..shim::HEAD_MAX_D / 2);
    cases.push(AttentionCase {
        op: HeadAttention {
            heads: 2,
            scale: 0.5,
            logits: HeadLogits::Dot,
            zero_if_all_masked: false,
        },
        sizes: (2, r.gen_range(2..9), 3, dh),
        fully_masked: true,
    });
    for (ci, case) in cases.iter().enumerate() {
        let (b, n, c, dh) = case.sizes;
        let total = b * n * c * case.op.heads * dh;
        // the wide case's logits stay O(1) with small entries
        let amp = if c * dh > shim::HEAD_MAX_D { 0.1 } else { 1.0 };
        let draw =
            |r: &mut StdRng| -> Vec<f32> { rand_vec(r, total).iter().map(|x| x * amp).collect() };
        let (q, k, v) = (draw(&mut r), draw(&mut r), draw(&mut r));
        let g = rand_vec(&mut r, total);
        let mask: Vec<f32> = (0..b * n)
            .map(|i| f32::from(!(case.fully_masked && i < n) && r.gen_bool(0.7)))
            .collect();
        let inputs = (&q[..], &k[..], &v[..], &mask[..], &g[..]);
        let (want_y, want) = attention_cpu(case, inputs)?;
        for l in [Launch { grid: 3, block: 32 }, Launch { grid: 2, block: 64 }] {
            let y = shim::head_attention(l, &case.op, (&q, &k, &v, &mask), case.sizes);
            let ey = max_err(&y, &want_y);
            let wide = c * dh > shim::HEAD_MAX_D;
            record(
                if wide {
                    "head_attention_rows_wide"
                } else {
                    "head_attention_rows"
                },
                ey,
            );
            // a logit L carries a rounding error of about eps |L| in either order of
            // summation, which the softmax passes to the weights and the weights to an
            // average of values up to max |v|: the tolerance grows with the largest logit
            // (entries are drawn in [-2 amp, 2 amp]; an L2 logit reaches scale c dh (4 amp)^2)
            let entry = 2.0 * amp;
            let logit_bound = case.op.scale
                * (c * dh) as f32
                * match case.op.logits {
                    HeadLogits::Dot => entry * entry,
                    HeadLogits::L2Distance => 4.0 * entry * entry,
                };
            let tol = (4.0 * f32::EPSILON * logit_bound * entry).max(1e-5);
            assert!(ey < tol, "forward error {ey} above {tol} (case {ci})");
            let mut errs = [0.0f32; 3];
            for (w, wrt) in [
                AttentionInput::Query,
                AttentionInput::Key,
                AttentionInput::Value,
            ]
            .into_iter()
            .enumerate()
            {
                let got = shim::head_attention_grad(l, &case.op, wrt, inputs, case.sizes);
                errs[w] = max_err(&got, &want[w]);
            }
            let e = errs.iter().fold(0.0f32, |m, &x| m.max(x));
            println!(
                "head_attention_grad {l:?} case {ci} (b {b}, n {n}, c {c}, heads {}, dh {dh}, \
                 {:?}, zero {}): max error q/k/v {:e} / {:e} / {:e}, forward {ey:e}",
                case.op.heads,
                case.op.logits,
                case.op.zero_if_all_masked,
                errs[0],
                errs[1],
                errs[2]
            );
            record("head_attention_grad_stats", e);
            record("head_attention_grad_rows", e);
            // sums of n products of n-term softmaxes in another order, the CPU's exp a
            // polynomial; the L2 logits add -2 q_i sum_j dL_ij (0 exactly, float32 rounding of
            // n cancelling terms here): one draw in about twenty reached 6.3e-5
            assert!(e < 2e-4, "head attention gradient error {e} (case {ci})");
        }
    }
    Ok(())
}

#[test]
fn egnn_edge_backward_matches_cpu_with_missing_neighbours_and_every_option() -> Result<(), Error> {
    use se3_core::layers::graph::X;
    use se3_core::ops::egnn_edge::{egnn_edge, EgnnCoorsWeights, EgnnEdgeInputs, EgnnEdgeKernel};
    let mut r = rng();
    for case in 0..4 {
        let (h, m_dim, f) = (r.gen_range(1..70), r.gen_range(1..20), r.gen_range(0..3));
        let (rows, k) = (r.gen_range(1..25), r.gen_range(1..9));
        let small = |r: &mut StdRng, n: usize| -> Vec<f32> {
            (0..n).map(|_| r.gen_range(-0.6f32..0.6)).collect()
        };
        let kernel = EgnnEdgeKernel {
            hidden: h,
            m_dim,
            fourier_features: f,
            phi_t: small(&mut r, (2 * f + 1) * h),
            edge_out_t: small(&mut r, h * m_dim),
            edge_out_bias: small(&mut r, m_dim),
            gate: (case % 2 == 0).then(|| (small(&mut r, m_dim), r.gen_range(-0.5..0.5))),
            coors: (case != 1).then(|| EgnnCoorsWeights {
                hidden_t: small(&mut r, m_dim * 4 * m_dim),
                hidden_bias: small(&mut r, 4 * m_dim),
                out: small(&mut r, 4 * m_dim),
                out_bias: r.gen_range(-0.5..0.5),
            }),
            coors_scale: (case >= 2).then(|| r.gen_range(0.1..2.0)),
            clamp: (case == 3).then(|| r.gen_range(0.05..1.0)),
            pool_messages: case != 2,
            edge_term: case == 3,
        };
        let (hi, hj) = (small(&mut r, rows * h), small(&mut r, rows * h));
        let coors = rand_vec(&mut r, rows * 3);
        // -1 neighbours, self edges (r = 0), duplicates; some edges invalid
        let src: Vec<f32> = (0..rows * k)
            .map(|e| {
                if r.gen_bool(0.2) {
                    -1.0
                } else if r.gen_bool(0.1) {
                    (e / k) as f32
                } else {
                    r.gen_range(0..rows) as f32
                }
            })
            .collect();
        let valid: Vec<f32> = (0..rows * k).map(|_| f32::from(r.gen_bool(0.8))).collect();
        let term = kernel.edge_term.then(|| small(&mut r, rows * k * h));
        let cot = rand_vec(&mut r, rows * (m_dim + 3));
        let mut s = Session::new();
        let ex = |d: &[usize]| d.iter().map(|&v| Expression::from(v)).collect::<Vec<_>>();
        let inp = |s: &mut Session, name: &str, d: &[usize]| {
            s.input_with_shape::<(X, X)>(name, InputKind::Values, &ex(d))
        };
        let inputs = EgnnEdgeInputs {
            dst_term: inp(&mut s, "hi", &[rows, h]),
            src_term: inp(&mut s, "hj", &[rows, h]),
            coors: inp(&mut s, "x", &[rows, 3]),
            src: s.input_with_shape::<(X,)>("src", InputKind::Values, &ex(&[rows * k])),
            valid: inp(&mut s, "valid", &[rows, k]),
        };
        let (a_t, b_t, x_t) = (inputs.dst_term, inputs.src_term, inputs.coors);
        let term_t = kernel
            .edge_term
            .then(|| inp(&mut s, "term", &[rows * k, h]));
        let c_t = inp(&mut s, "cot", &[rows, m_dim + 3]);
        let y = egnn_edge(inputs, term_t, kernel.clone());
        let loss = (y * c_t).sum_reduce::<(), Axes2<0, 1>>();
        let mut wrt = vec![a_t.no_shape(), b_t.no_shape(), x_t.no_shape()];
        if let Some(t) = term_t {
            wrt.push(t.no_shape());
        }
        let grads = se3_core::autodiff::grad(loss.no_shape(), &wrt)?;
        for (name, g) in ["da", "db", "dx", "dt"].iter().zip(&grads) {
            s.output(name, *g);
        }
        s.compile();
        s.set("hi", hi.clone(), &[rows, h])?;
        s.set("hj", hj.clone(), &[rows, h])?;
        s.set("x", coors.clone(), &[rows, 3])?;
        s.set("src", src.clone(), &[rows * k])?;
        s.set("valid", valid.clone(), &[rows, k])?;
        s.set("cot", cot.clone(), &[rows, m_dim + 3])?;
        if let Some(t) = &term {
            s.set("term", t.clone(), &[rows * k, h])?;
        }
        s.run()?;
        let (want_a, want_b, want_x) = (s.get("da")?.data, s.get("db")?.data, s.get("dx")?.data);
        let want_t = if kernel.edge_term {
            s.get("dt")?.data
        } else {
            vec![]
        };
        let d = shim::EgnnInputs {
            hi: &hi,
            hj: &hj,
            coors: &coors,
            src: &src,
            valid: &valid,
            edge_term: term.as_deref(),
        };
        for l in [Launch { grid: 2, block: 64 }, Launch { grid: 3, block: 96 }] {
            let out = shim::egnn_edge_backward(l, &kernel, &d, &cot, k);
            // the graph's composition of the kernel's rows: node rows, and the edge rows
            // scattered to their neighbours (the `scatter_add` ops of the backward)
            let w = h + 3;
            let (edges, nodes) = out.split_at(rows * k * w);
            let (mut da, mut db, mut dx) = (
                vec![0.0f32; rows * h],
                vec![0.0f32; rows * h],
                vec![0.0f32; rows * 3],
            );
            for i in 0..rows {
                da[i * h..(i + 1) * h].copy_from_slice(&nodes[i * w..i * w + h]);
                dx[i * 3..(i + 1) * 3].copy_from_slice(&nodes[i * w + h..(i + 1) * w]);
            }
            let mut dt = vec![0.0f32; rows * k * h];
            for (e, row) in edges.chunks(w).enumerate() {
                dt[e * h..(e + 1) * h].copy_from_slice(&row[..h]);
                let j = src[e];
                if j >= 0.0 && (j as usize) < rows {
                    let j = j as usize;
                    for (o, v) in db[j * h..(j + 1) * h].iter_mut().zip(&row[..h]) {
                        *o += v;
                    }
                    for (o, v) in dx[j * 3..(j + 1) * 3].iter_mut().zip(&row[h..]) {
                        *o -= v;
                    }
                }
            }
            let mut err = max_err(&da, &want_a)
                .max(max_err(&db, &want_b))
                .max(max_err(&dx, &want_x));
            if kernel.edge_term {
                err = err.max(max_err(&dt, &want_t));
            }
            println!(
                "egnn_edge_backward_nodes {l:?} case {case} (rows {rows}, k {k}, H {h}, M {m_dim}, \
                 F {f}): max error {err:e}"
            );
            record("egnn_edge_backward_nodes", err);
            assert!(err < 1e-4, "egnn_edge backward error {err}");
        }
    }
    Ok(())
}

type Case = fn() -> Result<(), Error>;

/// Every case above, by name.
const CASES: &[(&str, Case)] = &[
    ("gather", gather_rows_matches_cpu),
    (
        "scatter_add",
        scatter_add_atomic_and_deterministic_match_cpu,
    ),
    (
        "buckets",
        buckets_are_stable_counting_sort_with_empty_segments,
    ),
    ("segment_softmax", segment_softmax_matches_cpu),
    ("relative_positions", relative_positions_match_cpu),
    ("layer_norm_gelu", layer_norm_gelu_matches_cpu),
    ("layer_norm_gelu_grad", layer_norm_gelu_grad_matches_cpu),
    (
        "silu_layer_norm",
        silu_layer_norm_both_forms_match_cpu_across_widths,
    ),
    ("top_k", top_k_matches_cpu_with_masks_nan_and_ties),
    ("reductions", reductions_match_cpu),
    (
        "view_copy",
        view_copy_reads_permuted_sliced_padded_and_expanded_views_as_cpu,
    ),
    ("elementwise", elementwise_program_matches_cpu_chain),
    ("edge_conv", edge_conv_matrix_and_diagonal_match_cpu),
    ("knn", knn_matches_cpu_with_masks_batches_radius_and_ties),
    ("radial_hidden", radial_hidden_matches_cpu),
    (
        "edge_contract",
        edge_contract_sum_and_logits_match_cpu_with_heads_and_missing_neighbours,
    ),
    (
        "edge_contract_grad",
        edge_contract_grad_matches_cpu_with_heads_and_missing_neighbours,
    ),
    (
        "radial_edge_conv",
        radial_edge_conv_matches_cpu_with_missing_edges_and_zero_weights,
    ),
    ("adjacency", adjacency_degrees_match_cpu),
    (
        "egnn_edge",
        egnn_edge_matches_cpu_with_missing_neighbours_and_every_option,
    ),
    (
        "edge_basis",
        spherical_harmonics_and_kernel_basis_match_cpu_including_zero_length_edges,
    ),
    (
        "head_attention",
        head_attention_matches_cpu_with_masked_and_fully_masked_batches,
    ),
    ("index_rows", index_rows_and_take_along_rows_match_cpu),
    ("stack_grad_scale", stack_and_grad_scale_match_cpu),
    (
        "head_attention_backward",
        head_attention_backward_matches_cpu_with_masks_and_a_wide_head,
    ),
    (
        "egnn_edge_backward",
        egnn_edge_backward_matches_cpu_with_missing_neighbours_and_every_option,
    ),
];

#[test]
fn kernel_report_registers_spills_and_shim_errors() -> Result<(), Error> {
    use se3_core::exec::kernels::{Hot, SOURCES};
    use se3_cuda_check::compile::{compile_every_kernel, find_tools, preload_nvrtc, tools_dir};

    RECORDED.with(|r| *r.borrow_mut() = Some(BTreeMap::new()));
    for (name, case) in CASES {
        println!("== case {name}");
        case()?;
    }
    let errors = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    let dir = tools_dir();
    let compiled = match find_tools(&dir) {
        Some(tools) => {
            if let Err(e) = preload_nvrtc(&tools) {
                panic!("cannot load {}: {e}", tools.nvrtc.display());
            }
            Some(compile_every_kernel(&tools))
        }
        None => {
            assert!(
                std::env::var_os("SE3_REQUIRE_CUDA_COMPILERS").is_none(),
                "SE3_REQUIRE_CUDA_COMPILERS is set but NVRTC and ptxas are not in {} \
                 (run scripts/install-cuda-compilers)",
                dir.display()
            );
            println!(
                "skip compile columns: NVRTC and ptxas not found in {} \
                 (run scripts/install-cuda-compilers)",
                dir.display()
            );
            None
        }
    };
    let mut failures = compiled
        .as_ref()
        .map(|c| c.failures.clone())
        .unwrap_or_default();
    println!(
        "{:<28} {:>4} {:>9} {:>9} {:>13} {:>13} {:>12}",
        "kernel", "hot", "regs 80", "regs 90", "spills 80", "spills 90", "shim error"
    );
    for src in SOURCES {
        for (kernel, hot) in src.kernels {
            let col = |sm: &str| {
                let r = compiled.as_ref().and_then(|c| {
                    c.kernels
                        .iter()
                        .find(|k| k.sm == sm && k.report.name == *kernel)
                });
                match r {
                    Some(k) => (
                        k.report.registers.to_string(),
                        format!(
                            "{}/{}",
                            k.report.spill_store_bytes, k.report.spill_load_bytes
                        ),
                    ),
                    None => ("-".to_string(), "-".to_string()),
                }
            };
            let ((r80, s80), (r90, s90)) = (col("80"), col("90"));
            let err = errors.get(kernel);
            println!(
                "{:<28} {:>4} {:>9} {:>9} {:>13} {:>13} {:>12}",
                kernel,
                if *hot == Hot::Yes { "yes" } else { "no" },
                r80,
                r90,
                s80,
                s90,
                err.map_or("not run".to_string(), |e| format!("{e:.2e}"))
            );
            if err.is_none() {
                failures.push(format!("no shim case executes {kernel}"));
            }
        }
    }
    println!("(spills: store/load bytes; shim error: max |shim - cpu| / max(1, |cpu|) or the case's own measure)");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
