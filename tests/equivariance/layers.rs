//! Equivariance of the graph layers (`Conv`, `Norm`, `Linear`, `Gate`, pooling) on random
//! point clouds with masks: rotations and translations of the points (and rotation of the
//! input features), permutations of the nodes; degree-0 outputs invariant. Fresh seed every
//! run (printed; replay with `SE3_SEED`), relative error < `TOL_F32`; E(3) convolutions also
//! under reflections and the inversion.

use luminal::prelude::*;
use nalgebra::Rotation3;
use rand::rngs::StdRng;
use rand::Rng;
use se3_core::exec::{InputKind, Session};
use se3_core::fiber::FiberSpec;
use se3_core::layers::{
    ConvLayer, ConvOptions, EdgeBasis, EdgeGraph, FeatureTensors, GateLayer, LinearLayer,
    NormActivation, NormLayer, NormScale, Pool,
};
use se3_core::ops::{neighbors, NeighborSpec};
use se3_core::so3::wigner_d;
use se3_core::testing::{assert_equivariant, random_rotation, random_vector, rng, TOL_F32};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const K: usize = 8;

/// A small network of every graph layer: Conv (grouped kNN edges, mean pool, default fused
/// radial edge path) -> gated Norm -> Linear -> Gate -> Conv (same edges as a plain edge
/// list, sum pool, no self-interaction) -> pooled node mean/max.
struct Net {
    s: Session,
    fin: FiberSpec,
    fout: FiberSpec,
}

fn build(r: &mut StdRng) -> Result<Net, Box<dyn std::error::Error>> {
    let fin: FiberSpec = "0:3, 1:2".parse()?;
    let hidden: FiberSpec = "0:20, 1:4, 2:3".parse()?;
    let mid: FiberSpec = "0:6, 1:3, 2:2".parse()?;
    let fout: FiberSpec = "0:3, 1:2, 2:1".parse()?;
    let conv1 = ConvLayer::new(&fin, &hidden, ConvOptions::default(), r)?;
    let norm = NormLayer::new(&hidden, NormScale::Gated, NormActivation::Gelu);
    let lin = LinearLayer::new(&hidden, &mid, true, r)?;
    let gate = GateLayer::new(&mid)?;
    let conv2 = ConvLayer::new(
        &gate.fiber_out().clone(),
        &fout,
        ConvOptions {
            self_interaction: false,
            pool: Pool::Sum,
            ..ConvOptions::default()
        },
        r,
    )?;
    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let mask = s.input::<(Dyn<'n'>,)>("mask", InputKind::Mask);
    let x = FeatureTensors::input(&mut s, "x", &fin);
    let nb = neighbors::<_, K>(coords, Some(mask), NeighborSpec::default());
    s.derive_dim('e', luminal::prelude::symbolic::Expression::from('n') * K);
    let grouped = EdgeGraph::from_neighbors(coords, &nb, None);
    let plain = EdgeGraph {
        per_node: None,
        ..grouped
    };
    let basis = EdgeBasis::new(&mut s, "", &grouped, 2)?;
    let h = conv1.build(&mut s, "conv1.", &x, &grouped, &basis)?;
    let h = norm.build(&mut s, "norm.", &h)?;
    let h = lin.build(&mut s, "lin.", &h)?;
    let h = gate.build(&mut s, "gate.", &h)?;
    let y = conv2.build(&mut s, "conv2.", &h, &plain, &basis)?;
    y.output(&mut s, "y");
    let m2 = mask;
    let pooled_mean = se3_core::layers::pool_nodes(&y, Some(m2), se3_core::layers::NodePool::Mean)?;
    let pooled_max = se3_core::layers::pool_nodes(&y, Some(m2), se3_core::layers::NodePool::Max)?;
    s.output("mean0", pooled_mean[0]);
    s.output("mean1", pooled_mean[1]);
    s.output("max0", pooled_max[0]);
    s.compile();
    Ok(Net { s, fin, fout })
}

struct Cloud {
    n: usize,
    coords: Vec<[f64; 3]>,
    mask: Vec<f32>,
    x: Vec<Vec<f64>>,
}

impl Cloud {
    /// The cloud moved by `x -> rot x + t`, its features (of fiber `fin`) rotated by D(rot).
    fn moved(
        &self,
        fin: &FiberSpec,
        rot: &Rotation3<f64>,
        t: nalgebra::Vector3<f64>,
    ) -> Result<Cloud, Box<dyn std::error::Error>> {
        Ok(Cloud {
            n: self.n,
            coords: self
                .coords
                .iter()
                .map(|p| {
                    let q = rot * nalgebra::Vector3::from(*p) + t;
                    [q.x, q.y, q.z]
                })
                .collect(),
            mask: self.mask.clone(),
            x: fin
                .degrees()
                .iter()
                .zip(&self.x)
                .map(|(d, x)| rotate(x, d.l, rot))
                .collect::<Result<_, _>>()?,
        })
    }
}

fn cloud(r: &mut StdRng, fin: &FiberSpec) -> Cloud {
    let n = r.gen_range(10..30);
    let coords = (0..n)
        .map(|_| {
            let v = random_vector(r, 1.5);
            [v.x, v.y, v.z]
        })
        .collect();
    let mask = (0..n)
        .map(|_| f32::from(u8::from(r.gen_bool(0.85))))
        .collect();
    let x = fin
        .degrees()
        .iter()
        .map(|d| (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect())
        .collect();
    Cloud { n, coords, mask, x }
}

fn run(net: &mut Net, c: &Cloud) -> Result<Vec<Vec<f64>>, Box<dyn std::error::Error>> {
    let flat: Vec<f32> = c.coords.iter().flatten().map(|&v| v as f32).collect();
    net.s.set("coords", flat, &[c.n, 3])?;
    net.s.set("mask", c.mask.clone(), &[c.n])?;
    for (d, x) in net.fin.degrees().iter().zip(&c.x) {
        let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        net.s
            .set(&format!("x.{}", d.l), v, &[c.n, d.channels, d.width()])?;
    }
    net.s.run()?;
    let mut out = Vec::new();
    for d in net.fout.degrees() {
        out.push(
            net.s
                .get(&format!("y.{}", d.l))?
                .data
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
        );
    }
    for name in ["mean0", "mean1", "max0"] {
        out.push(
            net.s
                .get(name)?
                .data
                .iter()
                .map(|&v| f64::from(v))
                .collect(),
        );
    }
    Ok(out)
}

fn rotate(
    rows: &[f64],
    l: usize,
    r: &Rotation3<f64>,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    Ok(se3_core::testing::rotate_rows(&wigner_d(l, r)?, rows))
}

#[test]
fn graph_layers_are_equivariant_to_rotations_and_translations_with_masks() -> TestResult {
    let (mut r, seed) = rng();
    let mut net = build(&mut r)?;
    for _ in 0..2 {
        let c = cloud(&mut r, &net.fin);
        let base = run(&mut net, &c)?;
        let rot = random_rotation(&mut r);
        let t = random_vector(&mut r, 3.0);
        let moved = c.moved(&net.fin, &rot, t)?;
        let got = run(&mut net, &moved)?;
        for (i, v) in base.iter().enumerate() {
            let size = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(
                size > 1e-3,
                "seed {seed}: output {i} is trivially small ({size})"
            );
        }
        let degrees: Vec<usize> = net.fout.degrees().iter().map(|d| d.l).collect();
        for (i, l) in degrees.iter().enumerate() {
            let want = rotate(&base[i], *l, &rot)?;
            let err = assert_equivariant(
                &format!("graph net degree {l} (seed {seed})"),
                &got[i],
                &want,
                TOL_F32,
            )?;
            println!("degree {l} (degree 0: invariance): max rel err {err:.2e}");
        }
        // pooled over nodes: degree 0 mean and max invariant, degree 1 mean rotates
        assert_equivariant("mean pool degree 0", &got[3], &base[3], TOL_F32)?;
        assert_equivariant(
            "mean pool degree 1",
            &got[4],
            &rotate(&base[4], 1, &rot)?,
            TOL_F32,
        )?;
        assert_equivariant("max pool degree 0", &got[5], &base[5], TOL_F32)?;
        assert!(
            got.iter().flatten().all(|v| v.is_finite()),
            "seed {seed}: non-finite output"
        );
    }
    Ok(())
}

#[test]
fn graph_layers_are_permutation_equivariant_over_nodes() -> TestResult {
    let (mut r, seed) = rng();
    let mut net = build(&mut r)?;
    let c = cloud(&mut r, &net.fin);
    let base = run(&mut net, &c)?;
    let mut perm: Vec<usize> = (0..c.n).collect();
    for i in (1..c.n).rev() {
        perm.swap(i, r.gen_range(0..=i));
    }
    let permute_rows = |v: &[f64], w: usize| -> Vec<f64> {
        perm.iter()
            .flat_map(|&p| v[p * w..(p + 1) * w].to_vec())
            .collect()
    };
    let moved = Cloud {
        n: c.n,
        coords: perm.iter().map(|&p| c.coords[p]).collect(),
        mask: perm.iter().map(|&p| c.mask[p]).collect(),
        x: net
            .fin
            .degrees()
            .iter()
            .zip(&c.x)
            .map(|(d, x)| permute_rows(x, d.dim()))
            .collect(),
    };
    let got = run(&mut net, &moved)?;
    for (i, d) in net.fout.degrees().iter().enumerate() {
        let want = permute_rows(&base[i], d.dim());
        assert_equivariant(
            &format!("node permutation, degree {} (seed {seed})", d.l),
            &got[i],
            &want,
            TOL_F32,
        )?;
    }
    for i in 3..6 {
        assert_equivariant(
            "pooled outputs under node permutation",
            &got[i],
            &base[i],
            TOL_F32,
        )?;
    }
    Ok(())
}

#[test]
fn attention_block_is_equivariant_with_and_without_self_attention() -> TestResult {
    use se3_core::layers::{AttentionBlockLayer as AttentionBlock, AttentionOptions};
    let (mut r, seed) = rng();
    let fiber: FiberSpec = "0:4, 1:3, 2:2".parse()?;
    for attend_self in [true, false] {
        let opts = AttentionOptions {
            heads: 2,
            dim_head: 3,
            attend_self,
            ..AttentionOptions::default()
        };
        let block = AttentionBlock::new(&fiber, opts, attend_self, &mut r)?;
        let mut s = Session::new();
        let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
        let mask = s.input::<(Dyn<'n'>,)>("mask", InputKind::Mask);
        let x = FeatureTensors::input(&mut s, "x", &fiber);
        let nb = neighbors::<_, K>(coords, Some(mask), NeighborSpec::default());
        s.derive_dim('e', luminal::prelude::symbolic::Expression::from('n') * K);
        let edges = EdgeGraph::from_neighbors(coords, &nb, None);
        let basis = EdgeBasis::new(&mut s, "", &edges, 2)?;
        block
            .build(&mut s, "blk.", &x, &edges, &basis)?
            .output(&mut s, "y");
        s.compile();
        let mut net = Net {
            s,
            fin: fiber.clone(),
            fout: fiber.clone(),
        };
        let c = cloud(&mut r, &net.fin);
        let base = run_y(&mut net, &c)?;
        let rot = random_rotation(&mut r);
        let t = random_vector(&mut r, 3.0);
        let moved = c.moved(&net.fin, &rot, t)?;
        let got = run_y(&mut net, &moved)?;
        // the attention branch must contribute, or the residual alone would pass
        for (i, x) in c.x.iter().enumerate() {
            let change = se3_core::testing::rel_error(&base[i], x);
            assert!(
                change > 1e-3,
                "seed {seed}: attention adds almost nothing ({change})"
            );
        }
        for (i, d) in fiber.degrees().iter().enumerate() {
            let want = rotate(&base[i], d.l, &rot)?;
            let err = assert_equivariant(
                &format!(
                    "attention block (self {attend_self}) degree {} (seed {seed})",
                    d.l
                ),
                &got[i],
                &want,
                TOL_F32,
            )?;
            println!("attention block degree {}: max rel err {err:.2e}", d.l);
        }
    }
    Ok(())
}

fn run_y(net: &mut Net, c: &Cloud) -> Result<Vec<Vec<f64>>, Box<dyn std::error::Error>> {
    let flat: Vec<f32> = c.coords.iter().flatten().map(|&v| v as f32).collect();
    net.s.set("coords", flat, &[c.n, 3])?;
    net.s.set("mask", c.mask.clone(), &[c.n])?;
    for (d, x) in net.fin.degrees().iter().zip(&c.x) {
        let v: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        net.s
            .set(&format!("x.{}", d.l), v, &[c.n, d.channels, d.width()])?;
    }
    net.s.run()?;
    net.fout
        .degrees()
        .iter()
        .map(|d| {
            Ok(net
                .s
                .get(&format!("y.{}", d.l))?
                .data
                .iter()
                .map(|&v| f64::from(v))
                .collect())
        })
        .collect()
}

/// An E(3) convolution whose output changes parity at degrees 1 and 2 (so self-interaction
/// only connects `0e -> 0e`), on grouped kNN edges with a mask, under the default (fused) path
/// and the Gemm path: outputs transform with `D^l(M) det(M)^{p}` for a fresh random rotation,
/// reflection and the inversion, each with a random translation.
#[test]
fn e3_conv_changing_parity_is_equivariant_under_rotations_reflections_and_translations(
) -> TestResult {
    use se3_core::layers::ConvPath;
    use se3_core::so3::{wigner_d_o3, Parity};
    use se3_core::testing::{random_reflection, rotate_rows, transform_points};
    let (mut r, seed) = rng();
    let fin: FiberSpec = "0e:3, 1o:2, 2e:2".parse()?;
    let fout: FiberSpec = "0e:2, 1e:3, 2o:2".parse()?;
    let conv = ConvLayer::new(&fin, &fout, ConvOptions::default(), &mut r)?;
    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let mask = s.input::<(Dyn<'n'>,)>("mask", InputKind::Mask);
    let x = FeatureTensors::input(&mut s, "x", &fin);
    let nb = neighbors::<_, K>(coords, Some(mask), NeighborSpec::default());
    s.derive_dim('e', luminal::prelude::symbolic::Expression::from('n') * K);
    let edges = EdgeGraph::from_neighbors(coords, &nb, None);
    let basis = EdgeBasis::new(&mut s, "", &edges, 2)?;
    conv.build(&mut s, "a.", &x, &edges, &basis)?
        .output(&mut s, "y");
    conv.clone()
        .with_path(ConvPath::Gemm)
        .build(&mut s, "b.", &x, &edges, &basis)?
        .output(&mut s, "g");
    let c = cloud(&mut r, &fin);
    let mut run =
        |pts: &[[f64; 3]], x: &[Vec<f64>]| -> Result<Vec<Vec<f64>>, Box<dyn std::error::Error>> {
            let flat: Vec<f32> = pts.iter().flatten().map(|&v| v as f32).collect();
            s.set("coords", flat, &[c.n, 3])?;
            s.set("mask", c.mask.clone(), &[c.n])?;
            for (d, v) in fin.degrees().iter().zip(x) {
                let v32: Vec<f32> = v.iter().map(|&a| a as f32).collect();
                s.set(&format!("x.{}", d.l), v32, &[c.n, d.channels, d.width()])?;
            }
            s.run()?;
            let mut out = Vec::new();
            for name in ["y", "g"] {
                for d in fout.degrees() {
                    let t = s.get(&format!("{name}.{}", d.l))?;
                    out.push(t.data.iter().map(|&v| f64::from(v)).collect());
                }
            }
            Ok(out)
        };
    let base = run(&c.coords, &c.x)?;
    let nd = fout.degrees().len();
    for (i, v) in base.iter().enumerate() {
        let size = v.iter().fold(0.0f64, |m, a| m.max(a.abs()));
        assert!(size > 1e-3, "seed {seed}: output {i} is trivially small");
    }
    for i in 0..nd {
        assert_equivariant(
            "fused path against Gemm path",
            &base[i],
            &base[nd + i],
            TOL_F32,
        )?;
    }
    let parity = |p: Option<Parity>| p.unwrap_or(Parity::Even);
    for m in [
        random_rotation(&mut r).into_inner(),
        random_reflection(&mut r),
        -nalgebra::Matrix3::identity(),
    ] {
        let t = random_vector(&mut r, 3.0);
        let moved: Vec<[f64; 3]> = transform_points(&m, &c.coords)
            .into_iter()
            .map(|p| [p[0] + t.x, p[1] + t.y, p[2] + t.z])
            .collect();
        let xt = fin
            .degrees()
            .iter()
            .zip(&c.x)
            .map(|(d, v)| Ok(rotate_rows(&wigner_d_o3(d.l, parity(d.parity), &m)?, v)))
            .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
        let got = run(&moved, &xt)?;
        for (k, d) in fout.degrees().iter().cycle().take(2 * nd).enumerate() {
            let want = rotate_rows(&wigner_d_o3(d.l, parity(d.parity), &m)?, &base[k]);
            let err = assert_equivariant(
                &format!(
                    "E(3) conv output {k} (degree {}), det {:+.0}, seed {seed}",
                    d.l,
                    m.determinant()
                ),
                &got[k],
                &want,
                TOL_F32,
            )?;
            println!(
                "det {:+.0} output {k} degree {}: max rel err {err:.2e}",
                m.determinant(),
                d.l
            );
        }
    }
    Ok(())
}
