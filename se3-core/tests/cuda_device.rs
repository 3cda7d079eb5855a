//! Every op with a CUDA kernel run on CUDA device 0 against the CPU backend on random inputs
//! (1e-5 relative), with CPU and GPU times per op. Runs with `--features cuda`
//! (`scripts/gpu-check`); without a device it prints a skip line, or fails when
//! `SE3_REQUIRE_GPU` is set.
#![cfg(feature = "cuda")]

use std::time::Instant;

use luminal::prelude::{symbolic::Expression, *};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3_core::exec::{IndexBound, InputKind, Session};
use se3_core::{Device, Error};

type Build = fn(&mut Session);
type Inputs = Vec<(&'static str, Vec<f32>, Vec<usize>)>;

fn idx(r: &mut StdRng, e: usize, n: usize) -> Vec<f32> {
    (0..e)
        .map(|_| {
            if r.gen_bool(0.1) {
                -1.0
            } else {
                r.gen_range(0..n) as f32
            }
        })
        .collect()
}

fn vals(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-2.0f32..2.0)).collect()
}

const IDX: InputKind = InputKind::Indices {
    bound: IndexBound::Dim('n'),
    allow_missing: true,
};

/// (op, graph, inputs, size of `n` or 0) at sizes where the device should matter.
fn cases(r: &mut StdRng) -> Vec<(&'static str, Build, Inputs, usize)> {
    let (n, e, c) = (20_000, 400_000, 32);
    vec![
        (
            "gather",
            |s| {
                let t = s.input::<(Dyn<'n'>, Dyn<'c'>)>("t", InputKind::Values);
                let i = s.input::<(Dyn<'e'>,)>("i", IDX);
                s.output("y", se3_core::ops::gather(t, i));
            },
            vec![
                ("t", vals(r, n * c), vec![n, c]),
                ("i", idx(r, e, n), vec![e]),
            ],
            0,
        ),
        (
            "scatter_add",
            |s| {
                let x = s.input::<(Dyn<'e'>, Dyn<'c'>)>("x", InputKind::Values);
                let i = s.input::<(Dyn<'e'>,)>("i", IDX);
                s.output("y", se3_core::ops::scatter_add::<Dyn<'n'>, _, _>(x, i));
            },
            vec![
                ("x", vals(r, e * c), vec![e, c]),
                ("i", idx(r, e, n), vec![e]),
            ],
            n,
        ),
        (
            "segment_softmax",
            |s| {
                let x = s.input::<(Dyn<'e'>, Dyn<'h'>)>("x", InputKind::Values);
                let i = s.input::<(Dyn<'e'>,)>("i", IDX);
                s.output("y", se3_core::ops::segment_softmax::<Dyn<'n'>, _, _>(x, i));
            },
            vec![
                ("x", vals(r, e * 8), vec![e, 8]),
                ("i", idx(r, e, n), vec![e]),
            ],
            n,
        ),
        (
            "layer_norm_gelu",
            |s| {
                let x = s.input::<(Dyn<'r'>, Dyn<'w'>)>("x", InputKind::Values);
                let b = s.input::<(Dyn<'w'>,)>("b", InputKind::Values);
                let g = s.input::<(Dyn<'w'>,)>("g", InputKind::Values);
                let be = s.input::<(Dyn<'w'>,)>("be", InputKind::Values);
                s.output("y", se3_core::ops::layer_norm_gelu(x, b, g, be, 1e-5));
            },
            vec![
                ("x", vals(r, e * c), vec![e, c]),
                ("b", vals(r, c), vec![c]),
                ("g", vals(r, c), vec![c]),
                ("be", vals(r, c), vec![c]),
            ],
            0,
        ),
        (
            "silu_layer_norm",
            |s| {
                let x = s.input::<(Dyn<'r'>, Dyn<'w'>)>("x", InputKind::Values);
                let b = s.input::<(Dyn<'w'>,)>("b", InputKind::Values);
                let g = s.input::<(Dyn<'w'>,)>("g", InputKind::Values);
                let be = s.input::<(Dyn<'w'>,)>("be", InputKind::Values);
                s.output("y", se3_core::ops::silu_layer_norm(x, b, g, be, 1e-5));
            },
            vec![
                ("x", vals(r, e * c), vec![e, c]),
                ("b", vals(r, c), vec![c]),
                ("g", vals(r, c), vec![c]),
                ("be", vals(r, c), vec![c]),
            ],
            0,
        ),
        (
            "layer_norm_gelu_grad",
            |s| {
                let x = s.input::<(Dyn<'r'>, Dyn<'w'>)>("x", InputKind::Values);
                let b = s.input::<(Dyn<'w'>,)>("b", InputKind::Values);
                let g = s.input::<(Dyn<'w'>,)>("g", InputKind::Values);
                let be = s.input::<(Dyn<'w'>,)>("be", InputKind::Values);
                let c = s.input::<(Dyn<'r'>, Dyn<'w'>)>("c", InputKind::Values);
                let y = se3_core::ops::layer_norm_gelu(x, b, g, be, 1e-5);
                // the input's gradient through the fused LayerNorm + GELU gradient node
                if let Ok(d) =
                    se3_core::autodiff::gradients(&[(y.no_shape(), c.no_shape())], &[x.no_shape()])
                {
                    s.output("y", d[0]);
                }
            },
            vec![
                ("x", vals(r, e * c), vec![e, c]),
                ("b", vals(r, c), vec![c]),
                ("g", vals(r, c), vec![c]),
                ("be", vals(r, c), vec![c]),
                ("c", vals(r, e * c), vec![e, c]),
            ],
            0,
        ),
        (
            "linear_silu_layer_norm (1 input)",
            |s| {
                let f = s.input::<(Dyn<'r'>, Dyn<'f'>)>("f", InputKind::Values);
                let w = s.input::<(Dyn<'f'>, Dyn<'w'>)>("w", InputKind::Values);
                let b = s.input::<(Dyn<'w'>,)>("b", InputKind::Values);
                let g = s.input::<(Dyn<'w'>,)>("g", InputKind::Values);
                let be = s.input::<(Dyn<'w'>,)>("be", InputKind::Values);
                s.output(
                    "y",
                    se3_core::ops::linear_silu_layer_norm(f, w, b, g, be, 1e-5),
                );
            },
            vec![
                ("f", vals(r, e), vec![e, 1]),
                ("w", vals(r, c), vec![1, c]),
                ("b", vals(r, c), vec![c]),
                ("g", vals(r, c), vec![c]),
                ("be", vals(r, c), vec![c]),
            ],
            0,
        ),
        (
            "top_k",
            |s| {
                let x = s.input::<(Dyn<'a'>, Dyn<'m'>)>("x", InputKind::Values);
                s.output("y", se3_core::ops::top_k::<_, _, 16>(x, None, false).idx);
            },
            vec![("x", vals(r, 2000 * 2000), vec![2000, 2000])],
            0,
        ),
        (
            "neighbors (k 16, masked)",
            |s| {
                let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
                let m = s.input::<(Dyn<'n'>,)>("m", InputKind::Mask);
                let nb = se3_core::ops::neighbors::<_, 16>(
                    x,
                    Some(m),
                    se3_core::ops::NeighborSpec::default(),
                );
                s.output("y", nb.idx);
            },
            vec![
                ("x", vals(r, 6000 * 3), vec![6000, 3]),
                (
                    "m",
                    (0..6000).map(|_| f32::from(r.gen_bool(0.9))).collect(),
                    vec![6000],
                ),
            ],
            0,
        ),
        (
            "radial_hidden (4 networks, 32 units)",
            |s| {
                use se3_core::layers::graph::X;
                let (np, e, hd) = (4usize, 100_000usize, 32usize);
                let ex = |v: &[usize]| v.iter().map(|&t| Expression::from(t)).collect::<Vec<_>>();
                let v = |s: &mut Session, name: &str| {
                    s.input_with_shape::<(X, X)>(name, InputKind::Values, &ex(&[np, hd]))
                };
                let w = se3_core::ops::RadialHiddenWeights {
                    w0: s.input_with_shape("w0", InputKind::Values, &ex(&[np, 1, hd])),
                    b0: v(s, "b0"),
                    g1: v(s, "g1"),
                    be1: v(s, "be1"),
                    w3: s.input_with_shape("w3", InputKind::Values, &ex(&[np, hd, hd])),
                    b3: v(s, "b3"),
                    g4: v(s, "g4"),
                    be4: v(s, "be4"),
                };
                let x = s.input_with_shape::<(X, X)>("x", InputKind::Values, &ex(&[e, 1]));
                s.output("y", se3_core::ops::radial_hidden(x, &w, 1e-5));
            },
            {
                let (np, e, hd) = (4, 100_000, 32);
                let mut v: Inputs = ["b0", "g1", "be1", "b3", "g4", "be4"]
                    .into_iter()
                    .map(|name| (name, vals(r, np * hd), vec![np, hd]))
                    .collect();
                v.push(("w0", vals(r, np * hd), vec![np, 1, hd]));
                v.push(("w3", vals(r, np * hd * hd), vec![np, hd, hd]));
                v.push(("x", vals(r, e), vec![e, 1]));
                v
            },
            0,
        ),
        (
            "matmul + elementwise + reduce",
            |s| {
                let a = s.input::<(Dyn<'a'>, Dyn<'k'>)>("a", InputKind::Values);
                let b = s.input::<(Dyn<'k'>, Dyn<'m'>)>("b", InputKind::Values);
                let y = (a.matmul(b) * 0.5 + 1.0).sin();
                s.output("y", y);
                s.output("s", y.sum_reduce::<(Dyn<'a'>,), _>());
            },
            vec![
                ("a", vals(r, 1024 * 512), vec![1024, 512]),
                ("b", vals(r, 512 * 768), vec![512, 768]),
            ],
            0,
        ),
    ]
}

/// Outputs `y` (and `s` if present) and the median time of three runs.
fn run(
    device: Device,
    build: Build,
    inputs: &Inputs,
    n: usize,
) -> Result<(Vec<Vec<f32>>, f64), Error> {
    let mut s = Session::on(device)?;
    if n > 0 {
        s.set_dim('n', n);
    }
    build(&mut s);
    let mut times = Vec::new();
    let mut outs = Vec::new();
    for _ in 0..3 {
        for (name, data, shape) in inputs {
            s.set(name, data.clone(), shape)?;
        }
        let t = Instant::now();
        s.run()?;
        times.push(t.elapsed().as_secs_f64());
        outs = ["y", "s"]
            .iter()
            .filter_map(|o| s.get(o).ok())
            .map(|o| o.data)
            .collect();
    }
    times.sort_by(f64::total_cmp);
    Ok((outs, times[1]))
}

#[test]
fn every_cuda_op_matches_the_cpu_backend() -> Result<(), Error> {
    if let Err(e) = Session::on(Device::CUDA0) {
        assert!(
            std::env::var_os("SE3_REQUIRE_GPU").is_none(),
            "SE3_REQUIRE_GPU is set but no CUDA device opens: {e}"
        );
        println!("skip: no CUDA device ({e})");
        return Ok(());
    }
    let mut r = StdRng::seed_from_u64(rand::thread_rng().gen());
    println!(
        "{:<32} {:>10} {:>10} {:>12}",
        "op", "cpu ms", "gpu ms", "max rel err"
    );
    let mut worst = 0.0f32;
    for (name, build, inputs, n) in cases(&mut r) {
        let (want, cpu) = run(Device::Cpu, build, &inputs, n)?;
        let (got, gpu) = run(Device::CUDA0, build, &inputs, n)?;
        assert_eq!(want.len(), got.len(), "{name}: outputs differ in number");
        let err = want
            .iter()
            .zip(&got)
            .flat_map(|(a, b)| a.iter().zip(b))
            .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
            .fold(0.0f32, f32::max);
        println!(
            "{name:<32} {:>10.2} {:>10.2} {err:>12.2e}",
            cpu * 1e3,
            gpu * 1e3
        );
        worst = worst.max(err);
        assert!(err < 1e-5, "{name}: device differs from CPU by {err}");
    }
    println!("largest relative error: {worst:.2e}");
    Ok(())
}
