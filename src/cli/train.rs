//! `se3 train`: trains a model from its `config.json` (and optional starting weights) on a data
//! set file (`se3_models::training::dataset`), with a progress bar, a per-epoch log
//! (`log.csv`, `log.json`: train and validation loss, equivariance error), the curves
//! (`loss.svg`, `equivariance.svg`) and a checkpoint every N epochs (`checkpoint/`:
//! `weights.safetensors` under PyTorch keys, `config.json`, `optimizer.safetensors`,
//! `state.json`). `--resume` continues from `OUT/checkpoint` exactly as if never stopped.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use se3_core::train::LrSchedule;
use se3_models::checkpoint::StateDict;
use se3_models::model_file::{python_json_to_strict, ModelFile};
use se3_models::training::build::trainable_from_parts;
use se3_models::training::{
    EpochRecord, OptimizerKind, TrainOptions, TrainableModel, Trainer, TrainingCheckpoint,
    TrainingSet,
};

/// Which optimizer.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerArg {
    Adam,
    Adamw,
    Sgd,
}

/// Which learning-rate schedule (per epoch).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleArg {
    /// The base rate throughout.
    Constant,
    /// Linear warm-up from `--warmup-factor` x lr over `--warmup-epochs`.
    Warmup,
    /// Cosine annealing from lr to `--eta-min` over the run's epochs.
    Cosine,
    /// Multiply by `--gamma` every `--step-size` epochs.
    Step,
}

/// Arguments of `se3 train`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// The model's `config.json` (class, library, constructor kwargs).
    #[arg(long)]
    pub config: PathBuf,
    /// Starting weights (safetensors, PyTorch keys); fresh seeded weights without them.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The data set (safetensors: train.coors, train.feats, train.target.<out>, ...).
    #[arg(long)]
    pub data: PathBuf,
    /// Epochs in all (with --resume: up to this many).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Samples per optimizer step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Base learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adam)]
    pub optimizer: OptimizerArg,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f64,
    /// Weight decay (decoupled for adamw).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Constant)]
    pub schedule: ScheduleArg,
    /// Warm-up: epochs to reach the base rate.
    #[arg(long, default_value_t = 5)]
    pub warmup_epochs: usize,
    /// Warm-up: starting fraction of the base rate.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_factor: f64,
    /// Cosine: the final rate.
    #[arg(long, default_value_t = 0.0)]
    pub eta_min: f64,
    /// Step: epochs between decays.
    #[arg(long, default_value_t = 10)]
    pub step_size: usize,
    /// Step: decay factor.
    #[arg(long, default_value_t = 0.5)]
    pub gamma: f64,
    /// Clip gradients to this global norm.
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// Keep parameters whose key starts with this prefix unchanged (repeatable).
    #[arg(long)]
    pub freeze: Vec<String>,
    /// Seed of fresh weights, sample order and the equivariance check's rotations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (log, curves, checkpoint).
    #[arg(long)]
    pub out: PathBuf,
    /// Write the checkpoint every N epochs (and after the last).
    #[arg(long, default_value_t = 1)]
    pub checkpoint_every: usize,
    /// Continue from OUT/checkpoint with its options; only --epochs is taken from here.
    #[arg(long)]
    pub resume: bool,
}

impl TrainArgs {
    fn options(&self) -> TrainOptions {
        let schedule = match self.schedule {
            ScheduleArg::Constant => LrSchedule::Constant,
            ScheduleArg::Warmup => LrSchedule::LinearWarmup {
                start_factor: self.warmup_factor,
                total_iters: self.warmup_epochs,
            },
            ScheduleArg::Cosine => LrSchedule::Cosine {
                t_max: self.epochs,
                eta_min: self.eta_min,
            },
            ScheduleArg::Step => LrSchedule::Step {
                step_size: self.step_size,
                gamma: self.gamma,
            },
        };
        TrainOptions {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            optimizer: match self.optimizer {
                OptimizerArg::Adam => OptimizerKind::Adam,
                OptimizerArg::Adamw => OptimizerKind::AdamW,
                OptimizerArg::Sgd => OptimizerKind::Sgd,
            },
            momentum: self.momentum,
            weight_decay: self.weight_decay,
            schedule,
            clip_norm: self.clip_norm,
            freeze: self.freeze.clone(),
            seed: self.seed,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> super::CliError + '_ {
    move |e| format!("{}: {e}", path.display()).into()
}

/// `log.csv` and `log.json` from the whole history (so a resumed run keeps the earlier epochs).
fn write_log(dir: &Path, history: &[EpochRecord]) -> Result<(), super::CliError> {
    let mut csv = String::from("epoch,steps,lr,train_loss,val_loss,equivariance_error,seconds\n");
    for r in history {
        csv.push_str(&format!(
            "{},{},{:e},{:e},{},{:e},{:.3}\n",
            r.epoch,
            r.steps,
            r.lr,
            r.train_loss,
            r.val_loss.map_or(String::new(), |v| format!("{v:e}")),
            r.equivariance_error,
            r.seconds
        ));
    }
    let path = dir.join("log.csv");
    std::fs::write(&path, csv).map_err(io(&path))?;
    let path = dir.join("log.json");
    std::fs::write(&path, serde_json::to_string_pretty(history)?).map_err(io(&path))?;
    Ok(())
}

/// Trains; prints one line per epoch and where the files went.
pub fn run(args: &TrainArgs) -> Result<(), super::CliError> {
    std::fs::create_dir_all(&args.out).map_err(io(&args.out))?;
    let checkpoint_dir = args.out.join("checkpoint");
    let data = TrainingSet::load(&args.data)?;
    let resume = if args.resume {
        Some(TrainingCheckpoint::load(&checkpoint_dir)?)
    } else {
        None
    };
    let config_text = std::fs::read_to_string(&args.config).map_err(io(&args.config))?;
    let config: serde_json::Value = match &resume {
        Some(ck) => ck.config.clone(),
        None => serde_json::from_str(&python_json_to_strict(&config_text))?,
    };
    let file = ModelFile::from_json(&serde_json::to_string(&config)?, "config")?;
    let weights = match (&resume, &args.weights) {
        (Some(ck), _) => Some(ck.weights.clone()),
        (None, Some(p)) => Some(StateDict::load(p)?),
        (None, None) => None,
    };
    let model = trainable_from_parts(&file, weights.as_ref(), args.seed)?;
    let mut options = match &resume {
        Some(ck) => ck.options.clone(),
        None => args.options(),
    };
    options.epochs = args.epochs;
    let mut trainer = Trainer::new(model, options);
    if let Some(ck) = &resume {
        ck.restore(&mut trainer)?;
        println!(
            "resuming {} at epoch {} (step {})",
            checkpoint_dir.display(),
            trainer.progress.epochs_done,
            trainer.progress.steps_done
        );
    }
    trainer.check_data(&data)?;
    let steps_per_epoch = data.train.len().div_ceil(trainer.options.batch_size.max(1));
    let left = trainer
        .options
        .epochs
        .saturating_sub(trainer.progress.epochs_done);
    if left == 0 {
        println!(
            "nothing to do: {} epochs already done",
            trainer.progress.epochs_done
        );
        return Ok(());
    }
    println!(
        "training {} parameters ({} tensors) on {} samples ({} validation), {} steps an epoch",
        trainer
            .model
            .parameters()
            .iter()
            .map(|p| p.2.len())
            .sum::<usize>(),
        trainer.model.parameters().len(),
        data.train.len(),
        data.val.as_ref().map_or(0, |v| v.len()),
        steps_per_epoch
    );
    let bar = ProgressBar::new((left * steps_per_epoch) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps {per_sec} ETA {eta} {msg}",
    )?);
    let every = args.checkpoint_every.max(1);
    let total = trainer.options.epochs;
    let result = trainer.train(
        &data,
        &mut |s| {
            bar.inc(1);
            bar.set_message(format!("epoch {} loss {:.4e}", s.epoch, s.loss));
        },
        &mut |t| {
            let r = t.progress.history.last().cloned();
            if let Some(r) = &r {
                let line = format!(
                    "epoch {:>4}  train {:.4e}  val {}  equivariance {:.2e}  lr {:.2e}  {:.1} s",
                    r.epoch,
                    r.train_loss,
                    r.val_loss.map_or("-".to_string(), |v| format!("{v:.4e}")),
                    r.equivariance_error,
                    r.lr,
                    r.seconds
                );
                // a hidden bar (no terminal) swallows its println
                if bar.is_hidden() {
                    println!("{line}");
                } else {
                    bar.println(line);
                }
            }
            let io_err = |e: super::CliError| se3_models::Error::InvalidParameter {
                name: "training log",
                expected: "a writable output folder",
                found: e.to_string(),
            };
            write_log(&args.out, &t.progress.history).map_err(io_err)?;
            super::train_plot::write_curves(&args.out, &t.progress.history).map_err(io_err)?;
            let done = t.progress.epochs_done;
            if done % every == 0 || done == total {
                TrainingCheckpoint::of(t, &config)?.save(&checkpoint_dir)?;
            }
            Ok(())
        },
    );
    bar.finish_and_clear();
    result?;
    println!(
        "wrote {0}/log.csv, {0}/log.json, {0}/loss.svg, {0}/equivariance.svg, {1}",
        args.out.display(),
        checkpoint_dir.display()
    );
    Ok(())
}
