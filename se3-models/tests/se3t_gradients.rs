//! SE(3)-Transformer gradients: the backward pass of its graph (`Se3TransformerNet` with
//! `se3_core::autodiff`, what `se3 grad` and `se3 train` run; float32) against PyTorch
//! autograd in float64 (`gradients.safetensors`, loss `L = Σ_out <out, cotangent.out>`), per
//! tensor max|diff| / max|want|, for every `se3t_*` reference that stores gradients; finite
//! differences where none are stored (the reversible trunk) and for the coordinate gradient
//! through the in-graph kernel basis (`differentiable_coors`); and the same comparison on
//! configurations outside tests/reference (`tests/data/extra_reference`, folders with
//! `gradients.safetensors` from `generate_general.py --gradients`).

mod common;
use common::*;

use se3_models::checkpoint::StateDict;
use se3_models::differentiable::Differentiable;
use se3_models::differentiable::Objective;
use se3_models::se3_transformer::net::DifferentiableSe3Transformer;
use se3_models::se3_transformer::Se3TransformerNet;
use se3_models::Error;

/// Float32 gradients against float64 autograd, relative to each tensor's largest magnitude.
const TOL_GRAD: f64 = 1e-4;

/// Compares every stored `param.*` / `input.*` of `name`; returns the worst error and where.
fn gradient_parity(name: &str) -> Result<(f64, String, usize), Error> {
    gradient_parity_at(&dir(name))
}

/// The model of `l` compiled with gradients for `objective`.
fn differentiable(l: &Loaded, objective: Objective) -> Result<DifferentiableSe3Transformer, Error> {
    let net = Se3TransformerNet::from_config(&l.cfg, &l.weights)?;
    DifferentiableSe3Transformer::new(&net, l.fwd.clone(), &l.weights, objective, true)
}

/// [`gradient_parity`] of the model folder `d`, the graph in `form`.
fn gradient_parity_at(d: &std::path::Path) -> Result<(f64, String, usize), Error> {
    let name = d.display();
    let l = load_se3t_from(d)?;
    let reference = StateDict::load(d.join("gradients.safetensors"))?;
    let got = differentiable(&l, Objective::Cotangents)?
        .gradients(&l.inputs, &reference)?
        .grads;
    let names = input_names(&l.file);
    let mut worst = (0.0f64, String::new());
    let mut checked = 0;
    for (k, want) in reference.iter() {
        let key = match k.strip_prefix("input.") {
            Some(file_name) => format!(
                "input.{}",
                names.get(file_name).ok_or(Error::MissingKey {
                    key: k.to_string(),
                    expected: want.shape.clone(),
                })?
            ),
            None if k.starts_with("param.") => k.to_string(),
            None => continue,
        };
        let g = got.get(&key).ok_or(Error::MissingKey {
            key: key.clone(),
            expected: want.shape.clone(),
        })?;
        assert_eq!(g.data.len(), want.data.len(), "{name} {k}: size");
        let (e, i) = rel_error_at(&g.data, &want.data);
        if e > worst.0 || checked == 0 {
            worst = (
                e,
                format!("{k}[{i}] got {:.6e} want {:.6e}", g.data[i], want.data[i]),
            );
        }
        checked += 1;
    }
    Ok((worst.0, worst.1, checked))
}

/// Inputs-file tensor name -> the gradient name se3 gives it (`feats`, `feats_type<l>`,
/// `edges`, `global_feats`).
fn input_names(
    file: &se3_models::model_file::ModelFile,
) -> std::collections::BTreeMap<String, String> {
    use se3_models::model_file::TensorName;
    let mut out = std::collections::BTreeMap::new();
    for (arg, v) in &file.forward_kwargs.tensors {
        match v {
            TensorName::One(s) => {
                out.insert(s.clone(), arg.clone());
            }
            TensorName::PerDegree(per_degree) => {
                for (l, s) in per_degree {
                    out.insert(s.clone(), format!("{arg}_type{l}"));
                }
            }
        }
    }
    out
}

fn check(names: &[&str]) -> Result<(), Error> {
    let mut failures = Vec::new();
    for name in names {
        let (e, at, checked) = gradient_parity(name)?;
        println!("{name}: {checked} gradients, worst relative error {e:.3e} ({at})");
        assert!(checked > 10, "{name}: only {checked} gradients compared");
        if e >= TOL_GRAD {
            failures.push(format!("{name}: {e:.3e} at {at}"));
        }
    }
    assert!(failures.is_empty(), "gradients off: {failures:#?}");
    Ok(())
}

#[test]
fn se3t_gradients_match_torch_autograd_basic_options() -> Result<(), Error> {
    check(&[
        "se3t_basic",
        "se3t_causal",
        "se3t_neighbor_mask",
        "se3t_deg4_radius",
    ])
}

#[test]
fn se3t_gradients_match_torch_autograd_attention_options() -> Result<(), Error> {
    check(&[
        "se3t_tie_kv",
        "se3t_one_headed_kv",
        "se3t_linear_proj_keys",
        "se3t_rotary_nullkv",
        "se3t_global_feats",
    ])
}

#[test]
fn se3t_gradients_match_torch_autograd_input_and_output_options() -> Result<(), Error> {
    check(&[
        "se3t_input_degrees2",
        "se3t_tokens_out2",
        "se3t_type1_reduce",
        "se3t_convs_gated_pooled",
    ])
}

#[test]
fn se3t_gradients_match_torch_autograd_edge_options_and_egnn() -> Result<(), Error> {
    check(&[
        "se3t_edge_tokens",
        "se3t_fourier_edges",
        "se3t_sparse_adj",
        "se3t_egnn",
    ])
}

/// Three steps of se3-core's Adam (lr 1e-2) on the reference's MSE loss (its cotangents
/// formed in the graph, [`Objective::MeanSquaredError`]; the loss from the outputs on the host): the losses before
/// each step and after the last, and the parameters after the third step, against torch's
/// float64 run (`training.safetensors`). Returns the worst loss and parameter errors.
/// Smallest `|g|` an element had over the steps at or above which it counts as well
/// conditioned (`tfn_stack`'s Adam test in `gradients.rs` explains the split).
const SENSITIVE: f32 = 1e-3;

/// What [`adam_trajectory`] measured: the worst loss error, and the worst parameter errors
/// of the elements whose `|g|` stayed at or above [`SENSITIVE`] and of the others (error,
/// where, how many such elements).
struct AdamErrors {
    loss: f64,
    conditioned: (f64, String),
    small_gradient: (f64, String, usize),
}

fn adam_trajectory(name: &str) -> Result<AdamErrors, Error> {
    use se3_core::train::{Adam, Optimizer, Param};
    let l = load_se3t(name)?;
    let reference = StateDict::load(dir(name).join("training.safetensors"))?;
    let mut m = differentiable(&l, Objective::MeanSquaredError)?;
    let params: Vec<(String, Vec<usize>)> = m
        .parameters()
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect();
    let mut values: Vec<Vec<f32>> = m.parameters().iter().map(|p| p.value.clone()).collect();
    let want_loss = reference
        .get("loss")
        .map(|t| t.data.clone())
        .unwrap_or_default();
    let mut adam = Adam::new(1e-2);
    let mut losses = vec![];
    let mut min_grad: Vec<Vec<f32>> = values.iter().map(|v| vec![f32::MAX; v.len()]).collect();
    for step in 0..=3 {
        // one run: outputs and the gradients of the in-graph MSE against `target.*`
        let run = m.gradients(&l.inputs, &reference)?;
        let (out, grads) = (run.outputs, run.grads);
        let (loss, _) = mse(&out, &reference)?;
        losses.push(loss);
        if step == 3 {
            break;
        }
        let gs: Vec<Vec<f32>> = params
            .iter()
            .map(|(k, _)| {
                grads
                    .get(&format!("param.{k}"))
                    .map(|t| t.data.iter().map(|&v| v as f32).collect())
                    .unwrap_or_default()
            })
            .collect();
        for (m, g) in min_grad.iter_mut().zip(&gs) {
            for (a, b) in m.iter_mut().zip(g) {
                *a = a.min(b.abs());
            }
        }
        let mut ps: Vec<Param<'_>> = params
            .iter()
            .zip(values.iter_mut())
            .zip(&gs)
            .map(|(((k, _), v), g)| Param {
                name: k,
                value: v,
                grad: g,
            })
            .collect();
        adam.step(&mut ps)?;
        for ((k, _), v) in params.iter().zip(&values) {
            m.set_parameter(k, v.clone())?;
        }
    }
    assert_eq!(want_loss.len(), 4, "{name}: stored losses");
    let loss_err = losses
        .iter()
        .zip(&want_loss)
        .map(|(a, b)| (a - b).abs() / b.abs())
        .fold(0.0, f64::max);
    println!("{name} Adam: losses {losses:?} (torch {want_loss:?})");
    let mut conditioned = (0.0f64, String::new());
    let mut small_gradient = (0.0f64, String::new(), 0usize);
    for (((k, _), v), mg) in params.iter().zip(&values).zip(&min_grad) {
        let want = reference
            .get(&format!("param.{k}"))
            .ok_or(Error::MissingKey {
                key: format!("param.{k}"),
                expected: vec![v.len()],
            })?;
        // per tensor, relative to its largest value
        let scale = want
            .data
            .iter()
            .fold(0.0f64, |a, b| a.max(b.abs()))
            .max(1e-30);
        for (i, ((&x, &y), &g)) in v.iter().zip(&want.data).zip(mg).enumerate() {
            let e = (f64::from(x) - y).abs() / scale;
            let at = || format!("{k}[{i}] got {x} want {y} (min |g| {g:.1e})");
            if g < SENSITIVE {
                small_gradient.2 += 1;
                if e > small_gradient.0 {
                    small_gradient = (e, at(), small_gradient.2);
                }
            } else if e > conditioned.0 {
                conditioned = (e, at());
            }
        }
    }
    Ok(AdamErrors {
        loss: loss_err,
        conditioned,
        small_gradient,
    })
}

/// The losses within 1e-4 and the parameters after three steps within 1e-4 where the
/// gradient stayed at or above [`SENSITIVE`]: Adam's update `lr m̂ / (sqrt(v̂) + eps)` is
/// about `lr sign(g)` once `|g| >> eps` (1e-8), so an element whose gradient is near eps
/// turns float32 rounding of its gradient (~1e-7 of its tensor's largest) into a step of a
/// different size than torch's float64 run (the element-by-element account is in
/// `gradients.rs`'s `tfn_stack` test); those elements are held to 1e-2.
#[test]
fn se3t_adam_steps_follow_torch_training() -> Result<(), Error> {
    for name in ["se3t_basic", "se3t_input_degrees2", "se3t_egnn"] {
        let e = adam_trajectory(name)?;
        println!(
            "{name} Adam: worst loss error {:.3e}; parameters after 3 steps {:.3e} ({}) where |g| >= {SENSITIVE:e} at every step; {} elements with a smaller |g|, worst {:.3e} ({})",
            e.loss, e.conditioned.0, e.conditioned.1, e.small_gradient.2, e.small_gradient.0, e.small_gradient.1
        );
        assert!(e.loss < 1e-4, "{name}: losses off by {:.3e}", e.loss);
        assert!(
            e.conditioned.0 < 1e-4,
            "{name}: parameters off by {:.3e} at {}",
            e.conditioned.0,
            e.conditioned.1
        );
        assert!(
            e.small_gradient.0 < 1e-2,
            "{name}: parameters with small gradients off by {:.3e} at {}",
            e.small_gradient.0,
            e.small_gradient.1
        );
    }
    Ok(())
}

/// `L = Σ_out <out, cot.out>` of the float64 oracle.
fn oracle_loss(
    cfg: &se3_models::se3_transformer::Se3TransformerConfig,
    fwd: &se3_models::se3_transformer::Se3TransformerForward,
    sd: &StateDict,
    inputs: &se3_models::inputs::ModelInputs,
    cot: &StateDict,
) -> Result<f64, Error> {
    let out = se3_models::se3_transformer::Se3TransformerOracle::from_state_dict(cfg, sd)?
        .forward(inputs, fwd)?;
    let mut l = 0.0;
    for (k, t) in out.iter() {
        let c = cot
            .get(&format!("cotangent.{k}"))
            .ok_or(Error::MissingKey {
                key: format!("cotangent.{k}"),
                expected: t.shape.clone(),
            })?;
        l += t.data.iter().zip(&c.data).map(|(a, b)| a * b).sum::<f64>();
    }
    Ok(l)
}

/// Random cotangents of the shapes of the oracle's outputs.
fn random_cotangents(l: &Loaded, r: &mut impl rand::Rng) -> Result<StateDict, Error> {
    let out =
        se3_models::se3_transformer::Se3TransformerOracle::from_state_dict(&l.cfg, &l.weights)?
            .forward(&l.inputs, &l.fwd)?;
    let mut cot = StateDict::new();
    for (k, t) in out.iter() {
        cot.insert(format!("cotangent.{k}"), dense(r, t.shape.clone()));
    }
    Ok(cot)
}

/// The directional derivative of `L` along a random direction `d` of `what` (weights or
/// coordinates): `<∇L, d>` from the graph's gradients against central differences of the
/// float64 oracle (`h = 1e-5`), relative to `Σ |∂L/∂w_i d_i|` (the size of the terms).
fn directional_error(got: f64, fd: f64, terms: f64, what: &str) -> f64 {
    let e = (got - fd).abs() / terms.max(1e-30);
    println!("{what}: <grad, d> {got:.9e}, central difference {fd:.9e}, relative {e:.3e}");
    e
}

#[test]
fn se3t_reversible_gradients_match_finite_differences() -> Result<(), Error> {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    let l = load_se3t("se3t_reversible")?;
    let cot = random_cotangents(&l, &mut r)?;
    let mut m = differentiable(&l, Objective::Cotangents)?;
    let grads = m.gradients(&l.inputs, &cot)?.grads;
    let h = 1e-5;
    // every parameter along one random direction
    let (mut plus, mut minus) = (l.weights.clone(), l.weights.clone());
    let (mut dot, mut terms) = (0.0, 0.0);
    for k in m.parameters().iter().map(|p| p.name.clone()) {
        let w = l.weights.get(&k).ok_or(Error::MissingKey {
            key: k.clone(),
            expected: vec![],
        })?;
        let g = grads.get(&format!("param.{k}")).ok_or(Error::MissingKey {
            key: format!("param.{k}"),
            expected: w.shape.clone(),
        })?;
        let d = dense(&mut r, w.shape.clone());
        for ((gi, di), _) in g.data.iter().zip(&d.data).zip(&w.data) {
            dot += gi * di;
            terms += (gi * di).abs();
        }
        let shifted = |s: f64| se3_models::checkpoint::Tensor {
            shape: w.shape.clone(),
            data: w
                .data
                .iter()
                .zip(&d.data)
                .map(|(a, b)| a + s * h * b)
                .collect(),
        };
        plus.insert(k.clone(), shifted(1.0));
        minus.insert(k.clone(), shifted(-1.0));
    }
    let fd = (oracle_loss(&l.cfg, &l.fwd, &plus, &l.inputs, &cot)?
        - oracle_loss(&l.cfg, &l.fwd, &minus, &l.inputs, &cot)?)
        / (2.0 * h);
    let e = directional_error(dot, fd, terms, "se3t_reversible parameters");
    assert!(e < 1e-4, "seed {seed}: parameter gradient off by {e:.3e}");
    // the input features along one random direction
    let gf = grads.get("input.feats").ok_or(Error::MissingKey {
        key: "input.feats".into(),
        expected: vec![],
    })?;
    let se3_models::inputs::NodeFeats::Dense(f) = &l.inputs.feats else {
        return Err(Error::MissingInput {
            name: "dense feats",
        });
    };
    let d = dense(&mut r, f.shape.clone());
    let (dot, terms) = gf
        .data
        .iter()
        .zip(&d.data)
        .fold((0.0, 0.0), |(s, t), (g, di)| {
            (s + g * di, t + (g * di).abs())
        });
    let at = |s: f64| {
        let mut inp = l.inputs.clone();
        inp.feats = se3_models::inputs::NodeFeats::Dense(se3_models::checkpoint::Tensor {
            shape: f.shape.clone(),
            data: f
                .data
                .iter()
                .zip(&d.data)
                .map(|(a, b)| a + s * h * b)
                .collect(),
        });
        oracle_loss(&l.cfg, &l.fwd, &l.weights, &inp, &cot)
    };
    let fd = (at(1.0)? - at(-1.0)?) / (2.0 * h);
    let e = directional_error(dot, fd, terms, "se3t_reversible input.feats");
    assert!(e < 1e-4, "seed {seed}: feature gradient off by {e:.3e}");
    Ok(())
}

/// With `differentiable_coors` the graph builds the kernel basis from the coordinates, so
/// `input.coors` is the true derivative (torch's library detaches the basis and stores none):
/// checked against central differences of the float64 oracle, whose basis follows the
/// coordinates, on reference configs with fresh random cotangents and directions (with the EGNN
/// trunk the distances of its edge MLPs follow the coordinates too).
#[test]
fn se3t_coordinate_gradient_through_the_in_graph_basis_matches_finite_differences(
) -> Result<(), Error> {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    for name in [
        "se3t_egnn",
        "se3t_basic",
        "se3t_fourier_edges",
        "se3t_deg4_radius",
    ] {
        let mut l = load_se3t(name)?;
        let mut kwargs = l.file.constructor_kwargs.clone();
        kwargs["differentiable_coors"] = serde_json::Value::Bool(true);
        l.cfg = se3_models::se3_transformer::Se3TransformerConfig::from_kwargs(&kwargs)?;
        let cot = random_cotangents(&l, &mut r)?;
        let grads = differentiable(&l, Objective::Cotangents)?
            .gradients(&l.inputs, &cot)?
            .grads;
        let gc = grads.get("input.coors").ok_or(Error::MissingKey {
            key: "input.coors".into(),
            expected: l.inputs.coors.shape.clone(),
        })?;
        let d = dense(&mut r, l.inputs.coors.shape.clone());
        let (dot, terms) = gc
            .data
            .iter()
            .zip(&d.data)
            .fold((0.0, 0.0), |(s, t), (g, di)| {
                (s + g * di, t + (g * di).abs())
            });
        let h = 1e-6;
        let at = |s: f64| {
            let mut inp = l.inputs.clone();
            inp.coors.data = inp
                .coors
                .data
                .iter()
                .zip(&d.data)
                .map(|(a, b)| a + s * h * b)
                .collect();
            oracle_loss(&l.cfg, &l.fwd, &l.weights, &inp, &cot)
        };
        let fd = (at(1.0)? - at(-1.0)?) / (2.0 * h);
        let e = directional_error(dot, fd, terms, &format!("{name} input.coors"));
        assert!(
            e < 1e-4,
            "seed {seed} {name}: coordinate gradient off by {e:.3e}"
        );
    }
    Ok(())
}

/// Gradient parity on configurations outside tests/reference: every folder of
/// `tests/data/extra_reference/general` (and the `u_*` folders beside it) with a
/// `gradients.safetensors` (`generate_general.py --gradients`: torch float64 autograd from the
/// folder's weights and inputs with the reference Q_J, which se3 ships, so no sign table here;
/// stored rounded to float32), through the same graph as the references above.
/// `SE3_EXTRA_GRAD_DIR=<folder of config folders>` runs another set.
#[test]
fn generated_configs_gradients_match_torch_autograd() -> Result<(), Error> {
    let roots = match std::env::var("SE3_EXTRA_GRAD_DIR") {
        Ok(d) => vec![std::path::PathBuf::from(d)],
        Err(_) => {
            let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/extra_reference");
            vec![root.join("general"), root]
        }
    };
    let mut cases = Vec::new();
    for root in &roots {
        let entries = std::fs::read_dir(root).map_err(|e| Error::Io {
            path: root.display().to_string(),
            source: e,
        })?;
        cases.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("gradients.safetensors").exists()),
        );
    }
    cases.sort();
    assert!(
        cases.len() >= 5,
        "only {} cases with gradients",
        cases.len()
    );
    let mut failures = Vec::new();
    for d in &cases {
        let name = d
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match gradient_parity_at(d) {
            Ok((e, at, checked)) => {
                println!("{name}: {checked} gradients, worst relative error {e:.3e} ({at})");
                if e >= TOL_GRAD || checked < 10 {
                    failures.push(format!("{name}: {e:.3e} at {at} ({checked} tensors)"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases off:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}
