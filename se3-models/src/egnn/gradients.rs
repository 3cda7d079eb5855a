//! Gradients of egnn-pytorch models: `∂L/∂w` for `L = <feats', cotangent.feats> +
//! <coors', cotangent.coors>` with respect to every parameter (`param.<key>`, egnn-pytorch's
//! state-dict names) and the float inputs (`input.feats`, `input.coors`, `input.edges`).
//!
//! Each layer graph is compiled a second time with its backward ([`se3_core::autodiff`]) on
//! the unfused edge stage (its weights are session weights). The forward pass records every
//! layer's inputs and neighbourhoods; the backward pass runs the layer graphs in reverse,
//! feeding each the cotangents its successor returned (`cot.feats`, `cot.coors`, `cot.tokens`
//! of the global tokens), and sums what the layers send to shared tensors (embedding tables,
//! edge features, the global tokens repeated over the batch). The neighbour selection is
//! piecewise constant in the coordinates (indices carry no gradient, as in PyTorch).
//!
//! A layer splits a weight into column blocks (`edge_mlp.0.weight[0..16]`, see
//! [`se3_core::layers::DenseLinear::columns`]): a block's gradient lands in its columns of the
//! parameter, and setting a parameter sets every block of it.

use luminal::prelude::*;
use se3_core::exec::{InputKind, Session};
use se3_core::layers::graph::X;

use super::{CompiledEgnn, Egnn, EgnnPath, LayerTape};
use crate::checkpoint::{StateDict, Tensor};
use crate::inputs::ModelInputs;
use crate::Error;

/// Adds cotangent inputs `cot.<out>` for `outputs` and gradient outputs `grad.<input>` for
/// `inputs` and `grad.<weight>` for every session weight, then nothing else (compile after).
///
/// # Errors
/// Those of [`se3_core::autodiff::gradients`] (`NoGradient` for an operator without backward).
pub(super) fn add_gradients(
    s: &mut Session,
    outputs: &[(&str, GraphTensor<(X, X)>)],
    inputs: &[(&str, GraphTensor<()>)],
) -> Result<(), Error> {
    let mut pairs = Vec::with_capacity(outputs.len());
    for (name, o) in outputs {
        let dims = se3_core::ops::logical_dims_of(&o.shape);
        let c = s.input_with_shape::<()>(&format!("cot.{name}"), InputKind::Values, &dims);
        pairs.push((o.no_shape(), c));
    }
    let weights: Vec<String> = s.weights().into_iter().map(|(n, _)| n).collect();
    let mut wrt: Vec<GraphTensor<()>> = inputs.iter().map(|(_, t)| *t).collect();
    for w in &weights {
        wrt.push(s.tensor(w)?);
    }
    let grads = se3_core::autodiff::gradients(&pairs, &wrt)?;
    let names = inputs
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(weights.iter().cloned());
    for (name, g) in names.zip(grads) {
        s.output(&format!("grad.{name}"), g);
    }
    Ok(())
}

/// Which part of a parameter a session weight is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    /// All of it.
    Whole,
    /// Columns `a..b` (`key[a..b]`, [`se3_core::layers::DenseLinear::columns`]).
    Columns(usize, usize),
    /// Rows from `a` on, as many as the weight has (`key[a..]`, the keys and values of a
    /// joint `to_kv` projection).
    Rows(usize),
}

/// The parameter key and block of session weight `name`.
fn weight_source(name: &str) -> (&str, Block) {
    let parsed = name.strip_suffix(']').and_then(|rest| {
        let (key, range) = rest.rsplit_once('[')?;
        let (a, b) = range.split_once("..")?;
        let a = a.parse().ok()?;
        Some(match b {
            "" => (key, Block::Rows(a)),
            b => (key, Block::Columns(a, b.parse().ok()?)),
        })
    });
    parsed.unwrap_or((name, Block::Whole))
}

/// Parameters by key: shape and values.
pub(crate) type Params = [(String, Vec<usize>, Vec<f32>)];

/// The element indices (row-major in the parameter) of a block of `len` elements.
fn block_indices(shape: &[usize], block: Block, len: usize) -> Option<Vec<usize>> {
    let cols = shape.get(1).copied().unwrap_or(1).max(1);
    let total: usize = shape.iter().product();
    let idx: Vec<usize> = match block {
        Block::Whole => (0..len).collect(),
        Block::Columns(a, b) if a <= b && b <= cols => (0..total / cols)
            .flat_map(|r| (a..b).map(move |c| r * cols + c))
            .collect(),
        Block::Rows(a) => (a * cols..a * cols + len).collect(),
        Block::Columns(..) => return None,
    };
    (idx.len() == len && idx.iter().all(|&i| i < total)).then_some(idx)
}

/// The values of session weight `name` (`len` elements) from `params`, or `None` if it is no
/// parameter's (a constant table).
fn weight_values(params: &Params, name: &str, len: usize) -> Option<Vec<f32>> {
    let (key, block) = weight_source(name);
    let (_, shape, data) = params.iter().find(|(k, ..)| k == key)?;
    let idx = block_indices(shape, block, len)?;
    Some(idx.iter().map(|&i| data[i]).collect())
}

/// Sets every weight of `s` that comes from a parameter to the parameter's current values.
pub(crate) fn push_params(s: &mut Session, params: &Params) -> Result<(), Error> {
    for (name, shape) in s.weights() {
        let shape: Vec<usize> = shape.iter().map(|d| d.unwrap_or(0)).collect();
        if let Some(v) = weight_values(params, &name, shape.iter().product()) {
            s.set_weight(&name, v, &shape)?;
        }
    }
    Ok(())
}

/// Adds the gradient `g` of session weight `name` into the gradients `acc` of the parameters.
fn accumulate_weight(acc: &mut [(String, Vec<usize>, Vec<f64>)], name: &str, g: &[f32]) {
    let (key, block) = weight_source(name);
    let Some((_, shape, total)) = acc.iter_mut().find(|(k, ..)| k == key) else {
        return;
    };
    if let Some(idx) = block_indices(shape, block, g.len()) {
        for (i, v) in idx.into_iter().zip(g) {
            total[i] += f64::from(*v);
        }
    }
}

/// Adds the gradient `g` of session weight `name` into `grads`, the gradients of `params`
/// (same order).
pub(crate) fn accumulate_into(params: &Params, grads: &mut [Vec<f64>], name: &str, g: &[f32]) {
    let (key, block) = weight_source(name);
    let Some(p) = params.iter().position(|(k, ..)| k == key) else {
        return;
    };
    if let Some(idx) = block_indices(&params[p].1, block, g.len()) {
        for (i, v) in idx.into_iter().zip(g) {
            grads[p][i] += f64::from(*v);
        }
    }
}

fn to_f32(t: &Tensor) -> Vec<f32> {
    t.data.iter().map(|&v| v as f32).collect()
}

impl CompiledEgnn {
    /// Computes the edge stages by `path` from now on (the layer graphs are rebuilt).
    /// [`EgnnPath::Unfused`] keeps the weights as session weights, so that
    /// [`CompiledEgnn::set_parameter`] needs no recompilation (training).
    pub fn set_path(&mut self, path: EgnnPath) {
        if path != self.path {
            self.path = path;
            self.layers.clear();
        }
    }

    /// Every parameter: state-dict key, shape and float32 values, in checkpoint order.
    pub fn parameters(&self) -> &[(String, Vec<usize>, Vec<f32>)] {
        &self.model.params
    }

    /// Sets parameter `key` to `values` (row-major, its shape) for the next runs.
    ///
    /// # Errors
    /// `MissingKey` if the model has no parameter `key`; `WrongShape` if `values` does not
    /// fill its shape; `Core(NonFiniteWeight)` for NaN or infinite values.
    pub fn set_parameter(&mut self, key: &str, values: &[f32]) -> Result<(), Error> {
        let (_, shape, data) = self
            .model
            .params
            .iter_mut()
            .find(|(k, ..)| k == key)
            .ok_or_else(|| Error::MissingKey {
                key: key.to_string(),
                expected: vec![],
            })?;
        if values.len() != data.len() {
            return Err(Error::WrongShape {
                key: key.to_string(),
                expected: shape.clone(),
                found: vec![values.len()],
            });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(se3_core::Error::NonFiniteWeight {
                key: key.to_string(),
                index,
                value: values[index],
            }
            .into());
        }
        data.copy_from_slice(values);
        self.stale = true;
        Ok(())
    }

    /// Brings the model and the compiled graphs up to the parameters set since the last run.
    pub(super) fn refresh(&mut self) -> Result<(), Error> {
        if !self.stale {
            return Ok(());
        }
        let mut sd = StateDict::new();
        for (k, shape, data) in &self.model.params {
            sd.insert(
                k.clone(),
                Tensor::new(shape.clone(), data.iter().map(|&v| f64::from(v)).collect())?,
            );
        }
        self.model = Egnn::load(self.model.kind.clone(), &sd)?;
        if self.path == EgnnPath::Fused {
            // the fused edge stage carries its weights: rebuild on next use
            self.layers.clear();
        }
        let params = &self.model.params;
        let sessions = self
            .embed
            .values_mut()
            .chain(self.layers.values_mut().flatten())
            .chain(self.grad_layers.values_mut().flatten());
        for s in sessions {
            push_params(s, params)?;
        }
        self.stale = false;
        Ok(())
    }

    /// The outputs (as [`CompiledEgnn::forward`]) and the gradients of
    /// `L = Σ_out <out, cotangent.out>` (`cotangents` holds `cotangent.feats` (b, n, dim)
    /// and/or `cotangent.coors` (b, n, 3); a missing one is zero): `param.<key>` for every
    /// parameter, `input.coors`, and `input.feats` / `input.edges` when they are floats.
    ///
    /// # Errors
    /// As [`CompiledEgnn::forward`]; `InputShape` for a cotangent of the wrong shape.
    pub fn forward_and_gradients(
        &mut self,
        inputs: &ModelInputs,
        cotangents: &StateDict,
    ) -> Result<(StateDict, StateDict), Error> {
        self.forward_and_gradients_with(inputs, |_| Ok(cotangents.clone()))
    }

    /// As [`CompiledEgnn::forward_and_gradients`], with the cotangents computed from the
    /// outputs by `cotangents_of` between the forward and the backward sweep (e.g. those of a
    /// loss of the outputs).
    ///
    /// # Errors
    /// As [`CompiledEgnn::forward_and_gradients`], and those of `cotangents_of`.
    pub fn forward_and_gradients_with(
        &mut self,
        inputs: &ModelInputs,
        cotangents_of: impl FnOnce(&StateDict) -> Result<StateDict, Error>,
    ) -> Result<(StateDict, StateDict), Error> {
        self.refresh()?;
        let p = self.prepare(inputs)?;
        let (b, n) = (p.batch, p.nodes);
        let dim = self.model.layer_config().dim;
        let mut tape = Vec::new();
        let outputs = self.run(&p, Some(&mut tape))?;
        let cotangents = &cotangents_of(&outputs)?;
        let cot = |name: &'static str, width: usize| -> Result<Vec<f32>, Error> {
            match cotangents.get(&format!("cotangent.{name}")) {
                Some(t) if t.shape == [b, n, width] => Ok(to_f32(t)),
                Some(t) => Err(Error::InputShape {
                    name,
                    expected: format!("cotangent ({b}, {n}, {width})"),
                    found: t.shape.clone(),
                }),
                None => Ok(vec![0.0; b * n * width]),
            }
        };
        let mut cf = cot("feats", dim)?;
        let mut cc = cot("coors", 3)?;
        let tokens = self.model.global_tokens.as_ref().map(|t| t.shape[0]);
        let mut ct = tokens.map(|g| vec![0.0f32; b * g * dim]);
        let mut acc: Vec<(String, Vec<usize>, Vec<f64>)> = self
            .model
            .params
            .iter()
            .map(|(k, shape, d)| (k.clone(), shape.clone(), vec![0.0; d.len()]))
            .collect();
        let mut edges_grad = p.dense_edges.as_ref().map(|(d, _)| vec![0.0f64; d.len()]);
        for (li, t) in tape.iter().enumerate().rev() {
            if !self.grad_layers.contains_key(&t.layout) {
                let mut built = self.build_layers(&t.layout, true)?;
                for s in &mut built {
                    push_params(s, &self.model.params)?;
                }
                self.grad_layers.insert(t.layout, built);
            }
            let sessions = self
                .grad_layers
                .get_mut(&t.layout)
                .ok_or(Error::NotCompiled {
                    option: "EGNN gradient graph",
                })?;
            let s = &mut sessions[li];
            let LayerTape {
                selection,
                feats,
                coors,
                tokens: tokens_in,
                ..
            } = t;
            super::feed_layer(s, &p, selection, feats, coors, dim)?;
            let rows = b * n;
            s.set("cot.feats", cf.clone(), &[rows, dim])?;
            s.set("cot.coors", cc.clone(), &[rows, 3])?;
            if let (Some(tk), Some(c)) = (tokens_in, &ct) {
                s.set("tokens", tk.clone(), &[tk.len() / dim, dim])?;
                s.set("cot.tokens", c.clone(), &[c.len() / dim, dim])?;
                if let Some(m) = &p.mask {
                    s.set(
                        "node_mask",
                        m.iter().map(|&v| f32::from(u8::from(v))).collect(),
                        &[b, n],
                    )?;
                }
            }
            s.run()?;
            cf = s.get("grad.feats")?.data;
            cc = s.get("grad.coors")?.data;
            if tokens_in.is_some() {
                ct = Some(s.get("grad.tokens")?.data);
            }
            if let (Some(eg), Some((_, w))) = (&mut edges_grad, &p.dense_edges) {
                let g = s.get("grad.edges")?.data;
                for (q, &(bi, i, j)) in selection.pairs.iter().enumerate() {
                    let at = ((bi * n + i) * n + j) * w;
                    for c in 0..*w {
                        eg[at + c] += f64::from(g[q * w + c]);
                    }
                }
            }
            for (name, _) in s.weights() {
                let g = s.get(&format!("grad.{name}"))?.data;
                accumulate_weight(&mut acc, &name, &g);
            }
        }
        let mut grads = StateDict::new();
        // The embeddings: rows of the tables picked by token ids and positions.
        let mut add_rows = |key: &str, ids: &mut dyn Iterator<Item = usize>| {
            if let Some((_, _, total)) = acc.iter_mut().find(|(k, ..)| k == key) {
                for (r, id) in ids.enumerate() {
                    for c in 0..dim {
                        total[id * dim + c] += f64::from(cf[r * dim + c]);
                    }
                }
            }
        };
        if self.model.pos_emb.is_some() {
            add_rows("pos_emb.weight", &mut (0..b).flat_map(|_| 0..n));
        }
        match &p.feats {
            Err(ids) => add_rows("token_emb.weight", &mut ids.iter().map(|&v| v as usize)),
            Ok(_) => {
                grads.insert(
                    "input.feats",
                    Tensor::new(vec![b, n, dim], cf.iter().map(|&v| f64::from(v)).collect())?,
                );
            }
        }
        if let (Some(c), Some(g)) = (&ct, tokens) {
            if let Some((_, _, total)) = acc.iter_mut().find(|(k, ..)| k == "global_tokens") {
                for chunk in c.chunks_exact(g * dim) {
                    for (t, v) in total.iter_mut().zip(chunk) {
                        *t += f64::from(*v);
                    }
                }
            }
        }
        grads.insert(
            "input.coors",
            Tensor::new(vec![b, n, 3], cc.iter().map(|&v| f64::from(v)).collect())?,
        );
        if let (Some(eg), Some((_, w))) = (edges_grad, &p.dense_edges) {
            grads.insert("input.edges", Tensor::new(vec![b, n, n, *w], eg)?);
        }
        for (k, shape, g) in acc {
            grads.insert(format!("param.{k}"), Tensor::new(shape, g)?);
        }
        Ok((outputs, grads))
    }
}
