//! The N-body EGNN pipeline in miniature: a small simulated data set, a small model, a few
//! Adam steps; the loss must fall and the model must stay E(3)-equivariant.

use rand::SeedableRng;
use se3_models::physics::dataset::Sample;
use se3_models::physics::egnn_nbody::{NBodyEgnn, NBodyEgnnConfig};
use se3_models::physics::nbody::NBodyConfig;
use se3_models::physics::nbody_model::NBodyModel;
use se3_models::Error;

#[test]
fn nbody_egnn_training_lowers_the_loss_and_stays_equivariant() -> Result<(), Error> {
    let seed = rand::random::<u64>();
    let cfg = NBodyConfig {
        train: 16,
        val: 8,
        test: 0,
        ..NBodyConfig::default()
    };
    let (file, _) = cfg.generate(seed, || {})?;
    let train = &file.split("train").expect("train split").samples;
    let val = &file.split("val").expect("val split").samples;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model = NBodyEgnn::new(
        NBodyEgnnConfig {
            hidden: 16,
            layers: 2,
        },
        &mut rng,
    )
    .with_learning_rate(3e-3);
    let batch: Vec<&Sample> = train.iter().collect();
    let before = model.mse(train, 16)?;
    let mut last = before;
    for _ in 0..40 {
        last = model.train_step(&batch)?;
    }
    let after = model.mse(train, 16)?;
    println!("seed {seed}: train MSE {before:.4} -> {after:.4} (last step {last:.4})");
    assert!(
        after < 0.7 * before,
        "seed {seed}: loss did not fall: {before} -> {after}"
    );
    let probe: Vec<&Sample> = val.iter().collect();
    let e = model.equivariance_error(&probe, &mut rng)?;
    println!("seed {seed}: equivariance error {e:.2e}");
    assert!(e < 1e-4, "seed {seed}: equivariance error {e}");
    Ok(())
}

/// The benchmark's run in miniature: evaluated epochs as asked, the log, curves and table
/// written from them, the best row the one of lowest validation MSE.
#[test]
fn nbody_benchmark_run_logs_every_evaluated_epoch() -> Result<(), Error> {
    use se3_models::physics::nbody_benchmark::{train_nbody_egnn, NBodyRunOptions};
    let seed = rand::random::<u64>();
    let cfg = NBodyConfig {
        train: 12,
        val: 6,
        test: 6,
        ..NBodyConfig::default()
    };
    let (file, _) = cfg.generate(seed, || {})?;
    let opts = NBodyRunOptions {
        epochs: 3,
        seed,
        lr: 1e-3,
        cosine_to: Some(0.1),
        batch: 6,
        eval_every: 2,
    };
    let (mut steps, mut evals) = (0, 0);
    let config = NBodyEgnnConfig {
        hidden: 8,
        layers: 2,
    };
    let run = train_nbody_egnn(
        &file,
        config,
        &opts,
        |_, _| steps += 1,
        |_| {
            evals += 1;
            Ok(())
        },
    )?;
    assert_eq!(steps, 6, "seed {seed}: two steps per epoch");
    assert_eq!(evals, 2, "seed {seed}: evaluated at epochs 2 and 3");
    let epochs: Vec<usize> = run.rows.iter().map(|r| r.epoch).collect();
    assert_eq!(epochs, vec![2, 3]);
    for r in &run.rows {
        assert!(
            r.train_mse.is_finite() && r.val_mse > 0.0 && r.test_mse > 0.0,
            "seed {seed}: {r:?}"
        );
        assert!(r.equivariance < 1e-4, "seed {seed}: {r:?}");
    }
    let best = run.best().expect("rows");
    assert!(run.rows.iter().all(|r| r.val_mse >= best.val_mse));
    let csv = run.csv();
    assert_eq!(csv.lines().count(), 3, "header and two rows:\n{csv}");
    assert!(csv.lines().nth(1).is_some_and(|l| l.starts_with("2,")));
    let md = run.markdown(&opts);
    assert!(
        md.contains(&format!("| 3 | {} |", best.epoch)),
        "table row names the last and the best epoch:\n{md}"
    );
    assert!(run.svg("t").starts_with("<svg"));
    Ok(())
}
