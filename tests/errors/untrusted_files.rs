//! Files from strangers: a safetensors header declaring more bytes than the file holds, shapes
//! whose product overflows, names that would break a one-line error, configs of absurd sizes and
//! oversized text files are typed errors before anything is allocated from what they declare; a
//! name that looks like a path is only a key (README "Untrusted files").

use std::collections::BTreeMap;

use se3_models::checkpoint::StateDict;
use se3_models::inputs::ModelInputs;
use se3_models::model_file::ModelFile;
use se3_models::se3_transformer::basis::QjSigns;
use se3_models::se3_transformer::Se3TransformerConfig;
use se3_models::tfn::TfnStackConfig;
use se3_models::zoo::Model;
use se3_models::Error;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// A safetensors file from a header and a data section of `data_len` zero bytes; the header
/// length field is the header's real length unless `declared` overrides it.
fn raw_file(header: &str, declared: Option<u64>, data_len: usize) -> Vec<u8> {
    let len = declared.unwrap_or(header.len() as u64);
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

/// Every reader of safetensors bytes refuses `bytes` with its "not a safetensors file" error.
fn all_readers_refuse(bytes: &[u8], case: &str) {
    let names = BTreeMap::new();
    assert!(
        matches!(StateDict::from_bytes(bytes), Err(Error::Safetensors { .. })),
        "state dict: {case}"
    );
    assert!(
        matches!(
            ModelInputs::from_bytes(bytes, &names, "inputs"),
            Err(Error::Safetensors { .. })
        ),
        "inputs: {case}"
    );
    assert!(
        matches!(
            se3_core::exec::read_safetensors(bytes),
            Err(se3_core::Error::InvalidSafetensors { .. })
        ),
        "core reader: {case}"
    );
}

#[test]
fn safetensors_declaring_more_than_the_file_holds_are_refused_before_reading() {
    let huge = format!("{}", 1u64 << 40);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("shorter than the length field", vec![1, 0, 0]),
        (
            "header length u64::MAX",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                Some(u64::MAX),
                4,
            ),
        ),
        (
            "header length past the end of the file",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                Some(1 << 20),
                4,
            ),
        ),
        (
            "a shape of 2^40 x 2^20 floats in a 4-byte data section",
            raw_file(
                &format!(
                    r#"{{"a":{{"dtype":"F32","shape":[{huge},{}],"data_offsets":[0,4]}}}}"#,
                    1 << 20
                ),
                None,
                4,
            ),
        ),
        (
            "offsets matching a 2^40-float shape but past the end of the file",
            raw_file(
                &format!(
                    r#"{{"a":{{"dtype":"F32","shape":[{huge}],"data_offsets":[0,{}]}}}}"#,
                    1u64 << 42
                ),
                None,
                4,
            ),
        ),
        (
            "a shape whose product overflows usize",
            raw_file(
                &format!(
                    r#"{{"a":{{"dtype":"F64","shape":[{0},{0},{0}],"data_offsets":[0,8]}}}}"#,
                    1u64 << 32
                ),
                None,
                8,
            ),
        ),
        (
            "overlapping tensors",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
                None,
                8,
            ),
        ),
        (
            "trailing bytes after the last tensor",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                None,
                12,
            ),
        ),
        (
            "a truncated data section",
            raw_file(
                r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
                None,
                8,
            ),
        ),
    ];
    for (case, bytes) in &cases {
        all_readers_refuse(bytes, case);
    }
}

#[test]
fn tensor_names_that_are_empty_overlong_or_break_a_line_are_refused() {
    let long = "k".repeat(2000);
    for name in ["", "a\nb", "tab\there", "bell\u{7}", long.as_str()] {
        let header = format!(
            r#"{{{}:{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#,
            serde_json::Value::String(name.to_string())
        );
        let bytes = raw_file(&header, None, 4);
        let is_name_error = |e: &Error| {
            matches!(e, Error::Core(se3_core::Error::InvalidTensorName { .. }))
                && !e.to_string().contains('\n')
        };
        assert!(
            StateDict::from_bytes(&bytes).is_err_and(|e| is_name_error(&e)),
            "state dict accepted {name:?}"
        );
        assert!(
            ModelInputs::from_bytes(&bytes, &BTreeMap::new(), "inputs")
                .is_err_and(|e| is_name_error(&e)),
            "inputs accepted {name:?}"
        );
        assert!(
            matches!(
                se3_core::exec::read_safetensors(&bytes),
                Err(se3_core::Error::InvalidTensorName { .. })
            ),
            "core reader accepted {name:?}"
        );
    }
}

fn reference_dir(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference/models")
        .join(name)
}

#[test]
fn a_key_that_looks_like_a_path_is_only_an_unknown_key() -> TestResult {
    let dir = reference_dir("tfn_stack");
    let file = ModelFile::load(dir.join("config.json"))?;
    let mut weights = StateDict::load(dir.join("weights.safetensors"))?;
    let key = "../../outside/escape";
    weights.insert(key, se3_models::checkpoint::Tensor::zeros(&[1]));
    let round_trip =
        StateDict::from_bytes(&weights.to_bytes(se3_models::checkpoint::SaveDtype::F32)?)?;
    assert!(matches!(
        Model::from_parts(&file, &round_trip),
        Err(Error::UnexpectedKey { key: ref k, .. }) if k == key
    ));
    Ok(())
}

/// The constructor kwargs of se3t_basic with `field` set to `value`.
fn se3t_kwargs_with(field: &str, value: serde_json::Value) -> TestResult<serde_json::Value> {
    let file = ModelFile::load(reference_dir("se3t_basic").join("config.json"))?;
    let mut kwargs = file.constructor_kwargs.clone();
    kwargs
        .as_object_mut()
        .ok_or("constructor_kwargs is not an object")?
        .insert(field.to_string(), value);
    Ok(kwargs)
}

#[test]
fn se3_transformer_configs_of_absurd_sizes_are_typed_errors() -> TestResult {
    use serde_json::json;
    let cases = [
        ("dim", json!(1_000_000_000u64), "dim"),
        ("depth", json!(1_000_000), "depth"),
        ("num_degrees", json!(100), "num_degrees"),
        ("num_degrees", json!(1_000_000_000u64), "num_degrees"),
        ("input_degrees", json!(1_000_000_000u64), "input_degrees"),
        ("output_degrees", json!(1_000_000_000u64), "output_degrees"),
        ("heads", json!(1_000_000), "heads"),
        ("dim_head", json!(1u64 << 40), "dim_head"),
        ("num_tokens", json!(1u64 << 40), "num_tokens"),
        ("num_positions", json!(1u64 << 40), "num_positions"),
        (
            "rel_dist_num_fourier_features",
            json!(100_000),
            "rel_dist_num_fourier_features",
        ),
        ("num_conv_layers", json!(1_000_000), "num_conv_layers"),
        ("egnn_hidden_dim", json!(1u64 << 33), "egnn_hidden_dim"),
        (
            "hidden_fiber_dict",
            json!({"0": 1_000_000_000u64}),
            "hidden_fiber_dict",
        ),
        (
            "hidden_fiber_dict",
            json!({"1000000": 4}),
            "hidden_fiber_dict",
        ),
        ("dim_in", json!([4, 1_000_000_000u64]), "dim_in"),
    ];
    for (field, value, named) in cases {
        let kwargs = se3t_kwargs_with(field, value.clone())?;
        let err = Se3TransformerConfig::from_kwargs(&kwargs);
        assert!(
            matches!(err, Err(Error::TooLarge { field: f, .. }) if f == named),
            "{field} = {value}: {err:?}"
        );
        // the whole load path (config, then weights) stops at the same error
        let mut file = ModelFile::load(reference_dir("se3t_basic").join("config.json"))?;
        file.constructor_kwargs = kwargs;
        assert!(matches!(
            Model::from_parts(&file, &StateDict::new()),
            Err(Error::TooLarge { .. })
        ));
    }
    Ok(())
}

#[test]
fn tfn_configs_of_absurd_sizes_are_typed_errors() -> TestResult {
    use serde_json::json;
    let many: Vec<serde_json::Value> = (0..5000).map(|_| json!({"0": 2})).collect();
    let cases = [
        json!({"fibers": [{"0": 4}, {"0": 1_000_000_000u64}]}),
        json!({"fibers": [{"0": 4}, {"100": 4}]}),
        json!({"fibers": many}),
    ];
    for kwargs in cases {
        assert!(
            matches!(
                TfnStackConfig::from_kwargs(&kwargs),
                Err(Error::TooLarge {
                    field: "fibers",
                    ..
                })
            ),
            "{kwargs}"
        );
    }
    Ok(())
}

#[test]
fn sign_tables_with_impossible_degrees_are_typed_errors() {
    let too_high = r#"{"rows": [{"J": 1000000, "d_in": 1000000, "d_out": 0, "sign": 1}]}"#;
    assert!(matches!(
        QjSigns::from_json(too_high, "signs"),
        Err(Error::TooLarge { field: "d_in", .. })
    ));
    let outside = r#"{"rows": [{"J": 5, "d_in": 1, "d_out": 1, "sign": 1}]}"#;
    assert!(matches!(
        QjSigns::from_json(outside, "signs"),
        Err(Error::InvalidConfig { field: "J", .. })
    ));
}

#[test]
fn text_files_longer_than_a_config_are_refused_without_reading_them() -> TestResult {
    let dir = std::env::temp_dir().join(format!("se3-untrusted-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let big = dir.join("config.json");
    // a sparse file: its length is past the bound, its blocks are never written
    std::fs::File::create(&big)?.set_len(se3_models::limits::MAX_TEXT_FILE_BYTES + 4096)?;
    assert!(matches!(
        ModelFile::load(&big),
        Err(Error::FileTooLarge { .. })
    ));
    assert!(matches!(
        QjSigns::load(&big),
        Err(Error::FileTooLarge { .. })
    ));
    std::fs::remove_dir_all(&dir)?;
    // an endless file is read only up to the bound
    let zero = std::path::Path::new("/dev/zero");
    if zero.exists() {
        assert!(matches!(
            ModelFile::load(zero),
            Err(Error::FileTooLarge { .. })
        ));
    }
    Ok(())
}
