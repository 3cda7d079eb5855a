//! Gradients of the VN-Transformer: the compiled graph with its backward pass
//! (`se3_core::autodiff`), giving `∂L/∂w` for every checkpoint parameter (`param.<key>`) and
//! `∂L/∂coors`, `∂L/∂feats` (`input.<name>`) of `L = Σ_out <out, cotangent.out>`, the loss of
//! `gradients.safetensors` (tests/reference/GRADIENTS.md). Every op of the model has a
//! vector-Jacobian product, the fused attention included (`ops::head_attention::backward`).

use luminal::prelude::{symbolic::Expression, *};
use se3_core::exec::{InputKind, Session};
use se3_core::layers::VnTensor;

use super::{Bound, VnSession, VnTransformer};
use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::ModelInputs;
use crate::Error;

/// The model's named outputs as graph tensors in the reference layout `(b, n, c, w)` (`c` = 1
/// with `reduce_dim_out`, so the data of `(b, n, w)`): `out` without features, else `coors`
/// and `feats` (components `3..3 + F` of `x`).
pub(super) fn named_outputs(x: VnTensor, feat_width: usize) -> Vec<(String, GraphTensor<()>)> {
    let ranges: Vec<(&str, usize, usize)> = if feat_width == 0 {
        vec![("out", 0, 3)]
    } else {
        vec![("coors", 0, 3), ("feats", 3, 3 + feat_width)]
    };
    ranges
        .into_iter()
        .map(|(name, lo, hi)| {
            let mut t = x.no_shape();
            t.shape.permute(&[0, 1, 3, 2]);
            t.shape.slice(&[
                (Expression::from(0), Expression::from(i32::MAX)),
                (Expression::from(0), Expression::from(i32::MAX)),
                (Expression::from(0), Expression::from(i32::MAX)),
                (Expression::from(lo), Expression::from(hi)),
            ]);
            (name.to_string(), t.contiguous())
        })
        .collect()
}

/// Adds, per named output `<out>` of `x` ([`named_outputs`]), the cotangent input `cot.<out>`
/// (its graph shape `(b, n, c, w)`), and the outputs `grad.<weight>`, `grad.input.coors` and,
/// with float features, `grad.input.feats`: the gradients of `L = Σ_out <out, cot.out>`.
pub(super) fn add_gradients(
    s: &mut Session,
    x: VnTensor,
    feat_width: usize,
    coors: GraphTensor<()>,
    feats: Option<GraphTensor<()>>,
) -> Result<(), Error> {
    let mut pairs = Vec::new();
    for (name, out) in named_outputs(x, feat_width) {
        let dims = se3_core::ops::logical_dims_of(&out.shape);
        let cot = s.input_with_shape::<()>(&format!("cot.{name}"), InputKind::Values, &dims);
        pairs.push((out, cot));
    }
    let names: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
    let mut wrt = vec![coors];
    wrt.extend(feats);
    for n in &names {
        wrt.push(s.tensor(n)?);
    }
    let grads = se3_core::autodiff::gradients(&pairs, &wrt)?;
    s.output("grad.input.coors", grads[0]);
    let skip = if feats.is_some() {
        s.output("grad.input.feats", grads[1]);
        2
    } else {
        1
    };
    for (n, g) in names.iter().zip(&grads[skip..]) {
        s.output(&format!("grad.{n}"), *g);
    }
    Ok(())
}

impl VnTransformer {
    /// Compiles the model with its backward pass: [`VnSession::forward_and_gradients`] gives
    /// the outputs and the gradients of one run (graphs are built per kind of features on
    /// first use, as [`VnTransformer::compile`]).
    pub fn compile_with_gradients(self) -> VnSession {
        let mut s = self.compile();
        s.with_gradients = true;
        s
    }
}

/// Sets each `(name, shape, value)` of `overrides` as a weight of `s` (those `s` declares).
pub(super) fn apply_overrides(
    s: &mut Session,
    overrides: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), Error> {
    if overrides.is_empty() {
        return Ok(());
    }
    let declared: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
    for (name, shape, value) in overrides {
        if declared.contains(name) {
            s.set_weight(name, value.clone(), shape)?;
        }
    }
    Ok(())
}

impl VnSession {
    /// Replaces the value of the checkpoint parameter `name` in every compiled graph and in
    /// those compiled later (e.g. after an optimizer step).
    ///
    /// # Errors
    /// `MissingKey` for a key the config does not have, `WrongShape` for a value of another
    /// length.
    pub fn set_parameter(&mut self, name: &str, value: Vec<f32>) -> Result<(), Error> {
        let keys = VnTransformer::expected_keys(&self.model.cfg)?;
        let (_, shape) =
            keys.into_iter()
                .find(|(k, _)| k == name)
                .ok_or_else(|| Error::MissingKey {
                    key: name.to_string(),
                    expected: vec![],
                })?;
        if value.len() != shape.iter().product::<usize>() {
            return Err(Error::WrongShape {
                key: name.to_string(),
                expected: shape,
                found: vec![value.len()],
            });
        }
        let entry = (name.to_string(), shape, value);
        for (_, g) in &mut self.graphs {
            apply_overrides(g, std::slice::from_ref(&entry))?;
        }
        self.overrides.retain(|(k, ..)| k != name);
        self.overrides.push(entry);
        Ok(())
    }

    /// The outputs (as [`VnSession::forward`]) and the gradients of
    /// `L = Σ_out <out, cotangent.out>`: `param.<key>` for every checkpoint key (zeros for a
    /// key the config does not use, e.g. `to_k` tied to `to_q` with L2 attention),
    /// `input.coors` `(b, n, 3)` and, with float features, `input.feats` `(b, n, F)`.
    /// `cotangents` holds `cotangent.<out>` of each output's shape (`gradients.safetensors`).
    /// A session from [`VnTransformer::compile`] recompiles its graphs with gradients.
    ///
    /// # Errors
    /// As [`VnSession::forward`]; `MissingKey` or `WrongShape` for a missing or misshapen cotangent.
    pub fn forward_and_gradients(
        &mut self,
        inp: &ModelInputs,
        cotangents: &StateDict,
    ) -> Result<(StateDict, StateDict), Error> {
        if !self.with_gradients {
            // graphs compiled for the forward alone are rebuilt with their backward pass
            self.with_gradients = true;
            self.graphs.clear();
        }
        let bound = self.bind(inp)?;
        self.set_cotangents(&bound, cotangents)?;
        self.graphs[bound.graph].1.run()?;
        let outputs = self.read_outputs(&bound)?;
        let s = &self.graphs[bound.graph].1;
        let to_f64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let mut grads = StateDict::new();
        let declared: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
        for (key, shape) in VnTransformer::expected_keys(&self.model.cfg)? {
            let data = if declared.contains(&key) {
                to_f64(&s.get(&format!("grad.{key}"))?.data)
            } else {
                vec![0.0; shape.iter().product()]
            };
            grads.insert(format!("param.{key}"), Tensor::new(shape, data)?);
        }
        let (b, n) = (bound.batch, bound.nodes);
        let gc = s.get("grad.input.coors")?;
        grads.insert("input.coors", Tensor::new(vec![b, n, 3], to_f64(&gc.data))?);
        if let super::FeatKind::Dense(f) = bound.kind {
            let gf = s.get("grad.input.feats")?;
            grads.insert("input.feats", Tensor::new(vec![b, n, f], to_f64(&gf.data))?);
        }
        Ok((outputs, grads))
    }

    /// The gradients of [`VnSession::forward_and_gradients`] alone.
    ///
    /// # Errors
    /// As [`VnSession::forward_and_gradients`].
    pub fn gradients(
        &mut self,
        inp: &ModelInputs,
        cotangents: &StateDict,
    ) -> Result<StateDict, Error> {
        Ok(self.forward_and_gradients(inp, cotangents)?.1)
    }

    /// Channels of the graph output `x` (1 with `reduce_dim_out`, else `dim`).
    fn channels_out(&self) -> usize {
        if self.model.cfg.reduce_dim_out {
            1
        } else {
            self.model.cfg.dim
        }
    }

    /// The output names of `bound`'s graph with their widths.
    fn output_widths(bound: &Bound) -> Vec<(&'static str, usize)> {
        match bound.kind {
            super::FeatKind::Absent => vec![("out", 3)],
            _ => vec![("coors", 3), ("feats", bound.feat_width)],
        }
    }

    /// Sets the inputs `cot.<out>` of `bound`'s graph to zeros (a forward run of a graph
    /// with gradients).
    pub(super) fn zero_cotangents(&mut self, bound: &Bound) -> Result<(), Error> {
        let (b, n, c) = (bound.batch, bound.nodes, self.channels_out());
        let s = &mut self.graphs[bound.graph].1;
        for (name, w) in Self::output_widths(bound) {
            s.set(
                &format!("cot.{name}"),
                vec![0.0; b * n * c * w],
                &[b, n, c, w],
            )?;
        }
        Ok(())
    }

    /// Sets the inputs `cot.<out>` of `bound`'s graph from `cotangent.<out>` (`(b, n, [c,] w)`).
    fn set_cotangents(&mut self, bound: &Bound, cotangents: &StateDict) -> Result<(), Error> {
        let (b, n) = (bound.batch, bound.nodes);
        let c = self.channels_out();
        let reduced = self.model.cfg.reduce_dim_out;
        let s = &mut self.graphs[bound.graph].1;
        for (name, w) in Self::output_widths(bound) {
            let expected = if reduced {
                vec![b, n, w]
            } else {
                vec![b, n, c, w]
            };
            let key = format!("cotangent.{name}");
            let t = cotangents.get(&key).ok_or_else(|| Error::MissingKey {
                key: key.clone(),
                expected: expected.clone(),
            })?;
            if t.shape != expected {
                return Err(Error::WrongShape {
                    key,
                    expected,
                    found: t.shape.clone(),
                });
            }
            let data = t.data.iter().map(|&v| v as f32).collect();
            s.set(&format!("cot.{name}"), data, &[b, n, c, w])?;
        }
        Ok(())
    }
}
