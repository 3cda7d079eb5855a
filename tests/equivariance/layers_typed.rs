//! Equivariance of the typed graph layers (`Gate<In, Out>`, `LayerNorm<F>`, `Attention<F>`,
//! `AttentionBlock<F>`, `FeedForwardBlock<F>`, `MeanPool<F>`, `MaxPool<F>`), assembled with
//! `#[fiber]` types on one session: a random cloud with a mask, rotated and translated (input
//! features rotated by D_l(R)); every intermediate output must rotate with D_l(R), pooled
//! means rotate, pooled maxima are invariant; a permutation of the nodes permutes every node
//! output and leaves the pooled ones; with E(3) fibers (`0e, 1o`) the same under
//! reflections (inversion times a rotation, features times their parity). Fresh seed every run
//! (printed; replay with `SE3_SEED`), relative error < `TOL_F32`. Coincident points and fully
//! masked clouds give finite values (pools of no node are 0).

use luminal::prelude::{symbolic::Expression, *};
use nalgebra::{Matrix3, Rotation3, Vector3};
use rand::rngs::StdRng;
use rand::Rng;
use se3::fiber;
use se3_core::exec::{InputKind, Session};
use se3_core::fiber::{Degree, DegreeSpec, Fiber, FiberSpec, GateFibers, Invariant, SameDegrees};
use se3_core::layers::{
    Attention, AttentionBlock, AttentionOptions, EdgeBasis, EdgeGraph, FeedForwardBlock, Gate,
    GraphFeatures, LayerNorm, Linear, MaxPool, MeanPool,
};
use se3_core::ops::{neighbors, NeighborSpec};
use se3_core::so3::{wigner_d, wigner_d_o3};
use se3_core::testing::{
    assert_equivariant, random_reflection, random_rotation, random_vector, rel_error, rng,
    rotate_rows, TOL_F32,
};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const K: usize = 6;

#[fiber(0:4, 1:3, 2:2)]
struct Hidden;
/// The gate input of `Hidden`: 4 scalars + 3 + 2 gates.
#[fiber(0:9, 1:3, 2:2)]
struct Gated;
/// E(3): even scalars, odd vectors. (Degree 2 is left out: `ConvLayer` with E(3) fibers is
/// not yet equivariant on its 2 -> 2 pairs, which the attention's key and value
/// convolutions would inherit.)
#[fiber("0e:4, 1o:3")]
struct Polar;
/// The gate input of `Polar`.
#[fiber("0e:7, 1o:3")]
struct PolarGated;

/// The named outputs of the network, each of fiber `Hidden` on the nodes.
const STAGES: [&str; 5] = ["gate", "ln", "att", "ab", "ff"];

/// Linear<H, G> -> Gate<G, H> -> LayerNorm<H> -> Attention<H> -> AttentionBlock<H> ->
/// FeedForwardBlock<H>, every stage an output, then the pools of the last one.
fn build_net<H: Fiber, G: Fiber>(r: &mut StdRng) -> TestResult<Session>
where
    Linear<H, G>: SameDegrees,
    Gate<G, H>: GateFibers,
    Degree<0>: Invariant<H>,
{
    let opts = AttentionOptions {
        heads: 2,
        dim_head: 3,
        attend_self: true,
        ..AttentionOptions::default()
    };
    let lin = Linear::<H, G>::new(r);
    let gate = Gate::<G, H>::new()?;
    let ln = LayerNorm::<H>::new();
    let att = Attention::<H>::new(
        AttentionOptions {
            attend_self: false,
            ..opts
        },
        r,
    )?;
    let ab = AttentionBlock::<H>::new(opts, true, r)?;
    let ff = FeedForwardBlock::<H>::new(false, r)?;

    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let mask = s.input::<(Dyn<'n'>,)>("mask", InputKind::Mask);
    let x = GraphFeatures::<H>::input(&mut s, "x");
    let nb = neighbors::<_, K>(coords, Some(mask), NeighborSpec::default());
    s.derive_dim('e', Expression::from('n') * K);
    let edges = EdgeGraph::from_neighbors(coords, &nb, None);
    let basis = EdgeBasis::new(&mut s, "", &edges, H::max_degree())?;

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
    MeanPool::<H>::new()
        .build(&h, Some(mask))?
        .output(&mut s, "mean");
    let mx = MaxPool::<H>::new().build(&h, Some(mask))?;
    s.output("max", mx);
    s.compile();
    Ok(s)
}

struct Cloud {
    spec: FiberSpec,
    n: usize,
    coords: Vec<[f64; 3]>,
    mask: Vec<f32>,
    x: Vec<Vec<f64>>,
}

fn cloud(r: &mut StdRng, spec: &FiberSpec) -> Cloud {
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
    let x = spec
        .degrees()
        .iter()
        .map(|d| (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect())
        .collect();
    Cloud {
        spec: spec.clone(),
        n,
        coords,
        mask,
        x,
    }
}

/// Rows of degree `d` transformed by the orthogonal `m`: D_l(m) for a rotation, and for an
/// improper `m = -R` D_l(R) times the parity of `d` (SE(3) fibers take rotations only).
fn rotate(x: &[f64], d: &DegreeSpec, m: &Matrix3<f64>) -> TestResult<Vec<f64>> {
    let dm = match d.parity {
        Some(p) => wigner_d_o3(d.l, p, m)?,
        None => wigner_d(d.l, &Rotation3::from_matrix_unchecked(*m))?,
    };
    Ok(rotate_rows(&dm, x))
}

fn moved(c: &Cloud, m: &Matrix3<f64>, t: &Vector3<f64>) -> TestResult<Cloud> {
    Ok(Cloud {
        spec: c.spec.clone(),
        n: c.n,
        coords: c
            .coords
            .iter()
            .map(|p| {
                let q = m * Vector3::from(*p) + t;
                [q.x, q.y, q.z]
            })
            .collect(),
        mask: c.mask.clone(),
        x: c.spec
            .degrees()
            .iter()
            .zip(&c.x)
            .map(|(d, x)| rotate(x, d, m))
            .collect::<TestResult<_>>()?,
    })
}

/// Every output by name with its degree: `<stage>.<l>` per degree, `mean.<l>`, `max`.
fn run(s: &mut Session, c: &Cloud) -> TestResult<Vec<(String, DegreeSpec, Vec<f64>)>> {
    let flat: Vec<f32> = c.coords.iter().flatten().map(|&v| v as f32).collect();
    s.set("coords", flat, &[c.n, 3])?;
    s.set("mask", c.mask.clone(), &[c.n])?;
    for (d, x) in c.spec.degrees().iter().zip(&c.x) {
        let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        s.set(&format!("x.{}", d.l), v, &[c.n, d.channels, d.width()])?;
    }
    s.run()?;
    let get = |s: &Session, name: &str| -> TestResult<Vec<f64>> {
        Ok(s.get(name)?.data.iter().map(|&v| f64::from(v)).collect())
    };
    let mut out = Vec::new();
    for stage in STAGES.iter().chain(&["mean"]) {
        for d in c.spec.degrees() {
            let name = format!("{stage}.{}", d.l);
            let v = get(s, &name)?;
            out.push((name, *d, v));
        }
    }
    out.push(("max".into(), c.spec.degrees()[0], get(s, "max")?));
    Ok(out)
}

/// Runs `s` on a fresh cloud and on it moved by `m` and a translation; every output must
/// transform (max-pooled: stay), and each stage must change its input.
fn check_moves(
    s: &mut Session,
    r: &mut StdRng,
    spec: &FiberSpec,
    seed: u64,
    what: &str,
    m: impl Fn(&mut StdRng) -> Matrix3<f64>,
) -> TestResult {
    for _ in 0..2 {
        let c = cloud(r, spec);
        let base = run(s, &c)?;
        // each stage must change its input, or an identity layer would pass
        for pair in STAGES.windows(2) {
            for d in spec.degrees() {
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
        let mm = m(r);
        let t = random_vector(r, 3.0);
        let got = run(s, &moved(&c, &mm, &t)?)?;
        for ((name, d, b), (_, _, g)) in base.iter().zip(&got) {
            let want = if name == "max" {
                b.clone()
            } else {
                rotate(b, d, &mm)?
            };
            let err = assert_equivariant(
                &format!("typed {name} under {what} (seed {seed})"),
                g,
                &want,
                TOL_F32,
            )?;
            println!("typed {name} under {what}: max rel err {err:.2e}");
        }
    }
    Ok(())
}

#[test]
fn typed_gate_layer_norm_attention_blocks_and_pools_are_equivariant() -> TestResult {
    let (mut r, seed) = rng();
    let mut s = build_net::<Hidden, Gated>(&mut r)?;
    check_moves(&mut s, &mut r, &Hidden::spec(), seed, "rotations", |r| {
        random_rotation(r).into_inner()
    })
}

#[test]
fn typed_layers_on_e3_fibers_are_equivariant_under_reflections() -> TestResult {
    let (mut r, seed) = rng();
    let mut s = build_net::<Polar, PolarGated>(&mut r)?;
    check_moves(&mut s, &mut r, &Polar::spec(), seed, "reflections", |r| {
        random_reflection(r)
    })?;
    check_moves(&mut s, &mut r, &Polar::spec(), seed, "rotations", |r| {
        random_rotation(r).into_inner()
    })
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
    let mut s = build_net::<Hidden, Gated>(&mut r)?;
    let c = cloud(&mut r, &Hidden::spec());
    let base = run(&mut s, &c)?;
    let mut perm: Vec<usize> = (0..c.n).collect();
    for i in (1..c.n).rev() {
        perm.swap(i, r.gen_range(0..=i));
    }
    let shuffled = Cloud {
        spec: c.spec.clone(),
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

#[test]
fn typed_layers_stay_finite_on_coincident_points_and_all_masked_nodes() -> TestResult {
    let (mut r, seed) = rng();
    let mut s = build_net::<Hidden, Gated>(&mut r)?;
    let mut c = cloud(&mut r, &Hidden::spec());
    let p = c.coords[0];
    for (i, q) in c.coords.iter_mut().enumerate() {
        // half the points on top of each other, the rest on a second point
        *q = if i % 2 == 0 {
            p
        } else {
            [p[0] + 0.5, p[1], p[2]]
        };
    }
    for all_masked in [false, true] {
        if all_masked {
            c.mask.iter_mut().for_each(|m| *m = 0.0);
        }
        for (name, _, v) in run(&mut s, &c)? {
            assert!(
                v.iter().all(|x| x.is_finite()),
                "seed {seed}: {name} not finite (all masked: {all_masked})"
            );
            if all_masked && (name.starts_with("mean") || name == "max") {
                assert!(
                    v.iter().all(|x| *x == 0.0),
                    "seed {seed}: {name} of no nodes"
                );
            }
        }
    }
    Ok(())
}
