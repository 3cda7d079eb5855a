//! Gradients of [`ConvLayer`] through its fused paths: the fused and grouped paths against the
//! unfused GEMM path (the same derivative), and the coordinates' gradient through the in-graph
//! kernel basis of a convolution stack against finite differences.

use luminal::prelude::{symbolic::Expression, *};
use rand::{rngs::StdRng, Rng};

use super::check::{check_gradients, worst_by_name, Built, Input, NamedGradients};
use super::{gradients, Tensor};
use crate::exec::{InputKind, Session};
use crate::fiber::FiberSpec;
use crate::layers::{ConvLayer, ConvOptions, ConvPath, EdgeBasis, EdgeGraph, FeatureTensors, Pool};
use crate::ops::{neighbors, NeighborSpec};
use crate::testing::rng;
use crate::Error;

type N = Dyn<'n'>;

/// `n` points on a jittered grid (pairwise distances at least ~0.9), flattened `[n, 3]`.
pub(super) fn separated_points(r: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|i| {
            let base = [
                (i % 3) as f32 * 1.5,
                (i / 3 % 3) as f32 * 1.5,
                (i / 9) as f32 * 1.5,
            ];
            base.map(|b| b + r.gen_range(-0.3f32..0.3))
        })
        .collect()
}

/// Coordinates, mask, features of `fin`, the `K`-neighbour edges (grouped by node, or not)
/// and the kernel basis up to degree 2.
pub(super) fn cloud<const K: usize>(
    s: &mut Session,
    fin: &FiberSpec,
    grouped: bool,
) -> Result<(Tensor, FeatureTensors<N>, EdgeGraph, EdgeBasis), Error> {
    let coords = s.input::<(N, Const<3>)>("coords", InputKind::Coordinates);
    let mask = s.input::<(N,)>("mask", InputKind::Mask);
    let x = FeatureTensors::input(s, "x", fin);
    let nb = neighbors::<_, K>(coords, Some(mask), NeighborSpec::default());
    s.derive_dim('e', Expression::from('n') * K);
    let mut edges = EdgeGraph::from_neighbors(coords, &nb, None);
    if !grouped {
        edges.per_node = None;
    }
    let basis = EdgeBasis::new(s, "", &edges, 2)?;
    Ok((coords.no_shape(), x, edges, basis))
}

pub(super) fn set_cloud(
    s: &mut Session,
    r: &mut StdRng,
    fin: &FiberSpec,
    n: usize,
    mask: &[f32],
) -> Result<(), Error> {
    s.set("coords", separated_points(r, n), &[n, 3])?;
    s.set("mask", mask.to_vec(), &[n])?;
    for d in fin.degrees() {
        let v = (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect();
        s.set(&format!("x.{}", d.l), v, &[n, d.channels, d.width()])?;
    }
    Ok(())
}

/// Every path's gradients (coordinates, input features, and the weights the paths share)
/// against the GEMM path's, on a cloud with masked nodes and nodes with fewer than `K` valid
/// neighbours (missing edges).
#[test]
fn fused_and_grouped_conv_gradients_match_the_unfused_gemm_path() -> Result<(), Error> {
    const K: usize = 5;
    let (mut r, seed) = rng();
    let fin: FiberSpec = "0:3, 1:2, 2:1".parse()?;
    let fout: FiberSpec = "0:9, 1:2, 2:1".parse()?;
    let pool = if r.gen_bool(0.5) {
        Pool::Mean
    } else {
        Pool::Sum
    };
    let opts = ConvOptions {
        pool,
        ..ConvOptions::default()
    };
    let conv = ConvLayer::new(&fin, &fout, opts, &mut r)?;
    let paths = [
        ConvPath::Gemm,
        ConvPath::Fused,
        ConvPath::Contracted,
        ConvPath::Grouped,
        ConvPath::EdgeConv,
    ];
    let n = r.gen_range(6..12);
    let mask: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i % 4 != 1))).collect();
    let mut results: Vec<NamedGradients> = Vec::new();
    for path in paths {
        let mut s = Session::new();
        let (coords, x, edges, basis) = cloud::<K>(&mut s, &fin, true)?;
        let y = conv
            .clone()
            .with_path(path)
            .build(&mut s, "c.", &x, &edges, &basis)?;
        let mut pairs = Vec::new();
        for (d, t) in fout.degrees().iter().zip(y.tensors()) {
            let shape: Vec<Expression> = vec!['n'.into(), d.channels.into(), d.width().into()];
            let c = s.input_with_shape::<()>(&format!("cot.{}", d.l), InputKind::Values, &shape);
            pairs.push((t.no_shape(), c));
        }
        let mut names = vec!["coords".to_string()];
        let mut wrt = vec![coords];
        for (d, t) in fin.degrees().iter().zip(x.tensors()) {
            names.push(format!("x.{}", d.l));
            wrt.push(t.no_shape());
        }
        // the radial networks' hidden layers are shared by every path's keys; the last layer
        // too, except for the grouped path (which repacks it)
        for (name, _) in s.weights() {
            if name.contains(".rp.net.") && (path != ConvPath::Grouped || !name.contains("net.6")) {
                wrt.push(s.tensor(&name)?);
                names.push(name);
            }
        }
        let grads = gradients(&pairs, &wrt)?;
        for (name, g) in names.iter().zip(&grads) {
            s.output(&format!("grad.{name}"), *g);
        }
        // the same random draw for every path
        let mut draw = <StdRng as rand::SeedableRng>::seed_from_u64(seed);
        set_cloud(&mut s, &mut draw, &fin, n, &mask)?;
        for d in fout.degrees() {
            let v = (0..n * d.dim())
                .map(|_| draw.gen_range(-1.0..1.0))
                .collect();
            s.set(&format!("cot.{}", d.l), v, &[n, d.channels, d.width()])?;
        }
        s.run()?;
        results.push(read_gradients(&s, names)?);
    }
    let reference = &results[0];
    assert!(
        reference
            .iter()
            .any(|(n, g)| n == "coords" && g.iter().any(|v| v.abs() > 1e-6)),
        "seed {seed}: zero coordinate gradient"
    );
    for (path, got) in paths.iter().zip(&results).skip(1) {
        let worst = worst_by_name(reference, got).unwrap_or_else(|name| {
            panic!("seed {seed}: {path:?} has gradient {name} the GEMM path lacks")
        });
        println!(
            "{path:?} vs Gemm ({} gradients, {pool:?}): worst relative error {:.2e} ({})",
            got.len(),
            worst.0,
            worst.1
        );
        assert!(
            worst.0 < 1e-4,
            "seed {seed}: {path:?} gradient of {} off by {:.3e}",
            worst.1,
            worst.0
        );
    }
    Ok(())
}

/// d(outputs)/d(coordinates) of a two-layer convolution stack (default fused path) through
/// relative positions, distances, the in-graph spherical harmonics and kernel basis and the
/// radial networks, against central finite differences; all neighbours of every node are
/// edges, so a small move of a point changes no edge.
#[test]
fn conv_stack_coordinate_gradient_through_the_kernel_basis_matches_finite_differences(
) -> Result<(), Error> {
    const K: usize = 5;
    let (mut r, seed) = rng();
    let f0: FiberSpec = "0:2, 1:1".parse()?;
    let f1: FiberSpec = "0:3, 1:2, 2:1".parse()?;
    let f2: FiberSpec = "0:1, 1:1".parse()?;
    let c1 = ConvLayer::new(&f0, &f1, ConvOptions::default(), &mut r)?;
    let c2 = ConvLayer::new(&f1, &f2, ConvOptions::default(), &mut r)?;
    let n = K + 1;
    let mut inputs: Vec<Input> = vec![
        ("coords", separated_points(&mut r, n), vec![n, 3]),
        ("mask", vec![1.0; n], vec![n]),
    ];
    for (name, d) in ["x.0", "x.1"].into_iter().zip(f0.degrees()) {
        let v = (0..n * d.dim()).map(|_| r.gen_range(-1.0..1.0)).collect();
        inputs.push((name, v, vec![n, d.channels, d.width()]));
    }
    let build = |s: &mut Session| -> Built {
        let built = (|| -> Result<Built, Error> {
            let (coords, x, edges, basis) = cloud::<K>(s, &f0, false)?;
            let y = c1.build(s, "c1.", &x, &edges, &basis)?;
            let y = c2.build(s, "c2.", &y, &edges, &basis)?;
            let outs = y.tensors().iter().map(|t| t.no_shape()).collect();
            let xs = x.tensors();
            Ok((
                vec![
                    ("coords", coords),
                    ("x.0", xs[0].no_shape()),
                    ("x.1", xs[1].no_shape()),
                ],
                outs,
            ))
        })();
        built.unwrap_or_else(|e| panic!("seed {seed}: the conv stack does not build: {e}"))
    };
    let worst = check_gradients(build, &inputs, 1e-2, 18, &mut r)?;
    for w in &worst {
        println!("conv stack: d/d{} worst error {:.2e}", w.name, w.error);
    }
    for w in &worst {
        assert!(
            w.error < 2e-3,
            "seed {seed}: gradient of `{}` off by {:.3e}",
            w.name,
            w.error
        );
    }
    Ok(())
}

/// The graph outputs `grad.<name>` of a run, by name, in f64.
pub(super) fn read_gradients(s: &Session, names: Vec<String>) -> Result<NamedGradients, Error> {
    let mut got = Vec::with_capacity(names.len());
    for name in names {
        let g = s.get(&format!("grad.{name}"))?;
        got.push((name, g.data.iter().map(|&v| f64::from(v)).collect()));
    }
    Ok(got)
}
