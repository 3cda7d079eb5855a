//! Tests of the session and of every pass of [`CpuCompiler`](super::CpuCompiler): the compiled
//! graph against luminal's primitive interpreter (the un-passed graph) and against plain Rust,
//! on random sizes, including views (permute, slice, pad, expand).

use luminal::prelude::{symbolic::Expression, *};
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{IndexBound, InputKind, Output, Session};
use crate::Error;

pub(crate) fn rng() -> StdRng {
    StdRng::seed_from_u64(crate::testing::seed())
}

pub(crate) fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// max |a - b| / max(1, max |b|).
pub(crate) fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length differs");
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

type Inputs<'a> = &'a [(&'a str, Vec<f32>, Vec<usize>)];

/// Builds the graph twice, runs it compiled with `CpuCompiler` and with luminal's plain
/// interpreter, and returns both values of each output.
pub(crate) fn run_both(
    build: impl Fn(&mut Session),
    inputs: Inputs,
    outputs: &[&str],
) -> Result<(Vec<Output>, Vec<Output>, Session), Error> {
    run_both_dims(build, inputs, outputs, &[])
}

/// [`run_both`] with dynamic dimensions that no input sets.
pub(crate) fn run_both_dims(
    build: impl Fn(&mut Session),
    inputs: Inputs,
    outputs: &[&str],
    dims: &[(char, usize)],
) -> Result<(Vec<Output>, Vec<Output>, Session), Error> {
    let mut fast = Session::new();
    build(&mut fast);
    for (c, v) in dims {
        fast.set_dim(*c, *v);
    }
    fast.compile();
    let mut plain = Session::new();
    build(&mut plain);
    plain.compile_stock();
    for (c, v) in dims {
        plain.set_dim(*c, *v);
    }
    for s in [&mut fast, &mut plain] {
        for (name, data, shape) in inputs {
            s.set(name, data.clone(), shape)?;
        }
        s.run()?;
    }
    let a = outputs
        .iter()
        .map(|o| fast.get(o))
        .collect::<Result<Vec<_>, _>>()?;
    let b = outputs
        .iter()
        .map(|o| plain.get(o))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((a, b, fast))
}

fn check(a: &[Output], b: &[Output], refs: &[Vec<f32>]) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.shape, y.shape, "output {i}: shapes differ");
        let e = rel_err(&x.data, &y.data);
        assert!(e < 1e-5, "output {i}: compiled vs plain graph rel err {e}");
        if let Some(r) = refs.get(i) {
            let e = rel_err(&x.data, r);
            assert!(e < 1e-5, "output {i}: compiled vs plain Rust rel err {e}");
        }
    }
}

type D3 = (Dyn<'a'>, Dyn<'b'>, Dyn<'c'>);

#[test]
fn fused_elementwise_chain_matches_plain_rust_and_plain_graph() -> Result<(), Error> {
    let mut r = rng();
    let n = r.gen_range(1..3000);
    let (x, y) = (rand_vec(&mut r, n * 7), rand_vec(&mut r, n * 7));
    let build = |s: &mut Session| {
        let x = s.input::<(Dyn<'n'>, Const<7>)>("x", InputKind::Values);
        let y = s.input::<(Dyn<'n'>, Const<7>)>("y", InputKind::Values);
        let z = ((x * 2.0 + y).exp2() * x.sin() + (y * y + 1.0).sqrt().recip() - x % 0.3)
            * (x.less_than(y) + 0.5);
        s.output("z", z.log2());
    };
    let reference: Vec<f32> = x
        .iter()
        .zip(&y)
        .map(|(&x, &y)| {
            let lt = if x < y { 1.0 } else { 0.0 };
            (((x * 2.0 + y).exp2() * x.sin() + 1.0 / (y * y + 1.0).sqrt() + -(x % 0.3))
                * (lt + 0.5))
                .log2()
        })
        .collect();
    let (a, b, s) = run_both(build, &[("x", x, vec![n, 7]), ("y", y, vec![n, 7])], &["z"])?;
    // NaN where the log argument is negative: compare finite positions only via masking.
    let keep = |v: &[f32]| {
        v.iter()
            .map(|x| if x.is_finite() { *x } else { 0.0 })
            .collect::<Vec<_>>()
    };
    let (fa, fb, fr) = (keep(&a[0].data), keep(&b[0].data), keep(&reference));
    assert!(rel_err(&fa, &fb) < 1e-5 && rel_err(&fa, &fr) < 1e-5);
    let fused = s
        .op_names()
        .iter()
        .filter(|o| o.starts_with("FusedElementwise"))
        .count();
    assert!(fused <= 2, "chain not fused: {:?}", s.op_names());
    Ok(())
}

#[test]
fn views_permute_slice_pad_expand_match_plain_rust() -> Result<(), Error> {
    let mut r = rng();
    let (da, db, dc) = (r.gen_range(2..6), r.gen_range(2..6), r.gen_range(3..7));
    let x = rand_vec(&mut r, da * db * dc);
    let v = rand_vec(&mut r, dc);
    let build = |s: &mut Session| {
        let x = s.input::<D3>("x", InputKind::Values);
        let v = s.input::<(Dyn<'c'>,)>("v", InputKind::Values);
        // permute (a,b,c) -> (c,a,b), add an expanded vector along c.
        let p = x.permute::<(Dyn<'c'>, Dyn<'a'>, Dyn<'b'>), _>()
            + v.expand::<(Dyn<'c'>, Dyn<'a'>, Dyn<'b'>), _>();
        s.output("p", p);
        // slice c to 1..c-1 then exp2 (unary over a sliced view).
        let sl = x
            .slice((.., .., Expression::from(1)..Expression::from('c')))
            .exp2();
        s.output("sl", sl.contiguous());
        // pad b by (1, 2) and add 1 (binary over a padded view).
        // The padded axis is a new dynamic dimension `p` = b + 3 (set below).
        let pd = x.pad::<(Dyn<'a'>, Dyn<'p'>, Dyn<'c'>), _, _>(&[(0, 0), (1, 2), (0, 0)]) + 1.0;
        s.output("pd", pd);
        // sum over a permuted view, max over the middle axis.
        s.output(
            "sum",
            x.permute::<(Dyn<'b'>, Dyn<'c'>, Dyn<'a'>), _>()
                .sum_reduce::<(Dyn<'b'>, Dyn<'c'>), _>(),
        );
        s.output("max", x.max_reduce::<(Dyn<'a'>, Dyn<'c'>), _>());
    };
    let at = |i: usize, j: usize, k: usize| x[(i * db + j) * dc + k];
    let mut p = vec![];
    for (k, vk) in v.iter().enumerate() {
        for i in 0..da {
            for j in 0..db {
                p.push(at(i, j, k) + vk);
            }
        }
    }
    let mut sl = vec![];
    for i in 0..da {
        for j in 0..db {
            for k in 1..dc {
                sl.push(at(i, j, k).exp2());
            }
        }
    }
    let mut pd = vec![];
    for i in 0..da {
        for j in 0..db + 3 {
            for k in 0..dc {
                pd.push(
                    if j >= 1 && j <= db {
                        at(i, j - 1, k)
                    } else {
                        0.0
                    } + 1.0,
                );
            }
        }
    }
    let mut sum = vec![];
    for j in 0..db {
        for k in 0..dc {
            sum.push((0..da).map(|i| at(i, j, k)).sum());
        }
    }
    let mut max = vec![];
    for i in 0..da {
        for k in 0..dc {
            max.push((0..db).map(|j| at(i, j, k)).fold(f32::MIN, f32::max));
        }
    }
    let (a, b, _) = run_both_dims(
        build,
        &[
            ("x", x.clone(), vec![da, db, dc]),
            ("v", v.clone(), vec![dc]),
        ],
        &["p", "sl", "pd", "sum", "max"],
        &[('p', db + 3)],
    )?;
    check(&a, &b, &[p, sl, pd, sum, max]);
    Ok(())
}

fn naive_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
        }
    }
    c
}

#[test]
fn matmul_2d_runs_on_gemm_and_matches_plain_rust() -> Result<(), Error> {
    let mut r = rng();
    let (m, k, n) = (r.gen_range(1..40), r.gen_range(1..40), r.gen_range(1..40));
    let (a, b) = (rand_vec(&mut r, m * k), rand_vec(&mut r, k * n));
    let build = |s: &mut Session| {
        let a = s.input::<(Dyn<'m'>, Dyn<'k'>)>("a", InputKind::Values);
        let b = s.input::<(Dyn<'k'>, Dyn<'n'>)>("b", InputKind::Values);
        s.output("c", a.matmul(b));
        // transposed operand: (b^T)^T = b read through a permuted view
        let bt = s.input::<(Dyn<'n'>, Dyn<'k'>)>("bt", InputKind::Values);
        s.output("ct", a.matmul(bt.permute::<(Dyn<'k'>, Dyn<'n'>), _>()));
    };
    let mut bt = vec![0.0; k * n];
    for i in 0..k {
        for j in 0..n {
            bt[j * k + i] = b[i * n + j];
        }
    }
    let c = naive_matmul(&a, &b, m, k, n);
    let (x, y, s) = run_both(
        build,
        &[
            ("a", a, vec![m, k]),
            ("b", b, vec![k, n]),
            ("bt", bt, vec![n, k]),
        ],
        &["c", "ct"],
    )?;
    check(&x, &y, &[c.clone(), c]);
    assert_eq!(
        s.op_names()
            .iter()
            .filter(|o| o.as_str() == "MatMul")
            .count(),
        2,
        "{:?}",
        s.op_names()
    );
    Ok(())
}

#[test]
fn batched_matmul_runs_on_gemm_and_matches_plain_rust() -> Result<(), Error> {
    let mut r = rng();
    let (bs, m, k, n) = (
        r.gen_range(1..5),
        r.gen_range(1..20),
        r.gen_range(1..20),
        r.gen_range(1..20),
    );
    let (a, b, w) = (
        rand_vec(&mut r, bs * m * k),
        rand_vec(&mut r, bs * k * n),
        rand_vec(&mut r, k * n),
    );
    let build = |s: &mut Session| {
        let a = s.input::<(Dyn<'z'>, Dyn<'m'>, Dyn<'k'>)>("a", InputKind::Values);
        let b = s.input::<(Dyn<'z'>, Dyn<'k'>, Dyn<'n'>)>("b", InputKind::Values);
        let w = s.input::<(Dyn<'k'>, Dyn<'n'>)>("w", InputKind::Values);
        s.output("ab", a.matmul(b));
        s.output("aw", a.matmul(w));
    };
    let mut ab = vec![];
    let mut aw = vec![];
    for z in 0..bs {
        ab.extend(naive_matmul(
            &a[z * m * k..(z + 1) * m * k],
            &b[z * k * n..(z + 1) * k * n],
            m,
            k,
            n,
        ));
        aw.extend(naive_matmul(&a[z * m * k..(z + 1) * m * k], &w, m, k, n));
    }
    let (x, y, s) = run_both(
        build,
        &[
            ("a", a, vec![bs, m, k]),
            ("b", b, vec![bs, k, n]),
            ("w", w, vec![k, n]),
        ],
        &["ab", "aw"],
    )?;
    check(&x, &y, &[ab, aw]);
    assert_eq!(
        s.op_names()
            .iter()
            .filter(|o| o.as_str() == "MatMul")
            .count(),
        2,
        "{:?}",
        s.op_names()
    );
    Ok(())
}

#[test]
fn many_tiny_batched_products_match_plain_rust_in_both_layouts() -> Result<(), Error> {
    // per-edge kernels: many batches of products small enough for the direct loops, with the
    // second operand row-major (strided `k`) and transposed (contiguous `k`)
    let mut r = rng();
    let (bs, m, k, n) = (
        r.gen_range(2..60),
        r.gen_range(1..12),
        r.gen_range(1..40),
        r.gen_range(1..5),
    );
    let (a, b) = (rand_vec(&mut r, bs * m * k), rand_vec(&mut r, bs * k * n));
    let mut bt = vec![0.0; bs * k * n];
    for z in 0..bs {
        for i in 0..k {
            for j in 0..n {
                bt[(z * n + j) * k + i] = b[(z * k + i) * n + j];
            }
        }
    }
    let build = |s: &mut Session| {
        let a = s.input::<(Dyn<'z'>, Dyn<'m'>, Dyn<'k'>)>("a", InputKind::Values);
        let b = s.input::<(Dyn<'z'>, Dyn<'k'>, Dyn<'n'>)>("b", InputKind::Values);
        let bt = s.input::<(Dyn<'z'>, Dyn<'n'>, Dyn<'k'>)>("bt", InputKind::Values);
        s.output("ab", a.matmul(b));
        s.output(
            "abt",
            a.matmul(bt.permute::<(Dyn<'z'>, Dyn<'k'>, Dyn<'n'>), _>()),
        );
    };
    let mut ab = vec![];
    for z in 0..bs {
        ab.extend(naive_matmul(
            &a[z * m * k..(z + 1) * m * k],
            &b[z * k * n..(z + 1) * k * n],
            m,
            k,
            n,
        ));
    }
    let (x, y, s) = run_both(
        build,
        &[
            ("a", a, vec![bs, m, k]),
            ("b", b, vec![bs, k, n]),
            ("bt", bt, vec![bs, n, k]),
        ],
        &["ab", "abt"],
    )?;
    check(&x, &y, &[ab.clone(), ab]);
    assert_eq!(
        s.op_names()
            .iter()
            .filter(|o| o.as_str() == "MatMul")
            .count(),
        2,
        "{:?}",
        s.op_names()
    );
    Ok(())
}

#[test]
fn softmax_and_layer_norm_match_plain_graph() -> Result<(), Error> {
    let mut r = rng();
    let n = r.gen_range(1..50);
    let x = rand_vec(&mut r, n * 9);
    let build = |s: &mut Session| {
        let x = s.input::<(Dyn<'n'>, Const<9>)>("x", InputKind::Values);
        s.output("sm", x.softmax::<1>());
        s.output("ln", x.layer_norm::<1, _>(1e-5));
        s.output("mean", x.mean_reduce::<(Dyn<'n'>,), _>());
    };
    let mut sm = vec![];
    let mut mean = vec![];
    for row in x.chunks(9) {
        let m = row.iter().fold(f32::MIN, |a, b| a.max(*b));
        let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
        let z: f32 = e.iter().sum();
        sm.extend(e.iter().map(|v| v / z));
        mean.push(row.iter().sum::<f32>() / 9.0);
    }
    let (a, b, _) = run_both(build, &[("x", x, vec![n, 9])], &["sm", "ln", "mean"])?;
    check(&a[..1], &b[..1], &[sm]);
    check(&a[1..], &b[1..], &[]);
    check(&a[2..], &b[2..], &[mean]);
    Ok(())
}

#[test]
fn one_session_runs_many_sizes_with_resident_weights_and_fresh_outputs() -> Result<(), Error> {
    let mut r = rng();
    let mut s = Session::new();
    let x = s.input::<(Dyn<'n'>, Const<4>)>("x", InputKind::Values);
    let w = s.weight::<(Const<4>, Const<3>)>("w");
    s.output("y", x.matmul(w).sum_reduce::<(Const<3>,), _>());
    s.compile();
    let wv = rand_vec(&mut r, 12);
    s.set_weight("w", wv.clone(), &[4, 3])?;
    let nodes = s.node_count();
    for _ in 0..4 {
        let n = r.gen_range(1..64);
        let xv = rand_vec(&mut r, n * 4);
        s.set("x", xv.clone(), &[n, 4])?;
        s.run()?;
        let y = s.get("y")?;
        let full = naive_matmul(&xv, &wv, n, 4, 3);
        let want: Vec<f32> = (0..3)
            .map(|j| (0..n).map(|i| full[i * 3 + j]).sum())
            .collect();
        assert!(rel_err(&y.data, &want) < 1e-5);
        assert_eq!(s.take("y")?, y);
        assert!(matches!(s.take("y"), Err(Error::NoOutput { .. })));
        assert_eq!(s.node_count(), nodes, "graph changed between runs");
    }
    Ok(())
}

#[test]
fn bad_inputs_give_typed_errors() -> Result<(), Error> {
    let mut s = Session::new();
    let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
    let m = s.input::<(Dyn<'n'>,)>("mask", InputKind::Mask);
    let i = s.input::<(Dyn<'e'>,)>(
        "idx",
        InputKind::Indices {
            bound: IndexBound::Dim('n'),
            allow_missing: false,
        },
    );
    s.output("y", x.sum_reduce::<(Dyn<'n'>,), _>() * m);
    s.output("i", i * 1.0);
    assert!(matches!(s.run(), Err(Error::MissingInput { .. })));
    assert!(matches!(
        s.set("nope", vec![], &[]),
        Err(Error::UnknownName { .. })
    ));
    assert!(matches!(
        s.set("x", vec![0.0; 3], &[3]),
        Err(Error::RankMismatch { .. })
    ));
    assert!(matches!(
        s.set("x", vec![0.0; 8], &[2, 4]),
        Err(Error::AxisMismatch { axis: 1, .. })
    ));
    assert!(matches!(
        s.set("x", vec![0.0; 5], &[2, 3]),
        Err(Error::DataLength { .. })
    ));
    assert!(matches!(
        s.set("x", vec![], &[0, 3]),
        Err(Error::EmptyInput { axis: 0, .. })
    ));
    assert!(matches!(
        s.set("x", vec![0.0, f32::NAN, 0.0], &[1, 3]),
        Err(Error::NonFiniteInput { index: 1, .. })
    ));
    assert!(matches!(
        s.set("mask", vec![0.5], &[1]),
        Err(Error::NotAMask { .. })
    ));
    assert!(matches!(
        s.set("idx", vec![0.5], &[1]),
        Err(Error::BadIndex { .. })
    ));
    s.set("x", vec![0.0; 6], &[2, 3])?;
    s.set("mask", vec![1.0; 3], &[3])?;
    s.set("idx", vec![0.0], &[1])?;
    assert!(matches!(s.run(), Err(Error::AxisMismatch { .. })));
    s.set("mask", vec![1.0; 2], &[2])?;
    s.set("idx", vec![2.0], &[1])?;
    assert!(matches!(s.run(), Err(Error::BadIndex { len: 2, .. })));
    s.set("idx", vec![1.0], &[1])?;
    s.set_dim('z', 0);
    assert!(matches!(s.run(), Err(Error::EmptyDim { dim: 'z' })));
    s.set_dim('z', 1);
    s.set("x", vec![0.0; 6], &[2, 3])?;
    s.set("mask", vec![1.0; 2], &[2])?;
    s.set("idx", vec![1.0], &[1])?;
    s.run()?;
    assert_eq!(s.get("i")?.data, vec![1.0]);
    assert!(matches!(s.get("zzz"), Err(Error::UnknownName { .. })));
    Ok(())
}

type D2 = (Dyn<'a'>, Dyn<'b'>);

/// One random step of a random elementwise program over `(a, b)` tensors, mixing views.
fn random_step(r: &mut StdRng, pool: &[GraphTensor<D2>]) -> GraphTensor<D2> {
    let t = pool[r.gen_range(0..pool.len())];
    let u = pool[r.gen_range(0..pool.len())];
    match r.gen_range(0..13) {
        // Identities that luminal's ArithmeticElimination removes, over permuted views.
        11 => (t.permute::<(Dyn<'b'>, Dyn<'a'>), _>() + 0.0).permute::<D2, _>() * u,
        12 => (t.permute::<(Dyn<'b'>, Dyn<'a'>), _>() * 1.0).permute::<D2, _>() + u,
        0 => t.sin(),
        1 => t.sin().exp2(),
        2 => (t * t + 1.0).recip(),
        3 => (t * t + 1.0).sqrt(),
        4 => t + u,
        5 => t * u,
        6 => t.less_than(u),
        7 => t % 0.7,
        // A binary op between two permuted views, permuted back.
        8 => (t.permute::<(Dyn<'b'>, Dyn<'a'>), _>() * u.permute::<(Dyn<'b'>, Dyn<'a'>), _>()
            + 0.5)
            .permute::<D2, _>(),
        // Row sums broadcast back.
        9 => t.sum_reduce::<(Dyn<'a'>,), _>().expand::<D2, _>() * u,
        // Drop the first column, pad one zero column at the end.
        _ => {
            t.slice((.., Expression::from(1)..Expression::from('b')))
                .contiguous()
                .pad::<D2, _, _>(&[(0, 0), (0, 1)])
                + u
        }
    }
}

#[test]
fn random_elementwise_programs_with_views_match_the_plain_graph() -> Result<(), Error> {
    let mut r = rng();
    for _ in 0..8 {
        let (da, db) = (r.gen_range(1..9), r.gen_range(2..9));
        let program_seed: u64 = r.gen();
        let steps = r.gen_range(3..16);
        let build = |s: &mut Session| {
            let mut pr = StdRng::seed_from_u64(program_seed);
            let x = s.input::<D2>("x", InputKind::Values);
            let y = s.input::<D2>("y", InputKind::Values);
            let mut pool = vec![x, y];
            for _ in 0..steps {
                let t = random_step(&mut pr, &pool);
                pool.push(t);
            }
            let last = *pool.last().unwrap_or(&x);
            s.output("out", last);
            s.output("mid", pool[pool.len() / 2 + 1]);
        };
        let x = rand_vec(&mut r, da * db);
        let y = rand_vec(&mut r, da * db);
        let (a, b, _) = run_both(
            build,
            &[("x", x, vec![da, db]), ("y", y, vec![da, db])],
            &["out", "mid"],
        )?;
        check(&a, &b, &[]);
    }
    Ok(())
}

/// Plain-Rust reduction of a row-major (a, b, c) tensor permuted by `perm`, over permuted
/// axis `axis`; result row-major over the remaining permuted axes.
fn permuted_reduce(
    x: &[f32],
    dims: [usize; 3],
    perm: [usize; 3],
    axis: usize,
    max: bool,
) -> Vec<f32> {
    let pd = perm.map(|p| dims[p]);
    let keep: Vec<usize> = (0..3).filter(|&k| k != axis).collect();
    let mut out = vec![];
    for i in 0..pd[keep[0]] {
        for j in 0..pd[keep[1]] {
            let mut acc = if max { f32::MIN } else { 0.0 };
            for r in 0..pd[axis] {
                let mut q = [0usize; 3];
                q[keep[0]] = i;
                q[keep[1]] = j;
                q[axis] = r;
                let mut orig = [0usize; 3];
                for k in 0..3 {
                    orig[perm[k]] = q[k];
                }
                let v = x[(orig[0] * dims[1] + orig[1]) * dims[2] + orig[2]];
                acc = if max { acc.max(v) } else { acc + v };
            }
            out.push(acc + 1.0);
        }
    }
    out
}

#[test]
fn reductions_over_permuted_views_match_plain_rust() -> Result<(), Error> {
    let mut r = rng();
    let dims = [r.gen_range(1..5), r.gen_range(1..5), r.gen_range(1..5)];
    let x = rand_vec(&mut r, dims.iter().product());
    type A = Dyn<'a'>;
    type B = Dyn<'b'>;
    type C = Dyn<'c'>;
    let mut s = Session::new();
    let t = s.input::<(A, B, C)>("x", InputKind::Values);
    let p1 = t.permute::<(C, B, A), _>();
    s.output("s1", p1.sum_reduce::<(C, B), _>() + 1.0);
    s.output("m1", p1.max_reduce::<(C, A), _>() + 1.0);
    let p2 = t.permute::<(B, A, C), _>();
    s.output("s2", p2.sum_reduce::<(A, C), _>() + 1.0);
    let p3 = t.permute::<(C, A, B), _>();
    s.output("s3", p3.sum_reduce::<(C, A), _>() + 1.0);
    s.output("m3", p3.max_reduce::<(A, B), _>() + 1.0);
    s.set("x", x.clone(), &dims)?;
    s.run()?;
    let cases = [
        ("s1", [2, 1, 0], 2, false),
        ("m1", [2, 1, 0], 1, true),
        ("s2", [1, 0, 2], 0, false),
        ("s3", [2, 0, 1], 2, false),
        ("m3", [2, 0, 1], 0, true),
    ];
    for (name, perm, axis, max) in cases {
        let want = permuted_reduce(&x, dims, perm, axis, max);
        let got = s.get(name)?.data;
        assert!(rel_err(&got, &want) < 1e-6, "{name}: {got:?} vs {want:?}");
    }
    Ok(())
}

#[test]
fn matmul_of_sliced_and_broadcast_operands_runs_on_gemm() -> Result<(), Error> {
    let mut r = rng();
    let (bs, m, k, n) = (
        r.gen_range(1..4),
        r.gen_range(1..12),
        r.gen_range(1..12),
        r.gen_range(1..12),
    );
    // `wide` holds two extra columns; the product uses columns 1..=k.
    let wide = rand_vec(&mut r, bs * m * (k + 2));
    let w = rand_vec(&mut r, k * n);
    let build = |s: &mut Session| {
        let x = s.input::<(Dyn<'z'>, Dyn<'m'>, Dyn<'p'>)>("wide", InputKind::Values);
        let w = s.input::<(Dyn<'k'>, Dyn<'n'>)>("w", InputKind::Values);
        let a = x
            .slice((.., .., Expression::from(1)..Expression::from('k') + 1))
            .realize::<(Dyn<'z'>, Dyn<'m'>, Dyn<'k'>)>();
        s.output("c", a.matmul(w));
    };
    let mut want = vec![];
    for z in 0..bs {
        let a: Vec<f32> = (0..m)
            .flat_map(|i| (1..=k).map(move |j| (i, j)))
            .map(|(i, j)| wide[(z * m + i) * (k + 2) + j])
            .collect();
        want.extend(naive_matmul(&a, &w, m, k, n));
    }
    let (x, y, s) = run_both(
        build,
        &[("wide", wide, vec![bs, m, k + 2]), ("w", w, vec![k, n])],
        &["c"],
    )?;
    check(&x, &y, &[want]);
    assert!(
        s.op_names().iter().any(|o| o == "MatMul"),
        "{:?}",
        s.op_names()
    );
    Ok(())
}

#[test]
fn pooled_buffers_never_alias_live_data_across_repeated_runs() -> Result<(), Error> {
    // Tensors above the pool's minimum size, so outputs come from recycled buffers: every run
    // (fresh inputs each time) must still match the plain graph.
    let mut r = rng();
    let (da, db) = (r.gen_range(160..200), r.gen_range(110..140));
    let program_seed: u64 = r.gen();
    let build = |s: &mut Session| {
        let mut pr = StdRng::seed_from_u64(program_seed);
        let x = s.input::<D2>("x", InputKind::Values);
        let y = s.input::<D2>("y", InputKind::Values);
        let mut pool = vec![x, y];
        for _ in 0..12 {
            let t = random_step(&mut pr, &pool);
            pool.push(t);
        }
        let last = *pool.last().unwrap_or(&x);
        s.output("out", last);
        s.output("mid", pool[pool.len() / 2]);
    };
    let mut fast = Session::new();
    build(&mut fast);
    fast.compile();
    let mut plain = Session::new();
    build(&mut plain);
    plain.compile_stock();
    for _ in 0..3 {
        let (x, y) = (rand_vec(&mut r, da * db), rand_vec(&mut r, da * db));
        for s in [&mut fast, &mut plain] {
            s.set("x", x.clone(), &[da, db])?;
            s.set("y", y.clone(), &[da, db])?;
            s.run()?;
        }
        for o in ["out", "mid"] {
            let (a, b) = (fast.get(o)?, plain.get(o)?);
            assert_eq!(a.shape, b.shape);
            // a buffer handed out while still live would change values by their own size;
            // evaluation order alone (fused chains, row sums over up to 200 columns, exp2 and
            // products of them over 12 steps) reaches ~1e-4 of the largest value
            let e = rel_err(&a.data, &b.data);
            assert!(e < 1e-3, "{o}: compiled vs plain graph rel err {e}");
        }
    }
    Ok(())
}

#[test]
fn matmul_folds_broadcast_weight_batches_and_keeps_strided_ones_apart() -> Result<(), Error> {
    let mut r = rng();
    let (z, m, k, n) = (
        r.gen_range(2..40),
        r.gen_range(2..12),
        r.gen_range(1..20),
        r.gen_range(1..20),
    );
    let (a, w) = (rand_vec(&mut r, z * (m + 1) * k), rand_vec(&mut r, k * n));
    let build = |s: &mut Session| {
        let a = s.input::<(Dyn<'z'>, Dyn<'m'>, Dyn<'k'>)>("a", InputKind::Values);
        let w = s.input::<(Dyn<'k'>, Dyn<'n'>)>("w", InputKind::Values);
        // contiguous batches fold into one GEMM; sliced rows leave a gap between batches
        s.output("whole", a.matmul(w));
        let cut = a.slice((.., ..Expression::from(m), ..));
        s.output("cut", cut.matmul(w));
    };
    let mut whole = vec![];
    let mut cut = vec![];
    let rows = m + 1;
    for b in 0..z {
        let batch = &a[b * rows * k..(b + 1) * rows * k];
        whole.extend(naive_matmul(batch, &w, rows, k, n));
        cut.extend(naive_matmul(&batch[..m * k], &w, m, k, n));
    }
    let (x, y, _) = run_both(
        build,
        &[("a", a, vec![z, rows, k]), ("w", w, vec![k, n])],
        &["whole", "cut"],
    )?;
    check(&x, &y, &[whole, cut]);
    Ok(())
}

/// A weight read only through a permuted copy is stored in the copy's layout when the session
/// compiles (the copy leaves the graph): values set before and after compiling, in the declared
/// layout, give the products of the permuted weight; a weight read twice keeps its layout.
#[test]
fn weights_read_through_one_permuted_copy_are_stored_in_its_layout() -> Result<(), Error> {
    let mut r = rng();
    let mut s = Session::new();
    let x = s.input::<(Dyn<'n'>, Const<4>)>("x", InputKind::Values);
    // declared [3, 4], read transposed ([4, 3]) through a copy
    let w = s.weight::<(Const<3>, Const<4>)>("w");
    let wt: GraphTensor<(Const<4>, Const<3>)> = w.permute::<_, Axes2<1, 0>>().contiguous();
    // a second weight read twice (the copy and a plain sum) is not folded
    let v = s.weight::<(Const<3>, Const<4>)>("v");
    let vt: GraphTensor<(Const<4>, Const<3>)> = v.permute::<_, Axes2<1, 0>>().contiguous();
    s.output("y", x.matmul(wt) + x.matmul(vt));
    s.output("vs", v.sum_reduce::<(Const<3>,), _>());
    let first = rand_vec(&mut r, 12);
    s.set_weight("w", first.clone(), &[3, 4])?;
    let vv = rand_vec(&mut r, 12);
    s.set_weight("v", vv.clone(), &[3, 4])?;
    s.compile();
    // `v`'s copy stays (`v` has another reader); `w`'s is gone
    let copies = s
        .op_names()
        .iter()
        .filter(|o| o.starts_with("Materialize"))
        .count();
    assert_eq!(copies, 1, "{:?}", s.op_names());
    let transpose = |m: &[f32]| -> Vec<f32> {
        (0..4)
            .flat_map(|i| (0..3).map(move |j| m[j * 4 + i]))
            .collect()
    };
    for wv in [first, rand_vec(&mut r, 12)] {
        s.set_weight("w", wv.clone(), &[3, 4])?;
        let n = r.gen_range(1..9);
        let xv = rand_vec(&mut r, n * 4);
        s.set("x", xv.clone(), &[n, 4])?;
        s.run()?;
        let a = naive_matmul(&xv, &transpose(&wv), n, 4, 3);
        let b = naive_matmul(&xv, &transpose(&vv), n, 4, 3);
        let want: Vec<f32> = a.iter().zip(&b).map(|(p, q)| p + q).collect();
        assert!(rel_err(&s.get("y")?.data, &want) < 1e-5);
        let vs: Vec<f32> = (0..3).map(|j| vv[j * 4..j * 4 + 4].iter().sum()).collect();
        assert!(rel_err(&s.get("vs")?.data, &vs) < 1e-5);
    }
    Ok(())
}

/// Nodes computed from weights alone (here copies of weights that are also read elsewhere, so
/// they stay in the graph) run just before their consumer: the copies of a chain of layers are
/// never alive together.
#[test]
fn weight_only_copies_are_made_just_before_they_are_read() -> Result<(), Error> {
    const W: usize = 64;
    const LAYERS: usize = 4;
    let mut r = rng();
    let mut s = Session::new();
    let x = s.input::<(Dyn<'n'>, Const<W>)>("x", InputKind::Values);
    // a scaled, permuted copy per layer, declared before the layers (lower node indices than
    // the chain that reads them), and a second reader so each weight keeps its layout
    let mut copies = Vec::new();
    for i in 0..LAYERS {
        let w = s.weight::<(Const<W>, Const<W>)>(&format!("w{i}"));
        let wt: GraphTensor<(Const<W>, Const<W>)> =
            (w.permute::<_, Axes2<1, 0>>() * 0.5).contiguous();
        copies.push(wt);
        s.output(&format!("sum{i}"), w.sum_reduce::<(Const<W>,), Axis<1>>());
    }
    let mut h = x;
    for wt in copies {
        h = h.matmul(wt).relu();
    }
    s.output("y", h);
    s.compile();
    for i in 0..LAYERS {
        s.set_weight(&format!("w{i}"), rand_vec(&mut r, W * W), &[W, W])?;
    }
    s.set("x", rand_vec(&mut r, W), &[1, W])?;
    s.run()?;
    let copy = W * W * std::mem::size_of::<f32>();
    let peak = s.memory_stats().peak_intermediates;
    assert!(
        peak < 2 * copy,
        "peak {peak} bytes: more than one weight copy ({copy} bytes) alive at once"
    );
    Ok(())
}
