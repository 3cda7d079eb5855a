//! Gradient checks of the fused ops' backward passes (`radial_hidden`, `edge_contract` sum and
//! logits, `edge_conv`, `radial_edge_conv`) against central finite differences, on random
//! shapes with missing (`-1`) neighbours and nodes without edges.

use luminal::prelude::{symbolic::Expression, *};
use rand::{rngs::StdRng, Rng};

use super::check::{check_gradients, Built, Input, Worst};
use super::Tensor;
use crate::exec::tests::{rand_vec, rng};
use crate::exec::{IndexBound, InputKind, Session};
use crate::layers::graph::{retype, X};
use crate::ops::{PairShape, RadialHiddenWeights, RadialMode};
use crate::Error;

const TOL: f64 = 2e-3;
const H: f32 = 1e-2;
/// The radial networks' LayerNorm + GELU curve sharply on small hidden widths: central
/// differences at `H` carry an O(h²) truncation error of up to 1e-1 there (seen: 1.3e-1 at 1e-2,
/// 1.2e-2 at 3e-3), while at smaller steps float32 rounding grows as 1/h; the radial check takes,
/// per input, the best of the steps `H`, `H_RADIAL` and `H_RADIAL / 3` along the same directions
/// (a wrong gradient is off at every step).
const H_RADIAL: f32 = 3e-3;

fn assert_close(worst: &[Worst], what: &str) {
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

/// An input of the given sizes: a number is a fixed size, a letter a run-time dimension.
fn input(s: &mut Session, name: &str, shape: &[Expression], kind: InputKind) -> Tensor {
    s.input_with_shape::<()>(name, kind, shape)
}

fn values(s: &mut Session, name: &str, shape: &[Expression]) -> Tensor {
    input(s, name, shape, InputKind::Values)
}

fn indices(s: &mut Session, name: &str, len: char, bound: char) -> Tensor {
    let kind = InputKind::Indices {
        bound: IndexBound::Dim(bound),
        allow_missing: true,
    };
    input(s, name, &[len.into()], kind)
}

/// `len` indices below `n`, a quarter of them missing (`-1`); node `n - 1` is never used, so
/// one segment is empty.
fn some_missing(r: &mut StdRng, len: usize, n: usize) -> Vec<f32> {
    (0..len)
        .map(|_| {
            if r.gen_range(0..4) == 0 || n < 2 {
                -1.0
            } else {
                r.gen_range(0..n - 1) as f32
            }
        })
        .collect()
}

#[test]
fn radial_hidden_matches_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    let (np, e, n_in, hd): (usize, usize, usize, usize) = (
        r.gen_range(1..4),
        r.gen_range(1..9),
        r.gen_range(1..4),
        // a LayerNorm over two values is ±d / sqrt(d² + eps), a near step in d that central
        // differences cannot follow; the networks' widths are 16 and more
        r.gen_range(3..7),
    );
    println!("radial_hidden shapes: np {np}, e {e}, n_in {n_in}, hidden {hd}");
    let names = ["w0", "b0", "g1", "be1", "w3", "b3", "g4", "be4"];
    let mut inputs: Vec<Input> = vec![("x", rand_vec(&mut r, e * n_in), vec![e, n_in])];
    for name in names {
        let shape = match name {
            "w0" => vec![np, n_in, hd],
            "w3" => vec![np, hd, hd],
            _ => vec![np, hd],
        };
        let len = shape.iter().product();
        inputs.push((name, rand_vec(&mut r, len), shape));
    }
    let build = |s: &mut Session| -> Built {
        let x = values(s, "x", &['e'.into(), n_in.into()]);
        let t: Vec<Tensor> = inputs[1..]
            .iter()
            .map(|(name, _, shape)| {
                let d: Vec<Expression> = shape.iter().map(|&v| v.into()).collect();
                values(s, name, &d)
            })
            .collect();
        let w = RadialHiddenWeights {
            w0: retype(t[0]),
            b0: retype(t[1]),
            g1: retype(t[2]),
            be1: retype(t[3]),
            w3: retype(t[4]),
            b3: retype(t[5]),
            g4: retype(t[6]),
            be4: retype(t[7]),
        };
        let y = crate::ops::radial_hidden(retype::<_, (X, X)>(x), &w, 1e-5);
        let mut wrt = vec![("x", x)];
        wrt.extend(names.iter().zip(&t).map(|(n, t)| (*n, *t)));
        (wrt, vec![y.no_shape()])
    };
    // the same directions at each step
    let mut best: Vec<Worst> = Vec::new();
    for h in [H, H_RADIAL, H_RADIAL / 3.0] {
        let mut same = r.clone();
        let worst = check_gradients(build, &inputs, h, 24, &mut same)?;
        if best.is_empty() {
            best = worst;
        } else {
            for (b, w) in best.iter_mut().zip(worst) {
                b.error = b.error.min(w.error);
            }
        }
    }
    assert_close(&best, "radial_hidden");
    Ok(())
}

#[test]
fn edge_conv_matrix_and_diagonal_match_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    let (n, e, co, ci) = (
        r.gen_range(2..7),
        r.gen_range(1..14),
        r.gen_range(1..4),
        r.gen_range(1..4),
    );
    let inputs: Vec<Input> = vec![
        ("x", rand_vec(&mut r, n * ci), vec![n, ci]),
        ("xd", rand_vec(&mut r, n * co), vec![n, co]),
        ("w", rand_vec(&mut r, e * co * ci), vec![e, co, ci]),
        ("wd", rand_vec(&mut r, e * co), vec![e, co]),
        ("src", some_missing(&mut r, e, n), vec![e]),
        ("dst", some_missing(&mut r, e, n), vec![e]),
    ];
    type N = Dyn<'n'>;
    type E = Dyn<'e'>;
    let build = |s: &mut Session| -> Built {
        let x = values(s, "x", &['n'.into(), ci.into()]);
        let xd = values(s, "xd", &['n'.into(), co.into()]);
        let w = values(s, "w", &['e'.into(), co.into(), ci.into()]);
        let wd = values(s, "wd", &['e'.into(), co.into()]);
        let src: GraphTensor<(E,)> = retype(indices(s, "src", 'e', 'n'));
        let dst: GraphTensor<(E,)> = retype(indices(s, "dst", 'e', 'n'));
        let m = crate::ops::edge_conv::<N, N, E, X, X>(retype(x), retype(w), src, dst);
        let d = crate::ops::edge_conv_diag::<N, N, E, X>(retype(xd), retype(wd), src, dst);
        (
            vec![("x", x), ("xd", xd), ("w", w), ("wd", wd)],
            vec![m.no_shape(), d.no_shape()],
        )
    };
    assert_close(
        &check_gradients(build, &inputs, H, 32, &mut r)?,
        "edge_conv",
    );
    Ok(())
}

#[test]
fn radial_edge_conv_matches_finite_differences_in_every_mode() -> Result<(), Error> {
    let mut r = rng();
    // (c_in, d_in, nf, c_out, d_out): a dropped frequency (nf below 2 min + 1) in the last
    for sh in [
        (2, 1, 3, 2, 1),
        (1, 0, 1, 3, 2),
        (2, 2, 1, 1, 0),
        (2, 1, 2, 2, 2),
    ] {
        let sh = PairShape {
            c_in: sh.0,
            d_in: sh.1,
            nf: sh.2,
            c_out: sh.3,
            d_out: sh.4,
        };
        let mode = [
            RadialMode::Auto,
            RadialMode::Reassociated,
            RadialMode::Direct,
        ][r.gen_range(0..3)];
        let (n, e, hd) = (r.gen_range(2..6), r.gen_range(1..12), r.gen_range(1..6));
        let (di, mo, rows) = (sh.di(), sh.mo(), sh.c_out * sh.cf());
        let inputs: Vec<Input> = vec![
            (
                "x",
                rand_vec(&mut r, n * sh.c_in * di),
                vec![n, sh.c_in * di],
            ),
            (
                "basis",
                rand_vec(&mut r, e * di * sh.nf * mo),
                vec![e, di, sh.nf * mo],
            ),
            ("h", rand_vec(&mut r, e * hd), vec![e, hd]),
            ("wl", rand_vec(&mut r, rows * hd), vec![rows, hd]),
            ("bl", rand_vec(&mut r, rows), vec![rows]),
            ("w", rand_vec(&mut r, e), vec![e]),
            ("src", some_missing(&mut r, e, n), vec![e]),
            ("dst", some_missing(&mut r, e, n), vec![e]),
        ];
        type N = Dyn<'n'>;
        type E = Dyn<'e'>;
        let build = |s: &mut Session| -> Built {
            let x = values(s, "x", &['n'.into(), (sh.c_in * di).into()]);
            let basis = values(s, "basis", &['e'.into(), di.into(), (sh.nf * mo).into()]);
            let h = values(s, "h", &['e'.into(), hd.into()]);
            let wl = values(s, "wl", &[rows.into(), hd.into()]);
            let bl = values(s, "bl", &[rows.into()]);
            let w = values(s, "w", &['e'.into()]);
            let src = retype(indices(s, "src", 'e', 'n'));
            let dst = retype(indices(s, "dst", 'e', 'n'));
            let y = crate::ops::radial_edge_conv::<N, N, E>(
                sh,
                mode,
                retype(x),
                retype(basis),
                retype(h),
                retype(wl),
                retype(bl),
                retype(w),
                src,
                dst,
            );
            (
                vec![
                    ("x", x),
                    ("basis", basis),
                    ("h", h),
                    ("wl", wl),
                    ("bl", bl),
                    ("w", w),
                ],
                vec![y.no_shape()],
            )
        };
        assert_close(
            &check_gradients(build, &inputs, H, 24, &mut r)?,
            &format!("radial_edge_conv {sh:?} {mode:?}"),
        );
    }
    Ok(())
}

#[test]
fn edge_contract_sum_and_logits_match_finite_differences() -> Result<(), Error> {
    let mut r = rng();
    for (d_in, d_out) in [(1, 1), (0, 2), (2, 0)] {
        let (n, k, heads) = (r.gen_range(2..5), r.gen_range(1..4), r.gen_range(1..3));
        let (c_in, cnt, hd) = (r.gen_range(1..3), r.gen_range(1..3), r.gen_range(1..5));
        let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
        let (e, cf, all) = (n * k, c_in * nf, heads * cnt);
        // the last node's neighbours all missing, the rest a quarter missing
        let mut nbr = some_missing(&mut r, e, n + 1);
        nbr[(n - 1) * k..].fill(-1.0);
        let mut inputs: Vec<Input> = vec![
            ("x", rand_vec(&mut r, n * c_in * mi), vec![n, c_in, mi]),
            ("nbr", nbr, vec![e]),
            (
                "basis",
                rand_vec(&mut r, e * mo * mi * nf),
                vec![e, mo, mi, nf],
            ),
            ("h", rand_vec(&mut r, e * hd), vec![e, hd]),
            ("w", rand_vec(&mut r, cf * hd * all), vec![cf * hd, all]),
            ("b", rand_vec(&mut r, cf * all), vec![cf, all]),
        ];
        let head_names = [("a0", "q0"), ("a1", "q1")];
        for &(a, q) in &head_names[..heads] {
            inputs.push((a, rand_vec(&mut r, e), vec![n, k]));
            inputs.push((q, rand_vec(&mut r, n * cnt * mo), vec![n, cnt, mo]));
        }
        let build = |s: &mut Session| -> Built {
            let x = values(s, "x", &['n'.into(), c_in.into(), mi.into()]);
            let nbr = indices(s, "nbr", 'e', 'n');
            let basis = values(s, "basis", &['e'.into(), mo.into(), mi.into(), nf.into()]);
            let h = values(s, "h", &['e'.into(), hd.into()]);
            let w = values(s, "w", &[(cf * hd).into(), all.into()]);
            let b = values(s, "b", &[cf.into(), all.into()]);
            let (mut a, mut q) = (vec![], vec![]);
            for &(an, qn) in &head_names[..heads] {
                a.push(values(s, an, &['n'.into(), k.into()]));
                q.push(values(s, qn, &['n'.into(), cnt.into(), mo.into()]));
            }
            let sum =
                crate::ops::edge_contract_sum_heads(x, nbr, basis, h, &a, retype(w), retype(b));
            let logits = crate::ops::edge_contract_logits_heads(
                x,
                nbr,
                basis,
                h,
                &q,
                retype(w),
                retype(b),
                k,
            );
            let mut wrt = vec![("x", x), ("basis", basis), ("h", h), ("w", w), ("b", b)];
            for (t, &(an, qn)) in head_names[..heads].iter().enumerate() {
                wrt.push((an, a[t]));
                wrt.push((qn, q[t]));
            }
            (wrt, vec![sum.no_shape(), logits.no_shape()])
        };
        assert_close(
            &check_gradients(build, &inputs, H, 24, &mut r)?,
            &format!("edge_contract {d_in}->{d_out}, {heads} heads"),
        );
    }
    Ok(())
}
