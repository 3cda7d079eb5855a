//! Loading any supported reference model from its `config.json` + `weights.safetensors` and running it
//! on an `inputs.safetensors` (what `se3 infer` needs).

use std::path::Path;

use crate::checkpoint::StateDict;
use crate::egnn::{CompiledEgnn, Egnn};
use crate::equiformer::{CompiledEquiformer, Equiformer, EquiformerConfig, EquiformerForward};
use crate::inputs::ModelInputs;
use crate::model_file::ModelFile;
use crate::se3_transformer::basis::QjSigns;
use crate::se3_transformer::{
    NetSession, Se3TransformerConfig, Se3TransformerForward, Se3TransformerNet,
    Se3TransformerOracle,
};
use crate::tfn::graph::{TfnGraph, TfnSession};
use crate::tfn::{TfnStack, TfnStackConfig};
use crate::vn_transformer::{VnSession, VnTransformer, VnTransformerConfig};
use crate::Error;

/// A loaded model of any supported kind, with its forward literals.
#[derive(Debug, Clone)]
pub enum Model {
    /// se3-transformer-pytorch `SE3Transformer`.
    Se3Transformer(Box<Se3TransformerOracle>, Se3TransformerForward),
    /// ConvSE3 + NormSE3 stack.
    TfnStack(Box<TfnStack>),
    /// egnn-pytorch `EGNN` or `EGNN_Network` (runs its compiled graphs; no float64 oracle).
    Egnn(Box<Egnn>),
    /// VN-transformer `VNTransformer` (runs as a compiled float32 graph; there is no oracle).
    VnTransformer(Box<VnTransformer>),
    /// equiformer-pytorch `Equiformer` (runs as its compiled graph; there is no oracle).
    Equiformer(Box<Equiformer>, EquiformerForward),
}

impl Model {
    /// Builds the model described by `file` from `weights`.
    ///
    /// # Errors
    /// `InvalidConfig` (field `class`) for a model kind that is not supported, plus config and
    /// checkpoint errors.
    pub fn from_parts(file: &ModelFile, weights: &StateDict) -> Result<Self, Error> {
        if Egnn::handles(file) {
            Ok(Self::Egnn(Box::new(Egnn::from_parts(file, weights)?)))
        } else if file.is_se3_transformer() {
            let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
            let fwd = Se3TransformerForward::from_literals(&file.forward_kwargs.literals)?;
            Ok(Self::Se3Transformer(
                Box::new(Se3TransformerOracle::from_state_dict(&cfg, weights)?),
                fwd,
            ))
        } else if file.is_tfn_stack() {
            let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
            Ok(Self::TfnStack(Box::new(TfnStack::from_state_dict(
                &cfg, weights,
            )?)))
        } else if file.is_vn_transformer() {
            let cfg = VnTransformerConfig::from_kwargs(&file.constructor_kwargs)?;
            Ok(Self::VnTransformer(Box::new(
                VnTransformer::from_state_dict(&cfg, weights)?,
            )))
        } else if file.is_equiformer() {
            let cfg = EquiformerConfig::from_kwargs(&file.constructor_kwargs)?;
            let fwd = EquiformerForward::from_literals(&file.forward_kwargs.literals)?;
            Ok(Self::Equiformer(
                Box::new(Equiformer::from_state_dict(&cfg, weights)?),
                fwd,
            ))
        } else {
            Err(Error::InvalidConfig {
                field: "class",
                expected:
                    "SE3Transformer, TFNStack, EGNN, EGNN_Network, VNTransformer or Equiformer",
                found: file.class.clone(),
            })
        }
    }

    /// Loads config and weights from files.
    ///
    /// # Errors
    /// As [`ModelFile::load`], [`StateDict::load`] and [`Model::from_parts`].
    pub fn load(
        config: impl AsRef<Path>,
        weights: impl AsRef<Path>,
    ) -> Result<(Self, ModelFile), Error> {
        let file = ModelFile::load(config)?;
        let sd = StateDict::load(weights)?;
        Ok((Self::from_parts(&file, &sd)?, file))
    }

    /// Replaces the Q_J sign table (see [`QjSigns`]).
    ///
    /// # Errors
    /// `Core(DegreeTooHigh)` if the degrees exceed the harmonics of se3-core.
    pub fn set_qj_signs(&mut self, signs: &QjSigns) -> Result<(), Error> {
        match self {
            Self::Se3Transformer(m, _) => m.set_qj_signs(signs),
            Self::TfnStack(m) => m.set_qj_signs(signs),
            Self::Egnn(_) => Ok(()),
            Self::VnTransformer(_) => Ok(()),
            // Equiformer's z-basis comes from its checkpoint (`basis:(i,o)` buffers).
            Self::Equiformer(..) => Ok(()),
        }
    }

    /// Seeds the bond subsampling of an SE(3)-Transformer whose nodes have more bonds than
    /// `max_sparse_neighbors` (see [`Se3TransformerOracle::set_sparse_sampling_seed`]); no effect on other
    /// models.
    pub fn set_sparse_sampling_seed(&mut self, seed: u64) {
        if let Self::Se3Transformer(m, _) = self {
            m.set_sparse_sampling_seed(seed);
        }
    }

    /// Runs the model; outputs are named as the reference outputs without `_f64`/`_f32`.
    ///
    /// # Errors
    /// Input validation errors.
    pub fn forward(&self, inputs: &ModelInputs) -> Result<StateDict, Error> {
        match self {
            Self::Se3Transformer(m, fwd) => m.forward(inputs, fwd),
            Self::TfnStack(m) => m.forward(inputs),
            Self::Egnn(m) => m.forward(inputs),
            Self::VnTransformer(m) => m.forward(inputs),
            Self::Equiformer(m, fwd) => {
                CompiledEquiformer::new((**m).clone(), *fwd).forward(inputs)
            }
        }
    }
}

/// Loads `config`, `weights` and `inputs` (named per the config's `forward_kwargs.tensors`) and runs the
/// model.
///
/// # Errors
/// Any load, config or input error.
pub fn infer(
    config: impl AsRef<Path>,
    weights: impl AsRef<Path>,
    inputs: impl AsRef<Path>,
) -> Result<StateDict, Error> {
    let (model, file) = Model::load(config, weights)?;
    let inp = ModelInputs::load(inputs, &file.forward_kwargs.tensors)?;
    model.forward(&inp)
}

/// A zoo model compiled to a luminal graph (float32): what `se3 infer` and the zoo run by default.
pub enum CompiledModel {
    /// The SE(3)-Transformer (its se3-core layers, [`Se3TransformerNet`]) with its forward
    /// literals.
    Se3Transformer(Box<NetSession>, Se3TransformerForward),
    /// The ConvSE3 + NormSE3 stack as a graph session.
    TfnStack(Box<TfnSession>),
    /// egnn-pytorch `EGNN` / `EGNN_Network` graphs.
    Egnn(Box<CompiledEgnn>),
    /// The VN-Transformer with its graphs.
    VnTransformer(Box<VnSession>),
    /// Equiformer with its graph.
    Equiformer(Box<CompiledEquiformer>),
}

impl CompiledModel {
    /// Compiles the model described by `file` from `weights`.
    ///
    /// # Errors
    /// As [`Model::from_parts`]; `NotCompiled` for an option the graph does not compile yet.
    pub fn from_parts(file: &ModelFile, weights: &StateDict) -> Result<Self, Error> {
        match Model::from_parts(file, weights)? {
            Model::Se3Transformer(_, fwd) => Self::se3_transformer(file, weights, fwd),
            Model::TfnStack(_) => {
                let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs)?;
                let graph = TfnGraph::from_state_dict(&cfg, weights)?;
                Ok(Self::TfnStack(Box::new(graph.compile()?)))
            }
            Model::Egnn(m) => Ok(Self::Egnn(Box::new(CompiledEgnn::new(*m)))),
            Model::VnTransformer(m) => Ok(Self::VnTransformer(Box::new(m.compile()))),
            Model::Equiformer(m, fwd) => {
                Ok(Self::Equiformer(Box::new(CompiledEquiformer::new(*m, fwd))))
            }
        }
    }

    /// Compiles an already built `model` whose Q_J sign table was replaced by `signs` (see
    /// [`Model::set_qj_signs`]); `file` and `weights` are those it was built from.
    ///
    /// # Errors
    /// As [`CompiledModel::from_parts`]; `NotCompiled` for the TFN stack with a sign table other
    /// than the reference one (its graph computes the reference basis).
    pub fn from_model(
        model: Model,
        signs: Option<&QjSigns>,
        file: &ModelFile,
        weights: &StateDict,
    ) -> Result<Self, Error> {
        match model {
            Model::Se3Transformer(m, fwd) => {
                let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
                let mut net = Se3TransformerNet::from_config(&cfg, weights)?;
                if let Some(signs) = signs {
                    net.set_qj_signs(signs)?;
                }
                let mut session = net.into_session()?;
                session.set_sparse_sampling_seed(m.sparse_seed);
                Ok(Self::Se3Transformer(Box::new(session), fwd))
            }
            Model::TfnStack(_) if signs.is_some_and(|s| *s != QjSigns::reference()) => {
                Err(Error::NotCompiled {
                    option: "a Q_J sign table other than the reference one (TFN stack graph)",
                })
            }
            Model::TfnStack(_) => Self::from_parts(file, weights),
            Model::Egnn(m) => Ok(Self::Egnn(Box::new(CompiledEgnn::new(*m)))),
            Model::VnTransformer(m) => Ok(Self::VnTransformer(Box::new(m.compile()))),
            Model::Equiformer(m, fwd) => {
                Ok(Self::Equiformer(Box::new(CompiledEquiformer::new(*m, fwd))))
            }
        }
    }

    /// The SE(3)-Transformer of `file`'s config with `weights`, compiled.
    fn se3_transformer(
        file: &ModelFile,
        weights: &StateDict,
        fwd: Se3TransformerForward,
    ) -> Result<Self, Error> {
        let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
        let net = Se3TransformerNet::from_config(&cfg, weights)?;
        Ok(Self::Se3Transformer(Box::new(net.into_session()?), fwd))
    }

    /// Runs the model's graphs on `device` from now on: compiled graphs move with their
    /// weights (uploaded once, kept on the device), graphs built later are built there.
    ///
    /// # Errors
    /// `CudaNotCompiled` (no `cuda` feature), `CudaUnavailable` (driver, NVRTC, cuBLAS or
    /// device missing), `InvalidOp` to move a graph off its device.
    pub fn set_device(&mut self, device: se3_core::Device) -> Result<(), Error> {
        match self {
            Self::Se3Transformer(m, _) => Ok(m.session().set_device(device)?),
            Self::TfnStack(s) => Ok(s.session_mut().set_device(device)?),
            Self::Egnn(m) => m.set_device(device),
            Self::VnTransformer(s) => s.set_device(device),
            Self::Equiformer(m) => m.set_device(device),
        }
    }

    /// Runs the graph; outputs are named as the reference outputs without `_f64`/`_f32`.
    ///
    /// # Errors
    /// Input validation errors.
    pub fn forward(&mut self, inputs: &ModelInputs) -> Result<StateDict, Error> {
        match self {
            Self::Se3Transformer(m, fwd) => m.forward_inputs(inputs, fwd),
            Self::TfnStack(s) => s.forward(inputs),
            Self::Egnn(m) => m.forward(inputs),
            Self::VnTransformer(s) => s.forward(inputs),
            Self::Equiformer(m) => m.forward(inputs),
        }
    }
}
