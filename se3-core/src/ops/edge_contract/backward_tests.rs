//! The fused backward of `edge_contract` (sum and logits, several heads) against the backward
//! pass through the unfused graph of each head, at the model's hidden width (several chunks of `(f, c)` per block) and
//! more nodes than one block, with missing neighbours.

use luminal::prelude::{symbolic::Expression, *};
use rand::Rng;

use crate::autodiff::{gradients, Tensor};
use crate::exec::tests::{rand_vec, rel_err, rng};
use crate::exec::{IndexBound, InputKind, Session};
use crate::layers::graph::{reshape, retype, X};
use crate::Error;

fn values(s: &mut Session, name: &str, shape: &[Expression]) -> Tensor {
    s.input_with_shape::<()>(name, InputKind::Values, shape)
}

/// Columns `c0 .. c0 + cnt` of a row-major `[rows, all]` matrix.
fn cols(data: &[f32], all: usize, c0: usize, cnt: usize) -> Vec<f32> {
    data.chunks(all)
        .flat_map(|r| r[c0..c0 + cnt].to_vec())
        .collect()
}

/// Worst relative error over the gradients of one random problem of degree pair
/// `d_in -> d_out`, and the name of that gradient.
fn fused_vs_unfused_gradients(d_in: usize, d_out: usize) -> Result<(f64, String), Error> {
    let mut r = rng();
    let (mi, mo, nf) = (2 * d_in + 1, 2 * d_out + 1, 2 * d_in.min(d_out) + 1);
    let hd = 128;
    let (n, heads) = (r.gen_range(17..40), r.gen_range(2..4));
    let (k, cnt) = (r.gen_range(2..7), r.gen_range(1..4));
    let c_in = r.gen_range(2..5);
    let (e, cf, all) = (n * k, c_in * nf, heads * cnt);
    let nbr: Vec<f32> = (0..e)
        .map(|_| {
            if r.gen_range(0..4) == 0 {
                -1.0
            } else {
                r.gen_range(0..n) as f32
            }
        })
        .collect();
    let mut data: Vec<(String, Vec<f32>, Vec<usize>)> = vec![
        (
            "x".into(),
            rand_vec(&mut r, n * c_in * mi),
            vec![n, c_in, mi],
        ),
        ("nbr".into(), nbr, vec![e]),
        (
            "basis".into(),
            rand_vec(&mut r, e * mo * mi * nf),
            vec![e, mo, mi, nf],
        ),
        ("h".into(), rand_vec(&mut r, e * hd), vec![e, hd]),
    ];
    let (wd, bd) = (rand_vec(&mut r, cf * hd * all), rand_vec(&mut r, cf * all));
    let (a, q): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (0..heads)
        .map(|_| (rand_vec(&mut r, e), rand_vec(&mut r, n * cnt * mo)))
        .unzip();
    let (cot_sum, cot_logits) = (rand_vec(&mut r, n * all * mo), rand_vec(&mut r, heads * e));
    for t in 0..heads {
        data.push((format!("a{t}"), a[t].clone(), vec![n, k]));
        data.push((format!("q{t}"), q[t].clone(), vec![n, cnt, mo]));
    }
    let common = |s: &mut Session| -> [Tensor; 4] {
        let kind = InputKind::Indices {
            bound: IndexBound::Dim('n'),
            allow_missing: true,
        };
        [
            values(s, "x", &['n'.into(), c_in.into(), mi.into()]),
            s.input_with_shape::<()>("nbr", kind, &['e'.into()]),
            values(s, "basis", &['e'.into(), mo.into(), mi.into(), nf.into()]),
            values(s, "h", &['e'.into(), hd.into()]),
        ]
    };
    let set_all = |s: &mut Session| -> Result<(), Error> {
        for (name, d, shape) in &data {
            s.set(name, d.clone(), shape)?;
        }
        Ok(())
    };

    // fused: all heads in one op each
    let mut f = Session::new();
    let [x, nbr, basis, h] = common(&mut f);
    let w = values(&mut f, "w", &[(cf * hd).into(), all.into()]);
    let b = values(&mut f, "b", &[cf.into(), all.into()]);
    let (mut at, mut qt) = (vec![], vec![]);
    for t in 0..heads {
        at.push(values(&mut f, &format!("a{t}"), &['n'.into(), k.into()]));
        qt.push(values(
            &mut f,
            &format!("q{t}"),
            &['n'.into(), cnt.into(), mo.into()],
        ));
    }
    let sum = super::edge_contract_sum_heads(x, nbr, basis, h, &at, retype(w), retype(b));
    let logits = super::edge_contract_logits_heads(x, nbr, basis, h, &qt, retype(w), retype(b), k);
    let cs = values(&mut f, "cs", &['n'.into(), all.into(), mo.into()]);
    let cl = values(&mut f, "cl", &[heads.into(), 'n'.into(), k.into()]);
    let mut wrt = vec![("x", x), ("basis", basis), ("h", h), ("w", w), ("b", b)];
    for t in 0..heads {
        wrt.push(("a", at[t]));
        wrt.push(("q", qt[t]));
    }
    let wrt_t: Vec<Tensor> = wrt.iter().map(|p| p.1).collect();
    let grads = gradients(&[(sum.no_shape(), cs), (logits.no_shape(), cl)], &wrt_t)?;
    for (i, g) in grads.iter().enumerate() {
        f.output(&format!("g{i}"), *g);
    }
    set_all(&mut f)?;
    f.set("cs", cot_sum.clone(), &[n, all, mo])?;
    f.set("cl", cot_logits.clone(), &[heads, n, k])?;
    f.set("w", wd.clone(), &[cf * hd, all])?;
    f.set("b", bd.clone(), &[cf, all])?;
    f.run()?;

    // unfused: one graph per head, the weights' columns of that head as their own inputs
    let mut u = Session::new();
    let [x, nbr, basis, h] = common(&mut u);
    let h3: GraphTensor<(X, X, X)> = reshape(h, &['n'.into(), k.into(), hd.into()]);
    let mut pairs = vec![];
    let mut wrt_u = vec![x, basis, h];
    for t in 0..heads {
        let wt = values(&mut u, &format!("w{t}"), &[(cf * hd).into(), cnt.into()]);
        let bt = values(&mut u, &format!("b{t}"), &[cf.into(), cnt.into()]);
        let a = values(&mut u, &format!("a{t}"), &['n'.into(), k.into()]);
        let q = values(
            &mut u,
            &format!("q{t}"),
            &['n'.into(), cnt.into(), mo.into()],
        );
        let nb: GraphTensor<(X,)> = retype(nbr);
        let s_t = super::edge_contract_sum_unfused(
            retype(x),
            nb,
            retype(basis),
            h3,
            retype(a),
            retype(wt),
            retype(bt),
        );
        let l_t = super::edge_contract_logits_unfused(
            retype(x),
            nb,
            retype(basis),
            h3,
            retype(q),
            retype(wt),
            retype(bt),
        );
        let cs_t = values(
            &mut u,
            &format!("cs{t}"),
            &['n'.into(), cnt.into(), mo.into()],
        );
        let cl_t = values(&mut u, &format!("cl{t}"), &['n'.into(), k.into()]);
        pairs.push((s_t.no_shape(), cs_t));
        pairs.push((l_t.no_shape(), cl_t));
        wrt_u.extend([wt, bt, a, q]);
    }
    for (i, g) in gradients(&pairs, &wrt_u)?.iter().enumerate() {
        u.output(&format!("g{i}"), *g);
    }
    set_all(&mut u)?;
    for t in 0..heads {
        u.set(
            &format!("w{t}"),
            cols(&wd, all, t * cnt, cnt),
            &[cf * hd, cnt],
        )?;
        u.set(&format!("b{t}"), cols(&bd, all, t * cnt, cnt), &[cf, cnt])?;
        let cs_t: Vec<f32> = cot_sum
            .chunks(all * mo)
            .flat_map(|node| node[t * cnt * mo..(t + 1) * cnt * mo].to_vec())
            .collect();
        u.set(&format!("cs{t}"), cs_t, &[n, cnt, mo])?;
        u.set(
            &format!("cl{t}"),
            cot_logits[t * e..(t + 1) * e].to_vec(),
            &[n, k],
        )?;
    }
    u.run()?;

    let got = |i: usize| -> Result<Vec<f32>, Error> { Ok(f.get(&format!("g{i}"))?.data) };
    let want = |i: usize| -> Result<Vec<f32>, Error> { Ok(u.get(&format!("g{i}"))?.data) };
    let mut worst = (0.0f64, String::new());
    let mut note = |err: f64, what: String| {
        println!("{d_in}->{d_out}: d{what} rel err {err:.2e}");
        if err > worst.0 || worst.1.is_empty() {
            worst = (err, what);
        }
    };
    for (i, name) in ["x", "basis", "h"].iter().enumerate() {
        note(rel_err(&got(i)?, &want(i)?), name.to_string());
    }
    let (dw, db) = (got(3)?, got(4)?);
    for t in 0..heads {
        let base = 3 + 4 * t;
        note(
            rel_err(&cols(&dw, all, t * cnt, cnt), &want(base)?),
            format!("w (head {t})"),
        );
        note(
            rel_err(&cols(&db, all, t * cnt, cnt), &want(base + 1)?),
            format!("b (head {t})"),
        );
        note(rel_err(&got(5 + 2 * t)?, &want(base + 2)?), format!("a{t}"));
        note(rel_err(&got(6 + 2 * t)?, &want(base + 3)?), format!("q{t}"));
    }
    Ok(worst)
}

/// Every gradient of the fused multi-head sum and logits against the unfused graphs' backward,
/// on degree pairs with several `(f, c)` chunks per block.
#[test]
fn fused_backward_matches_the_unfused_backward_at_hidden_128() -> Result<(), Error> {
    for (d_in, d_out) in [(2, 2), (1, 2), (1, 1), (2, 0), (0, 0), (0, 2)] {
        let (err, what) = fused_vs_unfused_gradients(d_in, d_out)?;
        assert!(
            err < 1e-4,
            "{d_in}->{d_out}: gradient of {what} off by {err:.3e} (seed {})",
            crate::testing::seed()
        );
    }
    Ok(())
}
