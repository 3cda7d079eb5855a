//! The SE(3)-Transformer's graph builds the relative positions, distances, radial input and
//! kernel basis from the coordinates (so coordinates have gradients whatever
//! `differentiable_coors` says): rotation + translation equivariance at four degrees with fresh
//! random motions and coordinates, a non-default Q_J sign table against the float64 oracle with
//! the same table, and `differentiable_coors` accepted without changing the outputs.

mod common;

use common::*;
use rand::Rng;
use se3_core::basis::qj_sign;
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::se3_transformer::basis::QjSigns;
use se3_models::se3_transformer::{Se3TransformerConfig, Se3TransformerNet, Se3TransformerOracle};
use se3_models::Error;

/// Float32 graph against the float64 oracle, relative to the largest output.
const TOL_ORACLE: f64 = 1e-5;
/// Equivariance of the float32 graph.
const TOL_EQUIV: f64 = 1e-4;

/// Worst relative error over the outputs of `want` (keys `base` or `base_f64`).
fn worst_diff(what: &str, got: &StateDict, want: &StateDict) -> Result<f64, Error> {
    let mut worst = 0.0f64;
    for (k, t) in want.iter() {
        if k.ends_with("_f32") {
            continue;
        }
        let base = k.strip_suffix("_f64").unwrap_or(k);
        let g = got.get(base).ok_or(Error::MissingKey {
            key: format!("{what}: output {base}"),
            expected: t.shape.clone(),
        })?;
        assert_eq!(g.shape, t.shape, "{what}: shape of {base}");
        worst = worst.max(rel_error(&g.data, &t.data));
    }
    Ok(worst)
}

#[test]
fn four_degree_model_is_equivariant_under_random_motions() -> Result<(), Error> {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    let name = "se3t_deg4_radius";
    let l = load_se3t(name)?;
    let mut net = net_session(&l.cfg, &l.weights)?;
    let mut inp = l.inputs.clone();
    let shape = inp.coors.shape.clone();
    let len = inp.coors.data.len();
    inp.coors = Tensor::new(shape, (0..len).map(|_| r.gen_range(-1.5..1.5)).collect())?;
    let rot = random_rotation(&mut r);
    let shift = [0, 1, 2].map(|_| r.gen_range(-3.0..3.0));
    let mut moved = inp.clone();
    moved.coors = rotate_rows(&inp.coors, &rot, shift);
    let base = net.forward_inputs(&inp, &l.fwd)?;
    let after = net.forward_inputs(&moved, &l.fwd)?;
    let mut checked = 0;
    for (k, t) in base.iter() {
        let want = match k {
            "type0" => t.clone(),
            "type1" => rotate_rows(t, &rot, [0.0; 3]),
            _ => continue,
        };
        let got = after.get(k).ok_or(Error::MissingKey {
            key: k.to_string(),
            expected: t.shape.clone(),
        })?;
        let e = rel_error(&got.data, &want.data);
        println!("{name}: {k} equivariance error {e:.3e}");
        assert!(
            e < TOL_EQUIV,
            "{name} (SE3_SEED={seed}): {k} equivariance error {e:.3e}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "type0 and type1 outputs checked");
    Ok(())
}

#[test]
fn a_custom_qj_sign_table_gives_the_oracle_with_that_table() -> Result<(), Error> {
    let name = "se3t_deg4_radius";
    let l = load_se3t(name)?;
    // flip one frequency of every pair with d_in, d_out >= 1 (its sign opposite se3-core's)
    let mut rows = Vec::new();
    for (j, di, d_o) in [(2, 1, 1), (1, 2, 1), (3, 1, 2), (4, 2, 2), (2, 3, 1)] {
        let sign = -qj_sign(j, di, d_o).unwrap_or(1);
        rows.push(format!(
            r#"{{"J": {j}, "d_in": {di}, "d_out": {d_o}, "sign": {sign}}}"#
        ));
    }
    let signs = QjSigns::from_json(&format!(r#"{{"rows": [{}]}}"#, rows.join(",")), "test")?;
    let mut oracle = Se3TransformerOracle::from_state_dict(&l.cfg, &l.weights)?;
    oracle.set_qj_signs(&signs)?;
    let want = oracle.forward(&l.inputs, &l.fwd)?;
    let mut net = Se3TransformerNet::from_config(&l.cfg, &l.weights)?;
    net.set_qj_signs(&signs)?;
    let got = net.into_session()?.forward_inputs(&l.inputs, &l.fwd)?;
    let e = worst_diff(name, &got, &want)?;
    let reference = StateDict::load(dir(name).join("outputs.safetensors"))?;
    let moved = worst_diff(name, &got, &reference)?;
    println!("{name} with flipped Q_J signs: graph vs oracle {e:.3e}, vs default-sign reference {moved:.3e}");
    assert!(
        e < TOL_ORACLE,
        "{name}: flipped signs, graph vs oracle {e:.3e}"
    );
    assert!(
        moved > 1e-3,
        "{name}: the flipped sign table did not change the outputs ({moved:.3e})"
    );
    Ok(())
}

#[test]
fn differentiable_coors_is_accepted_and_changes_nothing() -> Result<(), Error> {
    for name in ["se3t_basic", "se3t_egnn"] {
        let l = load_se3t(name)?;
        let mut kwargs = l.file.constructor_kwargs.clone();
        if let Some(obj) = kwargs.as_object_mut() {
            obj.insert("differentiable_coors".into(), true.into());
        }
        let cfg = Se3TransformerConfig::from_kwargs(&kwargs)?;
        assert!(cfg.differentiable_coors, "{name}: kwarg parsed");
        let got = net_session(&cfg, &l.weights)?.forward_inputs(&l.inputs, &l.fwd)?;
        let want = StateDict::load(dir(name).join("outputs.safetensors"))?;
        let e = worst_diff(name, &got, &want)?;
        println!("{name} with differentiable_coors: vs reference {e:.3e}");
        assert!(e < TOL_ORACLE, "{name}: {e:.3e}");
    }
    Ok(())
}
