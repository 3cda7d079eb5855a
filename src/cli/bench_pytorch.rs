//! PyTorch figures measured in the same session as ours: runs the reference libraries'
//! benchmark script (`bench_pytorch.py --only <case>`, in `shared/reference/` beside the repo)
//! with the reference environment's python and reads its JSON line (median / min / max seconds
//! of the forward after a warm-up, torch threads, process peak resident set in MiB).
//!
//! The python is `--python PATH` or else the environment variable `SE3_REFENV` (the python, or
//! the virtual environment's directory, whose `bin/python` is taken). Without one there are no
//! PyTorch figures: the benchmarks print their own column and [`HOW_TO_GET_TORCH`]; they never
//! divide by stored constants.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to tell the user when no python was given.
pub const HOW_TO_GET_TORCH: &str = "PyTorch column: pass --python /path/to/refenv/bin/python \
     (or set SE3_REFENV to it or to the venv directory; /work/shared/reference/setup_refenv.sh \
     builds one) to run bench_pytorch.py in this session";

/// The name of the reference benchmark script.
pub const SCRIPT: &str = "bench_pytorch.py";
/// The reference's training-step benchmark (one forward, loss, backward and Adam step).
pub const TRAIN_SCRIPT: &str = "bench_pytorch_train.py";

/// PyTorch's figures for one case, measured in this session.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchFigures {
    /// Median seconds of the forward.
    pub median_s: f64,
    /// Fastest forward, seconds.
    pub min_s: f64,
    /// Slowest forward, seconds.
    pub max_s: f64,
    /// Peak resident set of the python process after the case, MiB.
    pub peak_mib: f64,
    /// Torch's intra-op threads.
    pub threads: usize,
    /// Timed forwards.
    pub reps: usize,
    /// Torch version string.
    pub torch: String,
}

/// Where PyTorch comes from: the reference environment's python and the directory holding
/// [`SCRIPT`].
#[derive(Debug, Clone, Default)]
pub struct TorchSource {
    /// The python to run the script with; `None`: no PyTorch figures.
    pub python: Option<PathBuf>,
    /// The directory of the script; `None`: looked up by [`find_reference_dir`] from the current
    /// directory, then from this crate's source directory.
    pub reference_dir: Option<PathBuf>,
}

impl TorchSource {
    /// From the command-line options; the python falls back to `SE3_REFENV`.
    pub fn from_args(python: Option<PathBuf>, reference_dir: Option<PathBuf>) -> Self {
        let python = python.or_else(|| {
            std::env::var_os("SE3_REFENV")
                .filter(|v| !v.is_empty())
                .map(|v| python_of(Path::new(&v)))
        });
        TorchSource {
            python,
            reference_dir,
        }
    }

    /// The path of [`SCRIPT`].
    pub fn script(&self) -> Result<PathBuf, super::CliError> {
        let dir = match &self.reference_dir {
            Some(d) => d.clone(),
            None => std::env::current_dir()
                .ok()
                .and_then(|d| find_reference_dir(&d))
                .or_else(|| find_reference_dir(Path::new(env!("CARGO_MANIFEST_DIR"))))
                .ok_or(
                    "no shared/reference/bench_pytorch.py beside the repo or above the current \
                     directory: pass --reference-dir",
                )?,
        };
        let script = dir.join(SCRIPT);
        if !script.is_file() {
            return Err(format!("no {SCRIPT} in {}", dir.display()).into());
        }
        Ok(script)
    }

    /// Runs `case` of [`TRAIN_SCRIPT`] (beside [`SCRIPT`]) in PyTorch: one training step
    /// (`None` without a python).
    pub fn measure_train(&self, case: &str) -> Result<Option<TorchFigures>, super::CliError> {
        let Some(python) = &self.python else {
            return Ok(None);
        };
        let script = self.script()?.with_file_name(TRAIN_SCRIPT);
        let out = Command::new(python)
            .arg(&script)
            .args(["--only", case])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim();
            return Err(format!("{TRAIN_SCRIPT} --only {case} failed: {last}").into());
        }
        parse_torch_output(&String::from_utf8_lossy(&out.stdout), case).map(Some)
    }

    /// Runs `case` in PyTorch (`None` without a python).
    pub fn measure(&self, case: &str) -> Result<Option<TorchFigures>, super::CliError> {
        let Some(python) = &self.python else {
            return Ok(None);
        };
        let script = self.script()?;
        // the script runs its all-pairs EGNN case only together with the 16-neighbour one
        let only = if case == "egnn_network_dense_n512" {
            "egnn_network_n512,egnn_network_dense_n512"
        } else {
            case
        };
        let out = Command::new(python)
            .arg(&script)
            .args(["--only", only])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim();
            return Err(format!("{SCRIPT} --only {case} failed: {last}").into());
        }
        parse_torch_output(&String::from_utf8_lossy(&out.stdout), case).map(Some)
    }
}

/// The python of `SE3_REFENV`: the path itself, or `bin/python` of a directory.
fn python_of(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("bin").join("python")
    } else {
        p.to_path_buf()
    }
}

/// The first `shared/reference` holding [`SCRIPT`] beside `start` or one of its ancestors
/// (`<dir>/../shared/reference`, i.e. `shared/` next to the repo, its parent, ...).
pub fn find_reference_dir(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|a| a.join("shared").join("reference"))
        .find(|d| d.join(SCRIPT).is_file())
}

/// The figures of `case` among the script's JSON lines (other lines are ignored).
pub fn parse_torch_output(text: &str, case: &str) -> Result<TorchFigures, super::CliError> {
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            continue;
        };
        if v.get("case").and_then(|c| c.as_str()) != Some(case) {
            continue;
        }
        let num = |k: &str| -> Result<f64, super::CliError> {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| format!("{SCRIPT} line of {case} has no number `{k}`").into())
        };
        return Ok(TorchFigures {
            median_s: num("median_s")?,
            min_s: num("min_s")?,
            max_s: num("max_s")?,
            peak_mib: num("peak_rss_mib")?,
            threads: num("threads")? as usize,
            reps: num("reps")? as usize,
            torch: v
                .get("torch")
                .and_then(|t| t.as_str())
                .unwrap_or("?")
                .to_string(),
        });
    }
    Err(format!("{SCRIPT} printed no line for case `{case}`").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn parses_the_line_of_the_case_among_others() {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let (med, lo, hi, mib): (f64, f64, f64, f64) = (
            rng.gen_range(0.1..10.0),
            rng.gen_range(0.01..0.1),
            rng.gen_range(10.0..20.0),
            rng.gen_range(100.0..2000.0),
        );
        let reps = rng.gen_range(5..9);
        let other = serde_json::json!({"case": "other", "median_s": 1.0});
        let ours = serde_json::json!({
            "case": "se3t_deg2_n128", "median_s": med, "min_s": lo, "max_s": hi,
            "reps": reps, "threads": 2, "peak_rss_mib": mib, "torch": "2.x"
        });
        let text = format!("warning: noise\n{other}\n{ours}\n");
        let f = parse_torch_output(&text, "se3t_deg2_n128").expect("parsed");
        // serde_json's float parsing is not always correctly rounded: compare to 1e-12
        for (got, want) in [
            (f.median_s, med),
            (f.min_s, lo),
            (f.max_s, hi),
            (f.peak_mib, mib),
        ] {
            assert!((got - want).abs() <= 1e-12 * want, "{got} != {want}");
        }
        assert_eq!((f.threads, f.reps, f.torch.as_str()), (2, reps, "2.x"));
        assert!(parse_torch_output(&text, "se3t_deg3_n128").is_err());
        let partial = format!("{}\n", serde_json::json!({"case": "c", "median_s": med}));
        assert!(parse_torch_output(&partial, "c").is_err());
    }

    #[test]
    fn finds_shared_reference_above_the_start() {
        let root = std::env::temp_dir().join(format!(
            "se3-bench-pytorch-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let deep = root.join("wt").join("repo").join("src");
        let refdir = root.join("shared").join("reference");
        std::fs::create_dir_all(&deep).expect("dirs");
        // nothing inside the temporary tree yet (a `shared/reference` above the temp dir, as
        // beside a CI clone, may still be found)
        if let Some(found) = find_reference_dir(&deep) {
            assert!(
                !found.starts_with(&root),
                "found {found:?} before it exists"
            );
        }
        std::fs::create_dir_all(&refdir).expect("dirs");
        std::fs::write(refdir.join(SCRIPT), "").expect("script");
        assert_eq!(find_reference_dir(&deep), Some(refdir.clone()));
        let src = TorchSource {
            python: None,
            reference_dir: Some(refdir.clone()),
        };
        assert_eq!(src.script().expect("script"), refdir.join(SCRIPT));
        assert!(src.measure("se3t_deg2_n128").expect("no python").is_none());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
