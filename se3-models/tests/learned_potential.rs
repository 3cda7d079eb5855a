//! The learned energy-and-forces potential on a tiny Lennard-Jones set (seconds): forces are
//! minus the energy's gradient and rotate with the cluster, the training gradient (through the
//! forces' backward pass) matches finite differences of the loss, training lowers the loss, and
//! MD with the learned forces runs.

use nalgebra::Vector3;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use se3_models::physics::dataset::{DatasetFile, Sample};
use se3_models::physics::learned_potential::{
    energy_normalization, LearnedPotential, PotentialConfig,
};
use se3_models::physics::lj_clusters::LjClusterConfig;
use se3_models::physics::potential_training::{
    evaluate, md_with_potential, train_potential, PotentialTraining,
};
use se3_models::physics::random::uniform_rotation;
use se3_models::Error;

fn seed() -> u64 {
    std::env::var("SE3_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn tiny_set(seed: u64) -> Result<DatasetFile, Error> {
    LjClusterConfig {
        sizes: vec![5, 7],
        temperatures: vec![0.1, 0.25],
        equilibration_steps: 200,
        sample_every: 25,
        samples_per_trajectory: 4,
        train: 4,
        val: 2,
        test: 2,
        ..LjClusterConfig::default()
    }
    .generate(seed, || {})
}

fn small_model(data: &DatasetFile, rng: &mut StdRng) -> Result<LearnedPotential, Error> {
    let train = &data.split("train").expect("train split").samples;
    let (shift, scale) = energy_normalization(train);
    let cfg = PotentialConfig {
        radial: 6,
        hidden: 8,
        ..PotentialConfig::default()
    };
    LearnedPotential::new(cfg, shift, scale, rng)
}

fn moved(s: &Sample, f: impl Fn(&Vector3<f64>) -> Vector3<f64>) -> Sample {
    Sample {
        positions: s.positions.iter().map(f).collect(),
        ..s.clone()
    }
}

#[test]
fn learned_forces_are_the_energy_gradient_and_equivariant() -> Result<(), Error> {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let data = tiny_set(seed)?;
    let mut model = small_model(&data, &mut rng)?;
    let s = &data.split("test").expect("test split").samples[0];
    let (e0, f0) = model.predict(&[s])?.remove(0);
    // rotation, reflection and translation: E invariant, F(x Qᵀ + t) = F(x) Qᵀ
    let mut q = *uniform_rotation(&mut rng).matrix();
    if rng.gen_bool(0.5) {
        q = -q;
    }
    let t = Vector3::new(rng.gen_range(-2.0..2.0), rng.gen_range(-2.0..2.0), 0.5);
    let (e1, f1) = model.predict(&[&moved(s, |x| q * x + t)])?.remove(0);
    let scale = f0.iter().fold(1e-3f64, |m, f| m.max(f.norm()));
    let f_err = f0
        .iter()
        .zip(&f1)
        .fold(0.0f64, |m, (a, b)| m.max((q * a - b).norm()))
        / scale;
    println!("seed {seed}: energy {e0:.5} vs {e1:.5}, force equivariance error {f_err:.2e}");
    assert!(
        (e0 - e1).abs() < 1e-5 * e0.abs().max(1.0),
        "energy not invariant"
    );
    assert!(f_err < 1e-4, "forces not equivariant: {f_err:.3e}");
    // −F is the energy's gradient: central differences of the float32 energy at h and h/2,
    // Richardson-extrapolated (the h² terms cancel), h = 1e-2
    let h = 1e-2;
    let mut worst = 0.0f64;
    for (atom, f) in f0.iter().enumerate() {
        for (c, &want) in f.iter().enumerate() {
            let shifted = |d: f64| {
                let mut m = s.clone();
                m.positions[atom][c] += d;
                m
            };
            let mut central = |h: f64| -> Result<f64, Error> {
                let up = model.predict(&[&shifted(h)])?[0].0;
                let down = model.predict(&[&shifted(-h)])?[0].0;
                Ok(-(up - down) / (2.0 * h))
            };
            let fd = (4.0 * central(h / 2.0)? - central(h)?) / 3.0;
            worst = worst.max((fd - want).abs() / scale);
        }
    }
    println!("seed {seed}: forces vs finite differences of the energy {worst:.2e}");
    assert!(worst < 5e-3, "forces are not −∂E/∂x: {worst:.3e}");
    Ok(())
}

#[test]
fn force_training_gradient_matches_finite_differences_of_the_loss() -> Result<(), Error> {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let data = tiny_set(seed)?;
    let mut model = small_model(&data, &mut rng)?;
    let train = &data.split("train").expect("train split").samples;
    let batch: Vec<&Sample> = train.iter().take(3).collect();
    let (l0, grads) = model.loss_and_gradients(&batch)?;
    assert!(l0.force_mse > 0.0 && l0.energy_mse > 0.0);
    let base: Vec<Vec<f32>> = model.parameters().iter().map(|p| p.value.clone()).collect();
    let names: Vec<String> = model.parameters().iter().map(|p| p.name.clone()).collect();
    let g_scale = grads
        .iter()
        .flatten()
        .fold(1e-6f64, |m, g| m.max(f64::from(g.abs())));
    let h = 1e-2f32;
    let mut worst = (0.0f64, String::new());
    for (p, name) in names.iter().enumerate() {
        for _ in 0..4 {
            let i = rng.gen_range(0..base[p].len());
            let mut loss_at = |d: f32| -> Result<f64, Error> {
                let mut v = base.clone();
                v[p][i] += d;
                model.set_parameters(v)?;
                Ok(model.loss_and_gradients(&batch)?.0.loss)
            };
            let fd = (loss_at(h)? - loss_at(-h)?) / (2.0 * f64::from(h));
            let e = (fd - f64::from(grads[p][i])).abs() / g_scale;
            if e > worst.0 {
                worst = (
                    e,
                    format!("{name}[{i}] fd {fd:.5e} backward {:.5e}", grads[p][i]),
                );
            }
        }
    }
    model.set_parameters(base)?;
    println!(
        "seed {seed}: loss gradient (through the forces) vs finite differences {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(
        worst.0 < 5e-3,
        "training gradient off: {:.3e} at {}",
        worst.0,
        worst.1
    );
    Ok(())
}

#[test]
fn tiny_potential_trains_and_runs_md() -> Result<(), Error> {
    let seed = seed();
    let data = tiny_set(seed)?;
    let cfg = PotentialTraining {
        model: PotentialConfig {
            radial: 8,
            hidden: 16,
            ..PotentialConfig::default()
        },
        epochs: 60,
        batch_size: 4,
        lr: 1e-2,
        seed,
    };
    let (mut model, log) = train_potential(&cfg, &data, |_, _| {}, |_| {})?;
    let (first, last) = (log[0].train_loss, log[log.len() - 1].train_loss);
    println!("seed {seed}: training loss {first:.4e} -> {last:.4e}");
    assert!(last < 0.5 * first, "loss did not fall: {first} -> {last}");
    let worst = log
        .iter()
        .map(|r| r.val_equivariance_max)
        .fold(0.0, f64::max);
    println!("seed {seed}: largest per-epoch equivariance error {worst:.1e}");
    for r in &log {
        // the per-epoch metric: energy and forces of rotated, translated clusters
        assert!(
            r.val_equivariance_max < 1e-4 && r.val_equivariance_mean <= r.val_equivariance_max,
            "seed {seed}: epoch {} equivariance error {} (mean {})",
            r.epoch,
            r.val_equivariance_max,
            r.val_equivariance_mean
        );
    }
    let test = &data.split("test").expect("test split").samples;
    let errors = evaluate(&mut model, test, 4)?;
    println!("seed {seed}: test errors {errors:?}");
    assert!(errors.force_mae.is_finite() && errors.energy_mae_per_atom.is_finite());
    let md = md_with_potential(&mut model, &test[0], 0.002, 50, 10)?;
    println!(
        "seed {seed}: MD drift per atom {:.2e}",
        md.max_drift_per_atom
    );
    assert_eq!(md.steps.last(), Some(&50));
    assert!(md.total_energy.iter().all(|e| e.is_finite()));
    Ok(())
}
