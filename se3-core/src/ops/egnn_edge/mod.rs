//! The fused edge stage of an EGNN layer (egnn-pytorch 0.2.8's `EGNN`): for every destination
//! node `i` and its `k` edges `i k .. (i + 1) k` with neighbour `j = src[e]` and validity
//! `v_ij`,
//!
//! ```text
//! r_ij = x_i - x_j,  d_ij = |r_ij|^2
//! m_ij = SiLU(W2 SiLU(a_i + b_j + W_phi phi(d_ij) + t_ij) + b2)     a = W1_i h + b1, b = W1_j h
//! m_ij *= sigmoid(w_g . m_ij + b_g)                                  (soft edges)
//! w_ij = clamp(v_ij (w4 . SiLU(W3 m_ij + b3) + b4), -c, c)
//! out_i = [ sum_j v_ij m_ij ,  sum_j w_ij s r_ij / max(|r_ij|, 1e-8) ]   (s r / |r| with norm_coors, else r)
//! ```
//!
//! with `phi(d) = [sin(d / 2^f), cos(d / 2^f) (f < F), d]` and `t_ij` an optional per-edge
//! term of the first layer (edge features). One row `[M + 3]` a node: no per-edge tensor of
//! the whole graph is formed; each node's edges are processed in cache, all pairs as well as
//! `k` nearest neighbours. A neighbour index outside `0..rows` (`-1`) reads zero features
//! and coordinates, as [`gather`](crate::ops::gather()) does.
//!
//! The weights are part of the operator (inference): a change of weights builds a new graph.
//! The unfused graph of [`EgnnLayer`](crate::layers::EgnnLayer) (its `EgnnPath::Unfused`) is
//! the reference it is tested against.
//!
//! Adjoint ([`backward`]): per edge, the chain rule through the two MLPs and the gate,
//! accumulated into `a_i`, `b_j` (a scatter over `src`), `x_i`, `x_j` and the edge term; the
//! weights, part of the operator, get theirs from the unfused layer.

pub(crate) mod backward;
#[cfg(feature = "cuda")]
pub(crate) mod backward_cuda;
mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod device_args;

pub use cpu::{EgnnCoorsWeights, EgnnEdgeKernel};
use luminal::prelude::*;

use super::logical_dims;
use crate::layers::graph::X;

/// The node-side inputs of [`egnn_edge`].
#[derive(Debug, Clone, Copy)]
pub struct EgnnEdgeInputs {
    /// `a = W1_i h + b1`, `(R, H)`.
    pub dst_term: GraphTensor<(X, X)>,
    /// `b = W1_j h`, `(R, H)`.
    pub src_term: GraphTensor<(X, X)>,
    /// Coordinates `(R, 3)`.
    pub coors: GraphTensor<(X, X)>,
    /// Neighbour row of every edge, `(R k,)` (f32 integers).
    pub src: GraphTensor<(X,)>,
    /// Edge validity `(R, K)` (0 or 1).
    pub valid: GraphTensor<(X, X)>,
}

/// The pooled messages and coordinate shifts of every node, `(R, M + 3)` (see the module doc):
/// columns `0..M` are `sum_j v_ij m_ij`, columns `M..M + 3` `sum_j w_ij dir_ij`.
///
/// `edge_term` `(R k, H)` is required exactly when `kernel.edge_term`.
pub fn egnn_edge(
    inputs: EgnnEdgeInputs,
    edge_term: Option<GraphTensor<(X, X)>>,
    kernel: EgnnEdgeKernel,
) -> GraphTensor<(X, X)> {
    let rows = logical_dims(&inputs.coors.shape)[0];
    let width = kernel.m_dim + 3;
    let mut op = inputs
        .coors
        .graph()
        .add_op(kernel)
        .input(inputs.dst_term.id, 0, inputs.dst_term.shape)
        .input(inputs.src_term.id, 0, inputs.src_term.shape)
        .input(inputs.coors.id, 0, inputs.coors.shape)
        .input(inputs.src.id, 0, inputs.src.shape)
        .input(inputs.valid.id, 0, inputs.valid.shape);
    if let Some(t) = edge_term {
        op = op.input(t.id, 0, t.shape);
    }
    let id = op.finish();
    GraphTensor::from_id(
        id,
        ShapeTracker::new(&[rows, width.into()]),
        inputs.coors.graph_ref,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::Rng;

    use crate::exec::tests::rng;
    use crate::exec::{F32Tensor, InputKind, Session};
    use crate::layers::graph::X;
    use crate::layers::{
        EdgeFeature, EgnnLayer, EgnnNeighborhood, EgnnOptions, EgnnPath, MessagePool,
    };
    use crate::Error;

    /// Random egnn-pytorch weights for `o` (values of the size of a trained layer's).
    fn random_weights(o: &EgnnOptions, r: &mut impl Rng) -> HashMap<String, F32Tensor> {
        let (dim, m, e_in) = (o.dim, o.m_dim, o.edge_input_width());
        let mut shapes = vec![
            ("edge_mlp.0.weight", vec![2 * e_in, e_in]),
            ("edge_mlp.0.bias", vec![2 * e_in]),
            ("edge_mlp.3.weight", vec![m, 2 * e_in]),
            ("edge_mlp.3.bias", vec![m]),
            ("edge_gate.0.weight", vec![1, m]),
            ("edge_gate.0.bias", vec![1]),
            ("node_norm.weight", vec![dim]),
            ("node_norm.bias", vec![dim]),
            ("coors_norm.scale", vec![1]),
            ("node_mlp.0.weight", vec![2 * dim, dim + m]),
            ("node_mlp.0.bias", vec![2 * dim]),
            ("node_mlp.3.weight", vec![dim, 2 * dim]),
            ("node_mlp.3.bias", vec![dim]),
            ("coors_mlp.0.weight", vec![4 * m, m]),
            ("coors_mlp.0.bias", vec![4 * m]),
            ("coors_mlp.3.weight", vec![1, 4 * m]),
            ("coors_mlp.3.bias", vec![1]),
        ];
        shapes
            .drain(..)
            .map(|(key, shape)| {
                let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
                let bound = 1.5 / fan_in.sqrt();
                let n = shape.iter().product();
                let data = (0..n).map(|_| r.gen_range(-bound..=bound)).collect();
                (key.to_string(), F32Tensor { shape, data })
            })
            .collect()
    }

    /// The layer on random inputs by `path`: features and coordinates out.
    fn run_layer(
        layer: &EgnnLayer,
        path: EgnnPath,
        data: &HashMap<&str, (Vec<f32>, Vec<usize>)>,
        k: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), Error> {
        let layer = layer.clone().with_path(path);
        let mut s = Session::new();
        let input = |s: &mut Session, name: &str| {
            let shape: Vec<_> = data[name].1.iter().map(|&d| d.into()).collect();
            s.input_with_shape::<(X, X)>(name, InputKind::Values, &shape)
        };
        let feats = input(&mut s, "feats");
        let coors = input(&mut s, "coors");
        let valid = input(&mut s, "valid");
        let edge_dim = layer.options().edge_dim;
        let edge_features = if edge_dim > 0 {
            vec![EdgeFeature::Dense(input(&mut s, "edges"))]
        } else {
            Vec::new()
        };
        let src_len = data["src"].1[0];
        let src = s.input_with_shape::<(X,)>("src", InputKind::Values, &[src_len.into()]);
        let nb = EgnnNeighborhood {
            k,
            src,
            valid,
            edge_features,
        };
        let out = layer.build(&mut s, "layer.", feats, coors, &nb)?;
        s.output("feats_out", out.feats);
        s.output("coors_out", out.coors);
        for (name, (values, shape)) in data {
            if !name.starts_with("cot_") {
                s.set(name, values.clone(), shape)?;
            }
        }
        s.run()?;
        Ok((s.get("feats_out")?.data, s.get("coors_out")?.data))
    }

    /// Gradients of `<feats', c_f> + <coors', c_x>` with respect to `feats`, `coors` and (if
    /// any) `edges`, through the layer by `path`.
    fn layer_gradients(
        layer: &EgnnLayer,
        path: EgnnPath,
        data: &HashMap<&str, (Vec<f32>, Vec<usize>)>,
        k: usize,
    ) -> Result<Vec<Vec<f32>>, Error> {
        let layer = layer.clone().with_path(path);
        let mut s = Session::new();
        let input = |s: &mut Session, name: &str| {
            let shape: Vec<_> = data[name].1.iter().map(|&d| d.into()).collect();
            s.input_with_shape::<(X, X)>(name, InputKind::Values, &shape)
        };
        let feats = input(&mut s, "feats");
        let coors = input(&mut s, "coors");
        let valid = input(&mut s, "valid");
        // cotangents of the outputs the layer computes (not of an input passed through)
        let c_f = layer
            .options()
            .update_feats
            .then(|| input(&mut s, "cot_feats"));
        let c_x = layer
            .options()
            .update_coors
            .then(|| input(&mut s, "cot_coors"));
        let edges = (layer.options().edge_dim > 0).then(|| input(&mut s, "edges"));
        let src_len = data["src"].1[0];
        let src = s.input_with_shape::<(X,)>("src", InputKind::Values, &[src_len.into()]);
        let nb = EgnnNeighborhood {
            k,
            src,
            valid,
            edge_features: edges.map(EdgeFeature::Dense).into_iter().collect(),
        };
        let out = layer.build(&mut s, "layer.", feats, coors, &nb)?;
        let mut wrt = vec![feats.no_shape(), coors.no_shape()];
        wrt.extend(edges.map(|e| e.no_shape()));
        let mut pairs = Vec::new();
        pairs.extend(c_f.map(|c| (out.feats.no_shape(), c.no_shape())));
        pairs.extend(c_x.map(|c| (out.coors.no_shape(), c.no_shape())));
        let gs = crate::autodiff::gradients(&pairs, &wrt)?;
        for (i, g) in gs.iter().enumerate() {
            s.output(&format!("g{i}"), *g);
        }
        let names = s.input_names();
        for (name, (values, shape)) in data {
            if names.iter().any(|n| n == name) {
                s.set(name, values.clone(), shape)?;
            }
        }
        s.run()?;
        (0..gs.len())
            .map(|i| s.get(&format!("g{i}")).map(|o| o.data))
            .collect()
    }

    #[test]
    fn fused_edge_stage_matches_the_unfused_graph() -> Result<(), Error> {
        let mut r = rng();
        for case in 0..6 {
            let o = EgnnOptions {
                dim: r.gen_range(1..12),
                edge_dim: if case % 3 == 2 { r.gen_range(1..4) } else { 0 },
                m_dim: r.gen_range(1..10),
                fourier_features: r.gen_range(0..3),
                norm_feats: r.gen_bool(0.5),
                norm_coors: r.gen_bool(0.5),
                update_feats: case != 1,
                update_coors: case != 4,
                soft_edges: r.gen_bool(0.5),
                m_pool: if r.gen_bool(0.5) {
                    MessagePool::Sum
                } else {
                    MessagePool::Mean
                },
                coor_weights_clamp: r.gen_bool(0.5).then(|| r.gen_range(0.05..2.0)),
            };
            let mut weights = random_weights(&o, &mut r);
            let layer = EgnnLayer::load(&mut weights, "", &o)?;
            let (rows, k) = (r.gen_range(1..30), r.gen_range(1..8));
            let v = |n: usize, a: f32, r: &mut rand::rngs::StdRng| {
                (0..n).map(|_| r.gen_range(-a..a)).collect::<Vec<f32>>()
            };
            // Some edges point nowhere (-1, invalid), the rest at random rows.
            let mut src = Vec::with_capacity(rows * k);
            let mut valid = Vec::with_capacity(rows * k);
            for _ in 0..rows * k {
                let missing = r.gen_bool(0.2);
                src.push(if missing {
                    -1.0
                } else {
                    r.gen_range(0..rows) as f32
                });
                valid.push(if missing || r.gen_bool(0.1) { 0.0 } else { 1.0 });
            }
            let mut data = HashMap::new();
            data.insert("feats", (v(rows * o.dim, 2.0, &mut r), vec![rows, o.dim]));
            data.insert("coors", (v(rows * 3, 3.0, &mut r), vec![rows, 3]));
            data.insert("valid", (valid, vec![rows, k]));
            data.insert("src", (src, vec![rows * k]));
            if o.edge_dim > 0 {
                data.insert(
                    "edges",
                    (
                        v(rows * k * o.edge_dim, 1.0, &mut r),
                        vec![rows * k, o.edge_dim],
                    ),
                );
            }
            data.insert(
                "cot_feats",
                (v(rows * o.dim, 1.0, &mut r), vec![rows, o.dim]),
            );
            data.insert("cot_coors", (v(rows * 3, 1.0, &mut r), vec![rows, 3]));
            let g_fused = layer_gradients(&layer, EgnnPath::Fused, &data, k)?;
            let g_unfused = layer_gradients(&layer, EgnnPath::Unfused, &data, k)?;
            for (which, (f, u)) in g_fused.iter().zip(&g_unfused).enumerate() {
                let scale = u.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                let worst = f
                    .iter()
                    .zip(u)
                    .map(|(a, b)| (a - b).abs() / scale)
                    .fold(0.0f32, f32::max);
                println!("case {case}: gradient {which} fused vs unfused {worst:.2e}");
                assert!(
                    worst < 1e-4,
                    "gradient {which} (feats, coors, edges): fused vs unfused {worst:.3e}, case {case} {o:?}"
                );
            }
            let fused = run_layer(&layer, EgnnPath::Fused, &data, k)?;
            let unfused = run_layer(&layer, EgnnPath::Unfused, &data, k)?;
            for (what, f, u) in [
                ("feats", &fused.0, &unfused.0),
                ("coors", &fused.1, &unfused.1),
            ] {
                assert_eq!(f.len(), u.len(), "{what} sizes, case {case} {o:?}");
                for (a, b) in f.iter().zip(u) {
                    assert!(
                        (a - b).abs() <= 2e-5 * (1.0 + b.abs()),
                        "{what}: fused {a} vs unfused {b}, case {case} {o:?}"
                    );
                }
            }
        }
        Ok(())
    }
}
