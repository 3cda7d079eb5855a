//! Optimizers, clipping and schedules against trajectories recorded from `torch.optim`
//! (`tests/reference/optim/optim.json`, made by `make_optim_reference.py` there, float64).

use serde_json::Value;

use super::{clip_grad_norm, Adam, AdamW, LrSchedule, Optimizer, Param, Sgd};
use crate::Error;

const REFERENCE: &str = include_str!("../../../tests/reference/optim/optim.json");

/// Relative tolerance: f32 parameters against float64 torch.
const TOL: f64 = 2e-6;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn reference() -> Value {
    serde_json::from_str(REFERENCE).unwrap_or(Value::Null)
}

fn optimizer(name: &str, kw: &Value) -> Box<dyn Optimizer> {
    let f = |k: &str, d: f64| kw.get(k).and_then(Value::as_f64).unwrap_or(d);
    let lr = f("lr", 0.0);
    if name == "SGD" {
        let mut s = Sgd::new(lr);
        s.momentum = f("momentum", 0.0);
        s.dampening = f("dampening", 0.0);
        s.weight_decay = f("weight_decay", 0.0);
        s.nesterov = kw.get("nesterov").and_then(Value::as_bool).unwrap_or(false);
        return Box::new(s);
    }
    let betas = floats(kw.get("betas").unwrap_or(&Value::Null));
    let (b1, b2) = (
        betas.first().copied().unwrap_or(0.9),
        betas.get(1).copied().unwrap_or(0.999),
    );
    if name == "AdamW" {
        // torch's AdamW default weight decay is 0.01
        Box::new(
            AdamW::new(lr)
                .betas(b1, b2)
                .eps(f("eps", 1e-8))
                .weight_decay(f("weight_decay", 0.01)),
        )
    } else {
        Box::new(
            Adam::new(lr)
                .betas(b1, b2)
                .eps(f("eps", 1e-8))
                .weight_decay(f("weight_decay", 0.0)),
        )
    }
}

#[test]
fn optimizers_follow_torch_trajectories() -> Result<(), Error> {
    let r = reference();
    let cases = r["cases"].as_object().cloned().unwrap_or_default();
    assert!(cases.len() >= 7, "reference has {} cases", cases.len());
    let grads: Vec<Vec<f32>> = r["grads"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| floats(g).iter().map(|&v| v as f32).collect())
                .collect()
        })
        .unwrap_or_default();
    for (name, case) in cases {
        let mut opt = optimizer(case["optimizer"].as_str().unwrap_or(""), &case["kwargs"]);
        let mut p: Vec<f32> = floats(&r["p0"]).iter().map(|&v| v as f32).collect();
        let want: Vec<Vec<f64>> = case["params"]
            .as_array()
            .map(|a| a.iter().map(floats).collect())
            .unwrap_or_default();
        assert_eq!(want.len(), grads.len());
        for (t, (g, w)) in grads.iter().zip(&want).enumerate() {
            opt.step(&mut [Param {
                name: "w",
                value: &mut p,
                grad: g,
            }])?;
            let err = p
                .iter()
                .zip(w)
                .map(|(a, b)| (f64::from(*a) - b).abs() / b.abs().max(1.0))
                .fold(0.0, f64::max);
            assert!(err < TOL, "{name} step {t}: relative error {err:.3e}");
        }
    }
    Ok(())
}

#[test]
fn clipping_and_schedules_match_torch() {
    let r = reference();
    let c = &r["clip"];
    let mut grads: Vec<Vec<f32>> = c["grads"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| floats(g).iter().map(|&v| v as f32).collect())
                .collect()
        })
        .unwrap_or_default();
    let mut views: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
    let total = clip_grad_norm(&mut views, c["max_norm"].as_f64().unwrap_or(0.0));
    let want_total = c["total_norm"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (total - want_total).abs() < 1e-5 * want_total,
        "total norm {total} vs {want_total}"
    );
    for (g, w) in grads
        .iter()
        .zip(c["clipped"].as_array().into_iter().flatten())
    {
        for (a, b) in g.iter().zip(floats(w)) {
            assert!((f64::from(*a) - b).abs() < 1e-6, "clipped {a} vs {b}");
        }
    }
    let s = &r["schedules"];
    let u = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0) as usize;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let cases = [
        (
            "linear_warmup",
            LrSchedule::LinearWarmup {
                start_factor: f(&s["linear_warmup"], "start_factor"),
                total_iters: u(&s["linear_warmup"], "total_iters"),
            },
        ),
        (
            "cosine",
            LrSchedule::Cosine {
                t_max: u(&s["cosine"], "t_max"),
                eta_min: f(&s["cosine"], "eta_min"),
            },
        ),
        (
            "step",
            LrSchedule::Step {
                step_size: u(&s["step"], "step_size"),
                gamma: f(&s["step"], "gamma"),
            },
        ),
    ];
    for (name, sched) in cases {
        let want = floats(&s[name]["lrs"]);
        assert_eq!(want.len(), 12, "{name}: reference has {} rates", want.len());
        for (t, w) in want.iter().enumerate() {
            let got = sched.lr(0.1, t);
            assert!((got - w).abs() < 1e-12, "{name} epoch {t}: {got} vs {w}");
        }
    }
}

#[test]
fn frozen_prefixes_stay_and_bad_gradients_are_typed_errors() {
    let mut a = vec![1.0f32, 2.0];
    let mut b = vec![3.0f32];
    let mut opt = Adam::new(0.1);
    opt.freeze("enc.");
    let step = |opt: &mut Adam, a: &mut Vec<f32>, b: &mut Vec<f32>, ga: &[f32], gb: &[f32]| {
        opt.step(&mut [
            Param {
                name: "enc.w",
                value: a,
                grad: ga,
            },
            Param {
                name: "dec.w",
                value: b,
                grad: gb,
            },
        ])
    };
    assert!(step(&mut opt, &mut a, &mut b, &[1.0, 1.0], &[1.0]).is_ok());
    assert_eq!(a, vec![1.0, 2.0]);
    // Adam's first step moves by lr against the gradient's sign
    assert!((b[0] - 2.9).abs() < 1e-6, "b = {}", b[0]);
    let before = b.clone();
    let r = step(&mut opt, &mut a, &mut b, &[1.0, 1.0], &[f32::NAN]);
    assert!(
        matches!(r, Err(Error::NonFiniteGradient { ref name, index: 0, .. }) if name == "dec.w")
    );
    assert_eq!(b, before, "a rejected step changes nothing");
    let r = step(&mut opt, &mut a, &mut b, &[1.0], &[1.0]);
    assert!(matches!(
        r,
        Err(Error::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
}

/// Runs `steps` updates of two parameters from gradients that depend on the step.
fn run_steps(opt: &mut dyn Optimizer, a: &mut [f32], b: &mut [f32], from: usize, to: usize) {
    for t in from..to {
        let ga: Vec<f32> = (0..a.len())
            .map(|i| ((t * 7 + i * 3) as f32).sin() * 0.3 + a[i] * 0.1)
            .collect();
        let gb: Vec<f32> = (0..b.len())
            .map(|i| ((t * 5 + i) as f32).cos() * 0.2 - b[i] * 0.05)
            .collect();
        let mut params = [
            Param {
                name: "a",
                value: a,
                grad: &ga,
            },
            Param {
                name: "b",
                value: b,
                grad: &gb,
            },
        ];
        let stepped = opt.step(&mut params);
        assert!(stepped.is_ok(), "step {t}: {stepped:?}");
    }
}

#[test]
fn optimizer_state_round_trip_resumes_bitwise() -> Result<(), Error> {
    let make: [fn() -> Box<dyn Optimizer>; 3] = [
        || Box::new(Adam::new(1e-2)),
        || Box::new(AdamW::new(1e-2).weight_decay(0.1)),
        || {
            let mut s = Sgd::new(1e-2);
            s.momentum = 0.9;
            s.nesterov = true;
            Box::new(s)
        },
    ];
    for new in make {
        let (a0, b0) = (vec![0.5f32, -1.0, 2.0], vec![0.25f32; 5]);
        let (mut a, mut b) = (a0.clone(), b0.clone());
        let mut straight = new();
        run_steps(straight.as_mut(), &mut a, &mut b, 0, 10);
        let (mut a2, mut b2) = (a0, b0);
        let mut first = new();
        run_steps(first.as_mut(), &mut a2, &mut b2, 0, 4);
        let saved = first.state();
        let mut second = new();
        second.load_state(&saved)?;
        assert_eq!(second.state(), saved, "state reloads as saved");
        run_steps(second.as_mut(), &mut a2, &mut b2, 4, 10);
        assert_eq!(a, a2, "{}: resumed parameters differ", saved.kind);
        assert_eq!(b, b2, "{}: resumed parameters differ", saved.kind);
    }
    let adam_state = Adam::new(1e-2).state();
    assert!(matches!(
        Sgd::new(1.0).load_state(&adam_state),
        Err(Error::OptimizerStateMismatch { .. })
    ));
    Ok(())
}
