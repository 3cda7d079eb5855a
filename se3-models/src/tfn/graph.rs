//! The TFN stack compiled to a luminal graph from se3-core's graph layers
//! ([`se3_core::layers::ConvLayer`] and [`se3_core::layers::NormLayer`]), float32, same
//! semantics and checkpoint keys as the float64 oracle [`super::TfnStack`].
//!
//! The graph takes every batch element's nodes stacked (`b n` rows) and an edge list built on
//! the host: for node `i`, every `j != i` of the same element in ascending order, missing
//! (`-1`) unless both are unmasked; so one compiled graph serves every batch and node count.

use luminal::prelude::*;
use se3_core::exec::{InputKind, Session};
use se3_core::fiber::{DegreeSpec, FiberSpec};
use se3_core::layers::{
    ConvLayer, ConvOptions, EdgeBasis, EdgeGraph, FeatureTensors, NormActivation, NormLayer,
    NormScale, Pool,
};

use super::TfnStackConfig;
use crate::checkpoint::{StateDict, StateDictSource, Tensor};
use crate::differentiable::{Differentiable, Gradients, Objective, ObjectiveGraph, Parameters};
use crate::inputs::ModelInputs;
use crate::Error;

/// The TFN stack as graph layers (float32).
#[derive(Debug, Clone)]
pub struct TfnGraph {
    fibers: Vec<FiberSpec>,
    convs: Vec<ConvLayer>,
    norms: Vec<NormLayer>,
    max_degree: usize,
}

fn spec_of(f: &[(usize, usize)]) -> Result<FiberSpec, Error> {
    Ok(FiberSpec::new(
        f.iter()
            .map(|&(l, c)| DegreeSpec::new(l, c, None))
            .collect(),
    )?)
}

impl TfnGraph {
    /// Builds the layers from a state dict with the keys of [`super::TfnStack`].
    ///
    /// # Errors
    /// `Core(MissingKey | WrongShape | NonFiniteWeight)`, `UnexpectedKey`, config errors.
    pub fn from_state_dict(cfg: &TfnStackConfig, sd: &StateDict) -> Result<Self, Error> {
        let fibers: Vec<FiberSpec> = cfg
            .fiber_dims()?
            .iter()
            .map(|f| spec_of(f))
            .collect::<Result<_, _>>()?;
        let mut src = StateDictSource::new(sd);
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        let opts = ConvOptions {
            edge_dim: 0,
            fourier: None,
            self_interaction: cfg.self_interaction,
            pool: Pool::Mean,
        };
        for i in 0..fibers.len() - 1 {
            convs.push(ConvLayer::load(
                &mut src,
                &format!("convs.{i}."),
                &fibers[i],
                &fibers[i + 1],
                opts,
            )?);
            if i + 2 < fibers.len() {
                norms.push(NormLayer::load(
                    &mut src,
                    &format!("norms.{i}."),
                    &fibers[i + 1],
                    NormScale::PerChannel,
                    NormActivation::Gelu,
                )?);
            }
        }
        src.finish()?;
        let max_degree = fibers
            .iter()
            .flat_map(|f| f.degrees().iter().map(|d| d.l))
            .max()
            .unwrap_or(0);
        Ok(TfnGraph {
            fibers,
            convs,
            norms,
            max_degree,
        })
    }

    /// Compiles the graph: inputs `coords (b n, 3)`, `x.0 (b n, d0, 1)`, `edges.src`,
    /// `edges.dst` (`(E,)`, `E = b n k`), dimension `k` (edges per node); outputs `out.<l>`.
    ///
    /// # Errors
    /// Layer build errors (none for a model built by [`TfnGraph::from_state_dict`]).
    pub fn compile(&self) -> Result<TfnSession, Error> {
        let mut s = Session::new();
        let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
        let mut x = FeatureTensors::input(&mut s, "x", &self.fibers[0]);
        // Host edges are grouped by destination, k = max(n - 1, 1) per node: the pooled
        // convolutions take the reassociated path.
        let edges = EdgeGraph::input(&mut s, "edges", coords).grouped('k');
        let basis = EdgeBasis::new(&mut s, "", &edges, self.max_degree)?;
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.build(&mut s, &format!("convs.{i}."), &x, &edges, &basis)?;
            if let Some(norm) = self.norms.get(i) {
                x = norm.build(&mut s, &format!("norms.{i}."), &x)?;
            }
        }
        x.output(&mut s, "out");
        s.compile();
        Ok(TfnSession {
            s,
            fibers: self.fibers.clone(),
            objective: None,
        })
    }
}

/// A compiled TFN graph, run on [`ModelInputs`].
impl TfnGraph {
    /// The stack compiled with its gradients for the objective `L = Σ_l <out.l, cot.l>`:
    /// besides the outputs `out.<l>`, the gradients `grad.<weight>` and `grad.x.0` with
    /// respect to every weight (PyTorch key names) and the input features
    /// ([`TfnGraph::compile_for`] with [`Objective::Cotangents`]).
    ///
    /// # Errors
    /// As [`TfnGraph::compile_for`].
    pub fn compile_with_gradients(&self) -> Result<TfnSession, Error> {
        self.compile_for(Objective::Cotangents)
    }

    /// The stack compiled with its gradients for `objective` (see [`ObjectiveGraph`]): the
    /// outputs `out.<l>`, `loss`, and `grad.<weight>`, `grad.x.0`. The convolutions take their
    /// default fused path (`ConvPath::Fused`: the fused radial bank and radial edge kernels,
    /// whose backward passes are fused as well).
    ///
    /// # Errors
    /// As [`TfnGraph::compile`], and `NoGradient` if a layer has no backward.
    pub fn compile_for(&self, objective: Objective) -> Result<TfnSession, Error> {
        let mut s = Session::new();
        let coords = s.input::<(Dyn<'n'>, Const<3>)>("coords", InputKind::Coordinates);
        let mut x = FeatureTensors::input(&mut s, "x", &self.fibers[0]);
        let x_in = x.tensors()[0].no_shape();
        let edges = EdgeGraph::input(&mut s, "edges", coords).grouped('k');
        let basis = EdgeBasis::new(&mut s, "", &edges, self.max_degree)?;
        for (i, conv) in self.convs.iter().enumerate() {
            x = conv.build(&mut s, &format!("convs.{i}."), &x, &edges, &basis)?;
            if let Some(norm) = self.norms.get(i) {
                x = norm.build(&mut s, &format!("norms.{i}."), &x)?;
            }
        }
        x.output(&mut s, "out");
        let last = &self.fibers[self.fibers.len() - 1];
        let outputs: Vec<(String, GraphTensor<()>)> = last
            .degrees()
            .iter()
            .zip(x.tensors())
            .map(|(d, t)| (format!("type{}", d.l), t.no_shape()))
            .collect();
        let (objective, pairs) = ObjectiveGraph::attach(&mut s, objective, &outputs);
        let names: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
        let mut wrt = vec![x_in];
        for n in &names {
            wrt.push(s.tensor(n)?);
        }
        let grads = se3_core::autodiff::gradients(&pairs, &wrt)?;
        s.output("grad.x.0", grads[0]);
        for (n, g) in names.iter().zip(&grads[1..]) {
            s.output(&format!("grad.{n}"), *g);
        }
        s.compile();
        Ok(TfnSession {
            s,
            fibers: self.fibers.clone(),
            objective: Some(objective),
        })
    }

    /// The stack compiled with its gradients for `objective`, with its parameters' values from
    /// `checkpoint` kept beside the graph: the [`Differentiable`] form `se3 grad` and
    /// `se3 train` run.
    ///
    /// # Errors
    /// As [`TfnGraph::compile_for`]; `WrongShape` for a checkpoint that disagrees with the
    /// graph.
    pub fn compile_differentiable(
        &self,
        checkpoint: &StateDict,
        objective: Objective,
    ) -> Result<TfnDifferentiable, Error> {
        let session = self.compile_for(objective)?;
        let params = Parameters::from_session(&session.s, checkpoint)?;
        Ok(TfnDifferentiable { session, params })
    }
}

/// The TFN stack compiled with gradients and its trainable parameters.
#[derive(Debug)]
pub struct TfnDifferentiable {
    session: TfnSession,
    params: Parameters,
}

impl TfnDifferentiable {
    /// The compiled session.
    pub fn session(&self) -> &TfnSession {
        &self.session
    }
}

impl Differentiable for TfnDifferentiable {
    fn objective(&self) -> Objective {
        self.session
            .objective
            .as_ref()
            .map_or(Objective::Cotangents, ObjectiveGraph::objective)
    }

    fn parameters(&self) -> &Parameters {
        &self.params
    }

    fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        self.params.set(&mut self.session.s, name, value)
    }

    fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        Ok(self.session.s.set_device(device)?)
    }

    fn gradients(&mut self, inputs: &ModelInputs, given: &StateDict) -> Result<Gradients, Error> {
        let (outputs, grads) = self.session.forward_and_gradients(inputs, given)?;
        let loss = match &self.session.objective {
            Some(o) => o.loss(&self.session.s)?,
            None => 0.0,
        };
        Ok(Gradients {
            outputs,
            loss,
            grads,
        })
    }
}

#[derive(Debug)]
pub struct TfnSession {
    s: Session,
    fibers: Vec<FiberSpec>,
    /// The objective's inputs and loss, for a session compiled with gradients.
    objective: Option<ObjectiveGraph>,
}

impl TfnSession {
    /// The session (to inspect the compiled graph).
    pub fn session(&self) -> &Session {
        &self.s
    }

    /// The session, mutably (e.g. to set updated weights during training).
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.s
    }

    /// Forward pass; outputs `type<l>` of shape `(b, n, c, 2l + 1)`, as [`super::TfnStack`].
    ///
    /// # Errors
    /// Input validation errors; `InputShape` if feats are not `(b, n, d0)` floats.
    /// The gradients of `L = Σ_l <out.l, cotangent.type<l>>` (a session from
    /// [`TfnGraph::compile_with_gradients`]): `param.<key>` for every weight and
    /// `input.feats` (`[b, n, channels]`), as float64 tensors.
    ///
    /// # Errors
    /// As [`TfnSession::forward`]; `MissingKey` if `cotangents` lacks `cotangent.type<l>`.
    pub fn gradients(
        &mut self,
        inp: &ModelInputs,
        cotangents: &StateDict,
    ) -> Result<StateDict, Error> {
        Ok(self.forward_and_gradients(inp, cotangents)?.1)
    }

    /// The outputs (as [`TfnSession::forward`]) and the gradients (as
    /// [`TfnSession::gradients`]) of one run.
    ///
    /// # Errors
    /// As [`TfnSession::gradients`].
    pub fn forward_and_gradients(
        &mut self,
        inp: &ModelInputs,
        cotangents: &StateDict,
    ) -> Result<(StateDict, StateDict), Error> {
        let (b, n) = (inp.batch(), inp.nodes());
        let last = self.fibers[self.fibers.len() - 1].clone();
        let objective = self.objective.as_ref().ok_or(Error::NotCompiled {
            option: "gradients of a TFN session compiled without them",
        })?;
        objective.set_inputs(&mut self.s, cotangents, |name| {
            last.degrees()
                .iter()
                .find(|d| format!("type{}", d.l) == name)
                .map_or(vec![], |d| vec![b * n, d.channels, d.width()])
        })?;
        let outputs = self.forward(inp)?;
        let mut sd = StateDict::new();
        for (name, shape) in self.s.weights() {
            let g = self.s.get(&format!("grad.{name}"))?;
            let shape: Vec<usize> = shape.iter().map(|d| d.unwrap_or(0)).collect();
            sd.insert(
                format!("param.{name}"),
                Tensor::new(shape, g.data.iter().map(|&v| f64::from(v)).collect())?,
            );
        }
        let d0 = self.fibers[0].degrees()[0].channels;
        let gx = self.s.get("grad.x.0")?;
        sd.insert(
            "input.feats".to_string(),
            Tensor::new(
                vec![b, n, d0],
                gx.data.iter().map(|&v| f64::from(v)).collect(),
            )?,
        );
        Ok((outputs, sd))
    }

    pub fn forward(&mut self, inp: &ModelInputs) -> Result<StateDict, Error> {
        inp.validate()?;
        let d0 = self.fibers[0].degrees()[0].channels;
        let (b, n) = (inp.batch(), inp.nodes());
        let feats = inp.dense_feats(d0)?;
        let coords: Vec<f32> = inp.coors.data.iter().map(|&v| v as f32).collect();
        let x: Vec<f32> = feats.data.iter().map(|&v| v as f32).collect();
        let (src, dst) = all_pairs_edges(b, n, |bi, i| inp.node_mask(bi).is_none_or(|m| m[i]));
        self.s.set("coords", coords, &[b * n, 3])?;
        self.s.set("x.0", x, &[b * n, d0, 1])?;
        let e = src.len();
        self.s.set("edges.src", src, &[e])?;
        self.s.set("edges.dst", dst, &[e])?;
        self.s.set_dim('k', n.saturating_sub(1).max(1));
        self.s.run()?;
        let mut sd = StateDict::new();
        let last = &self.fibers[self.fibers.len() - 1];
        for d in last.degrees() {
            let o = self.s.get(&format!("out.{}", d.l))?;
            sd.insert(
                format!("type{}", d.l),
                Tensor::new(
                    vec![b, n, d.channels, d.width()],
                    o.data.iter().map(|&v| f64::from(v)).collect(),
                )?,
            );
        }
        Ok(sd)
    }
}

/// Edges `j -> i` for every `j != i` of the same batch element (ascending `j`), `-1` unless
/// both ends are valid; rows stacked as `bi * n + i`.
pub fn all_pairs_edges(
    b: usize,
    n: usize,
    valid: impl Fn(usize, usize) -> bool,
) -> (Vec<f32>, Vec<f32>) {
    let cap = b * n * n.saturating_sub(1).max(1);
    let (mut src, mut dst) = (Vec::with_capacity(cap), Vec::with_capacity(cap));
    for bi in 0..b {
        for i in 0..n {
            if n == 1 {
                src.push(-1.0);
                dst.push(-1.0);
            }
            for j in (0..n).filter(|&j| j != i) {
                if valid(bi, i) && valid(bi, j) {
                    src.push((bi * n + j) as f32);
                    dst.push((bi * n + i) as f32);
                } else {
                    src.push(-1.0);
                    dst.push(-1.0);
                }
            }
        }
    }
    (src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_file::ModelFile;
    use crate::tfn::TfnStack;

    fn dir() -> String {
        format!(
            "{}/../tests/reference/models/tfn_stack",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        a.data
            .iter()
            .zip(&b.data)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn graph_tfn_matches_the_reference_stack_and_the_oracle() -> Result<(), Error> {
        let file = ModelFile::load(format!("{}/config.json", dir()))?;
        let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
        let sd = StateDict::load(format!("{}/weights.safetensors", dir()))?;
        let inp = ModelInputs::load(
            format!("{}/inputs.safetensors", dir()),
            &file.forward_kwargs.tensors,
        )?;
        let want = StateDict::load(format!("{}/outputs.safetensors", dir()))?;
        let oracle = TfnStack::from_state_dict(&cfg, &sd)?.forward(&inp)?;
        let mut g = TfnGraph::from_state_dict(&cfg, &sd)?.compile()?;
        let got = g.forward(&inp)?;
        for (k, t) in got.iter() {
            let o = oracle.get(k).ok_or(Error::MissingInput {
                name: "oracle output",
            })?;
            let r = want
                .get(&format!("{k}_f64"))
                .or_else(|| want.get(k))
                .ok_or(Error::MissingInput {
                    name: "reference output",
                })?;
            let (eo, er) = (max_rel(t, o), max_rel(t, r));
            println!("tfn_stack {k}: max rel err vs oracle {eo:.2e}, vs reference {er:.2e}");
            assert!(er < 1e-4 && eo < 1e-4, "{k}: {er} / {eo}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod oracle_tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::inputs::{BoolTensor, NodeFeats};
    use crate::tfn::TfnStack;

    /// Random weights for `cfg` (LayerNorm and scales near 1), random points and features.
    fn compare(fibers: serde_json::Value, b: usize, n: usize, masked: bool) -> Result<f64, Error> {
        let seed = se3_core::testing::seed();
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        let cfg = TfnStackConfig::from_kwargs(&serde_json::json!({ "fibers": fibers }))?;
        let sd = StateDict::random_near_one(TfnStack::expected_keys(&cfg)?, &mut r)?;
        let d0 = cfg.fiber_dims()?[0][0].1;
        let inp = ModelInputs {
            feats: NodeFeats::Dense(Tensor::new(
                vec![b, n, d0],
                (0..b * n * d0).map(|_| r.gen_range(-1.0..1.0)).collect(),
            )?),
            coors: Tensor::new(
                vec![b, n, 3],
                (0..b * n * 3).map(|_| r.gen_range(-2.0..2.0)).collect(),
            )?,
            mask: masked.then(|| BoolTensor {
                shape: vec![b, n],
                data: (0..b * n).map(|i| i % 5 != 3).collect(),
            }),
            adj_mat: None,
            edges: None,
            neighbor_mask: None,
            global_feats: None,
        };
        let want = TfnStack::from_state_dict(&cfg, &sd)?.forward(&inp)?;
        let got = TfnGraph::from_state_dict(&cfg, &sd)?
            .compile()?
            .forward(&inp)?;
        let mut worst = 0.0f64;
        for (k, t) in got.iter() {
            let o = want.get(k).ok_or(Error::MissingInput {
                name: "oracle output",
            })?;
            let scale = o.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
            let err = t
                .data
                .iter()
                .zip(&o.data)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
                / scale;
            println!("seed {seed} {k}: max rel err {err:.2e}");
            worst = worst.max(err);
        }
        Ok(worst)
    }

    #[test]
    fn graph_tfn_matches_the_oracle_on_random_stacks_with_masks() -> Result<(), Error> {
        use serde_json::json;
        for (f, b, n) in [
            (json!([{"0": 3}, {"1": 2}]), 1, 5),
            (json!([{"0": 3}, {"0": 2, "2": 2}, {"1": 2}]), 2, 17),
            (
                json!([{"0": 2}, {"0": 3, "1": 2, "3": 1}, {"0": 2, "1": 1}]),
                1,
                14,
            ),
        ] {
            let err = compare(f.clone(), b, n, true)?;
            assert!(err < 1e-4, "{f}: max rel err {err}");
        }
        Ok(())
    }
}
