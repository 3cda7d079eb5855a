//! The N-body TFN and SE(3)-Transformer pipelines in miniature: a small simulated data set, a
//! small model, a few Adam steps through the shared training loop; the loss must fall and the
//! model must stay E(3)-equivariant.

use rand::SeedableRng;
use se3_models::physics::dataset::Sample;
use se3_models::physics::nbody::NBodyConfig;
use se3_models::physics::nbody_benchmark::{train_nbody, NBodyRunOptions};
use se3_models::physics::nbody_model::NBodyModel;
use se3_models::physics::se3_nbody::{NBodyArchitecture, NBodySe3Config, NBodySe3Net};
use se3_models::Error;

fn small(architecture: NBodyArchitecture) -> NBodySe3Config {
    NBodySe3Config {
        dim: 4,
        layers: match architecture {
            NBodyArchitecture::Tfn => 2,
            NBodyArchitecture::Se3Transformer => 1,
        },
        heads: 1,
        dim_head: 4,
        ..NBodySe3Config::new(architecture)
    }
}

fn lowers_the_loss_and_stays_equivariant(architecture: NBodyArchitecture) -> Result<(), Error> {
    let seed = rand::random::<u64>();
    let name = architecture.name();
    let (file, _) = NBodyConfig {
        train: 4,
        val: 2,
        test: 2,
        ..NBodyConfig::default()
    }
    .generate(seed, || {})?;
    let train = &file.split("train").expect("train split").samples;
    let val = &file.split("val").expect("val split").samples;
    let mut model = NBodySe3Net::new(small(architecture), seed, 1e-2)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let before = model.mse(train, 4)?;
    let opts = NBodyRunOptions {
        epochs: 12,
        seed,
        lr: 1e-2,
        cosine_to: None,
        batch: 4,
        eval_every: 12,
    };
    let mut steps = 0;
    let run = train_nbody(
        &mut model,
        &file,
        &opts,
        &mut rng,
        |_, _| steps += 1,
        |_| Ok(()),
    )?;
    let after = model.mse(train, 4)?;
    println!("{name} seed {seed}: train MSE {before:.4} -> {after:.4}");
    assert_eq!(steps, 12, "{name} seed {seed}: one step per epoch");
    assert_eq!(run.rows.len(), 1, "{name} seed {seed}: one evaluation");
    assert!(
        after < 0.9 * before,
        "{name} seed {seed}: loss did not fall: {before} -> {after}"
    );
    let probe: Vec<&Sample> = val.iter().collect();
    let e = model.equivariance_error(&probe, &mut rng)?;
    println!("{name} seed {seed}: equivariance error {e:.2e}");
    assert!(e < 1e-4, "{name} seed {seed}: equivariance error {e}");
    assert!(
        run.rows.iter().all(|r| r.equivariance < 1e-4),
        "{name} seed {seed}: {:?}",
        run.rows
    );
    Ok(())
}

#[test]
fn nbody_tfn_training_lowers_the_loss_and_stays_equivariant() -> Result<(), Error> {
    lowers_the_loss_and_stays_equivariant(NBodyArchitecture::Tfn)
}

#[test]
fn nbody_se3_transformer_training_lowers_the_loss_and_stays_equivariant() -> Result<(), Error> {
    lowers_the_loss_and_stays_equivariant(NBodyArchitecture::Se3Transformer)
}

/// The table names the model and the paper's number of its kind.
#[test]
fn nbody_se3_tables_name_the_model_and_the_published_number() -> Result<(), Error> {
    let tfn = NBodySe3Net::new(small(NBodyArchitecture::Tfn), 1, 1e-3)?;
    let se3t = NBodySe3Net::new(small(NBodyArchitecture::Se3Transformer), 1, 1e-3)?;
    assert!(tfn.label().contains("TFN (2 ConvSE3 layers"));
    assert!(se3t
        .label()
        .contains("SE(3)-Transformer (1 attention blocks"));
    assert_eq!(tfn.published_test_mse(), Some(("TFN", 0.0155)));
    assert_eq!(
        se3t.published_test_mse(),
        Some(("SE(3)-Transformer", 0.0244))
    );
    Ok(())
}
