//! `se3 infer`: run a model of the zoo from its `config.json` + `weights.safetensors` on an
//! `inputs.safetensors`, writing its outputs to a safetensors file.
//!
//! The model kind comes from the config's `library` field (and `class`): se3-transformer-pytorch's
//! `SE3Transformer`, the ConvSE3 + NormSE3 TFN stack and egnn-pytorch's `EGNN` / `EGNN_Network`
//! (compiled graphs only; `--engine oracle` runs them on the same graphs) run; other libraries of
//! the zoo give a one-line "not supported yet" error. Inputs are read under the names of the config's
//! `forward_kwargs.tensors` (as in the reference `inputs.safetensors`) and validated (shapes,
//! NaN coordinates, empty graphs, mask/length mismatches). Outputs are named as the reference
//! outputs without their `_f64`/`_f32` suffix (`out`, `type0`, `type1`, ...).
//!
//! `--qj-signs FILE` loads the Q_J sign table of the machine the weights were trained on (see
//! `QjSigns`; another LAPACK build can return the basis change matrices with other signs, and the
//! weights are only right together with their signs).
//!
//! A model runs on its compiled float32 graph by default (`--engine graph`; an
//! option the graph does not compile would fall back to the float64 oracle with a note on stderr)
//! or on the oracle (`--engine oracle`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use se3_models::checkpoint::SaveDtype;
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::se3_transformer::basis::QjSigns;
use se3_models::zoo::{CompiledModel, Model};

/// The libraries whose models `se3 infer` runs.
const SUPPORTED_LIBRARIES: &[&str] = &[
    "se3-transformer-pytorch",
    "egnn-pytorch",
    "VN-transformer",
    "equiformer-pytorch",
];

/// Arguments of `se3 infer`.
#[derive(Args, Debug, Clone)]
pub struct InferArgs {
    /// The model's `config.json` (class, library, constructor and forward kwargs).
    #[arg(long)]
    pub config: PathBuf,
    /// The state dict as safetensors, with the PyTorch key names.
    #[arg(long)]
    pub weights: PathBuf,
    /// The inputs, named as in the config's `forward_kwargs.tensors`.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the outputs (safetensors).
    #[arg(long, required_unless_present = "estimate")]
    pub output: Option<PathBuf>,
    /// Print a memory estimate of the forward (from the model's fibers and the inputs' sizes,
    /// before anything of the forward is allocated) and exit without running it.
    #[arg(long)]
    pub estimate: bool,
    /// Storage dtype of the outputs.
    #[arg(long, value_enum, default_value_t = OutputDtype::F32)]
    pub dtype: OutputDtype,
    /// How to run an SE(3)-Transformer: the compiled float32 graph (falling back to the oracle
    /// for options not compiled yet), or the float64 oracle.
    #[arg(long, value_enum, default_value_t = Engine::Graph)]
    pub engine: Engine,
    /// Q_J sign table (JSON `{"rows": [{"J", "d_in", "d_out", "sign"}]}`) of the machine whose
    /// PyTorch made the weights, when its LAPACK differs from the reference one.
    #[arg(long)]
    pub qj_signs: Option<PathBuf>,
    /// Seed of the bond subsampling when a node has more bonds than `max_sparse_neighbors` (the
    /// library draws them at random; without subsampling the seed has no effect).
    #[arg(long, default_value_t = 0)]
    pub sparse_seed: u64,
    /// SE(3)-Transformer on large clouds: run the graph on blocks of this many centre nodes with
    /// their neighbourhoods (`NetSession::forward_blocked`: the same outputs, per-edge
    /// memory of one block at a time); with `--estimate`, estimate that run.
    #[arg(long)]
    pub block_nodes: Option<usize>,
}

/// Which implementation runs an SE(3)-Transformer.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The luminal graph (float32), oracle fallback for options it does not compile.
    Graph,
    /// The plain float64 reference implementation.
    Oracle,
}

/// Storage dtype of the written outputs.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDtype {
    /// float32.
    F32,
    /// float64 (the model computes in float64).
    F64,
}

/// Why `se3 infer` refused a model before running it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// The config names a library whose models are not implemented yet.
    #[error(
        "models of library `{library}` (class `{class}`) are not supported yet by `se3 infer` \
         (supported: {supported})"
    )]
    UnsupportedLibrary {
        library: String,
        class: String,
        supported: String,
    },
}

/// Loads, validates, runs and writes; prints one line per output.
pub fn run(args: &InferArgs) -> Result<(), super::CliError> {
    let file = ModelFile::load(&args.config)?;
    if !SUPPORTED_LIBRARIES.contains(&file.library.name.as_str()) {
        return Err(InferError::UnsupportedLibrary {
            library: file.library.name.clone(),
            class: file.class.clone(),
            supported: SUPPORTED_LIBRARIES.join(", "),
        }
        .into());
    }
    let weights = se3_models::checkpoint::StateDict::load(&args.weights)?;
    let inputs = ModelInputs::load(&args.inputs, &file.forward_kwargs.tensors)?;
    let signs = match &args.qj_signs {
        Some(p) => Some(QjSigns::load(p)?),
        None => None,
    };
    let mut model = Model::from_parts(&file, &weights)?;
    if let Some(s) = &signs {
        model.set_qj_signs(s)?;
    }
    model.set_sparse_sampling_seed(args.sparse_seed);
    if args.estimate {
        return print_estimate(
            model,
            signs.as_ref(),
            &file,
            &weights,
            &inputs,
            args.block_nodes,
        );
    }
    let output = args.output.as_ref().ok_or("--output is required")?;
    let outputs = match args.engine {
        Engine::Graph => {
            match args.block_nodes {
                // the blocked forward: bounded memory on large clouds
                Some(block) => {
                    match CompiledModel::from_model(model, signs.as_ref(), &file, &weights)? {
                        CompiledModel::Se3Transformer(mut m, fwd) => {
                            m.forward_blocked(&inputs, &fwd, block)?.0
                        }
                        _ => {
                            return Err(
                                "--block-nodes is available for the SE(3)-Transformer only".into()
                            )
                        }
                    }
                }
                None => {
                    match CompiledModel::from_model(model.clone(), signs.as_ref(), &file, &weights)
                    {
                        Ok(mut compiled) => compiled.forward(&inputs)?,
                        Err(se3_models::Error::NotCompiled { option }) => {
                            eprintln!(
                            "note: option `{option}` is not compiled yet; running the float64 oracle"
                        );
                            model.forward(&inputs)?
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Engine::Oracle => model.forward(&inputs)?,
    };
    let dtype = match args.dtype {
        OutputDtype::F32 => SaveDtype::F32,
        OutputDtype::F64 => SaveDtype::F64,
    };
    outputs.save(output, dtype)?;
    for (name, t) in outputs.iter() {
        println!("{name}: shape {:?}", t.shape);
    }
    println!("wrote {}", output.display());
    Ok(())
}

/// `--estimate`: the SE(3)-Transformer's memory estimate for the inputs' batch and
/// cloud size (`NetSession::estimate_memory`; with `--block-nodes` of the blocked
/// forward, `estimate_blocked_memory`), one line per part.
fn print_estimate(
    model: Model,
    signs: Option<&QjSigns>,
    file: &ModelFile,
    weights: &se3_models::checkpoint::StateDict,
    inputs: &ModelInputs,
    block_nodes: Option<usize>,
) -> Result<(), super::CliError> {
    let (b, n) = (inputs.batch(), inputs.nodes());
    let CompiledModel::Se3Transformer(mut m, _) =
        CompiledModel::from_model(model, signs, file, weights)?
    else {
        return Err("--estimate is available for the SE(3)-Transformer only".into());
    };
    let (e, host_copies) = match block_nodes {
        Some(block) => {
            let (e, plan) = m.estimate_blocked_memory(inputs, block)?;
            println!(
                "blocked forward: {} blocks of {block} centres, at most {} nodes a block run",
                plan.blocks, plan.max_nodes
            );
            // the host data of every batch element is in `host_graph` already
            (e, 1)
        }
        None => (m.estimate_memory(b, n)?, b),
    };
    let mib = |bytes: usize| bytes as f64 / 1048576.0;
    println!(
        "estimate for batch {b}, {n} nodes, {} neighbours per node:",
        e.neighbours
    );
    println!(
        "  weights (f32 graph):            {:.1} MiB",
        mib(e.weights)
    );
    println!(
        "  host edge data per cloud:       {:.1} MiB",
        mib(e.host_graph)
    );
    println!(
        "  graph peak of one cloud:        {:.1} MiB",
        mib(e.graph_peak)
    );
    println!(
        "  total (plus the program):       {:.1} MiB",
        mib(e.total(host_copies))
    );
    Ok(())
}
