//! The TFN stack and the SE(3)-Transformer of the references written as modules: `load` reads
//! the PyTorch state dicts by field path, and the compiled modules reproduce the float64
//! reference outputs.

use se3::layers::{AttentionOptions, ConvOptions};
use se3::models::model_file::ModelFile;
use se3::models::se3_transformer::{
    Se3TransformerConfig, Se3TransformerOptions, TypedSe3Transformer,
};
use se3::prelude::*;
use se3::testing::check_close;

use crate::reference::{get, load, reference_path, rows3, TestResult};

/// Relative tolerance of a module against the float64 reference (float32 arithmetic).
const TOL_MODULE: f64 = 1e-5;

#[fiber(0:8)]
struct Atoms;
#[fiber(0:8, 1:8, 2:4)]
struct TfnHidden;
#[fiber(0:4, 1:2)]
struct TfnOut;

/// `convs.0`, `convs.1`, `convs.2` of `TFNStack`: three fibers, so a tuple struct.
#[derive(Module)]
struct TfnConvs(
    Conv<Atoms, TfnHidden>,
    Conv<TfnHidden, TfnHidden>,
    Conv<TfnHidden, TfnOut>,
);

#[derive(Module)]
struct TfnNorms(Norm<TfnHidden>, Norm<TfnHidden>);

/// The reference `TFNStack`: conv, norm, conv, norm, conv.
#[derive(Module)]
struct TfnStack {
    convs: TfnConvs,
    norms: TfnNorms,
}

impl Forward for TfnStack {
    type In = Atoms;
    type Out = TfnOut;
    fn forward(&self, g: &mut GraphCtx, x: GraphFeatures<Atoms>) -> Result<GraphFeatures<TfnOut>> {
        let h = self.convs.0.apply(g, &x)?;
        let h = self.norms.0.apply(g, &h)?;
        let h = self.convs.1.apply(g, &h)?;
        let h = self.norms.1.apply(g, &h)?;
        self.convs.2.apply(g, &h)
    }
}

#[fiber(0:8, 1:8)]
struct Hidden;
#[fiber(0:8)]
struct Readout;

/// `(AttentionBlockSE3, FeedForwardBlockSE3)`: keys `0.*` and `1.*`.
#[derive(Module)]
struct Block(AttentionBlock<Hidden>, FeedForwardBlock<Hidden>);

#[derive(Module)]
struct Trunk {
    blocks: Vec<Block>,
}

/// se3-transformer-pytorch's `SE3Transformer` without its options: `conv_in`, the blocks of
/// `net`, `conv_out`.
#[derive(Module)]
struct Se3TransformerOracle {
    conv_in: Conv<Atoms, Hidden>,
    net: Trunk,
    conv_out: Conv<Hidden, Readout>,
}

impl Se3TransformerOracle {
    /// The architecture of `options` with fresh weights.
    fn with_options(o: &Se3TransformerOptions, rng: &mut impl rand::Rng) -> Result<Self> {
        let attention = AttentionOptions {
            heads: o.heads,
            dim_head: o.dim_head,
            attend_self: o.attend_self,
            edge_dim: 0,
            fourier: None,
            ..AttentionOptions::default()
        };
        let blocks = (0..o.depth)
            .map(|_| {
                Ok(Block(
                    AttentionBlock::new(attention, o.norm_gated_scale, rng)?,
                    FeedForwardBlock::new(o.norm_gated_scale, rng)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Se3TransformerOracle {
            conv_in: Conv::new(ConvOptions::default(), rng)?,
            net: Trunk { blocks },
            conv_out: Conv::new(ConvOptions::default(), rng)?,
        })
    }
}

impl Forward for Se3TransformerOracle {
    type In = Atoms;
    type Out = Readout;
    fn forward(&self, g: &mut GraphCtx, x: GraphFeatures<Atoms>) -> Result<GraphFeatures<Readout>> {
        let mut h = self.conv_in.apply(g, &x)?;
        for Block(attention, feed_forward) in &self.net.blocks {
            h = attention.apply(g, &h)?;
            h = feed_forward.apply(g, &h)?;
        }
        self.conv_out.apply(g, &h)
    }
}

/// The reference inputs of `models/<name>`: the clouds (masked) and the features.
fn reference_inputs(name: &str) -> TestResult<(Cloud, Features<Atoms>)> {
    let rel = format!("models/{name}/inputs.safetensors");
    let file = load(&rel)?;
    let (coors, feats, mask) = (
        get(&file, &rel, "coors")?,
        get(&file, &rel, "feats")?,
        get(&file, &rel, "mask")?,
    );
    let (b, n) = (coors.shape[0], coors.shape[1]);
    let points = rows3(coors);
    let clouds = (0..b)
        .map(|i| {
            let mask = mask.data[i * n..(i + 1) * n].iter().map(|&v| v != 0.0);
            Cloud::new(points[i * n..(i + 1) * n].to_vec()).with_mask(mask.collect())
        })
        .collect::<Result<Vec<_>>>()?;
    let x = Features::from_fn(b * n, |_, node, c, _| feats.data[node * 8 + c] as f32);
    Ok((Cloud::batch(&clouds), x))
}

/// The largest relative error of `y` against `models/<name>/outputs.safetensors`, one key per
/// output degree.
fn compare<F: Fiber>(name: &str, y: &Features<F>, keys: &[&str]) -> TestResult<f64> {
    let rel = format!("models/{name}/outputs.safetensors");
    let want = load(&rel)?;
    let mut worst = 0.0f64;
    for (key, block) in keys.iter().zip(y.blocks()) {
        let got: Vec<f64> = block.data().iter().map(|&v| f64::from(v)).collect();
        let what = format!("{rel} `{key}` (module)");
        let err = check_close(&what, &got, &get(&want, &rel, key)?.data, TOL_MODULE)?;
        println!("{name} as a module, {key}: max rel err {err:.2e}");
        worst = worst.max(err);
    }
    Ok(worst)
}

#[test]
fn tfn_stack_module_loads_the_reference_by_field_names_and_reproduces_it() -> TestResult {
    let mut rng = rand::thread_rng();
    let mut stack = TfnStack::new(&mut rng)?;
    let names: Vec<String> = stack.parameters().into_iter().map(|(k, _)| k).collect();
    assert!(names.contains(&"convs.1.kernel_unary.(2,1).rp.net.6.weight".to_string()));
    assert!(names.contains(&"norms.0.transform.2.scale".to_string()));
    stack.load(reference_path("models/tfn_stack/weights.safetensors"))?;
    let (cloud, x) = reference_inputs("tfn_stack")?;
    // TFNStack's neighbours are all other nodes of the cloud: 11 of 12
    let y = stack.compile(Neighbors::knn(11))?.forward(&cloud, &x)?;
    compare("tfn_stack", &y, &["type0_f64", "type1_f64"])?;
    Ok(())
}

#[test]
fn se3_transformer_module_loads_the_reference_by_field_names_and_reproduces_it() -> TestResult {
    let dir = reference_path("models/se3t_basic");
    let file = ModelFile::load(dir.join("config.json"))?;
    let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let options = TypedSe3Transformer::<Atoms, Hidden, Readout>::options_of(&cfg)?;
    let mut model = Se3TransformerOracle::with_options(&options, &mut rand::thread_rng())?;
    model.load(dir.join("weights.safetensors"))?;
    let layers: Vec<String> = model.layers().into_iter().map(|e| e.path).collect();
    assert_eq!(
        layers,
        [
            "conv_in",
            "net.blocks.0.0",
            "net.blocks.0.1",
            "net.blocks.1.0",
            "net.blocks.1.1",
            "conv_out"
        ]
    );
    let (cloud, x) = reference_inputs("se3t_basic")?;
    let mut net = model.compile(Neighbors::knn(
        options
            .num_neighbors
            .ok_or("se3t_basic sets num_neighbors")?,
    ))?;
    compare("se3t_basic", &net.forward(&cloud, &x)?, &["out_f64"])?;
    Ok(())
}

#[test]
fn typed_se3_transformer_is_a_module_with_the_checkpoint_names() -> TestResult {
    use se3::models::checkpoint::StateDict;
    use se3::models::se3_transformer::TypedSe3Transformer;
    let dir = reference_path("models/se3t_basic");
    let file = ModelFile::load(dir.join("config.json"))?;
    let cfg = Se3TransformerConfig::from_kwargs(&file.constructor_kwargs)?;
    let options = TypedSe3Transformer::<Atoms, Hidden, Readout>::options_of(&cfg)?;
    let sd = StateDict::load(dir.join("weights.safetensors"))?;
    let model = TypedSe3Transformer::<Atoms, Hidden, Readout>::load(&sd, options)?;
    // every parameter of the module is the checkpoint's tensor of that name
    for (key, p) in model.parameters() {
        let t = sd
            .get(&key)
            .ok_or_else(|| format!("no `{key}` in se3t_basic"))?;
        let want: Vec<f32> = t.data.iter().map(|&v| v as f32).collect();
        assert_eq!(p.data, want, "{key}");
    }
    let (cloud, x) = reference_inputs("se3t_basic")?;
    // the inherent `compile()` (TypedSession) comes first; the module's is `Module::compile`
    let mut net = Module::compile(
        &model,
        Neighbors::knn(
            options
                .num_neighbors
                .ok_or("se3t_basic sets num_neighbors")?,
        ),
    )?;
    compare("se3t_basic", &net.forward(&cloud, &x)?, &["out_f64"])?;
    Ok(())
}
