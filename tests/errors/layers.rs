//! Bad input to the graph layers: typed errors for wrong fibers, widths, weights and inputs;
//! documented finite results (never NaN) for degenerate graphs: a node without neighbours,
//! all nodes masked, coincident points (zero-length edges).

use std::collections::HashMap;

use luminal::prelude::{symbolic::Expression, *};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3_core::exec::{F32Tensor, InputKind, Session};
use se3_core::fiber::FiberSpec;
use se3_core::layers::{
    pool_nodes, ConvLayer, ConvOptions, EdgeBasis, EdgeGraph, FeatureTensors, GateLayer,
    LinearLayer, LinearLayout, NodePool, NormActivation, NormLayer, NormScale,
};
use se3_core::ops::{neighbors, NeighborSpec};
use se3_core::Error;

type TestResult = Result<(), Error>;

fn spec(s: &str) -> Result<FiberSpec, Error> {
    s.parse()
}

#[test]
fn wrong_fibers_and_widths_are_typed_errors() -> TestResult {
    let mut r = StdRng::seed_from_u64(1);
    let fin = spec("0:2, 1:1")?;
    let conv = ConvLayer::new(&fin, &spec("0:2")?, ConvOptions::default(), &mut r)?;
    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let other = FeatureTensors::input(&mut s, "x", &spec("0:3")?);
    let edges = EdgeGraph::input(&mut s, "edges", coords);
    let basis = EdgeBasis::new(&mut s, "", &edges, 1)?;
    assert!(matches!(
        conv.build(&mut s, "c.", &other, &edges, &basis),
        Err(Error::FiberMismatch { .. })
    ));
    // a basis too small for the fibers
    let x = FeatureTensors::input(&mut s, "y", &fin);
    let small = EdgeBasis::new(&mut s, "s.", &edges, 0)?;
    assert!(matches!(
        conv.build(&mut s, "c.", &x, &edges, &small),
        Err(Error::DegreeTooHigh { .. })
    ));
    // edge features of the wrong width
    let with_edges = ConvLayer::new(
        &fin,
        &fin,
        ConvOptions {
            edge_dim: 4,
            ..ConvOptions::default()
        },
        &mut r,
    )?;
    assert!(matches!(
        with_edges.build(&mut s, "e.", &x, &edges, &basis),
        Err(Error::LengthMismatch { .. })
    ));
    let norm = NormLayer::new(&spec("0:3")?, NormScale::PerChannel, NormActivation::Gelu);
    assert!(matches!(
        norm.build(&mut s, "n.", &x),
        Err(Error::FiberMismatch { .. })
    ));
    assert!(matches!(
        GateLayer::new(&spec("0:1, 1:2")?),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        FeatureTensors::new(fin.clone(), vec![x.tensors()[0]]),
        Err(Error::LengthMismatch { .. })
    ));
    assert!(matches!(
        FeatureTensors::new(fin, vec![x.tensors()[1], x.tensors()[0]]),
        Err(Error::ShapeMismatch { .. })
    ));
    Ok(())
}

#[test]
fn missing_misshapen_and_non_finite_weights_are_typed_errors() -> TestResult {
    let (fin, fout) = (spec("0:2, 1:1")?, spec("0:3, 1:2")?);
    let load = |src: &mut HashMap<String, F32Tensor>| {
        LinearLayer::load(
            src,
            "lin.",
            &fin,
            &fout,
            LinearLayout::Se3TransformerPytorch,
            false,
        )
    };
    let mut src = HashMap::new();
    assert!(matches!(load(&mut src), Err(Error::MissingKey { .. })));
    src.insert(
        "lin.weights.0".into(),
        F32Tensor {
            shape: vec![2, 3],
            data: vec![0.5; 6],
        },
    );
    src.insert(
        "lin.weights.1".into(),
        F32Tensor {
            shape: vec![2, 1],
            data: vec![0.5; 2],
        },
    );
    assert!(matches!(load(&mut src), Err(Error::WrongShape { .. })));
    src.insert(
        "lin.weights.1".into(),
        F32Tensor {
            shape: vec![1, 2],
            data: vec![0.5, f32::NAN],
        },
    );
    assert!(matches!(
        load(&mut src),
        Err(Error::NonFiniteWeight { index: 1, .. })
    ));
    src.insert(
        "lin.weights.1".into(),
        F32Tensor {
            shape: vec![1, 2],
            data: vec![0.5, 0.25],
        },
    );
    assert!(load(&mut src).is_ok());
    Ok(())
}

/// A conv + norm + pooling graph on kNN edges with a mask.
fn degenerate_graph() -> Result<Session, Error> {
    const K: usize = 4;
    let mut r = StdRng::seed_from_u64(2);
    let fin = spec("0:2, 1:1")?;
    let hidden = spec("0:3, 1:2, 2:1")?;
    let conv = ConvLayer::new(&fin, &hidden, ConvOptions::default(), &mut r)?;
    let norm = NormLayer::new(&hidden, NormScale::PerChannel, NormActivation::Gelu);
    let mut s = Session::new();
    let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
    let mask = s.input::<(Dyn<'n'>,)>("mask", InputKind::Mask);
    let x = FeatureTensors::input(&mut s, "x", &fin);
    let nb = neighbors::<_, K>(
        coords,
        Some(mask),
        NeighborSpec {
            radius: Some(1.0),
            exclude_self: true,
        },
    );
    s.derive_dim('e', Expression::from('n') * K);
    let edges = EdgeGraph::from_neighbors(coords, &nb, None);
    let basis = EdgeBasis::new(&mut s, "", &edges, 2)?;
    let y = conv.build(&mut s, "c.", &x, &edges, &basis)?;
    let y = norm.build(&mut s, "n.", &y)?;
    y.output(&mut s, "y");
    let mean = pool_nodes(&y, Some(mask), NodePool::Mean)?;
    let max = pool_nodes(&y, Some(mask), NodePool::Max)?;
    s.output("mean", mean[1]);
    s.output("max", max[0]);
    Ok(s)
}

fn run(s: &mut Session, pts: Vec<f32>, mask: Vec<f32>) -> Result<Vec<Vec<f32>>, Error> {
    let n = mask.len();
    let mut r = StdRng::seed_from_u64(3);
    s.set("coords", pts, &[n, 3])?;
    s.set("mask", mask, &[n])?;
    s.set(
        "x.0",
        (0..n * 2).map(|_| r.gen_range(-1.0..1.0)).collect(),
        &[n, 2, 1],
    )?;
    s.set(
        "x.1",
        (0..n * 3).map(|_| r.gen_range(-1.0..1.0)).collect(),
        &[n, 1, 3],
    )?;
    s.run()?;
    ["y.0", "y.1", "y.2", "mean", "max"]
        .iter()
        .map(|k| s.get(k).map(|o| o.data))
        .collect()
}

#[test]
fn degenerate_graphs_give_finite_documented_results() -> TestResult {
    let mut s = degenerate_graph()?;
    // node 2 has no neighbour within the radius; nodes 0 and 1 coincide (zero-length edge)
    let pts = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, 0.5, 0.0, 0.0];
    let out = run(&mut s, pts.clone(), vec![1.0; 4])?;
    assert!(
        out.iter().flatten().all(|v| v.is_finite()),
        "non-finite output"
    );
    // all nodes masked: no edges, mean and max pools are exactly 0
    let out = run(&mut s, pts, vec![0.0; 4])?;
    assert!(out.iter().flatten().all(|v| v.is_finite()));
    assert!(
        out[3].iter().chain(&out[4]).all(|v| *v == 0.0),
        "pools of an all-masked graph"
    );
    // one node only
    let out = run(&mut s, vec![1.0, 2.0, 3.0], vec![1.0])?;
    assert!(out.iter().flatten().all(|v| v.is_finite()));
    Ok(())
}

#[test]
fn empty_graphs_nan_coordinates_and_mismatched_lengths_are_typed_errors() -> TestResult {
    let mut s = degenerate_graph()?;
    assert!(matches!(
        s.set("coords", vec![], &[0, 3]),
        Err(Error::EmptyInput { .. })
    ));
    assert!(matches!(
        s.set("coords", vec![0.0, f32::NAN, 0.0], &[1, 3]),
        Err(Error::NonFiniteInput { .. })
    ));
    s.set("coords", vec![0.0; 6], &[2, 3])?;
    s.set("mask", vec![1.0; 3], &[3])?;
    s.set("x.0", vec![0.0; 4], &[2, 2, 1])?;
    s.set("x.1", vec![0.0; 6], &[2, 1, 3])?;
    assert!(matches!(s.run(), Err(Error::AxisMismatch { .. })));
    Ok(())
}
