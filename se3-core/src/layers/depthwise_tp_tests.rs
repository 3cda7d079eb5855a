//! Tests of the depthwise tensor product: the node-table form of the radial networks
//! (`ops::table_contract`) against the per-edge weights it replaces.

use rand::rngs::StdRng;
use rand::Rng;

use super::{AlignedEdges, DepthwiseTensorProductLayer, DtpOptions, ZBasis};
use crate::exec::tests::{rand_vec, rel_err, rng};
use crate::exec::{InputKind, Session};
use crate::fiber::{DegreeSpec, FiberSpec};
use crate::layers::graph::{FeatureTensors, ParamSource, X};
use crate::Error;

/// Every weight drawn uniformly from (-0.5, 0.5), norm scales near 1.
struct RandomWeights(StdRng);

impl ParamSource for RandomWeights {
    fn get(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        let len = shape.iter().product();
        let base = if key.ends_with("gamma") { 1.0 } else { 0.0 };
        Ok((0..len)
            .map(|_| base + self.0.gen_range(-0.5f32..0.5))
            .collect())
    }
}

fn fiber(ch: &[usize]) -> Result<FiberSpec, Error> {
    FiberSpec::new(
        ch.iter()
            .enumerate()
            .map(|(l, &c)| DegreeSpec::new(l, c, None))
            .collect(),
    )
}

/// One DTP (degrees 0-1, unpooled with self-interaction as in attention) on random nodes,
/// neighbours, frames and z-basis, built with per-node tables (where cheaper) and with
/// per-edge weights: the outputs agree, and the first graph contracts tables.
#[test]
fn node_tables_match_per_edge_radial_weights() -> Result<(), Error> {
    let mut r = rng();
    let (n, k) = (r.gen_range(4..9), 14);
    let (fin, fout) = (fiber(&[8, 16])?, fiber(&[6, 4])?);
    let opts = DtpOptions {
        pool: false,
        self_interaction: true,
        edge_dim: 0,
        radial_hidden: 8,
    };
    let layer =
        DepthwiseTensorProductLayer::load(&mut RandomWeights(rng()), "dtp.", &fin, &fout, opts)?;
    let zbasis = vec![ZBasis {
        d_in: 1,
        d_out: 1,
        values: rand_vec(&mut r, 9),
    }];
    let e = n * k;
    let src: Vec<f32> = (0..e).map(|_| r.gen_range(0..n) as f32).collect();
    let dst: Vec<f32> = (0..e).map(|i| (i / k) as f32).collect();
    let mask: Vec<f32> = (0..e).map(|_| f32::from(r.gen_bool(0.8))).collect();
    let dist: Vec<f32> = (0..e).map(|_| r.gen_range(0.1f32..3.0)).collect();
    let frame = rand_vec(&mut r, e * 9);
    let x0 = rand_vec(&mut r, n * 8);
    let x1 = rand_vec(&mut r, n * 16 * 3);
    let mut outs = vec![];
    for per_edge in [false, true] {
        let mut s = Session::new();
        let mut edges = AlignedEdges::input(&mut s, "edges", n, k, 1, &zbasis)?;
        if per_edge {
            edges = edges.with_per_edge_radial_weights();
        }
        let mut degrees = vec![];
        for (l, c) in [(0usize, 8usize), (1, 16)] {
            degrees.push(s.input_with_shape::<(X, X, X)>(
                &format!("x.{l}"),
                InputKind::Values,
                &[n.into(), c.into(), (2 * l + 1).into()],
            ));
        }
        let x: FeatureTensors<X> = FeatureTensors::new(fin.clone(), degrees)?;
        let y = layer.build(&mut s, "dtp.", &x, &edges)?;
        for (d, t) in fout.degrees().iter().zip(y.tensors()) {
            s.output(&format!("y.{}", d.l), *t);
        }
        s.compile();
        let uses_tables = s.op_names().iter().any(|o| o.contains("TableContract"));
        assert_eq!(uses_tables, !per_edge, "per-edge form {per_edge}");
        s.set("edges.src", src.clone(), &[e])?;
        s.set("edges.dst", dst.clone(), &[e])?;
        s.set("edges.mask", mask.clone(), &[e])?;
        s.set("edges.mean", mask.clone(), &[e])?;
        s.set("edges.dist", dist.clone(), &[e, 1])?;
        s.set("edges.frame.1", frame.clone(), &[e, 3, 3])?;
        s.set("x.0", x0.clone(), &[n, 8, 1])?;
        s.set("x.1", x1.clone(), &[n, 16, 3])?;
        s.run()?;
        outs.push([s.get("y.0")?, s.get("y.1")?]);
    }
    for (l, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
        assert_eq!(a.shape, b.shape);
        let err = rel_err(&a.data, &b.data);
        assert!(err < 1e-5, "degree {l}: relative error {err}");
    }
    Ok(())
}
