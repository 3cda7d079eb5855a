//! Module checkpoints: `save` writes the parameters by field path with the layers' fibers as
//! metadata, `load` reads them back, and a checkpoint whose fibers disagree with the struct
//! is a typed error naming the field.

use rand::rngs::StdRng;
use rand::SeedableRng;
use se3::layers::{NormActivation, NormScale};
use se3::prelude::*;
use se3::testing::{random_vectors, seed};

use crate::reference::{reference_path, TestResult};

#[fiber(0:3)]
struct Atoms;
#[fiber(0:6, 1:3)]
struct Hidden;
#[fiber(0:2, 1:2)]
struct Narrow;
#[fiber(0:4, 1:2)]
struct Wider;
#[fiber(0:1, 1:1)]
struct Out;

#[derive(Module)]
struct Block {
    norm: Norm<Hidden>,
    mix: Linear<Hidden, Hidden>,
}

#[derive(Module)]
struct Net {
    embed: Conv<Atoms, Hidden>,
    #[module(repeat = 2)]
    blocks: Vec<Block>,
    #[module(init = |rng| Ok(Some(Linear::new(rng))))]
    skip: Option<Linear<Hidden, Hidden>>,
    #[module(init = |_| Ok(Norm::new(NormScale::Gated, NormActivation::Identity)))]
    gated: Norm<Hidden>,
    linear: Linear<Hidden, Narrow>,
    #[module(rename = "head")]
    out: Conv<Narrow, Out>,
}

impl Forward for Net {
    type In = Atoms;
    type Out = Out;
    fn forward(&self, g: &mut GraphCtx, x: GraphFeatures<Atoms>) -> Result<GraphFeatures<Out>> {
        let mut h = self.embed.apply(g, &x)?;
        for b in &self.blocks {
            let y = b.norm.apply(g, &h)?;
            let y = b.mix.apply(g, &y)?;
            h = y.residual(&h);
        }
        if let Some(skip) = &self.skip {
            h = skip.apply(g, &h)?.residual(&h);
        }
        let h = self.gated.apply(g, &h)?;
        let h = self.linear.apply(g, &h)?;
        self.out.apply(g, &h)
    }
}

/// `Net` with another fiber at `linear` (and so at `head`).
#[derive(Module)]
struct WiderNet {
    embed: Conv<Atoms, Hidden>,
    #[module(repeat = 2)]
    blocks: Vec<Block>,
    #[module(init = |rng| Ok(Some(Linear::new(rng))))]
    skip: Option<Linear<Hidden, Hidden>>,
    #[module(init = |_| Ok(Norm::new(NormScale::Gated, NormActivation::Identity)))]
    gated: Norm<Hidden>,
    linear: Linear<Hidden, Wider>,
    head: Conv<Wider, Out>,
}

fn temp_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("se3-module-{}-{name}", std::process::id()))
}

#[test]
fn save_then_load_round_trips_the_parameters_and_the_outputs() -> TestResult {
    let s = seed();
    let mut rng = StdRng::seed_from_u64(s);
    let net = Net::new(&mut rng)?;
    let names: Vec<String> = net.parameters().into_iter().map(|(k, _)| k).collect();
    for key in [
        "embed.kernel_unary.(0,1).rp.net.6.weight",
        "embed.self_interact.weights.0",
        "blocks.1.norm.transform.1.scale",
        "blocks.0.mix.weights.1",
        "skip.bias",
        "gated.transform.0.w_gate",
        "head.kernel_unary.(1,1).rp.net.0.weight",
    ] {
        assert!(
            names.iter().any(|k| k == key),
            "seed {s}: no `{key}` in {names:?}"
        );
    }
    let path = temp_file("round-trip.safetensors");
    net.save(&path)?;

    let mut other = Net::new(&mut rng)?;
    assert_ne!(other.parameters(), net.parameters(), "seed {s}");
    other.load(&path)?;
    assert_eq!(other.parameters(), net.parameters(), "seed {s}");

    // the file lists every layer's fibers
    let bytes = std::fs::read(&path)?;
    std::fs::remove_file(&path)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let fibers = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("se3.fibers"))
        .ok_or("no se3.fibers metadata")?;
    let fibers: serde_json::Value = serde_json::from_str(fibers)?;
    assert_eq!(fibers["head"]["layer"], "Conv");
    assert_eq!(fibers["head"]["in"], "0:2, 1:2");
    assert_eq!(fibers["head"]["out"], "0:1, 1:1");
    assert_eq!(fibers["blocks.1.mix"]["in"], "0:6, 1:3");

    // same weights, same outputs
    let cloud = Cloud::new(random_vectors(&mut rng, 20, 2.0));
    let x = Features::<Atoms>::from_fn(20, |_, n, c, _| ((n * 3 + c) % 7) as f32 - 3.0);
    let a = net.compile(Neighbors::knn(6))?.forward(&cloud, &x)?;
    let b = other.compile(Neighbors::knn(6))?.forward(&cloud, &x)?;
    assert_eq!(a.blocks(), b.blocks(), "seed {s}");
    Ok(())
}

#[test]
fn loading_a_checkpoint_of_other_fibers_is_an_error_naming_the_field() -> TestResult {
    let mut rng = StdRng::seed_from_u64(seed());
    let path = temp_file("wider.safetensors");
    WiderNet::new(&mut rng)?.save(&path)?;
    let result = Net::new(&mut rng)?.load(&path);
    std::fs::remove_file(&path)?;
    let err = result.err().ok_or("a checkpoint of other fibers loaded")?;
    println!("{err}");
    assert!(
        matches!(&err, Error::CheckpointFibers { field, .. } if field == "linear"),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn a_pytorch_checkpoint_of_other_fibers_fails_on_a_key_under_the_field() -> TestResult {
    // The TFN stack's state dict has no fiber metadata; its `convs.0` maps 0:8 to
    // 0:8, 1:8, 2:4, not 0:3 to 0:6, 1:3.
    #[derive(Module)]
    struct Convs(Conv<Atoms, Hidden>);
    #[derive(Module)]
    struct Stack {
        convs: Convs,
    }
    let mut stack = Stack::new(&mut StdRng::seed_from_u64(seed()))?;
    let err = stack
        .load(reference_path("models/tfn_stack/weights.safetensors"))
        .err()
        .ok_or("a checkpoint of other fibers loaded")?;
    println!("{err}");
    assert!(
        matches!(&err, Error::WrongShape { key, .. } if key.starts_with("convs.0.")),
        "{err:?}"
    );
    Ok(())
}
