//! The energy-and-forces potential (issue #15 §3): trains se3's invariant atom-centred
//! potential (`se3_models::physics::learned_potential`) on the Lennard-Jones cluster set
//! (`se3 data lj`: 10–38 atoms at T = 0.1, 0.2, 0.3) on energies and forces, reports energy
//! and force errors on the held-out test clusters, and runs velocity-Verlet MD of a test
//! cluster with the learned forces (and with the exact LJ forces, for comparison), reporting
//! the energy drift.
//!
//! ```text
//! cargo run --release --example lj_potential -- [--epochs 80] [--seed 0] [--data FILE] [--out DIR]
//!     [--radial K] [--hidden H] [--lr LR] [--md-steps 5000]
//! ```
//! Writes `<out>/lj_potential.csv` (per epoch), `lj_potential.svg` (loss, validation force
//! error and equivariance error per epoch), `lj_potential_md.csv` (energies of the MD runs) and `lj_potential.md` (the
//! table); `--out` defaults to `target/lj_potential`.

use std::fmt::Write as _;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use plotters::prelude::*;
use se3_models::physics::dataset::DatasetFile;
use se3_models::physics::integrator::ParticleState;
use se3_models::physics::learned_potential::PotentialConfig;
use se3_models::physics::lj_clusters::{LjClusterConfig, LJ};
use se3_models::physics::md::{run_md, MdReport};
use se3_models::physics::potential::energy_and_forces;
use se3_models::physics::potential_training::{
    evaluate, md_with_potential, train_potential, EpochRecord, PotentialTraining,
};

type Failure = Box<dyn std::error::Error>;

struct Args {
    epochs: usize,
    seed: u64,
    data: Option<PathBuf>,
    out: PathBuf,
    md_steps: usize,
    radial: usize,
    hidden: usize,
    lr: f64,
}

fn args() -> Result<Args, Failure> {
    let mut a = Args {
        epochs: 80,
        seed: 0,
        data: None,
        out: PathBuf::from("target/lj_potential"),
        md_steps: 5000,
        radial: PotentialConfig::default().radial,
        hidden: PotentialConfig::default().hidden,
        lr: PotentialTraining::default().lr,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--epochs" => a.epochs = value()?.parse()?,
            "--seed" => a.seed = value()?.parse()?,
            "--data" => a.data = Some(PathBuf::from(value()?)),
            "--out" => a.out = PathBuf::from(value()?),
            "--md-steps" => a.md_steps = value()?.parse()?,
            "--radial" => a.radial = value()?.parse()?,
            "--hidden" => a.hidden = value()?.parse()?,
            "--lr" => a.lr = value()?.parse()?,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    Ok(a)
}

fn plot(path: &PathBuf, log: &[EpochRecord]) -> Result<(), Failure> {
    let root = SVGBackend::new(path, (1350, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, rest) = root.split_horizontally(450);
    let (middle, right) = rest.split_horizontally(450);
    let epochs = log.len() as f64;
    let series = [
        (
            "train loss",
            log.iter().map(|r| r.train_loss).collect::<Vec<_>>(),
        ),
        (
            "val force MAE",
            log.iter().map(|r| r.val.force_mae).collect::<Vec<_>>(),
        ),
        (
            "equivariance error (largest, val)",
            log.iter()
                .map(|r| r.val_equivariance_max)
                .collect::<Vec<_>>(),
        ),
    ];
    for (area, (name, ys)) in [left, middle, right].iter().zip(series) {
        let lo = ys.iter().cloned().fold(f64::INFINITY, f64::min).max(1e-9);
        let hi = ys.iter().cloned().fold(0.0, f64::max).max(lo * 1.01);
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(1.0..epochs.max(2.0), (lo..hi).log_scale())?;
        chart.configure_mesh().x_desc("epoch").draw()?;
        chart.draw_series(LineSeries::new(
            ys.iter().enumerate().map(|(i, &y)| (i as f64 + 1.0, y)),
            &BLUE,
        ))?;
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), Failure> {
    let a = args()?;
    std::fs::create_dir_all(&a.out)?;
    let data = match &a.data {
        Some(p) => DatasetFile::load(p)?,
        None => {
            let cfg = LjClusterConfig::default();
            let total = cfg.train + cfg.val + cfg.test;
            let bar = ProgressBar::new(total as u64);
            bar.set_style(ProgressStyle::with_template(
                "data {bar:30} {pos}/{len} trajectories ({eta})",
            )?);
            let d = cfg.generate(a.seed, || bar.inc(1))?;
            bar.finish_and_clear();
            d
        }
    };
    let cfg = PotentialTraining {
        model: PotentialConfig {
            radial: a.radial,
            hidden: a.hidden,
            ..PotentialConfig::default()
        },
        epochs: a.epochs,
        lr: a.lr,
        seed: a.seed,
        ..PotentialTraining::default()
    };
    let train_len = data.split("train").map_or(0, |d| d.samples.len());
    let steps = a.epochs * train_len.div_ceil(cfg.batch_size);
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(ProgressStyle::with_template(
        "train {bar:30} {pos}/{len} steps {per_sec} ({eta}) {msg}",
    )?);
    let mut csv = String::from(
        "epoch,lr,train_loss,train_energy_mse,train_force_mse,val_energy_mae_per_atom,val_force_mae,val_equivariance_mean,val_equivariance_max,seconds\n",
    );
    let start = std::time::Instant::now();
    let (mut model, log) = train_potential(
        &cfg,
        &data,
        |_, loss| {
            bar.inc(1);
            bar.set_message(format!("loss {loss:.4}"));
        },
        |r| {
            let line = format!(
                "epoch {:3}: loss {:.4e}  val energy MAE/atom {:.4e}  val force MAE {:.4e}  equivariance {:.1e}",
                r.epoch, r.train_loss, r.val.energy_mae_per_atom, r.val.force_mae, r.val_equivariance_max
            );
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{},{},{},{},{}",
                r.epoch,
                r.lr,
                r.train_loss,
                r.train_energy_mse,
                r.train_force_mse,
                r.val.energy_mae_per_atom,
                r.val.force_mae,
                r.val_equivariance_mean,
                r.val_equivariance_max,
                r.seconds
            );
        },
    )?;
    bar.finish_and_clear();
    let train_seconds = start.elapsed().as_secs_f64();
    std::fs::write(a.out.join("lj_potential.csv"), csv)?;
    plot(&a.out.join("lj_potential.svg"), &log)?;
    let test = &data.split("test").ok_or("no test split")?.samples;
    let errors = evaluate(&mut model, test, cfg.batch_size)?;
    // MD of the largest test cluster from its recorded state, learned vs exact forces
    let start_sample = test
        .iter()
        .max_by_key(|s| s.len())
        .ok_or("empty test split")?;
    let (dt, every) = (0.002, 50);
    let md_start = std::time::Instant::now();
    let learned = md_with_potential(&mut model, start_sample, dt, a.md_steps, every)?;
    let md_seconds = md_start.elapsed().as_secs_f64();
    let mut exact_field = |x: &[nalgebra::Vector3<f64>]| Ok(energy_and_forces(&LJ, x, &[]));
    let exact: MdReport = run_md(
        &mut exact_field,
        ParticleState {
            positions: start_sample.positions.clone(),
            velocities: start_sample.velocities.clone(),
        },
        dt,
        a.md_steps,
        every,
    )?;
    let mut md_csv = String::from("step,learned_total_energy,exact_total_energy\n");
    for (i, s) in learned.steps.iter().enumerate() {
        let _ = writeln!(
            md_csv,
            "{s},{},{}",
            learned.total_energy[i],
            exact.total_energy.get(i).copied().unwrap_or(f64::NAN)
        );
    }
    std::fs::write(a.out.join("lj_potential_md.csv"), md_csv)?;
    let test_atoms: usize = test.iter().map(|s| s.len()).sum();
    let table = format!(
        "| quantity | value |\n|---|---|\n\
         | training | {train} clusters, {epochs} epochs, {train_seconds:.0} s ({per_epoch:.2} s/epoch) |\n\
         | test set | {g} clusters, {test_atoms} atoms |\n\
         | energy MAE per atom (test) | {emae:.2e} ε (RMSE {ermse:.2e}) |\n\
         | force MAE (test) | {fmae:.2e} ε/σ (RMSE {frmse:.2e}; mean \\|F\\| component {fscale:.2}) |\n\
         | MD, learned forces: {n} atoms, {steps} steps of dt {dt} | max drift {ld:.2e} ε/atom, net {ln:.2e} ε/atom ({md_seconds:.1} s) |\n\
         | MD, exact LJ forces, same start | max drift {xd:.2e} ε/atom, net {xn:.2e} ε/atom |\n",
        train = train_len,
        epochs = a.epochs,
        per_epoch = train_seconds / a.epochs.max(1) as f64,
        g = errors.clusters,
        emae = errors.energy_mae_per_atom,
        ermse = errors.energy_rmse_per_atom,
        fmae = errors.force_mae,
        frmse = errors.force_rmse,
        fscale = errors.force_scale,
        n = start_sample.len(),
        steps = a.md_steps,
        ld = learned.max_drift_per_atom,
        ln = learned.net_drift_per_atom,
        xd = exact.max_drift_per_atom,
        xn = exact.net_drift_per_atom,
    );
    std::fs::write(a.out.join("lj_potential.md"), &table)?;
    println!("{table}");
    println!("written to {}", a.out.display());
    Ok(())
}
