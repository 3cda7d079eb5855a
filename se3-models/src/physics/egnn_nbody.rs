//! se3's EGNN for the charged N-body benchmark (the EGNN paper's model), trained by
//! reverse-mode gradients and Adam.
//!
//! Every graph is fully connected (each node's `n - 1` edges in ascending `j`). With `|v_i|`
//! and the charge `q_i` as node inputs and `q_i q_j` as edge feature:
//!
//! ```text
//! h_i^0 = W_in [|v_i|, q_i] + b_in,  x_i^0 = x_i
//! (h^{l+1}, x~^{l+1}) = EGNN_l(h^l, x^l, q_i q_j)           (se3_core::layers::EgnnLayer, sums)
//! x_i^{l+1} = x~_i^{l+1} + phi_v^l(h_i^l) v_i,   phi_v(h) = w2 . SiLU(W1 h + b1) + b2
//! prediction: x^L
//! ```
//!
//! so the prediction moves as `R x + t` when the positions do (`v -> R v`), for any orthogonal
//! `R`. The layers take the unfused edge stage: its weights are session weights, updated in
//! place by the optimizer, and it has a backward.

use std::collections::HashMap;

use luminal::prelude::*;
use rand::Rng;
use se3_core::exec::{F32Tensor, IndexBound, InputKind, Session};
use se3_core::layers::activation::saturating_swish;
use se3_core::layers::graph::X;
use se3_core::layers::{
    DenseLinear, EdgeFeature, EgnnLayer, EgnnNeighborhood, EgnnOptions, EgnnPath, MessagePool,
};
use se3_core::train::{Adam, Optimizer, Param};

use super::dataset::Sample;
use super::nbody_model::NBodyModel;
use crate::Error;

/// Size of [`NBodyEgnn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NBodyEgnnConfig {
    /// Hidden width of the features and messages.
    pub hidden: usize,
    /// EGNN layers.
    pub layers: usize,
}

impl Default for NBodyEgnnConfig {
    /// The paper's model: 4 layers, 64 hidden.
    fn default() -> Self {
        NBodyEgnnConfig {
            hidden: 64,
            layers: 4,
        }
    }
}

/// The model's parameters by name (row-major float32 values and shapes).
pub type ParamMap = Vec<(String, Vec<usize>, Vec<f32>)>;

/// se3's EGNN for N-body prediction (see the module doc), with compiled graphs per batch
/// layout and Adam state.
pub struct NBodyEgnn {
    config: NBodyEgnnConfig,
    params: ParamMap,
    /// Forward graphs and gradient graphs, by (graphs, nodes per graph).
    forward: HashMap<(usize, usize), Session>,
    backward: HashMap<(usize, usize), Session>,
    adam: Adam,
}

impl std::fmt::Debug for NBodyEgnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NBodyEgnn")
            .field("config", &self.config)
            .finish()
    }
}

fn options(hidden: usize) -> EgnnOptions {
    EgnnOptions {
        dim: hidden,
        edge_dim: 1,
        m_dim: hidden,
        fourier_features: 0,
        norm_feats: false,
        norm_coors: false,
        update_feats: true,
        update_coors: true,
        soft_edges: false,
        m_pool: MessagePool::Sum,
        coor_weights_clamp: None,
    }
}

/// Inputs of one batch of graphs of `n` nodes: node inputs `[|v|, q]`, positions, velocities,
/// edge features `q_i q_j`, targets (flat, f32).
struct BatchData {
    graphs: usize,
    nodes: usize,
    node_in: Vec<f32>,
    coors: Vec<f32>,
    vel: Vec<f32>,
    edge: Vec<f32>,
    target: Vec<f32>,
}

fn batch_data(samples: &[&Sample]) -> Result<BatchData, Error> {
    let n = samples.first().map_or(0, |s| s.len());
    if n < 2 {
        return Err(Error::InvalidParameter {
            name: "batch",
            expected: "graphs of at least 2 nodes",
            found: format!("{n} nodes"),
        });
    }
    let mut d = BatchData {
        graphs: samples.len(),
        nodes: n,
        node_in: vec![],
        coors: vec![],
        vel: vec![],
        edge: vec![],
        target: vec![],
    };
    for s in samples {
        if s.len() != n || s.velocities.len() != n || s.features.len() != n {
            return Err(Error::InvalidParameter {
                name: "sample",
                expected: "positions, velocities and one charge per node, equal node counts",
                found: format!(
                    "{} positions, {} velocities, {} features",
                    s.len(),
                    s.velocities.len(),
                    s.features.len()
                ),
            });
        }
        for i in 0..n {
            d.node_in.push(s.velocities[i].norm() as f32);
            d.node_in.push(s.features[i] as f32);
            d.coors.extend(s.positions[i].iter().map(|&v| v as f32));
            d.vel.extend(s.velocities[i].iter().map(|&v| v as f32));
            for j in (0..n).filter(|&j| j != i) {
                d.edge.push((s.features[i] * s.features[j]) as f32);
            }
        }
        if s.target_positions.len() == n {
            d.target.extend(
                s.target_positions
                    .iter()
                    .flat_map(|x| x.iter().map(|&v| v as f32)),
            );
        }
    }
    Ok(d)
}

impl NBodyEgnn {
    /// A model with random weights (`U(-1, 1) / sqrt(fan_in)`, the coordinate MLP's last
    /// layer scaled by 1e-3 as in the paper's code, biases 0).
    pub fn new(config: NBodyEgnnConfig, rng: &mut impl Rng) -> Self {
        let h = config.hidden;
        let e_in = options(h).edge_input_width();
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embed.weight".into(), vec![h, 2]),
            ("embed.bias".into(), vec![h]),
        ];
        for l in 0..config.layers {
            let p = |k: &str| format!("layers.{l}.{k}");
            for (k, s) in [
                ("edge_mlp.0.weight", vec![2 * e_in, e_in]),
                ("edge_mlp.0.bias", vec![2 * e_in]),
                ("edge_mlp.3.weight", vec![h, 2 * e_in]),
                ("edge_mlp.3.bias", vec![h]),
                ("node_mlp.0.weight", vec![2 * h, 2 * h]),
                ("node_mlp.0.bias", vec![2 * h]),
                ("node_mlp.3.weight", vec![h, 2 * h]),
                ("node_mlp.3.bias", vec![h]),
                ("coors_mlp.0.weight", vec![4 * h, h]),
                ("coors_mlp.0.bias", vec![4 * h]),
                ("coors_mlp.3.weight", vec![1, 4 * h]),
                ("coors_mlp.3.bias", vec![1]),
                ("vel_mlp.0.weight", vec![h, h]),
                ("vel_mlp.0.bias", vec![h]),
                ("vel_mlp.2.weight", vec![1, h]),
                ("vel_mlp.2.bias", vec![1]),
            ] {
                shapes.push((p(k), s));
            }
        }
        let params = shapes
            .into_iter()
            .map(|(k, shape)| {
                let n: usize = shape.iter().product();
                let data = if k.ends_with("bias") {
                    vec![0.0; n]
                } else {
                    let fan = shape[1].max(1) as f32;
                    let gain = if k.ends_with("coors_mlp.3.weight") {
                        1e-3
                    } else {
                        1.0
                    };
                    (0..n)
                        .map(|_| gain * rng.gen_range(-1.0f32..1.0) / fan.sqrt())
                        .collect()
                };
                (k, shape, data)
            })
            .collect();
        NBodyEgnn {
            config,
            params,
            forward: HashMap::new(),
            backward: HashMap::new(),
            adam: Adam::new(5e-4),
        }
    }

    /// With Adam's learning rate `lr`.
    pub fn with_learning_rate(mut self, lr: f64) -> Self {
        self.adam = Adam::new(lr);
        self
    }

    /// Sets Adam's learning rate for the next steps (e.g. from an
    /// [`LrSchedule`](se3_core::train::LrSchedule)); the moments are kept.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.adam.set_lr(lr);
    }

    /// The parameters.
    pub fn parameters(&self) -> &ParamMap {
        &self.params
    }

    fn build(&self, graphs: usize, n: usize, grad: bool) -> Result<Session, Error> {
        let h = self.config.hidden;
        let k = n - 1;
        let rows = graphs * n;
        let edges = rows * k;
        let mut src_map: HashMap<String, F32Tensor> = self
            .params
            .iter()
            .map(|(k, s, d)| {
                (
                    k.clone(),
                    F32Tensor {
                        shape: s.clone(),
                        data: d.clone(),
                    },
                )
            })
            .collect();
        let mut s = Session::new();
        let node_in =
            s.input_with_shape::<(X, X)>("node_in", InputKind::Values, &[rows.into(), 2.into()]);
        let mut coors =
            s.input_with_shape::<(X, X)>("coors", InputKind::Values, &[rows.into(), 3.into()]);
        let vel = s.input_with_shape::<(X, X)>("vel", InputKind::Values, &[rows.into(), 3.into()]);
        let edge_q =
            s.input_with_shape::<(X, X)>("edge_q", InputKind::Values, &[edges.into(), 1.into()]);
        let src = s.input_with_shape::<(X,)>(
            "src",
            InputKind::Indices {
                bound: IndexBound::Fixed(rows),
                allow_missing: false,
            },
            &[edges.into()],
        );
        let valid =
            s.input_with_shape::<(X, X)>("valid", InputKind::Mask, &[rows.into(), k.into()]);
        let embed = DenseLinear::load(&mut src_map, "embed.", 2, h, true)?;
        let mut feats = embed.build(&mut s, "", node_in)?;
        let opts = options(h);
        for l in 0..self.config.layers {
            let prefix = format!("layers.{l}.");
            let layer = EgnnLayer::load(&mut src_map, &prefix, &opts)?.with_path(EgnnPath::Unfused);
            let v1 = DenseLinear::load(&mut src_map, &format!("{prefix}vel_mlp.0."), h, h, true)?;
            let v2 = DenseLinear::load(&mut src_map, &format!("{prefix}vel_mlp.2."), h, 1, true)?;
            let hidden = saturating_swish(v1.build(&mut s, "", feats)?);
            let scale = v2.build(&mut s, "", hidden)?;
            let nb = EgnnNeighborhood {
                k,
                src,
                valid,
                edge_features: vec![EdgeFeature::Dense(edge_q)],
            };
            let out = layer.build(&mut s, "", feats, coors, &nb)?;
            let scale3: GraphTensor<(X, X)> = GraphTensor::from_id(
                scale.id,
                {
                    let mut st = scale.shape;
                    st.remove_dim(1);
                    st.expand(1, 3.into());
                    st
                },
                scale.graph_ref,
            );
            coors = out.coors + vel * scale3;
            feats = out.feats;
        }
        s.output("pred", coors);
        if grad {
            // L = mean((pred - target)²): the cotangent 2 (pred - target) / len is formed in
            // the graph from the prediction (it is not on a path to the parameters).
            let target =
                s.input_with_shape::<(X, X)>("target", InputKind::Values, &[rows.into(), 3.into()]);
            let c = ((coors - target) * (2.0 / (rows * 3) as f32)).no_shape();
            s.output("sq_err", (coors - target) * (coors - target));
            let names: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
            let mut wrt = Vec::new();
            for n in &names {
                wrt.push(s.tensor(n)?);
            }
            let gs = se3_core::autodiff::gradients(&[(coors.no_shape(), c)], &wrt)?;
            for (n, g) in names.iter().zip(gs) {
                s.output(&format!("grad.{n}"), g);
            }
        }
        s.compile();
        Ok(s)
    }

    fn session(&mut self, graphs: usize, n: usize, grad: bool) -> Result<&mut Session, Error> {
        let key = (graphs, n);
        let have = if grad {
            self.backward.contains_key(&key)
        } else {
            self.forward.contains_key(&key)
        };
        if !have {
            let s = self.build(graphs, n, grad)?;
            if grad {
                self.backward.insert(key, s);
            } else {
                self.forward.insert(key, s);
            }
        }
        let map = if grad {
            &mut self.backward
        } else {
            &mut self.forward
        };
        map.get_mut(&key).ok_or(Error::NotCompiled {
            option: "N-body EGNN graph",
        })
    }

    fn feed(s: &mut Session, d: &BatchData) -> Result<(), Error> {
        let (n, rows) = (d.nodes, d.graphs * d.nodes);
        let k = n - 1;
        let mut src = Vec::with_capacity(rows * k);
        for g in 0..d.graphs {
            for i in 0..n {
                for j in (0..n).filter(|&j| j != i) {
                    src.push((g * n + j) as f32);
                }
            }
        }
        s.set("node_in", d.node_in.clone(), &[rows, 2])?;
        s.set("coors", d.coors.clone(), &[rows, 3])?;
        s.set("vel", d.vel.clone(), &[rows, 3])?;
        s.set("edge_q", d.edge.clone(), &[rows * k, 1])?;
        s.set("src", src, &[rows * k])?;
        s.set("valid", vec![1.0; rows * k], &[rows, k])?;
        Ok(())
    }

    /// Predicted positions of `samples` (all with the same node count), `[graphs n, 3]`.
    ///
    /// # Errors
    /// `InvalidParameter` for samples without velocities or charges or of different sizes;
    /// session errors.
    pub fn predict(&mut self, samples: &[&Sample]) -> Result<Vec<f32>, Error> {
        let d = batch_data(samples)?;
        let s = self.session(d.graphs, d.nodes, false)?;
        Self::feed(s, &d)?;
        s.run()?;
        Ok(s.take("pred")?.data)
    }

    /// One Adam step on the position MSE of `samples`; returns the loss before the step.
    ///
    /// # Errors
    /// As [`NBodyEgnn::predict`], `InvalidParameter` for samples without targets;
    /// `Core(NonFinite...)` from the optimizer for a NaN gradient.
    pub fn train_step(&mut self, samples: &[&Sample]) -> Result<f64, Error> {
        let d = batch_data(samples)?;
        if d.target.len() != d.coors.len() {
            return Err(Error::InvalidParameter {
                name: "sample",
                expected: "target positions",
                found: "none".into(),
            });
        }
        let len = d.target.len() as f64;
        let s = self.session(d.graphs, d.nodes, true)?;
        Self::feed(s, &d)?;
        s.set("target", d.target.clone(), &[d.target.len() / 3, 3])?;
        s.run()?;
        let loss = s
            .get("sq_err")?
            .data
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>()
            / len;
        let mut grads: Vec<Vec<f64>> = self
            .params
            .iter()
            .map(|(_, _, v)| vec![0.0; v.len()])
            .collect();
        let s = self
            .backward
            .get(&(d.graphs, d.nodes))
            .ok_or(Error::NotCompiled {
                option: "N-body EGNN graph",
            })?;
        for (name, _) in s.weights() {
            let g = s.get(&format!("grad.{name}"))?.data;
            crate::egnn::gradients::accumulate_into(&self.params, &mut grads, &name, &g);
        }
        let gs: Vec<Vec<f32>> = grads
            .iter()
            .map(|g| g.iter().map(|&v| v as f32).collect())
            .collect();
        let mut params: Vec<Param<'_>> = self
            .params
            .iter_mut()
            .zip(&gs)
            .map(|((k, _, v), g)| Param {
                name: k,
                value: v,
                grad: g,
            })
            .collect();
        self.adam.step(&mut params)?;
        let params = &self.params;
        for s in self.forward.values_mut().chain(self.backward.values_mut()) {
            crate::egnn::gradients::push_params(s, params)?;
        }
        Ok(loss)
    }
}

impl NBodyModel for NBodyEgnn {
    fn label(&self) -> String {
        format!(
            "se3 EGNN ({} layers, {} hidden)",
            self.config.layers, self.config.hidden
        )
    }

    fn published_test_mse(&self) -> Option<(&'static str, f64)> {
        Some(("EGNN", 0.0071))
    }

    fn reflection_equivariant(&self) -> bool {
        true
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.adam.set_lr(lr);
    }

    fn train_step(&mut self, samples: &[&Sample]) -> Result<f64, Error> {
        NBodyEgnn::train_step(self, samples)
    }

    fn predict_positions(&mut self, samples: &[&Sample]) -> Result<Vec<f64>, Error> {
        Ok(self.predict(samples)?.into_iter().map(f64::from).collect())
    }
}
