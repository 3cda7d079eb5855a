//! Gradient checks of the backward pass on random shapes: every luminal primitive and view,
//! and the graph ops with backward rules, against central finite differences.

use luminal::prelude::{symbolic::Expression, *};
use rand::{rngs::StdRng, Rng};

use super::check::{check_gradients, Built, Input};
use super::Tensor;
use super::{emit, grad, gradients};
use crate::exec::tests::{rand_vec, rng};
use crate::exec::{IndexBound, InputKind, Session};
use crate::Error;

/// Largest accepted |analytic - finite difference| / max(1, max |analytic|): f32 central
/// differences with h = 1e-2 are good to ~1e-4; a wrong rule is off by O(1).
const TOL: f64 = 2e-3;
const H: f32 = 1e-2;

fn assert_close(worst: &[super::check::Worst], what: &str) {
    for w in worst {
        println!("{what}: d/d{} worst error {:.2e}", w.name, w.error);
    }
    for w in worst {
        assert!(
            w.error < TOL,
            "{what}: gradient of `{}` off by {:.3e} (seed {})",
            w.name,
            w.error,
            crate::testing::seed()
        );
    }
}

fn positive(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(0.5f32..2.0)).collect()
}

#[test]
fn unary_and_binary_primitives_match_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    let (n, c) = (r.gen_range(1..6), r.gen_range(1..5));
    let inputs: Vec<Input> = vec![
        ("x", rand_vec(&mut r, n * c), vec![n, c]),
        ("p", positive(&mut r, n * c), vec![n, c]),
    ];
    let build = |s: &mut Session| -> Built {
        let x = s.input::<(Dyn<'n'>, Dyn<'c'>)>("x", InputKind::Values);
        let p = s.input::<(Dyn<'n'>, Dyn<'c'>)>("p", InputKind::Values);
        let a = x.exp() * p.ln() + x.sin() * p.sqrt() - p.recip() * x;
        let b = (x * x).cos() + p.log2() * x.exp2() + x.sigmoid() * x.tanh();
        // unary primitives on views map the buffer and keep the view
        let pt = p.permute::<(Dyn<'c'>, Dyn<'n'>), _>().sqrt();
        let outs = vec![
            a.no_shape(),
            b.no_shape(),
            (x * 3.0 + p).no_shape(),
            (pt * pt.log2()).no_shape(),
        ];
        (vec![("x", x.no_shape()), ("p", p.no_shape())], outs)
    };
    assert_close(
        &check_gradients(build, &inputs, H, 64, &mut r)?,
        "unary/binary",
    );
    Ok(())
}

/// Values at least 0.1 apart (shuffled), so a max has no near-tie within a finite-difference step.
fn separated(r: &mut StdRng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|i| i as f32 * 0.1 - 0.5).collect();
    for i in (1..n).rev() {
        v.swap(i, r.gen_range(0..=i));
    }
    v
}

#[test]
fn reductions_broadcasts_permutes_and_matmul_match_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    let (n, k, m) = (r.gen_range(1..6), r.gen_range(1..5), r.gen_range(1..5));
    let inputs: Vec<Input> = vec![
        ("x", rand_vec(&mut r, n * k), vec![n, k]),
        ("w", rand_vec(&mut r, k * m), vec![k, m]),
        ("b", rand_vec(&mut r, m), vec![m]),
        ("s", separated(&mut r, n * k), vec![n, k]),
        ("z", rand_vec(&mut r, n * k * m), vec![n, k, m]),
    ];
    let build = |s: &mut Session| -> Built {
        let x = s.input::<(Dyn<'n'>, Dyn<'k'>)>("x", InputKind::Values);
        let w = s.input::<(Dyn<'k'>, Dyn<'m'>)>("w", InputKind::Values);
        let b = s.input::<(Dyn<'m'>,)>("b", InputKind::Values);
        let sep = s.input::<(Dyn<'n'>, Dyn<'k'>)>("s", InputKind::Values);
        let z = s.input::<(Dyn<'n'>, Dyn<'k'>, Dyn<'m'>)>("z", InputKind::Values);
        // a reduction of a permuted view whose result is itself a permuted view
        let zr = z
            .permute::<(Dyn<'m'>, Dyn<'n'>, Dyn<'k'>), _>()
            .sum_reduce::<(Dyn<'m'>, Dyn<'n'>), _>();
        // y = x w + b (broadcast), a softmax over rows (max, exp, sum), a permuted copy
        let y = x.matmul(w) + b.expand::<(Dyn<'n'>, Dyn<'m'>), _>();
        let soft = y.softmax::<1>();
        let t = y.permute::<(Dyn<'m'>, Dyn<'n'>), _>();
        let col = (t * t).sum_reduce::<(Dyn<'m'>,), _>() + b;
        let mean = x.mean_reduce::<(Dyn<'n'>,), _>();
        let wt = w.permute::<(Dyn<'m'>, Dyn<'k'>), _>().contiguous();
        let outs = vec![
            soft.no_shape(),
            col.no_shape(),
            mean.no_shape(),
            (wt * wt).no_shape(),
            sep.max_reduce::<(Dyn<'n'>,), _>().no_shape(),
            (zr * zr).no_shape(),
        ];
        let wrt = vec![
            ("x", x.no_shape()),
            ("w", w.no_shape()),
            ("b", b.no_shape()),
            ("s", sep.no_shape()),
            ("z", z.no_shape()),
        ];
        (wrt, outs)
    };
    assert_close(
        &check_gradients(build, &inputs, H, 64, &mut r)?,
        "reduce/broadcast/permute/matmul",
    );
    Ok(())
}

#[test]
fn products_differentiated_as_gemms_match_finite_differences() -> Result<(), Error> {
    // the product rule (`primitives::product_factor_vjp`): a batched product whose weight is
    // broadcast over two axes (batch and rows), a batched product of two per-batch factors,
    // and a product over one element (an outer product per batch entry)
    let mut r = rng();
    let (b, m, k, n) = (
        r.gen_range(1..5),
        r.gen_range(1..5),
        r.gen_range(2..5),
        r.gen_range(1..5),
    );
    let inputs: Vec<Input> = vec![
        ("a", rand_vec(&mut r, b * m * k), vec![b, m, k]),
        ("w", rand_vec(&mut r, k * n), vec![k, n]),
        ("c", rand_vec(&mut r, b * k * n), vec![b, k, n]),
        ("u", rand_vec(&mut r, b * m), vec![b, m, 1]),
        ("v", rand_vec(&mut r, b * n), vec![b, 1, n]),
    ];
    let build = |s: &mut Session| -> Built {
        use crate::layers::graph::{expand_at, permute, retype, X};
        type B = Dyn<'b'>;
        type M = Dyn<'m'>;
        type K = Dyn<'k'>;
        type N = Dyn<'n'>;
        let a: GraphTensor<(X, X, X)> = retype(s.input::<(B, M, K)>("a", InputKind::Values));
        let w: GraphTensor<(X, X)> = retype(s.input::<(K, N)>("w", InputKind::Values));
        let c: GraphTensor<(X, X, X)> = retype(s.input::<(B, K, N)>("c", InputKind::Values));
        // a static one-element axis: `bmm` takes its outer-product form
        let u: GraphTensor<(X, X, X)> = retype(s.input::<(B, M, Const<1>)>("u", InputKind::Values));
        let v: GraphTensor<(X, X, X)> = retype(s.input::<(B, Const<1>, N)>("v", InputKind::Values));
        // a [b, m, n(fake), k] * w^T [b(fake), m(fake), n, k], summed over k
        let (da, dw) = (
            crate::ops::logical_dims(&a.shape),
            crate::ops::logical_dims(&w.shape),
        );
        let a4: GraphTensor<(X, X, X, X)> = expand_at(a, 2, dw[1]);
        let w3: GraphTensor<(X, X, X)> = expand_at(permute(w, &[1, 0]), 0, da[0]);
        let w4: GraphTensor<(X, X, X, X)> = expand_at(w3, 1, da[1]);
        let shared = (a4 * w4).sum_reduce::<(X, X, X), Axis<3>>();
        let batched = crate::layers::graph::bmm(a, c);
        let outer = crate::layers::graph::bmm(u, v);
        let outs = vec![
            (shared * shared).no_shape(),
            (batched * batched).no_shape(),
            (outer * batched).no_shape(),
        ];
        let wrt = vec![
            ("a", a.no_shape()),
            ("w", w.no_shape()),
            ("c", c.no_shape()),
            ("u", u.no_shape()),
            ("v", v.no_shape()),
        ];
        (wrt, outs)
    };
    assert_close(
        &check_gradients(build, &inputs, H, 64, &mut r)?,
        "products as GEMMs",
    );
    Ok(())
}

#[test]
fn slices_pads_reshapes_and_concat_match_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    let (n, c) = (r.gen_range(3..7), r.gen_range(2..5));
    let inputs: Vec<Input> = vec![
        ("x", rand_vec(&mut r, n * c), vec![n, c]),
        ("y", rand_vec(&mut r, n * 2), vec![n, 2]),
    ];
    let build = move |s: &mut Session| -> Built {
        let x = s.input::<(Dyn<'n'>, Dyn<'c'>)>("x", InputKind::Values);
        let y = s.input::<(Dyn<'n'>, Const<2>)>("y", InputKind::Values);
        let cat = x.concat_along::<(Dyn<'n'>, Dyn<'d'>), Axis<1>, _>(y);
        // views built directly, so their logical sizes are exact: rows 1.. and columns ..1
        // of x; y padded by 1 and 2 columns; then x sliced after a permute
        let mut sl = x.no_shape();
        sl.shape.slice(&[
            (Expression::from(1), Expression::from(i32::MAX)),
            (Expression::from(0), Expression::from(1)),
        ]);
        let mut padded = y.no_shape();
        padded.shape.pad(&[
            (Expression::from(0), Expression::from(0)),
            (Expression::from(1), Expression::from(2)),
        ]);
        let mut cols = x.permute::<(Dyn<'c'>, Dyn<'n'>), _>().no_shape();
        cols.shape.slice(&[
            (Expression::from(1), Expression::from(2)),
            (Expression::from(0), Expression::from(i32::MAX)),
        ]);
        let flat = x.reshape::<(Dyn<'f'>,)>();
        let outs = vec![
            (cat * cat).no_shape(),
            emit::scale(sl, 2.0),
            emit::mul(padded, padded),
            emit::mul(cols, cols),
            (flat * flat).no_shape(),
        ];
        (vec![("x", x.no_shape()), ("y", y.no_shape())], outs)
    };
    let dims = [('d', c + 2), ('f', n * c)];
    let mut fixed = Vec::new();
    for (d, v) in dims {
        fixed.push((d, v));
    }
    let with_dims = move |s: &mut Session| -> Built {
        for (d, v) in &fixed {
            s.set_dim(*d, *v);
        }
        build(s)
    };
    assert_close(
        &check_gradients(with_dims, &inputs, H, 64, &mut r)?,
        "slice/pad/reshape/concat",
    );
    Ok(())
}

fn index_kind(bound: char, allow_missing: bool) -> InputKind {
    InputKind::Indices {
        bound: IndexBound::Dim(bound),
        allow_missing,
    }
}

#[test]
fn gather_scatter_and_segment_softmax_match_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    let (n, e, c) = (r.gen_range(2..7), r.gen_range(2..16), r.gen_range(1..4));
    let idx: Vec<f32> = (0..e).map(|_| r.gen_range(-1..n as i64) as f32).collect();
    let inputs: Vec<Input> = vec![
        ("t", rand_vec(&mut r, n * c), vec![n, c]),
        ("v", rand_vec(&mut r, e * c), vec![e, c]),
        ("i", idx, vec![e]),
    ];
    let build = |s: &mut Session| -> Built {
        let t = s.input::<(Dyn<'n'>, Dyn<'c'>)>("t", InputKind::Values);
        let v = s.input::<(Dyn<'e'>, Dyn<'c'>)>("v", InputKind::Values);
        let i = s.input::<(Dyn<'e'>,)>("i", index_kind('n', true));
        let g = crate::ops::gather(t, i);
        let soft = crate::ops::segment_softmax::<Dyn<'n'>, _, _>(g * v * 3.0, i);
        let sc = crate::ops::scatter_add::<Dyn<'n'>, _, _>(v * soft, i);
        // a permuted table: the gather reads a view
        let tt = t
            .permute::<(Dyn<'c'>, Dyn<'n'>), _>()
            .contiguous()
            .permute::<(Dyn<'n'>, Dyn<'c'>), _>();
        let outs = vec![
            sc.no_shape(),
            (crate::ops::gather(tt, i) * v).no_shape(),
            soft.no_shape(),
        ];
        (vec![("t", t.no_shape()), ("v", v.no_shape())], outs)
    };
    assert_close(
        &check_gradients(build, &inputs, H, 64, &mut r)?,
        "gather/scatter/segment_softmax",
    );
    Ok(())
}

#[test]
fn relative_positions_and_distances_match_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    let (n, e) = (r.gen_range(2..8), r.gen_range(1..20));
    let ci: Vec<f32> = (0..e).map(|_| r.gen_range(0..n) as f32).collect();
    // neighbours differ from centres: |x_i - x_j| has no derivative at 0
    let ni: Vec<f32> = ci
        .iter()
        .map(|&c| ((c as usize + r.gen_range(1..n)) % n) as f32)
        .collect();
    let inputs: Vec<Input> = vec![
        ("x", rand_vec(&mut r, n * 3), vec![n, 3]),
        ("c", ci, vec![e]),
        ("nb", ni, vec![e]),
    ];
    let build = |s: &mut Session| -> Built {
        let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
        let c = s.input::<(Dyn<'e'>,)>("c", index_kind('n', false));
        let nb = s.input::<(Dyn<'e'>,)>("nb", index_kind('n', false));
        let rel = crate::ops::relative_positions(x, c, nb);
        let d = crate::ops::distances(rel);
        (
            vec![("x", x.no_shape())],
            vec![rel.no_shape(), d.no_shape()],
        )
    };
    assert_close(
        &check_gradients(build, &inputs, 1e-3, 64, &mut r)?,
        "relative positions/distances",
    );
    Ok(())
}

#[test]
fn scalar_loss_gradient_and_unreached_inputs_get_zeros() -> Result<(), Error> {
    let mut r = rng();
    let n = r.gen_range(1..10);
    let xs = rand_vec(&mut r, n * 3);
    let mut s = Session::new();
    let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Values);
    let unused = s.weight::<(Const<2>,)>("unused");
    let loss = (x * x * x).sum_reduce::<R0, _>();
    let g = grad(loss.no_shape(), &[x.no_shape(), unused.no_shape()])?;
    s.output("dx", g[0]);
    s.output("du", g[1]);
    s.set_weight("unused", vec![5.0, -1.0], &[2])?;
    s.set("x", xs.clone(), &[n, 3])?;
    s.run()?;
    let dx = s.get("dx")?;
    assert_eq!(dx.shape, vec![n, 3]);
    for (d, x) in dx.data.iter().zip(&xs) {
        assert!(
            (d - 3.0 * x * x).abs() < 1e-5,
            "d/dx x³ = {d}, want {}",
            3.0 * x * x
        );
    }
    assert_eq!(s.get("du")?.data, vec![0.0, 0.0]);
    Ok(())
}

#[test]
fn layer_norm_gelu_matches_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    // width >= 4: a row of two nearly equal values makes LayerNorm a near-step (its
    // derivative ~ eps / |x1 - x2|³), which no finite difference resolves
    let (rows, w) = (r.gen_range(1..6), r.gen_range(4..9));
    let inputs: Vec<Input> = vec![
        ("x", rand_vec(&mut r, rows * w), vec![rows, w]),
        ("b", rand_vec(&mut r, w), vec![w]),
        ("g", positive(&mut r, w), vec![w]),
        ("beta", rand_vec(&mut r, w), vec![w]),
    ];
    let build = move |s: &mut Session| -> Built {
        let x = s.input::<(Dyn<'r'>, Dyn<'w'>)>("x", InputKind::Values);
        let b = s.input::<(Dyn<'w'>,)>("b", InputKind::Values);
        let g = s.input::<(Dyn<'w'>,)>("g", InputKind::Values);
        let beta = s.input::<(Dyn<'w'>,)>("beta", InputKind::Values);
        let y = crate::ops::layer_norm_gelu(x, b, g, beta, 1e-5);
        let wrt = vec![
            ("x", x.no_shape()),
            ("b", b.no_shape()),
            ("g", g.no_shape()),
            ("beta", beta.no_shape()),
        ];
        (wrt, vec![y.no_shape()])
    };
    assert_close(
        &check_gradients(build, &inputs, 1e-3, 64, &mut r)?,
        "layer_norm_gelu",
    );
    Ok(())
}

#[test]
fn ops_without_backward_and_views_as_targets_are_typed_errors() {
    let mut s = Session::new();
    let x = s.input::<(Dyn<'n'>, Const<4>)>("x", InputKind::Values);
    let idx = s.input::<(Dyn<'n'>, Const<2>)>("i", index_kind('n', false));
    let y = crate::ops::take_along_rows(x, idx);
    let loss = y.sum_reduce::<R0, _>();
    assert!(matches!(
        grad(loss.no_shape(), &[x.no_shape()]),
        Err(Error::NoGradient { .. })
    ));
    let view = x.permute::<(Const<4>, Dyn<'n'>), _>();
    assert!(matches!(
        gradients(&[(loss.no_shape(), loss.no_shape())], &[view.no_shape()]),
        Err(Error::GradientOfView { index: 0 })
    ));
}

#[test]
fn layer_norm_gelu_backward_matches_the_gradient_of_its_unfused_graph() -> Result<(), Error> {
    use crate::layers::graph::{gelu, layer_norm, X};
    let mut r = rng();
    let (rows, w) = (r.gen_range(1..9), r.gen_range(2..9));
    let xs = rand_vec(&mut r, rows * w);
    let vs: Vec<Vec<f32>> = (0..3).map(|_| rand_vec(&mut r, w)).collect();
    let cot = rand_vec(&mut r, rows * w);
    let mut got = vec![];
    for fused in [true, false] {
        let mut s = Session::new();
        let shape = [Expression::from(rows), Expression::from(w)];
        let x = s.input_with_shape::<(X, X)>("x", InputKind::Values, &shape);
        let vecs: Vec<GraphTensor<(X,)>> = ["b", "g", "beta"]
            .iter()
            .map(|n| s.input_with_shape::<(X,)>(n, InputKind::Values, &shape[1..]))
            .collect();
        let c = s.input_with_shape::<(X, X)>("c", InputKind::Values, &shape);
        let y = if fused {
            crate::ops::layer_norm_gelu(x, vecs[0], vecs[1], vecs[2], 1e-5)
        } else {
            let h = x + crate::layers::graph::expand_at::<_, (X, X)>(vecs[0], 0, shape[0]);
            gelu(layer_norm(h, vecs[1], vecs[2], 1e-5))
        };
        let mut wrt = vec![x.no_shape()];
        wrt.extend(vecs.iter().map(|v| v.no_shape()));
        let gs = gradients(&[(y.no_shape(), c.no_shape())], &wrt)?;
        for (k, g) in gs.iter().enumerate() {
            s.output(&format!("g{k}"), *g);
        }
        s.set("x", xs.clone(), &[rows, w])?;
        for (n, v) in ["b", "g", "beta"].iter().zip(&vs) {
            s.set(n, v.clone(), &[w])?;
        }
        s.set("c", cot.clone(), &[rows, w])?;
        s.run()?;
        got.push(
            (0..4)
                .map(|k| s.get(&format!("g{k}")).map(|o| o.data))
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    for (k, (fused, unfused)) in got[0].iter().zip(&got[1]).enumerate() {
        let e = crate::exec::tests::rel_err(fused, unfused);
        println!("layer_norm_gelu fused vs unfused gradient {k}: {e:.2e}");
        assert!(
            e < 1e-4,
            "gradient {k}: fused {fused:?} unfused {unfused:?}"
        );
    }
    Ok(())
}

/// A small invariant energy of a point cloud: pair terms of every ordered pair `i != j`
/// through a layer norm + GELU row, `E = Σ_e Σ_k w_k gelu(LN(d_e a + b))_k e^{-d_e}`.
fn pair_energy(s: &mut Session) -> (Tensor, Tensor) {
    let x = s.input::<(Dyn<'n'>, Const<3>)>("x", InputKind::Coordinates);
    let c = s.input::<(Dyn<'e'>,)>("c", index_kind('n', false));
    let nb = s.input::<(Dyn<'e'>,)>("nb", index_kind('n', false));
    let a = s.weight::<(Const<4>,)>("a");
    let b = s.weight::<(Const<4>,)>("b");
    let w = s.weight::<(Const<4>,)>("w");
    let d = crate::ops::distances(crate::ops::relative_positions(x, c, nb));
    let rows = d.expand::<(Dyn<'e'>, Const<4>), _>() * a.expand::<(Dyn<'e'>, Const<4>), _>();
    let zero = s.graph().constant(0.0).expand::<(Const<4>,), _>();
    let one = s.graph().constant(1.0).expand::<(Const<4>,), _>();
    let h = crate::ops::layer_norm_gelu(rows, b, one, zero, 1e-5);
    let per_edge = (h * w.expand::<(Dyn<'e'>, Const<4>), _>()).sum_reduce::<(Dyn<'e'>,), _>()
        * (d * -1.0).exp();
    let energy = per_edge.sum_reduce::<R0, _>();
    (energy.no_shape(), x.no_shape())
}

fn all_pairs(n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut c = vec![];
    let mut nb = vec![];
    for i in 0..n {
        for j in (0..n).filter(|&j| j != i) {
            c.push(i as f32);
            nb.push(j as f32);
        }
    }
    (c, nb)
}

#[test]
fn forces_are_minus_the_energy_gradient_and_equivariant() -> Result<(), Error> {
    let (mut r, _) = crate::testing::rng();
    let n = r.gen_range(2..7);
    let (c, nb) = all_pairs(n);
    let e = c.len();
    let params: Vec<Vec<f32>> = (0..3).map(|_| rand_vec(&mut r, 4)).collect();
    let pts = crate::testing::random_vectors(&mut r, n, 1.0);
    let rot = crate::testing::random_rotation(&mut r);
    let shift = crate::testing::random_vector(&mut r, 2.0);
    let moved: Vec<[f64; 3]> = pts
        .iter()
        .map(|p| {
            let v = rot * nalgebra::Vector3::new(p[0], p[1], p[2]) + shift;
            [v.x, v.y, v.z]
        })
        .collect();
    let mut s = Session::new();
    let (energy, x) = pair_energy(&mut s);
    let f = super::forces(energy, x)?;
    s.output("E", energy);
    s.output("F", f);
    for (k, name) in ["a", "b", "w"].iter().enumerate() {
        s.set_weight(name, params[k].clone(), &[4])?;
    }
    let mut run = |p: &[[f64; 3]]| -> Result<(f32, Vec<f64>), Error> {
        let flat: Vec<f32> = p.iter().flat_map(|v| v.iter().map(|&q| q as f32)).collect();
        s.set("x", flat, &[n, 3])?;
        s.set("c", c.clone(), &[e])?;
        s.set("nb", nb.clone(), &[e])?;
        s.run()?;
        let f = s.get("F")?.data.iter().map(|&v| f64::from(v)).collect();
        Ok((s.get("E")?.data[0], f))
    };
    let (e0, f0) = run(&pts)?;
    let (e1, f1) = run(&moved)?;
    assert!(
        (e0 - e1).abs() <= 1e-5 * e0.abs().max(1.0),
        "energy not invariant: {e0} vs {e1}"
    );
    // F(x Rᵀ + t) = F(x) Rᵀ, row by row
    let mut want = vec![];
    for row in f0.chunks(3) {
        let v = rot * nalgebra::Vector3::new(row[0], row[1], row[2]);
        want.extend([v.x, v.y, v.z]);
    }
    let err = crate::testing::rel_error(&f1, &want);
    println!("forces equivariance error {err:.2e}");
    assert!(
        err < 1e-5,
        "forces not equivariant: relative error {err:.3e}"
    );
    // and -F is the energy's gradient (finite differences)
    let inputs: Vec<Input> = vec![
        (
            "x",
            pts.iter()
                .flat_map(|v| v.iter().map(|&q| q as f32))
                .collect(),
            vec![n, 3],
        ),
        ("c", c.clone(), vec![e]),
        ("nb", nb.clone(), vec![e]),
    ];
    let build = move |s: &mut Session| -> Built {
        let (energy, x) = pair_energy(s);
        for (k, name) in ["a", "b", "w"].iter().enumerate() {
            let _ = s.set_weight(name, params[k].clone(), &[4]);
        }
        (vec![("x", x)], vec![energy])
    };
    assert_close(
        &check_gradients(build, &inputs, 1e-3, 64, &mut r)?,
        "energy",
    );
    Ok(())
}

#[test]
fn forces_through_layer_norm_gelu_have_second_derivatives() -> Result<(), Error> {
    // the forces' graph holds the fused LayerNorm + GELU gradient node; differentiating the
    // forces again (as training on forces does) runs that node's own vector-Jacobian product
    let (mut r, _) = crate::testing::rng();
    let n = r.gen_range(2..6);
    let (c, nb) = all_pairs(n);
    let e = c.len();
    let params: Vec<Vec<f32>> = (0..3).map(|_| rand_vec(&mut r, 4)).collect();
    let pts: Vec<f32> = crate::testing::random_vectors(&mut r, n, 1.0)
        .iter()
        .flat_map(|p| p.iter().map(|&q| q as f32))
        .collect();
    let inputs: Vec<Input> = vec![
        ("x", pts, vec![n, 3]),
        ("c", c, vec![e]),
        ("nb", nb, vec![e]),
    ];
    let build = move |s: &mut Session| -> Built {
        let (energy, x) = pair_energy(s);
        for (k, name) in ["a", "b", "w"].iter().enumerate() {
            let _ = s.set_weight(name, params[k].clone(), &[4]);
        }
        let f = super::forces(energy, x).expect("the pair energy has forces");
        (vec![("x", x)], vec![f])
    };
    assert_close(
        &check_gradients(build, &inputs, 1e-3, 64, &mut r)?,
        "forces",
    );
    Ok(())
}

/// A random fused EGNN edge kernel: hidden `h`, messages `m`, `f` Fourier features, every
/// option drawn.
fn random_egnn_kernel(
    r: &mut StdRng,
    h: usize,
    m: usize,
    f: usize,
    edge_term: bool,
) -> crate::ops::EgnnEdgeKernel {
    let mut v = |n: usize, a: f32| -> Vec<f32> { (0..n).map(|_| r.gen_range(-a..a)).collect() };
    let phi_t = v((2 * f + 1) * h, 0.5);
    let edge_out_t = v(h * m, 1.0 / (h as f32).sqrt());
    let edge_out_bias = v(m, 0.1);
    let gate = (v(m, 1.0), 0.1);
    let coors = crate::ops::EgnnCoorsWeights {
        hidden_t: v(m * 4 * m, 1.0 / (m as f32).sqrt()),
        hidden_bias: v(4 * m, 0.1),
        out: v(4 * m, 1.0 / (2.0 * m as f32).sqrt()),
        out_bias: 0.05,
    };
    let pick = r.gen_range(0..4u32);
    crate::ops::EgnnEdgeKernel {
        hidden: h,
        m_dim: m,
        fourier_features: f,
        phi_t,
        edge_out_t,
        edge_out_bias,
        gate: (pick & 1 == 1).then_some(gate),
        coors: Some(coors),
        coors_scale: (pick & 2 == 2).then_some(0.7),
        // a clamp far from the weights (a kink inside the differences' span is not smooth)
        clamp: (pick == 3).then_some(50.0),
        pool_messages: true,
        edge_term,
    }
}

#[test]
fn egnn_edge_matches_finite_differences() -> Result<(), Error> {
    use crate::layers::graph::X;
    let mut r = rng();
    for case in 0..3 {
        let (rows, k) = (r.gen_range(2..7), r.gen_range(1..5));
        let (h, m, f) = (r.gen_range(2..7), r.gen_range(1..5), r.gen_range(0..3));
        let with_t = case != 1;
        let kernel = random_egnn_kernel(&mut r, h, m, f, with_t);
        let src: Vec<f32> = (0..rows * k)
            .map(|_| r.gen_range(-1..rows as i64) as f32)
            .collect();
        let valid: Vec<f32> = (0..rows * k)
            .map(|_| if r.gen_bool(0.85) { 1.0 } else { 0.0 })
            .collect();
        let mut inputs: Vec<Input> = vec![
            ("a", rand_vec(&mut r, rows * h), vec![rows, h]),
            ("b", rand_vec(&mut r, rows * h), vec![rows, h]),
            ("x", separated(&mut r, rows * 3), vec![rows, 3]),
            ("src", src, vec![rows * k]),
            ("valid", valid, vec![rows, k]),
        ];
        if with_t {
            inputs.push(("t", rand_vec(&mut r, rows * k * h), vec![rows * k, h]));
        }
        let build = |s: &mut Session| -> Built {
            let dims = |d: &[usize]| d.iter().map(|&v| Expression::from(v)).collect::<Vec<_>>();
            let a = s.input_with_shape::<(X, X)>("a", InputKind::Values, &dims(&[rows, h]));
            let b = s.input_with_shape::<(X, X)>("b", InputKind::Values, &dims(&[rows, h]));
            let x = s.input_with_shape::<(X, X)>("x", InputKind::Values, &dims(&[rows, 3]));
            let src = s.input_with_shape::<(X,)>("src", InputKind::Values, &dims(&[rows * k]));
            let valid = s.input_with_shape::<(X, X)>("valid", InputKind::Values, &dims(&[rows, k]));
            let t = with_t.then(|| {
                s.input_with_shape::<(X, X)>("t", InputKind::Values, &dims(&[rows * k, h]))
            });
            let out = crate::ops::egnn_edge(
                crate::ops::EgnnEdgeInputs {
                    dst_term: a,
                    src_term: b,
                    coors: x,
                    src,
                    valid,
                },
                t,
                kernel.clone(),
            );
            let mut wrt = vec![
                ("a", a.no_shape()),
                ("b", b.no_shape()),
                ("x", x.no_shape()),
            ];
            if let Some(t) = t {
                wrt.push(("t", t.no_shape()));
            }
            (wrt, vec![out.no_shape()])
        };
        assert_close(
            &check_gradients(build, &inputs, H, 48, &mut r)?,
            &format!("egnn_edge case {case} (h {h}, m {m}, f {f})"),
        );
    }
    Ok(())
}
