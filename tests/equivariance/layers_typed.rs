//! Equivariance of the typed graph layers (`Gate<In, Out>`, `LayerNorm<F>`, `Attention<F>`,
//! `AttentionBlock<F>`, `FeedForwardBlock<F>`, `MeanPool<F>`, `MaxPool<F>`), assembled with
//! `#[fiber]` types on one session: a random cloud with a mask, rotated and translated (input
//! features rotated by D_l(R)); every intermediate output must rotate with D_l(R), pooled
//! means rotate, pooled maxima are invariant; a permutation of the nodes permutes every node
//! output and leaves the pooled ones. Fresh seed every run (printed; replay with `SE3_SEED`),
//! relative error < `TOL_F32`.

use luminal::prelude::{symbolic::Expression, *};
use nalgebra::{Rotation3, Vector3};
use rand::rngs::StdRng;
use rand::Rng;
use se3::fiber;
use se3_core::exec::{InputKind, Session};
use se3_core::fiber::Fiber;
use se3_core::layers::{
    Attention, AttentionBlock, AttentionOptions, EdgeBasis, EdgeGraph, FeedForwardBlock, Gate,
    GraphFeatures, LayerNorm, Linear, MaxPool, MeanPool,
};
use se3_core::ops::{neighbors, NeighborSpec};
use se3_core::so3::wigner_d;
use se3_core::testing::{
    assert_equivariant, random_rotation, random_vector, rel_error, rng, rotate_rows, TOL_F32,
};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const K: usize = 6;

#[fiber(0:4, 1:3, 2:2)]
struct Hidden;
/// The gate input of `Hidden`: 4 scalars + 3 + 2 gates.
#[fiber(0:9, 1:3, 2:2)]
struct Gated;

/// The named outputs of the network, each of fiber `Hidden` on the nodes.
const STAGES: [&str; 5] = ["gate", "ln", "att", "ab", "ff"];

fn build_net(r: &mut StdRng) -> TestResult<Session> {
    let opts = AttentionOptions {
        heads: 2,
        dim_head: 3,
        attend_self: true,
        ..AttentionOptions::default()
    };
    let lin = Linear::<Hidden, Gated>::new(r);
    let gate = Gate::<Gated, Hidden>::new()?;
    let ln = LayerNorm::<Hidden>::new();
    let att = Attention::<Hidden>::new(
        AttentionOptions {
            attend_self: false,
            ..opts
        },
        r,
    )?;
    let ab = AttentionBlock::<Hidden>::new(opts, true, r)?;
    let ff = FeedForwardBlock::<Hidden>::new(false, r)?;

    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let mask = s.input::<(Dyn<'n'>,)>("mask", InputKind::Mask);
    let x = GraphFeatures::<Hidden>::input(&mut s, "x");
    let nb = neighbors::<_, K>(coords, Some(mask), NeighborSpec::default());
    s.derive_dim('e', Expression::from('n') * K);
    let edges = EdgeGraph::from_neighbors(coords, &nb, None);
    let basis = EdgeBasis::new(&mut s, "", &edges, Hidden::max_degree())?;

    let g = lin.build(&mut s, "lin.", &x)?;
    let h = gate.build(&mut s, "gate.", &g)?;
    h.output(&mut s, "gate");
    let h = ln.build(&mut s, "ln.", &h)?;
    h.output(&mut s, "ln");
    let h = att.build(&mut s, "att.", &h, &edges, &basis)?;
    h.output(&mut s, "att");
    let h = ab.build(&mut s, "ab.", &h, &edges, &basis)?;
    h.output(&mut s, "ab");
    let h = ff.build(&mut s, "ff.", &h)?;
    h.output(&mut s, "ff");
    MeanPool::<Hidden>::new()
        .build(&h, Some(mask))?
        .output(&mut s, "mean");
    let mx = MaxPool::<Hidden>::new().build(&h, Some(mask))?;
    s.output("max", mx);
    s.compile();
    Ok(s)
}

struct Cloud {
    n: usize,
    coords: Vec<[f64; 3]>,
    mask: Vec<f32>,
    x: Vec<Vec<f64>>,
}

fn cloud(r: &mut StdRng) -> Cloud {
    let n = r.gen_range(12..24);
    let coords = (0..n)
        .map(|_| {
            let v = random_vector(r, 1.5);
            [v.x, v.y, v.z]
        })
        .collect();
    let mask = (0..n)
        .map(|i| f32::from(u8::from(i < 2 || r.gen_bool(0.85))))
        .collect();
    let x = Hidden::spec()
        .degrees()
        .iter()
        .map(|d| (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect())
        .collect();
    Cloud { n, coords, mask, x }
}

fn rotate(x: &[f64], l: usize, rot: &Rotation3<f64>) -> TestResult<Vec<f64>> {
    Ok(rotate_rows(&wigner_d(l, rot)?, x))
}

fn moved(c: &Cloud, rot: &Rotation3<f64>, t: &Vector3<f64>) -> TestResult<Cloud> {
    Ok(Cloud {
        n: c.n,
        coords: c
            .coords
            .iter()
            .map(|p| {
                let q = rot * Vector3::from(*p) + t;
                [q.x, q.y, q.z]
            })
            .collect(),
        mask: c.mask.clone(),
        x: Hidden::spec()
            .degrees()
            .iter()
            .zip(&c.x)
            .map(|(d, x)| rotate(x, d.l, rot))
            .collect::<TestResult<_>>()?,
    })
}

/// Every output by name: `<stage>.<l>` per degree, `mean.<l>`, `max`.
fn run(s: &mut Session, c: &Cloud) -> TestResult<Vec<(String, usize, Vec<f64>)>> {
    let flat: Vec<f32> = c.coords.iter().flatten().map(|&v| v as f32).collect();
    s.set("coords", flat, &[c.n, 3])?;
    s.set("mask", c.mask.clone(), &[c.n])?;
    for (d, x) in Hidden::spec().degrees().iter().zip(&c.x) {
        let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        s.set(&format!("x.{}", d.l), v, &[c.n, d.channels, d.width()])?;
    }
    s.run()?;
    let get = |s: &Session, name: &str| -> TestResult<Vec<f64>> {
        Ok(s.get(name)?.data.iter().map(|&v| f64::from(v)).collect())
    };
    let mut out = Vec::new();
    for stage in STAGES.iter().chain(&["mean"]) {
        for d in Hidden::spec().degrees() {
            let name = format!("{stage}.{}", d.l);
            let v = get(s, &name)?;
            out.push((name, d.l, v));
        }
    }
    out.push(("max".into(), 0, get(s, "max")?));
    Ok(out)
}

#[test]
fn typed_gate_layer_norm_attention_blocks_and_pools_are_equivariant() -> TestResult {
    let (mut r, seed) = rng();
    let mut s = build_net(&mut r)?;
    for _ in 0..2 {
        let c = cloud(&mut r);
        let base = run(&mut s, &c)?;
        // each stage must change its input, or an identity layer would pass
        for pair in STAGES.windows(2) {
            for d in Hidden::spec().degrees() {
                let find = |n: String| base.iter().find(|o| o.0 == n).map(|o| o.2.clone());
                let (a, b) = (
                    find(format!("{}.{}", pair[0], d.l)),
                    find(format!("{}.{}", pair[1], d.l)),
                );
                if let (Some(a), Some(b)) = (a, b) {
                    let change = rel_error(&b, &a);
                    assert!(
                        change > 1e-3,
                        "seed {seed}: {} leaves degree {} almost unchanged ({change:.1e})",
                        pair[1],
                        d.l
                    );
                }
            }
        }
        let rot = random_rotation(&mut r);
        let t = random_vector(&mut r, 3.0);
        let got = run(&mut s, &moved(&c, &rot, &t)?)?;
        for ((name, l, b), (_, _, g)) in base.iter().zip(&got) {
            let want = if name == "max" {
                b.clone()
            } else {
                rotate(b, *l, &rot)?
            };
            let err =
                assert_equivariant(&format!("typed {name} (seed {seed})"), g, &want, TOL_F32)?;
            println!("typed {name}: max rel err {err:.2e}");
        }
    }
    Ok(())
}

/// The rows of `x` (`rows` of equal width) in the order `perm`.
fn permute_rows(x: &[f64], rows: usize, perm: &[usize]) -> Vec<f64> {
    let w = x.len() / rows;
    perm.iter()
        .flat_map(|&i| x[i * w..(i + 1) * w].iter().copied())
        .collect()
}

#[test]
fn typed_layers_are_permutation_equivariant() -> TestResult {
    let (mut r, seed) = rng();
    let mut s = build_net(&mut r)?;
    let c = cloud(&mut r);
    let base = run(&mut s, &c)?;
    let mut perm: Vec<usize> = (0..c.n).collect();
    for i in (1..c.n).rev() {
        perm.swap(i, r.gen_range(0..=i));
    }
    let shuffled = Cloud {
        n: c.n,
        coords: perm.iter().map(|&i| c.coords[i]).collect(),
        mask: perm.iter().map(|&i| c.mask[i]).collect(),
        x: c.x.iter().map(|x| permute_rows(x, c.n, &perm)).collect(),
    };
    let got = run(&mut s, &shuffled)?;
    for ((name, _, b), (_, _, g)) in base.iter().zip(&got) {
        let want = if name.starts_with("mean") || name == "max" {
            b.clone()
        } else {
            permute_rows(b, c.n, &perm)
        };
        let err = assert_equivariant(
            &format!("typed {name} under a node permutation (seed {seed})"),
            g,
            &want,
            TOL_F32,
        )?;
        println!("typed {name} permuted: max rel err {err:.2e}");
    }
    Ok(())
}
