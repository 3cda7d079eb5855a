//! The charged N-body benchmark (EGNN paper protocol) with se3's EGNN:
//!
//! ```text
//! cargo run --release -p se3-models --example nbody_egnn -- [--epochs N] [--seed S]
//!     [--out DIR] [--hidden H] [--layers L] [--lr LR] [--batch B] [--eval-every E]
//!     [--train N --val N --test N]
//! ```
//!
//! Generates (or reuses `DIR/nbody-<seed>-<train>-<val>-<test>.safetensors`) the data set,
//! trains with Adam on the position MSE, and writes every `E` epochs (and the last) to
//! `DIR/nbody_egnn.csv` the train/val/test MSE, the equivariance error and the training time of
//! the epoch; `DIR/nbody_egnn.svg` (loss
//! curves) and `DIR/nbody_egnn.md` (the table: test MSE at the best validation epoch).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use se3_models::physics::dataset::{DatasetFile, Sample};
use se3_models::physics::egnn_nbody::{NBodyEgnn, NBodyEgnnConfig};
use se3_models::physics::nbody::NBodyConfig;
use se3_models::physics::report::{line_chart_svg, Series};

type Failure = Box<dyn std::error::Error>;

/// One evaluated epoch: epoch, train/val/test MSE, equivariance error, training seconds.
type Row = (usize, f64, f64, f64, f64, f64);

struct Args {
    epochs: usize,
    seed: u64,
    out: PathBuf,
    hidden: usize,
    layers: usize,
    lr: f64,
    batch: usize,
    eval_every: usize,
    sizes: (usize, usize, usize),
}

fn parse() -> Result<Args, Failure> {
    let mut a = Args {
        epochs: 100,
        seed: 1,
        out: PathBuf::from("target/nbody-egnn"),
        hidden: 64,
        layers: 4,
        lr: 5e-4,
        batch: 100,
        eval_every: 5,
        sizes: (3000, 2000, 2000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            "--out" => a.out = PathBuf::from(value()?),
            "--hidden" => a.hidden = value()?.parse()?,
            "--layers" => a.layers = value()?.parse()?,
            "--lr" => a.lr = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--eval-every" => a.eval_every = value()?.parse::<usize>()?.max(1),
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
    let path = a
        .out
        .join(format!("nbody-{}-{tr}-{va}-{te}.safetensors", a.seed));
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
    let (file, redraws) = cfg.generate(a.seed, || bar.inc(1))?;
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
    let split = |name: &str| -> Result<Vec<Sample>, Failure> {
        Ok(data
            .split(name)
            .ok_or(format!("no {name} split"))?
            .samples
            .clone())
    };
    let (train, val, test) = (split("train")?, split("val")?, split("test")?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let cfg = NBodyEgnnConfig {
        hidden: a.hidden,
        layers: a.layers,
    };
    let mut model = NBodyEgnn::new(cfg, &mut rng).with_learning_rate(a.lr);
    let csv_path = a.out.join("nbody_egnn.csv");
    let mut csv = std::fs::File::create(&csv_path)?;
    writeln!(
        csv,
        "epoch,train_mse,val_mse,test_mse,equivariance_error,epoch_seconds"
    )?;
    let steps = train.len().div_ceil(a.batch);
    let bar = ProgressBar::new((a.epochs * steps) as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} epoch {msg} {pos}/{len} steps ({per_sec}) [{elapsed_precise}<{eta_precise}]",
    )?);
    let mut rows: Vec<Row> = Vec::new();
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 1..=a.epochs {
        let start = Instant::now();
        order.shuffle(&mut rng);
        let (mut sum, mut count) = (0.0, 0usize);
        for chunk in order.chunks(a.batch) {
            let batch: Vec<&Sample> = chunk.iter().map(|&i| &train[i]).collect();
            let loss = model.train_step(&batch)?;
            sum += loss * batch.len() as f64;
            count += batch.len();
            bar.set_message(format!("{epoch} loss {loss:.5}"));
            bar.inc(1);
        }
        let train_mse = sum / count.max(1) as f64;
        let seconds = start.elapsed().as_secs_f64();
        if epoch % a.eval_every != 0 && epoch != a.epochs {
            continue;
        }
        let val_mse = model.mse(&val, a.batch)?;
        let test_mse = model.mse(&test, a.batch)?;
        let probe: Vec<&Sample> = val.iter().take(a.batch).collect();
        let equi = model.equivariance_error(&probe, &mut rng)?;
        writeln!(
            csv,
            "{epoch},{train_mse:.6e},{val_mse:.6e},{test_mse:.6e},{equi:.3e},{seconds:.3}"
        )?;
        csv.flush()?;
        bar.suspend(|| {
            println!(
                "epoch {epoch}: train {train_mse:.5} val {val_mse:.5} test {test_mse:.5} \
                 equivariance {equi:.1e} ({seconds:.1} s training)"
            )
        });
        rows.push((epoch, train_mse, val_mse, test_mse, equi, seconds));
        let curve = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
            rows.iter().map(|r| (r.0 as f64, f(r))).collect()
        };
        let svg = line_chart_svg(
            "charged N-body, se3 EGNN",
            "epoch",
            "MSE / relative error",
            &[
                Series {
                    name: "train MSE".into(),
                    colour: "#1f77b4",
                    points: curve(|r| r.1),
                },
                Series {
                    name: "val MSE".into(),
                    colour: "#ff7f0e",
                    points: curve(|r| r.2),
                },
                Series {
                    name: "test MSE".into(),
                    colour: "#2ca02c",
                    points: curve(|r| r.3),
                },
                Series {
                    name: "equivariance".into(),
                    colour: "#d62728",
                    points: curve(|r| r.4),
                },
            ],
        );
        std::fs::write(a.out.join("nbody_egnn.svg"), svg)?;
        let best = rows
            .iter()
            .min_by(|x, y| x.2.total_cmp(&y.2))
            .copied()
            .unwrap_or(rows[rows.len() - 1]);
        let mean_time = rows.iter().map(|r| r.5).sum::<f64>() / rows.len() as f64;
        let max_equi = rows.iter().map(|r| r.4).fold(0.0, f64::max);
        let md = format!(
            "| model | epochs | best val epoch | train MSE | val MSE | test MSE | max equivariance error | s / epoch (train) |\n\
             |---|---|---|---|---|---|---|---|\n\
             | se3 EGNN ({} layers, {} hidden, lr {}, batch {}) | {} | {} | {:.5} | {:.5} | {:.5} | {:.1e} | {:.2} |\n\
             | EGNN paper (published) | | | | | 0.0071 | | |\n",
            a.layers, a.hidden, a.lr, a.batch, epoch, best.0, best.1, best.2, best.3, max_equi, mean_time
        );
        std::fs::write(a.out.join("nbody_egnn.md"), md)?;
    }
    bar.finish();
    println!(
        "wrote {}, nbody_egnn.svg, nbody_egnn.md",
        csv_path.display()
    );
    Ok(())
}
