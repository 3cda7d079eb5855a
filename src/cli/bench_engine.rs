//! `se3 bench engine`: the execution engine against baselines run in the same process —
//! a fused elementwise chain against a plain Rust loop, a 512³ matmul against calling
//! `matrixmultiply` directly, gather / scatter-add against plain Rust loops, exact kNN, and the
//! per-node execution overhead. Times are medians of repeated runs; a session's time covers
//! handing it the inputs (already owned buffers), checking them, running and taking the output;
//! each baseline allocates its output like the session does.

use std::time::Instant;

use luminal::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use se3_core::exec::{IndexBound, InputKind, Session};
use se3_core::ops;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Median time of `f` over `reps` runs; `setup` (untimed) prepares each run's input, e.g. the
/// copies of input buffers that a session takes ownership of.
fn median_ms_with<T>(reps: usize, mut setup: impl FnMut() -> T, mut f: impl FnMut(T)) -> f64 {
    f(setup());
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let input = setup();
            let s = Instant::now();
            f(input);
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn rand_vec(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-1.0f32..1.0)).collect()
}

struct Row {
    name: String,
    ours: f64,
    base: Option<(String, f64)>,
    target: &'static str,
}

fn print(rows: &[Row]) {
    println!(
        "{:<44} {:>10} {:>30} {:>8}  target",
        "benchmark", "se3 (ms)", "baseline (ms)", "ratio"
    );
    for r in rows {
        let (b, ratio) = match &r.base {
            Some((name, t)) => (format!("{name} {t:.3}"), format!("{:.2}x", r.ours / t)),
            None => (String::from("-"), String::from("-")),
        };
        println!(
            "{:<44} {:>10.3} {:>30} {:>8}  {}",
            r.name, r.ours, b, ratio, r.target
        );
    }
}

type Result<T> = std::result::Result<T, super::CliError>;

fn elementwise(r: &mut StdRng, rows: &mut Vec<Row>) -> Result<()> {
    let n = 1 << 20;
    let (x, y) = (rand_vec(r, n), rand_vec(r, n));
    let build = |s: &mut Session| {
        let a = s.input::<(Dyn<'n'>,)>("x", InputKind::Values);
        let b = s.input::<(Dyn<'n'>,)>("y", InputKind::Values);
        s.output(
            "z",
            ((a * b + a).sin() * 0.5 + b).exp2() * (a * a + 1.0).sqrt().recip(),
        );
    };
    let mut s = Session::new();
    build(&mut s);
    s.compile();
    let mut out = vec![];
    let ours = median_ms_with(
        9,
        || (x.clone(), y.clone()),
        |(xc, yc)| {
            s.set("x", xc, &[n]).ok();
            s.set("y", yc, &[n]).ok();
            s.run().ok();
            out = s.take("z").map(|o| o.data).unwrap_or_default();
        },
    );
    let mut plain = vec![];
    let base = median_ms(9, || {
        plain = vec![0.0f32; n];
        for ((o, a), b) in plain.iter_mut().zip(&x).zip(&y) {
            *o = ((a * b + a).sin() * 0.5 + b).exp2() * (1.0 / (a * a + 1.0).sqrt());
        }
        std::hint::black_box(&plain);
    });
    let err = out
        .iter()
        .zip(&plain)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    if err > 1e-4 {
        return Err(format!("elementwise result differs from plain Rust by {err}").into());
    }
    rows.push(Row {
        name: format!("elementwise chain, 1M elements ({} ops)", 9),
        ours,
        base: Some(("plain Rust loop".into(), base)),
        target: "<= 2x",
    });
    let mut stock = Session::new();
    build(&mut stock);
    stock.compile_stock();
    let t = median_ms(1, || {
        stock.set("x", x.clone(), &[n]).ok();
        stock.set("y", y.clone(), &[n]).ok();
        stock.run().ok();
    });
    rows.push(Row {
        name: "  same chain, luminal's stock interpreter".into(),
        ours: t,
        base: Some(("plain Rust loop".into(), base)),
        target: "(reference)",
    });
    Ok(())
}

fn matmul(r: &mut StdRng, rows: &mut Vec<Row>) -> Result<()> {
    const M: usize = 512;
    let (a, b) = (rand_vec(r, M * M), rand_vec(r, M * M));
    let mut s = Session::new();
    let x = s.input::<(Const<M>, Const<M>)>("a", InputKind::Values);
    let w = s.weight::<(Const<M>, Const<M>)>("b");
    s.output("c", x.matmul(w));
    s.compile();
    s.set_weight("b", b.clone(), &[M, M])?;
    let mut out = vec![];
    let ours = median_ms_with(
        7,
        || a.clone(),
        |ac| {
            s.set("a", ac, &[M, M]).ok();
            s.run().ok();
            out = s.take("c").map(|o| o.data).unwrap_or_default();
        },
    );
    let mut c = vec![];
    let base = median_ms(7, || {
        c = vec![0.0f32; M * M];
        // SAFETY: a, b, c are M x M row-major buffers.
        unsafe {
            matrixmultiply::sgemm(
                M,
                M,
                M,
                1.0,
                a.as_ptr(),
                M as isize,
                1,
                b.as_ptr(),
                M as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                M as isize,
                1,
            );
        }
        std::hint::black_box(&c);
    });
    let err = out
        .iter()
        .zip(&c)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    if err > 1e-3 {
        return Err(format!("matmul result differs from sgemm by {err}").into());
    }
    rows.push(Row {
        name: "matmul 512x512x512".into(),
        ours,
        base: Some(("matrixmultiply::sgemm".into(), base)),
        target: "<= 1.3x",
    });
    Ok(())
}

fn gather_scatter(r: &mut StdRng, rows: &mut Vec<Row>) -> Result<()> {
    let (n, e, c) = (2000usize, 32000usize, 64usize);
    let x = rand_vec(r, n * c);
    let ex = rand_vec(r, e * c);
    let idx: Vec<f32> = (0..e).map(|_| r.gen_range(0..n) as f32).collect();
    let kind = InputKind::Indices {
        bound: IndexBound::Dim('n'),
        allow_missing: false,
    };
    let mut s = Session::new();
    let t = s.input::<(Dyn<'n'>, Const<64>)>("x", InputKind::Values);
    let i = s.input::<(Dyn<'e'>,)>("i", kind);
    s.output("g", ops::gather(t, i));
    s.compile();
    let ours = median_ms_with(
        9,
        || (x.clone(), idx.clone()),
        |(xc, ic)| {
            s.set("x", xc, &[n, c]).ok();
            s.set("i", ic, &[e]).ok();
            s.run().ok();
            std::hint::black_box(s.take("g").ok());
        },
    );
    let mut g = vec![];
    let base = median_ms(9, || {
        g = vec![0.0f32; e * c];
        for (k, &j) in idx.iter().enumerate() {
            let j = j as usize;
            g[k * c..(k + 1) * c].copy_from_slice(&x[j * c..(j + 1) * c]);
        }
        std::hint::black_box(&g);
    });
    rows.push(Row {
        name: "gather rows N=2000 E=32000 C=64".into(),
        ours,
        base: Some(("plain Rust loop".into(), base)),
        target: "-",
    });
    let mut s = Session::new();
    let t = s.input::<(Dyn<'e'>, Const<64>)>("x", InputKind::Values);
    let i = s.input::<(Dyn<'e'>,)>("i", kind);
    let _ = s.input::<(Dyn<'n'>,)>("nodes", InputKind::Values);
    s.output("s", ops::scatter_add::<Dyn<'n'>, _, _>(t, i));
    s.compile();
    let mut out = vec![];
    let ours = median_ms_with(
        9,
        || (ex.clone(), idx.clone()),
        |(xc, ic)| {
            s.set("x", xc, &[e, c]).ok();
            s.set("i", ic, &[e]).ok();
            s.set("nodes", vec![0.0; n], &[n]).ok();
            s.run().ok();
            out = s.take("s").map(|o| o.data).unwrap_or_default();
        },
    );
    let mut acc = vec![];
    let base = median_ms(9, || {
        acc = vec![0.0f32; n * c];
        for (k, &j) in idx.iter().enumerate() {
            let j = j as usize;
            acc[j * c..(j + 1) * c]
                .iter_mut()
                .zip(&ex[k * c..(k + 1) * c])
                .for_each(|(a, b)| *a += b);
        }
        std::hint::black_box(&acc);
    });
    let err = out
        .iter()
        .zip(&acc)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    if err > 1e-3 {
        return Err(format!("scatter-add differs from plain Rust by {err}").into());
    }
    rows.push(Row {
        name: "scatter-add N=2000 E=32000 C=64".into(),
        ours,
        base: Some(("plain Rust loop".into(), base)),
        target: "-",
    });
    Ok(())
}

fn knn(r: &mut StdRng, rows: &mut Vec<Row>) -> Result<()> {
    for n in [512usize, 4096] {
        let x: Vec<f32> = rand_vec(r, n * 3).iter().map(|v| v * 10.0).collect();
        let mut s = Session::new();
        let c = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
        let nb = ops::neighbors::<_, 16>(c, None, ops::NeighborSpec::default());
        s.output("idx", nb.idx);
        s.compile();
        let ours = median_ms_with(
            7,
            || x.clone(),
            |xc| {
                s.set("x", xc, &[n, 3]).ok();
                s.run().ok();
                std::hint::black_box(s.take("idx").ok());
            },
        );
        let base = median_ms(3, || {
            let mut all = Vec::with_capacity(n * 16);
            for i in 0..n {
                let mut d: Vec<(f32, usize)> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| {
                        (
                            (0..3)
                                .map(|a| (x[i * 3 + a] - x[j * 3 + a]).powi(2))
                                .sum::<f32>(),
                            j,
                        )
                    })
                    .collect();
                d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                all.extend(d[..16].iter().map(|p| p.1));
            }
            std::hint::black_box(&all);
        });
        rows.push(Row {
            name: format!("kNN k=16, N={n}"),
            ours,
            base: Some(("sort every row".into(), base)),
            target: if n == 4096 { "< 20 ms" } else { "-" },
        });
    }
    Ok(())
}

fn edge_conv(r: &mut StdRng, rows: &mut Vec<Row>) -> Result<()> {
    const C: usize = 32;
    let (n, e) = (512usize, 512 * 16);
    let x = rand_vec(r, n * C);
    let w = rand_vec(r, e * C * C);
    let src: Vec<f32> = (0..e).map(|_| r.gen_range(0..n) as f32).collect();
    let dst: Vec<f32> = (0..e).map(|k| (k / 16) as f32).collect();
    let kind = InputKind::Indices {
        bound: IndexBound::Dim('n'),
        allow_missing: false,
    };
    let mut s = Session::new();
    let xt = s.input::<(Dyn<'n'>, Const<C>)>("x", InputKind::Values);
    let wt = s.input::<(Dyn<'e'>, Const<C>, Const<C>)>("w", InputKind::Values);
    let st = s.input::<(Dyn<'e'>,)>("src", kind);
    let dt = s.input::<(Dyn<'e'>,)>("dst", kind);
    // Built unfused; the compiler swaps the fused kernel in.
    s.output(
        "y",
        ops::edge_conv_unfused::<Dyn<'n'>, _, _, _, _>(xt, wt, st, dt),
    );
    s.compile();
    let mut out = vec![];
    let ours = median_ms_with(
        7,
        || (x.clone(), w.clone(), src.clone(), dst.clone()),
        |(a, b, c, d)| {
            s.set("x", a, &[n, C]).ok();
            s.set("w", b, &[e, C, C]).ok();
            s.set("src", c, &[e]).ok();
            s.set("dst", d, &[e]).ok();
            s.run().ok();
            out = s.take("y").map(|o| o.data).unwrap_or_default();
        },
    );
    let mut y = vec![];
    let base = median_ms(7, || {
        // Unfused plain Rust: gather, per-edge matrix-vector product, scatter-add.
        let mut g = vec![0.0f32; e * C];
        for k in 0..e {
            let j = src[k] as usize;
            g[k * C..(k + 1) * C].copy_from_slice(&x[j * C..(j + 1) * C]);
        }
        let mut m = vec![0.0f32; e * C];
        for k in 0..e {
            for o in 0..C {
                let row = &w[(k * C + o) * C..(k * C + o + 1) * C];
                m[k * C + o] = row
                    .iter()
                    .zip(&g[k * C..(k + 1) * C])
                    .map(|(p, q)| p * q)
                    .sum();
            }
        }
        y = vec![0.0f32; n * C];
        for k in 0..e {
            let d = dst[k] as usize;
            for o in 0..C {
                y[d * C + o] += m[k * C + o];
            }
        }
        std::hint::black_box(&y);
    });
    let scale = y.iter().fold(1.0f32, |a, v| a.max(v.abs()));
    let err = out
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max)
        / scale;
    if err > 1e-4 || out.len() != y.len() {
        return Err(format!("edge conv differs from plain Rust by {err}").into());
    }
    rows.push(Row {
        name: "fused edge conv N=512 E=8192 32->32".into(),
        ours,
        base: Some(("unfused plain Rust".into(), base)),
        target: "-",
    });
    Ok(())
}

fn overhead(rows: &mut Vec<Row>) -> Result<()> {
    const STEPS: usize = 500;
    let time = |steps: usize, compiled: bool| -> Result<(f64, usize)> {
        let mut s = Session::new();
        let x = s.input::<(Const<1>, Const<4>)>("x", InputKind::Values);
        let mut y = x;
        for _ in 0..steps {
            y = y
                .sum_reduce::<(Const<1>,), _>()
                .expand::<(Const<1>, Const<4>), _>()
                * 0.5;
        }
        s.output("y", y);
        if compiled {
            s.compile();
        } else {
            s.compile_stock();
        }
        let nodes = s.node_count();
        let t = median_ms(9, || {
            s.set("x", vec![1.0; 4], &[1, 4]).ok();
            s.run().ok();
        });
        Ok((t, nodes))
    };
    for compiled in [true, false] {
        let (t1, n1) = time(1, compiled)?;
        let (t2, n2) = time(STEPS, compiled)?;
        let per = (t2 - t1) / (n2 - n1).max(1) as f64 * 1e3;
        rows.push(Row {
            name: format!(
                "per-node overhead ({}), us/node",
                if compiled {
                    "CpuCompiler"
                } else {
                    "stock interpreter"
                }
            ),
            ours: per / 1e3 * 1e3,
            base: None,
            target: "(us, not ms)",
        });
    }
    Ok(())
}

/// Runs the engine benchmark and prints its table.
pub fn run() -> std::result::Result<(), super::CliError> {
    let mut r = StdRng::seed_from_u64(7);
    let mut rows = vec![];
    println!(
        "se3 bench engine: {} threads; medians; baselines run in this process",
        rayon::current_num_threads()
    );
    elementwise(&mut r, &mut rows)?;
    matmul(&mut r, &mut rows)?;
    gather_scatter(&mut r, &mut rows)?;
    knn(&mut r, &mut rows)?;
    edge_conv(&mut r, &mut rows)?;
    overhead(&mut rows)?;
    print(&rows);
    Ok(())
}
