//! The fuzz targets' bodies (fuzz/src/lib.rs) on the seed corpus (fuzz/seeds/<target>/) and on
//! every input a fuzz run found to crash (fuzz/regressions/<target>/, kept after the fix): each
//! must return, and the seeds must reach what they were written for (a readable file, outputs of
//! the tiny model), so the fuzzers start from inputs that get past the parsers.

#[path = "../fuzz/src/lib.rs"]
mod fuzz_bodies;

use std::path::PathBuf;

use fuzz_bodies::InferReach;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The files of `fuzz/<kind>/<target>/`, sorted (none if the folder does not exist).
fn files(kind: &str, target: &str) -> Result<Vec<(String, Vec<u8>)>, std::io::Error> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            out.push((path.display().to_string(), std::fs::read(&path)?));
        }
    }
    out.sort();
    Ok(out)
}

/// Runs `body` on every seed (each must give `true`) and every saved crash of `target`.
fn seeds_pass_and_crashes_return(target: &str, body: fn(&[u8]) -> bool) -> TestResult {
    let seeds = files("seeds", target)?;
    assert!(!seeds.is_empty(), "no seeds for {target}");
    for (name, data) in &seeds {
        assert!(body(data), "seed {name} is refused by {target}");
    }
    for (_, data) in files("regressions", target)? {
        body(&data);
    }
    Ok(())
}

#[test]
fn weights_seeds_are_read_and_crashes_return() -> TestResult {
    seeds_pass_and_crashes_return("safetensors_weights", fuzz_bodies::safetensors_weights)
}

/// The weights target checks a checkpoint against the tiny TFN's key and shape table instead of
/// building the model: on every seed and saved crash, and on the tiny TFN's checkpoint with a key
/// removed, a shape changed and a key added, the table accepts exactly what the build accepts.
#[test]
fn weights_key_table_agrees_with_the_model_build() -> TestResult {
    let mut dicts = Vec::new();
    for kind in ["seeds", "regressions"] {
        for (_, data) in files(kind, "safetensors_weights")? {
            if let Ok(sd) = se3::models::checkpoint::StateDict::from_bytes(&data) {
                dicts.push(sd);
            }
        }
    }
    let full = dicts
        .iter()
        .find(|sd| fuzz_bodies::tiny_tfn_builds_from(sd))
        .cloned()
        .ok_or("no seed checkpoint builds the tiny TFN")?;
    let keys: Vec<String> = full.keys().map(str::to_string).collect();
    for key in &keys {
        let mut missing = full.clone();
        missing.remove(key);
        dicts.push(missing);
        let mut reshaped = full.clone();
        let shape = full.get(key).ok_or("key vanished")?.shape.clone();
        let mut wider = shape.clone();
        wider.push(1);
        reshaped.insert(key.clone(), se3::models::checkpoint::Tensor::zeros(&wider));
        dicts.push(reshaped);
    }
    let mut extra = full.clone();
    extra.insert("extra.weight", se3::models::checkpoint::Tensor::zeros(&[1]));
    dicts.push(extra);
    dicts.push(full);
    let mut accepted = 0;
    for sd in &dicts {
        let build = fuzz_bodies::tiny_tfn_builds_from(sd);
        assert_eq!(fuzz_bodies::tiny_tfn_table_accepts(sd), build);
        accepted += usize::from(build);
    }
    assert!(accepted >= 2 && accepted < dicts.len());
    Ok(())
}

#[test]
fn inputs_seeds_are_read_and_crashes_return() -> TestResult {
    seeds_pass_and_crashes_return("safetensors_inputs", fuzz_bodies::safetensors_inputs)
}

#[test]
fn config_seeds_are_read_and_crashes_return() -> TestResult {
    seeds_pass_and_crashes_return("config_json", fuzz_bodies::config_json)
}

#[test]
fn sign_table_seeds_are_read_and_crashes_return() -> TestResult {
    seeds_pass_and_crashes_return("qj_signs", fuzz_bodies::qj_signs)
}

#[test]
fn infer_seeds_reach_outputs_and_crashes_return() -> TestResult {
    let seeds = files("seeds", "infer")?;
    assert!(!seeds.is_empty(), "no seeds for infer");
    for (name, data) in &seeds {
        assert_eq!(fuzz_bodies::infer(data), InferReach::Outputs, "seed {name}");
    }
    for (_, data) in files("regressions", "infer")? {
        fuzz_bodies::infer(&data);
    }
    Ok(())
}
