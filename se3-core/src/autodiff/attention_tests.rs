//! Gradients of [`AttentionLayer`] through its reassociated contractions (the fused edge
//! contractions with the query folded into the keys' last radial layer and the attention
//! weights into the values') against its per-edge form ([`ConvPath::Gemm`]: keys and values
//! formed per edge), the same derivative: coordinates, input features and every weight, with
//! separate, tied or linear keys, one key/value head or one per query head, with and without
//! null keys and values and global tokens (whose gradient is compared too).

use luminal::prelude::symbolic::Expression;
use rand::{rngs::StdRng, Rng};

use super::check::{worst_by_name, NamedGradients};
use super::conv_tests::{cloud, read_gradients, set_cloud};
use super::gradients;
use crate::exec::{InputKind, Session};
use crate::fiber::FiberSpec;
use crate::layers::{AttentionLayer, AttentionOptions, ConvPath};
use crate::testing::rng;
use crate::Error;

/// Every gradient of the attention (with and without a self slot) in both forms, on a cloud
/// with masked nodes (missing neighbours).
#[test]
fn reassociated_attention_gradients_match_the_per_edge_form() -> Result<(), Error> {
    const K: usize = 4;
    let (mut r, seed) = rng();
    let fiber: FiberSpec = "0:3, 1:2, 2:1".parse()?;
    for attend_self in [false, true] {
        let linear_proj_keys = r.gen_bool(0.3);
        let opts = AttentionOptions {
            heads: r.gen_range(2..4),
            dim_head: r.gen_range(1..4),
            attend_self,
            tie_key_values: !linear_proj_keys && r.gen_bool(0.5),
            one_headed_key_values: r.gen_bool(0.5),
            use_null_kv: r.gen_bool(0.5),
            linear_proj_keys,
            global_feats_dim: r.gen_bool(0.5).then(|| r.gen_range(1..4)),
            ..AttentionOptions::default()
        };
        let tokens = r.gen_range(1..3);
        let layer = AttentionLayer::new(&fiber, opts, &mut r)?;
        let n = r.gen_range(6..11);
        let mask: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i % 4 != 2))).collect();
        let draw_seed: u64 = r.gen();
        let mut results: Vec<NamedGradients> = Vec::new();
        for path in [ConvPath::Gemm, ConvPath::Fused] {
            let mut s = Session::new();
            let (coords, x, mut edges, basis) = cloud::<K>(&mut s, &fiber, true)?;
            if let Some(width) = opts.global_feats_dim {
                edges.global_features = Some(s.input_with_shape(
                    "global",
                    InputKind::Values,
                    &['n'.into(), tokens.into(), width.into()],
                ));
            }
            let y = layer
                .clone()
                .with_path(path)
                .build(&mut s, "a.", &x, &edges, &basis)?;
            let mut pairs = Vec::new();
            for (d, t) in y.spec().degrees().iter().zip(y.tensors()) {
                let shape: Vec<Expression> = vec!['n'.into(), d.channels.into(), d.width().into()];
                let c =
                    s.input_with_shape::<()>(&format!("cot.{}", d.l), InputKind::Values, &shape);
                pairs.push((t.no_shape(), c));
            }
            let mut names = vec!["coords".to_string()];
            let mut wrt = vec![coords];
            if let Some(g) = edges.global_features {
                names.push("global".into());
                wrt.push(g.no_shape());
            }
            for (d, t) in fiber.degrees().iter().zip(x.tensors()) {
                names.push(format!("x.{}", d.l));
                wrt.push(t.no_shape());
            }
            // the layer's weights (not the kernel basis' constants)
            for (name, _) in s.weights() {
                if !name.starts_with("a.") {
                    continue;
                }
                wrt.push(s.tensor(&name)?);
                names.push(name);
            }
            let grads = gradients(&pairs, &wrt)?;
            for (name, g) in names.iter().zip(&grads) {
                s.output(&format!("grad.{name}"), *g);
            }
            let mut draw = <StdRng as rand::SeedableRng>::seed_from_u64(draw_seed);
            set_cloud(&mut s, &mut draw, &fiber, n, &mask)?;
            if let Some(width) = opts.global_feats_dim {
                let v = (0..n * tokens * width)
                    .map(|_| draw.gen_range(-1.0..1.0))
                    .collect();
                s.set("global", v, &[n, tokens, width])?;
            }
            for d in y.spec().degrees() {
                let v = (0..n * d.dim())
                    .map(|_| draw.gen_range(-1.0..1.0))
                    .collect();
                s.set(&format!("cot.{}", d.l), v, &[n, d.channels, d.width()])?;
            }
            s.run()?;
            results.push(read_gradients(&s, names)?);
        }
        let (per_edge, fused) = (&results[0], &results[1]);
        assert_eq!(
            per_edge.len(),
            fused.len(),
            "seed {seed}: different weights"
        );
        for (name, want) in per_edge {
            assert!(
                want.iter().any(|v| v.abs() > 1e-7) || name.contains("net.0"),
                "seed {seed}: zero gradient of {name}"
            );
        }
        let worst = worst_by_name(per_edge, fused).unwrap_or_else(|name| {
            panic!("seed {seed}: the per-edge form has no gradient of {name}")
        });
        println!(
            "attention (self {attend_self}, tied {}, one-headed {}, null {}, linear keys {}, global {:?}, {} gradients): worst relative error {:.2e} ({})",
            opts.tie_key_values,
            opts.one_headed_key_values,
            opts.use_null_kv,
            opts.linear_proj_keys,
            opts.global_feats_dim,
            fused.len(),
            worst.0,
            worst.1
        );
        assert!(
            worst.0 < 1e-4,
            "seed {seed}: gradient of {} off by {:.3e} (self {attend_self})",
            worst.1,
            worst.0
        );
    }
    Ok(())
}
