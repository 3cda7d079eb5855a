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
