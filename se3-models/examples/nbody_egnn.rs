//! The charged N-body benchmark (EGNN paper protocol) with se3's EGNN:
//!
//! ```text
//! cargo run --release -p se3-models --example nbody_egnn -- [--epochs N] [--seed S]
//!     [--out DIR] [--hidden H] [--layers L] [--lr LR] [--cosine-to F] [--batch B]
//!     [--eval-every E] [--train N --val N --test N]
//! ```
//!
//! Generates (or reuses `DIR/nbody-<seed>-<train>-<val>-<test>.safetensors`) the data set,
//! trains with Adam on the position MSE (`physics::nbody_benchmark`; `--cosine-to F` decays the
//! rate by a cosine to `F lr` over the epochs), and writes every `E` epochs (and the last)
//! `DIR/nbody_egnn.csv` (train/val/test MSE, equivariance error, training seconds of the
//! epoch), `DIR/nbody_egnn.svg` (the curves) and `DIR/nbody_egnn.md` (the table: test MSE at
//! the best validation epoch).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use se3_models::physics::dataset::DatasetFile;
use se3_models::physics::egnn_nbody::NBodyEgnnConfig;
use se3_models::physics::nbody::NBodyConfig;
use se3_models::physics::nbody_benchmark::{train_nbody_egnn, NBodyRunOptions};

type Failure = Box<dyn std::error::Error>;

struct Args {
    opts: NBodyRunOptions,
    out: PathBuf,
    sizes: (usize, usize, usize),
}

fn parse() -> Result<Args, Failure> {
    let mut a = Args {
        opts: NBodyRunOptions::default(),
        out: PathBuf::from("target/nbody-egnn"),
        sizes: (3000, 2000, 2000),
    };
    let o = &mut a.opts;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => o.epochs = value()?.parse()?,
            "--seed" => o.seed = value()?.parse()?,
            "--out" => a.out = PathBuf::from(value()?),
            "--hidden" => o.model.hidden = value()?.parse()?,
            "--layers" => o.model.layers = value()?.parse()?,
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

fn dataset(a: &Args) -> Result<DatasetFile, Failure> {
    let (tr, va, te) = a.sizes;
    let seed = a.opts.seed;
    let path = a
        .out
        .join(format!("nbody-{seed}-{tr}-{va}-{te}.safetensors"));
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

fn main() -> Result<(), Failure> {
    let a = parse()?;
    std::fs::create_dir_all(&a.out)?;
    let data = dataset(&a)?;
    let opts = a.opts;
    let NBodyEgnnConfig { hidden, layers } = opts.model;
    let steps = a.sizes.0.div_ceil(opts.batch.max(1));
    let bar = ProgressBar::new((opts.epochs * steps) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} epoch {msg} {pos}/{len} steps ({per_sec}) [{elapsed_precise}<{eta_precise}]",
    )?);
    let title = format!("charged N-body, se3 EGNN ({layers} x {hidden})");
    let write = |run: &se3_models::physics::nbody_benchmark::NBodyRun| {
        std::fs::write(a.out.join("nbody_egnn.csv"), run.csv())?;
        std::fs::write(a.out.join("nbody_egnn.svg"), run.svg(&title))?;
        std::fs::write(a.out.join("nbody_egnn.md"), run.markdown(&opts))?;
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
    let run = train_nbody_egnn(
        &data,
        &opts,
        |epoch, loss| {
            bar.set_message(format!("{epoch} loss {loss:.5}"));
            bar.inc(1);
        },
        |run| {
            write(run).map_err(|source| se3_models::Error::Io {
                path: a.out.display().to_string(),
                source,
            })
        },
    )?;
    bar.finish();
    print!("{}", run.markdown(&opts));
    println!("wrote {}/nbody_egnn.{{csv,svg,md}}", a.out.display());
    Ok(())
}
