//! The N-body EGNN pipeline in miniature: a small simulated data set, a small model, a few
//! Adam steps; the loss must fall and the model must stay E(3)-equivariant.

use rand::SeedableRng;
use se3_models::physics::dataset::Sample;
use se3_models::physics::egnn_nbody::{NBodyEgnn, NBodyEgnnConfig};
use se3_models::physics::nbody::NBodyConfig;
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
