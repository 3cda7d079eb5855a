//! A checkpoint read from its file one tensor at a time (`Se3TransformerNet::from_safetensors`,
//! each parameter converted to float32 as it is read) gives the model loaded from the whole
//! state dict: the same outputs, on configs with tied, one-headed and linear-projected keys, the
//! EGNN trunk, four degrees and the reversible trunk; and the model's key list is every
//! reference state dict's.

mod common;
use common::*;

use se3_models::se3_transformer::Se3TransformerNet;
use se3_models::Error;

#[test]
fn streamed_checkpoint_gives_the_outputs_of_the_loaded_one() -> Result<(), Error> {
    for name in [
        "se3t_basic",
        "se3t_tie_kv",
        "se3t_one_headed_kv",
        "se3t_linear_proj_keys",
        "se3t_egnn",
        "se3t_deg4_radius",
        "se3t_reversible",
    ] {
        let l = load_se3t(name)?;
        let want = net_session(&l.cfg, &l.weights)?.forward_inputs(&l.inputs, &l.fwd)?;
        let streamed =
            Se3TransformerNet::from_safetensors(&l.cfg, dir(name).join("weights.safetensors"))?;
        let got = streamed.into_session()?.forward_inputs(&l.inputs, &l.fwd)?;
        assert_eq!(got.len(), want.len(), "{name}");
        for (k, w) in want.iter() {
            let g = got.get(k).ok_or(Error::MissingKey {
                key: format!("{name}: {k}"),
                expected: w.shape.clone(),
            })?;
            let (e, idx) = rel_error_at(&g.data, &w.data);
            println!("{name} {k}: streamed vs loaded max rel err {e:.3e}");
            assert!(e <= 1e-6, "{name} {k}: {e:.3e} at {idx}");
        }
    }
    Ok(())
}

#[test]
fn expected_keys_are_every_reference_state_dict() -> Result<(), Error> {
    let mut checked = 0;
    for name in SE3T_REFERENCES {
        let l = load_se3t(name)?;
        let mut want: Vec<(String, Vec<usize>)> = l
            .weights
            .iter()
            .map(|(k, t)| (k.to_string(), t.shape.clone()))
            .collect();
        let mut got = Se3TransformerNet::expected_keys(&l.cfg)?;
        want.sort();
        got.sort();
        assert_eq!(got, want, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 18);
    Ok(())
}
