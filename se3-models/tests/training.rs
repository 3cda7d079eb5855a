//! The trainer on a small TFN and the generated "weighted neighbours" set: the loss falls,
//! stopped-and-resumed training equals uninterrupted training, and bad input gives typed errors
//! that name the step and the tensor without touching the parameters or a checkpoint.

use se3_core::train::LrSchedule;
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::training::build::trainable_from_parts;
use se3_models::training::dataset::weighted_neighbours;
use se3_models::training::{
    DifferentiableModel, LossAndGradients, OptimizerKind, OutputTransform, TrainOptions,
    TrainableModel, Trainer, TrainingCheckpoint, TrainingSet,
};
use se3_models::Error;

fn seed() -> u64 {
    std::env::var("SE3_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

fn config() -> serde_json::Value {
    serde_json::json!({
        "class": "TFNStack",
        "library": {"name": "se3-transformer-pytorch", "version": "0.9.0"},
        "constructor_kwargs": {"fibers": [{"0": 1}, {"0": 1, "1": 1}]}
    })
}

fn file(config: &serde_json::Value) -> Result<ModelFile, Error> {
    ModelFile::from_json(&config.to_string(), "test config")
}

/// The model of [`config`] with fresh weights drawn from `seed`.
fn model(seed: u64) -> Result<DifferentiableModel, Error> {
    trainable_from_parts(&file(&config())?, None, seed)
}

fn options(epochs: usize, seed: u64) -> TrainOptions {
    TrainOptions {
        epochs,
        batch_size: 4,
        lr: 1e-2,
        optimizer: OptimizerKind::Adam,
        momentum: 0.0,
        weight_decay: 0.0,
        schedule: LrSchedule::Constant,
        clip_norm: None,
        freeze: vec![],
        seed,
    }
}

fn params_of<M: TrainableModel>(t: &Trainer<M>) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    t.model.parameters()
}

#[test]
fn small_tfn_loss_falls_a_hundredfold() -> Result<(), Error> {
    let seed = seed();
    let data = weighted_neighbours(seed, 8, 4, 6)?;
    let mut opts = options(400, seed);
    opts.batch_size = 8;
    opts.lr = 2e-2;
    let mut t = Trainer::new(model(seed)?, opts);
    t.check_data(&data)?;
    let first = t.loss_on(&data.train)?;
    let mut last = first;
    let mut epochs = 0;
    while epochs < 400 && last > first / 100.0 {
        t.train_epoch(&data, &mut |_| {})?;
        epochs += 1;
        if epochs % 10 == 0 {
            last = t.loss_on(&data.train)?;
        }
    }
    let record = t.progress.history.last().cloned();
    println!(
        "SE3_SEED={seed}: loss {first:.4e} -> {last:.4e} ({:.0}x) in {epochs} epochs; last record {record:?}",
        first / last
    );
    assert!(
        last <= first / 100.0,
        "SE3_SEED={seed}: loss fell only {first:.3e} -> {last:.3e} in {epochs} epochs"
    );
    let eq = record.map_or(f64::NAN, |r| r.equivariance_error);
    assert!(eq < 1e-3, "equivariance error {eq} after training");
    Ok(())
}

#[test]
fn resumed_training_equals_uninterrupted_training() -> Result<(), Error> {
    let seed = seed();
    let data = weighted_neighbours(seed, 10, 3, 5)?;
    let dir = std::env::temp_dir().join(format!("se3-resume-{seed}-{}", std::process::id()));
    for kind in [OptimizerKind::Adam, OptimizerKind::Sgd] {
        let mut opts = options(4, seed);
        opts.optimizer = kind;
        opts.momentum = 0.9;
        opts.schedule = LrSchedule::Cosine {
            t_max: 4,
            eta_min: 1e-3,
        };
        let mut straight = Trainer::new(model(seed)?, opts.clone());
        straight.train(&data, &mut |_| {}, &mut |_| Ok(()))?;

        let mut first = Trainer::new(
            model(seed)?,
            TrainOptions {
                epochs: 2,
                ..opts.clone()
            },
        );
        first.train(&data, &mut |_| {}, &mut |_| Ok(()))?;
        TrainingCheckpoint::of(&first, &config())?.save(&dir)?;
        drop(first);
        // a new process would rebuild the model from the checkpoint's files
        let ck = TrainingCheckpoint::load(&dir)?;
        let m = trainable_from_parts(&file(&ck.config)?, Some(&ck.weights), 0)?;
        let mut resumed = Trainer::new(m, opts.clone());
        ck.restore(&mut resumed)?;
        assert_eq!(resumed.progress.epochs_done, 2);
        resumed.train(&data, &mut |_| {}, &mut |_| Ok(()))?;

        assert_eq!(straight.progress.steps_done, resumed.progress.steps_done);
        let (a, b) = (params_of(&straight), params_of(&resumed));
        let mut worst = 0.0f32;
        for ((ka, _, va), (kb, _, vb)) in a.iter().zip(&b) {
            assert_eq!(ka, kb);
            for (x, y) in va.iter().zip(vb) {
                worst = worst.max((x - y).abs());
            }
        }
        println!("{kind:?}: resumed vs uninterrupted, max |Δparam| = {worst:e}");
        assert_eq!(worst, 0.0, "{kind:?}: resumed parameters differ by {worst}");
        // epochs 3 and 4 ran after the resume; 1 and 2 came back through state.json
        let (h1, h2) = (&straight.progress.history, &resumed.progress.history);
        assert_eq!(h1.len(), h2.len());
        for (x, y) in h1.iter().zip(h2) {
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
            assert!(
                x.epoch == y.epoch
                    && x.steps == y.steps
                    && close(x.lr, y.lr)
                    && close(x.train_loss, y.train_loss)
                    && close(x.val_loss.unwrap_or(0.0), y.val_loss.unwrap_or(0.0))
                    && close(x.equivariance_error, y.equivariance_error),
                "{kind:?}: epoch records differ: {x:?} vs {y:?}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(())
}

/// A model whose gradient of one tensor turns NaN from step `at` on.
struct Poisoned {
    inner: DifferentiableModel,
    at: usize,
    calls: usize,
    key: String,
}

impl TrainableModel for Poisoned {
    fn loss_and_gradients(
        &mut self,
        inputs: &ModelInputs,
        targets: &StateDict,
    ) -> Result<LossAndGradients, Error> {
        let mut e = self.inner.loss_and_gradients(inputs, targets)?;
        self.calls += 1;
        if self.calls >= self.at {
            let name = format!("param.{}", self.key);
            if let Some(t) = e.gradients.get(&name) {
                let mut t = t.clone();
                t.data[1] = f64::NAN;
                e.gradients.insert(name, t);
            }
        }
        Ok(e)
    }
    fn parameters(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.inner.parameters()
    }
    fn set_parameter(&mut self, key: &str, values: &[f32]) -> Result<(), Error> {
        self.inner.set_parameter(key, values)
    }
    fn output_transform(&self, name: &str) -> Option<OutputTransform> {
        self.inner.output_transform(name)
    }
}

#[test]
fn nan_gradient_names_step_and_tensor_and_keeps_the_checkpoint() -> Result<(), Error> {
    let seed = seed();
    let data = weighted_neighbours(seed, 8, 0, 5)?;
    let inner = model(seed)?;
    let key = inner.parameters()[2].0.clone();
    // 2 steps an epoch: epoch 1 is clean and checkpointed, step 3 (epoch 2) fails; the
    // first call is the data check's probe
    let poisoned = Poisoned {
        inner,
        at: 4,
        calls: 0,
        key: key.clone(),
    };
    let dir = std::env::temp_dir().join(format!("se3-nan-{seed}-{}", std::process::id()));
    let mut t = Trainer::new(poisoned, options(3, seed));
    let mut before = Vec::new();
    let r = t.train(&data, &mut |_| {}, &mut |tr| {
        before = tr.model.parameters();
        TrainingCheckpoint::of(tr, &config())?.save(&dir)
    });
    match r {
        Err(Error::NonFiniteGradient {
            epoch,
            step,
            tensor,
            index,
            ..
        }) => {
            assert_eq!((epoch, step, index), (2, 3, 1));
            assert_eq!(tensor, format!("param.{key}"));
        }
        other => panic!("expected NonFiniteGradient, got {other:?}"),
    }
    let msg = Error::NonFiniteGradient {
        epoch: 2,
        step: 3,
        tensor: format!("param.{key}"),
        index: 1,
        value: f64::NAN,
    }
    .to_string();
    assert!(msg.contains("step 3") && msg.contains(&key), "{msg}");
    // the failing step changed nothing and the epoch-1 checkpoint is intact and finite
    assert_eq!(t.progress.steps_done, 2);
    let ck = TrainingCheckpoint::load(&dir)?;
    assert_eq!(ck.progress.epochs_done, 1);
    for (k, _, v) in &before {
        let saved = ck
            .weights
            .get(k)
            .map(|t| t.data.clone())
            .unwrap_or_default();
        let want: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
        assert_eq!(saved, want, "{k}: checkpoint changed");
    }
    assert_eq!(
        t.model.parameters(),
        before,
        "a failing step changed parameters"
    );
    std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(())
}

#[test]
fn nan_loss_empty_batch_and_bad_shapes_are_typed_errors() -> Result<(), Error> {
    let seed = seed();
    let good = weighted_neighbours(seed, 4, 0, 5)?;

    // a target so large that the squared error overflows: NaN-free data, infinite loss
    let mut huge = good.clone();
    if let Some(t) = huge.train.targets.get_mut("type0") {
        t.data[0] = 1e200;
    }
    let mut t = Trainer::new(model(seed)?, options(1, seed));
    let before = t.model.parameters();
    match t.train(&huge, &mut |_| {}, &mut |_| Ok(())) {
        Err(Error::NonFiniteLoss { epoch, step, .. }) => assert_eq!((epoch, step), (1, 1)),
        other => panic!("expected NonFiniteLoss, got {other:?}"),
    }
    assert_eq!(t.model.parameters(), before);

    // every node padding: an empty batch
    let mut empty = good.clone();
    empty.train.mask = Some(se3_models::inputs::BoolTensor {
        shape: vec![4, 5],
        data: vec![false; 20],
    });
    let mut t = Trainer::new(model(seed)?, options(1, seed));
    match t.train(&empty, &mut |_| {}, &mut |_| Ok(())) {
        Err(Error::EmptyBatch { epoch, step, .. }) => assert_eq!((epoch, step), (1, 1)),
        other => panic!("expected EmptyBatch, got {other:?}"),
    }

    // features with 2 channels for a model that takes 1; a target of the wrong width
    let mut wide = good.clone();
    wide.train.feats = Tensor::new(vec![4, 5, 2], vec![0.5; 40])?;
    let mut t = Trainer::new(model(seed)?, options(1, seed));
    match t.check_data(&wide) {
        Err(Error::DatasetShape { tensor, found, .. }) => {
            assert_eq!((tensor.as_str(), found), ("train.feats", vec![4, 5, 2]));
        }
        other => panic!("expected DatasetShape, got {other:?}"),
    }
    let mut narrow = good.clone();
    narrow.train.targets.insert(
        "type1".into(),
        Tensor::new(vec![4, 5, 2, 3], vec![0.0; 120])?,
    );
    match t.check_data(&narrow) {
        Err(Error::DatasetShape { tensor, .. }) => assert_eq!(tensor, "train.target.type1"),
        other => panic!("expected DatasetShape, got {other:?}"),
    }

    // a file whose split tensors disagree is refused when read
    let dir = std::env::temp_dir().join(format!("se3-bad-set-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let path = dir.join("bad.safetensors");
    let mut bad = good.clone();
    bad.train.coors = Tensor::new(vec![4, 4, 3], vec![0.1; 48])?;
    bad.save(&path)?;
    match TrainingSet::load(&path) {
        Err(Error::DatasetShape { tensor, .. }) => assert_eq!(tensor, "train.feats"),
        other => panic!("expected DatasetShape, got {other:?}"),
    }
    let mut bad_val = weighted_neighbours(seed, 4, 2, 5)?;
    if let Some(v) = bad_val.val.as_mut() {
        v.targets.insert(
            "type1".into(),
            Tensor::new(vec![2, 5, 1, 5], vec![0.0; 50])?,
        );
    }
    bad_val.save(&path)?;
    match TrainingSet::load(&path) {
        Err(Error::DatasetShape { tensor, .. }) => assert_eq!(tensor, "val.target.type1"),
        other => panic!("expected DatasetShape, got {other:?}"),
    }
    good.save(&path)?;
    let back = TrainingSet::load(&path)?;
    assert_eq!(back.train.len(), 4);
    std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(())
}
