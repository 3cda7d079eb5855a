//! `se3 grad`: the gradients of `L = Σ_out <out, cotangent.out>` of a model run on an inputs
//! file, with respect to every parameter (`param.<key>`, PyTorch key names) and float input
//! (`input.<name>`), written as safetensors (float32 or float64): the same names as the
//! reference `gradients.safetensors`, so gradients can be checked against any PyTorch run.
//! Every model of `se3_models::differentiable::differentiable_from_files` is supported.

use std::path::PathBuf;

use clap::Args;
use se3_models::checkpoint::{SaveDtype, StateDict};
use se3_models::differentiable::{differentiable_from_files, Objective};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;

use super::infer::OutputDtype;

/// Arguments of `se3 grad`.
#[derive(Args, Debug, Clone)]
pub struct GradArgs {
    /// The model's `config.json`.
    #[arg(long)]
    pub config: PathBuf,
    /// The state dict as safetensors, with the PyTorch key names.
    #[arg(long)]
    pub weights: PathBuf,
    /// The inputs, named as in the config's `forward_kwargs.tensors`.
    #[arg(long)]
    pub inputs: PathBuf,
    /// The cotangents `cotangent.<out>` (one per output, the output's shape).
    #[arg(long)]
    pub cotangent: PathBuf,
    /// Where to write the gradients (safetensors).
    #[arg(long)]
    pub output: PathBuf,
    /// Storage dtype of the gradients.
    #[arg(long, value_enum, default_value_t = OutputDtype::F32)]
    pub dtype: OutputDtype,
}

/// Loads, differentiates, writes; prints one line per gradient tensor.
pub fn run(args: &GradArgs) -> Result<(), super::CliError> {
    let file = ModelFile::load(&args.config)?;
    let weights = StateDict::load(&args.weights)?;
    let inputs = ModelInputs::load(&args.inputs, &file.forward_kwargs.tensors)?;
    let cotangents = StateDict::load(&args.cotangent)?;
    let mut model = differentiable_from_files(&file, &weights, Objective::Cotangents)?;
    let grads = model.gradients(&inputs, &cotangents)?.grads;
    let dtype = match args.dtype {
        OutputDtype::F32 => SaveDtype::F32,
        OutputDtype::F64 => SaveDtype::F64,
    };
    grads.save(&args.output, dtype)?;
    println!(
        "{} gradients (param.* for {} weights, input.*)",
        grads.len(),
        grads.keys().filter(|k| k.starts_with("param.")).count()
    );
    println!("wrote {}", args.output.display());
    Ok(())
}
