//! `differentiable_coors = true`: the compiled SE(3)-Transformer builds the relative positions,
//! distances, radial input and kernel basis inside its graph from the coordinates. Checked
//! against the host-basis graph (same model with the option off) and the reference float64
//! outputs, for rotation + translation equivariance with fresh random motions and coordinates,
//! and with a non-default Q_J sign table.

mod common;

use common::*;
use rand::Rng;
use se3_core::basis::qj_sign;
use se3_models::checkpoint::{StateDict, Tensor};
use se3_models::se3_transformer::basis::QjSigns;
use se3_models::se3_transformer::{Se3Transformer, Se3TransformerConfig, Se3TransformerOracle};
use se3_models::Error;

/// In-graph geometry against the host basis (both float32 graphs), relative to the largest output
/// (observed up to 9e-7 over the reference configs).
const TOL_PATHS: f64 = 2e-6;
/// Float32 graph against the reference float64 outputs.
const TOL_REFERENCE: f64 = 1e-5;
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

/// The reference config `name` with `"differentiable_coors": true` added to its kwargs (as a
/// user's config.json would set it) against the same config with `false`.
fn check_reference(name: &str) -> Result<(), Error> {
    let l = load_se3t(name)?;
    let mut kwargs = l.file.constructor_kwargs.clone();
    let mut models = Vec::new();
    for on in [true, false] {
        if let Some(obj) = kwargs.as_object_mut() {
            obj.insert("differentiable_coors".into(), on.into());
        }
        let cfg = Se3TransformerConfig::from_kwargs(&kwargs)?;
        assert_eq!(cfg.differentiable_coors, on, "{name}: kwarg parsed");
        let net = Se3Transformer::new(&Se3TransformerOracle::from_state_dict(&cfg, &l.weights)?)?;
        assert_eq!(net.basis_in_graph(), on, "{name}: graph path taken");
        models.push(net);
    }
    let in_graph = models[0].forward(&l.inputs, &l.fwd)?;
    let host = models[1].forward(&l.inputs, &l.fwd)?;
    let paths = worst_diff(name, &in_graph, &host)?;
    let want = StateDict::load(dir(name).join("outputs.safetensors"))?;
    let reference = worst_diff(name, &in_graph, &want)?;
    println!(
        "{name}: in-graph vs host basis {paths:.3e}, in-graph vs reference f64 {reference:.3e}"
    );
    assert!(
        paths < TOL_PATHS,
        "{name}: in-graph vs host basis max rel err {paths:.3e}"
    );
    assert!(
        reference < TOL_REFERENCE,
        "{name}: in-graph vs reference max rel err {reference:.3e}"
    );
    Ok(())
}

#[test]
fn in_graph_geometry_matches_host_basis_and_reference_on_every_se3t_config() -> Result<(), Error> {
    // basic, degree 3 (se3t_deg4_radius), Fourier + edge features, edge tokens, EGNN, rotary, ...
    let names = se3t_reference_names();
    assert!(names.len() >= 18, "reference folders found: {names:?}");
    for name in names {
        check_reference(&name)?;
    }
    Ok(())
}

#[test]
fn in_graph_basis_model_is_equivariant_under_random_motions() -> Result<(), Error> {
    let seed = se3_core::testing::seed();
    let mut r = rng(seed);
    let name = "se3t_deg4_radius";
    let l = load_se3t(name)?;
    let mut cfg = l.cfg.clone();
    cfg.differentiable_coors = true;
    let model = Se3TransformerOracle::from_state_dict(&cfg, &l.weights)?;
    let mut net = Se3Transformer::new(&model)?;
    let mut inp = l.inputs.clone();
    let shape = inp.coors.shape.clone();
    let len = inp.coors.data.len();
    inp.coors = Tensor::new(shape, (0..len).map(|_| r.gen_range(-1.5..1.5)).collect())?;
    let rot = random_rotation(&mut r);
    let shift = [0, 1, 2].map(|_| r.gen_range(-3.0..3.0));
    let mut moved = inp.clone();
    moved.coors = rotate_rows(&inp.coors, &rot, shift);
    let base = net.forward(&inp, &l.fwd)?;
    let after = net.forward(&moved, &l.fwd)?;
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
fn in_graph_and_host_basis_agree_with_a_custom_qj_sign_table() -> Result<(), Error> {
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
    let mut outs = Vec::new();
    for on in [true, false] {
        let mut cfg = l.cfg.clone();
        cfg.differentiable_coors = on;
        let mut model = Se3TransformerOracle::from_state_dict(&cfg, &l.weights)?;
        model.set_qj_signs(&signs)?;
        outs.push(Se3Transformer::new(&model)?.forward(&l.inputs, &l.fwd)?);
    }
    let paths = worst_diff(name, &outs[0], &outs[1])?;
    let want = StateDict::load(dir(name).join("outputs.safetensors"))?;
    let moved = worst_diff(name, &outs[0], &want)?;
    println!("{name} with flipped Q_J signs: in-graph vs host {paths:.3e}, vs default-sign reference {moved:.3e}");
    assert!(
        paths < TOL_PATHS,
        "{name}: flipped signs, in-graph vs host basis max rel err {paths:.3e}"
    );
    assert!(
        moved > 1e-3,
        "{name}: the flipped sign table did not change the outputs ({moved:.3e})"
    );
    Ok(())
}
