//! The charged N-body benchmark (EGNN paper protocol) with se3's EGNN, TFN or
//! SE(3)-Transformer:
//!
//! ```text
//! cargo run --release -p se3-models --example nbody -- [--model egnn|tfn|se3t] [--epochs N]
//!     [--seed S] [--out DIR] [--hidden H] [--layers L] [--degrees D] [--heads K]
//!     [--dim-head C] [--scale S] [--lr LR] [--cosine-to F] [--batch B] [--eval-every E]
//!     [--train N --val N --test N]
//! ```
//!
//! Generates (or reuses `DIR/nbody-<seed>-<train>-<val>-<test>.safetensors`) the data set,
//! trains the model with Adam on the position MSE (`physics::nbody_benchmark::train_nbody`;
//! `--cosine-to F` decays the rate by a cosine to `F lr` over the epochs), and writes every `E`
//! epochs (and the last) `DIR/nbody_<model>.csv` (train/val/test MSE, equivariance error,
//! training seconds of the epoch), `DIR/nbody_<model>.svg` (the curves) and
//! `DIR/nbody_<model>.md` (the table: test MSE at the best validation epoch).
//!
//! `--hidden` is the EGNN's hidden width or the TFN's / SE(3)-Transformer's channels per degree;
//! `--layers` the EGNN layers, TFN convolutions or SE(3)-Transformer attention blocks;
//! `--degrees`, `--heads`, `--dim-head` and `--scale` (the displacement scale s of
//! `x + T v + s d`) apply to TFN and SE(3)-Transformer (`physics::se3_nbody`).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use se3_models::physics::dataset::DatasetFile;
use se3_models::physics::egnn_nbody::{NBodyEgnn, NBodyEgnnConfig};
use se3_models::physics::nbody::NBodyConfig;
use se3_models::physics::nbody_benchmark::{train_nbody, NBodyRun, NBodyRunOptions};
use se3_models::physics::nbody_model::NBodyModel;
use se3_models::physics::se3_nbody::{NBodyArchitecture, NBodySe3Config, NBodySe3Net};

type Failure = Box<dyn std::error::Error>;

struct Args {
    model: String,
    opts: NBodyRunOptions,
    out: Option<PathBuf>,
    sizes: (usize, usize, usize),
    hidden: Option<usize>,
    layers: Option<usize>,
    degrees: Option<usize>,
    heads: Option<usize>,
    dim_head: Option<usize>,
    scale: Option<f64>,
}

fn parse() -> Result<Args, Failure> {
    let mut a = Args {
        model: "egnn".into(),
        opts: NBodyRunOptions::default(),
        out: None,
        sizes: (3000, 2000, 2000),
        hidden: None,
        layers: None,
        degrees: None,
        heads: None,
        dim_head: None,
        scale: None,
    };
    let o = &mut a.opts;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--epochs" => o.epochs = value()?.parse()?,
            "--seed" => o.seed = value()?.parse()?,
            "--out" => a.out = Some(PathBuf::from(value()?)),
            "--hidden" => a.hidden = Some(value()?.parse()?),
            "--layers" => a.layers = Some(value()?.parse()?),
            "--degrees" => a.degrees = Some(value()?.parse()?),
            "--heads" => a.heads = Some(value()?.parse()?),
            "--dim-head" => a.dim_head = Some(value()?.parse()?),
            "--scale" => a.scale = Some(value()?.parse()?),
            "--lr" => o.lr = value()?.parse()?,
            "--cosine-to" => o.cosine_to = Some(value()?.parse()?),
            "--batch" => o.batch = value()?.parse()?,
            "--eval-every" => o.eval_every = value()?.parse::<usize>()?.max(1),
            "--train" => a.sizes.0 = value()?.parse()?,
            "--val" => a.sizes.1 = value()?.parse()?,
            "--test" => a.sizes.2 = value()?.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(a)
}

fn dataset(a: &Args, out: &std::path::Path) -> Result<DatasetFile, Failure> {
    let (tr, va, te) = a.sizes;
    let seed = a.opts.seed;
    let path = out.join(format!("nbody-{seed}-{tr}-{va}-{te}.safetensors"));
    if path.exists() {
        return Ok(DatasetFile::load(&path)?);
    }
    let cfg = NBodyConfig {
        train: tr,
        val: va,
        test: te,
        ..NBodyConfig::default()
    };
    let bar = ProgressBar::new((tr + va + te) as u64);
    bar.set_style(ProgressStyle::with_template(
        "simulating {bar:40} {pos}/{len} trajectories [{elapsed_precise}<{eta_precise}]",
    )?);
    let (file, redraws) = cfg.generate(seed, || bar.inc(1))?;
    bar.finish();
    println!(
        "{redraws} trajectories redrawn (energy drift); saved {}",
        path.display()
    );
    file.save(&path)?;
    Ok(file)
}

/// Trains `model` with a progress bar, writing the CSV, SVG and table after every evaluation.
fn run<M: NBodyModel>(
    model: &mut M,
    a: &Args,
    out: &std::path::Path,
    data: &DatasetFile,
    rng: &mut rand::rngs::StdRng,
) -> Result<NBodyRun, Failure> {
    let opts = a.opts;
    let steps = a.sizes.0.div_ceil(opts.batch.max(1));
    let bar = ProgressBar::new((opts.epochs * steps) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} epoch {msg} {pos}/{len} steps ({per_sec}) [{elapsed_precise}<{eta_precise}]",
    )?);
    let title = format!("charged N-body, {}", model.label());
    let stem = format!("nbody_{}", a.model);
    let write = |run: &NBodyRun| {
        std::fs::write(out.join(format!("{stem}.csv")), run.csv())?;
        std::fs::write(out.join(format!("{stem}.svg")), run.svg(&title))?;
        std::fs::write(out.join(format!("{stem}.md")), run.markdown(&opts))?;
        if let Some(r) = run.rows.last() {
            bar.suspend(|| {
                println!(
                    "epoch {}: train {:.5} val {:.5} test {:.5} equivariance {:.1e} ({:.1} s training)",
                    r.epoch, r.train_mse, r.val_mse, r.test_mse, r.equivariance, r.seconds
                )
            });
        }
        Ok::<(), std::io::Error>(())
    };
    let result = train_nbody(
        model,
        data,
        &opts,
        rng,
        |epoch, loss| {
            bar.set_message(format!("{epoch} loss {loss:.5}"));
            bar.inc(1);
        },
        |run| {
            write(run).map_err(|source| se3_models::Error::Io {
                path: out.display().to_string(),
                source,
            })
        },
    )?;
    bar.finish();
    println!("wrote {}/{stem}.{{csv,svg,md}}", out.display());
    Ok(result)
}

fn se3_config(a: &Args, architecture: NBodyArchitecture) -> NBodySe3Config {
    let mut c = NBodySe3Config::new(architecture);
    c.dim = a.hidden.unwrap_or(c.dim);
    c.layers = a.layers.unwrap_or(c.layers);
    c.num_degrees = a.degrees.unwrap_or(c.num_degrees);
    c.heads = a.heads.unwrap_or(c.heads);
    c.dim_head = a.dim_head.unwrap_or(c.dim_head);
    c.displacement_scale = a.scale.unwrap_or(c.displacement_scale);
    c
}

fn main() -> Result<(), Failure> {
    let a = parse()?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/nbody-{}", a.model)));
    std::fs::create_dir_all(&out)?;
    let data = dataset(&a, &out)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.opts.seed);
    let run = match a.model.as_str() {
        "egnn" => {
            let mut c = NBodyEgnnConfig::default();
            c.hidden = a.hidden.unwrap_or(c.hidden);
            c.layers = a.layers.unwrap_or(c.layers);
            let mut model = NBodyEgnn::new(c, &mut rng).with_learning_rate(a.opts.lr);
            run(&mut model, &a, &out, &data, &mut rng)?
        }
        "tfn" | "se3t" => {
            let architecture = if a.model == "tfn" {
                NBodyArchitecture::Tfn
            } else {
                NBodyArchitecture::Se3Transformer
            };
            let mut model = NBodySe3Net::new(se3_config(&a, architecture), a.opts.seed, a.opts.lr)?;
            println!("{}: {} parameters", model.label(), model.parameter_count());
            run(&mut model, &a, &out, &data, &mut rng)?
        }
        other => return Err(format!("unknown model {other} (egnn, tfn or se3t)").into()),
    };
    print!("{}", run.markdown(&a.opts));
    Ok(())
}
