//! The bodies of the fuzz targets, one function a target, shared by the libFuzzer binaries
//! (`fuzz_targets/*.rs`) and by the regression test of the main suite (`tests/fuzz_regressions.rs`,
//! which runs every seed and every saved crash through them). Each must return for any bytes —
//! with a value or a typed error inside — never panic, hang or allocate beyond the input's size.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use se3_models::checkpoint::StateDict;
use se3_models::inputs::ModelInputs;
use se3_models::model_file::{ModelFile, TensorName};
use se3_models::se3_transformer::basis::{QjSigns, Se3tBasis};
use se3_models::se3_transformer::{Se3TransformerConfig, Se3TransformerForward};
use se3_models::tfn::{TfnStack, TfnStackConfig};
use se3_models::zoo::{CompiledModel, Model};

/// A one-conv TFN stack (degree 0 to degrees 0 and 1): the key list a fuzzed checkpoint is
/// checked against.
const TINY_TFN: &str = r#"{"class": "TFNStack", "library": {"name": "se3-transformer-pytorch"},
    "constructor_kwargs": {"fibers": [{"0": 1}, {"0": 1, "1": 1}]}}"#;

/// Checkpoint keys with their shapes, as `StateDict::check_keys` takes them.
type KeyShapes = Vec<(String, Vec<usize>)>;

/// The keys and shapes [`TINY_TFN`] needs, computed once per process (`None` if the constant
/// config did not build, which `tests/fuzz_regressions.rs` rules out).
fn tiny_tfn_keys() -> Option<&'static [(String, Vec<usize>)]> {
    static KEYS: OnceLock<Option<KeyShapes>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let file = ModelFile::from_json(TINY_TFN, "config").ok()?;
        let cfg = TfnStackConfig::from_kwargs(&file.constructor_kwargs).ok()?;
        TfnStack::expected_keys(&cfg).ok()
    })
    .as_deref()
}

/// Whether `sd` has exactly the keys and shapes of [`TINY_TFN`], by the table of
/// [`tiny_tfn_keys`] (what the fuzz target checks on every execution).
pub fn tiny_tfn_table_accepts(sd: &StateDict) -> bool {
    tiny_tfn_keys().is_some_and(|keys| sd.check_keys(keys).is_ok())
}

/// Whether [`TINY_TFN`] builds from `sd` (the full build the table check stands for; the
/// regression test asserts both agree on every seed and saved crash).
pub fn tiny_tfn_builds_from(sd: &StateDict) -> bool {
    ModelFile::from_json(TINY_TFN, "config").is_ok_and(|file| Model::from_parts(&file, sd).is_ok())
}

/// Checkpoint bytes: the float64 state-dict reader of se3-models, the f32 reader of se3-core, and
/// the key and shape check of a small model against what was read. The model's key and shape
/// table is built once ([`tiny_tfn_keys`]): building the model per execution (its kernel bases)
/// took most of the time, and the build reads no tensor values, only keys and shapes, which the
/// table check compares in the same way (`StateDict::check_keys`: missing, wrong shape,
/// unexpected). Returns whether the bytes were a readable state dict.
pub fn safetensors_weights(data: &[u8]) -> bool {
    let _ = se3_core::exec::read_safetensors(data);
    let whole = StateDict::from_bytes(data);
    streamed_agrees(data, whole.as_ref().ok());
    let Ok(sd) = whole else {
        return false;
    };
    std::hint::black_box(tiny_tfn_table_accepts(&sd));
    true
}

/// The same bytes as a file read one tensor at a time (`SafetensorsFile`): every tensor it hands
/// out is, bit for bit, the one the whole-buffer reader gave (`whole`, when that read succeeded).
fn streamed_agrees(data: &[u8], whole: Option<&StateDict>) {
    use se3_models::checkpoint::{SafetensorsFile, WeightSource};
    let path = std::env::temp_dir().join(format!(
        "se3-fuzz-streamed-{}-{:?}.safetensors",
        std::process::id(),
        std::thread::current().id()
    ));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(mut file) = SafetensorsFile::open(&path) {
        let keys: Vec<(String, Vec<usize>)> = file
            .keys()
            .map(|k| (k.to_string(), file.shape(k).unwrap_or_default().to_vec()))
            .collect();
        for (key, shape) in keys {
            let streamed = file.take(&key, &shape);
            if let (Ok(t), Some(sd)) = (&streamed, whole) {
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let same = sd
                    .get(&key)
                    .is_some_and(|w| w.shape == t.shape && bits(&w.data) == bits(&t.data));
                assert!(
                    same,
                    "streamed tensor {key} differs from the whole-buffer read"
                );
            }
        }
        let _ = file.finish();
    }
    let _ = std::fs::remove_file(&path);
}

/// Model-input bytes (`inputs.safetensors`): read under the parameter names, under the names of a
/// reference config, and with per-degree features, each time validated. Returns whether any
/// reading succeeded.
pub fn safetensors_inputs(data: &[u8]) -> bool {
    let plain = ModelInputs::from_bytes(data, &BTreeMap::new(), "inputs").is_ok();
    let mut names = BTreeMap::new();
    for param in ["feats", "coors", "mask", "adj_mat", "edges"] {
        names.insert(param.to_string(), TensorName::One(param.to_string()));
    }
    let named = ModelInputs::from_bytes(data, &names, "inputs").is_ok();
    let mut per_degree = BTreeMap::new();
    per_degree.insert("0".to_string(), "feats_type0".to_string());
    per_degree.insert("1".to_string(), "feats_type1".to_string());
    names.insert("feats".to_string(), TensorName::PerDegree(per_degree));
    let degrees = ModelInputs::from_bytes(data, &names, "inputs").is_ok();
    plain || named || degrees
}

/// `config.json` text: parsed as a model file and built against an empty checkpoint (which must
/// stop at a typed config or missing-key error), and parsed directly as the constructor kwargs of
/// every model kind and as forward literals. Returns whether the text was a model file.
pub fn config_json(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let file = ModelFile::from_json(text, "config");
    if let Ok(file) = &file {
        let _ = Model::from_parts(file, &StateDict::new());
    }
    let strict = se3_models::model_file::python_json_to_strict(text);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&strict) {
        let _ = Se3TransformerConfig::from_kwargs(&v);
        let _ = TfnStackConfig::from_kwargs(&v);
        let _ = Se3TransformerForward::from_literals(&v);
    }
    file.is_ok()
}

/// Q_J sign tables (`--qj-signs`): parsed, then applied to the kernel basis of degree 2. Returns
/// whether the table was read.
pub fn qj_signs(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(signs) = QjSigns::from_json(text, "signs") else {
        return false;
    };
    let _ = Se3tBasis::with_signs(2, &signs);
    true
}

/// The next section of `data`, preceded by its length (u32 little-endian).
fn section<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return None;
    }
    let (s, rest) = rest.split_at(len);
    *data = rest;
    Some(s)
}

/// How far [`infer`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InferReach {
    /// The bytes are not three length-prefixed sections.
    Sections,
    /// A file was refused (config, checkpoint, inputs) or the model did not build.
    Refused,
    /// The float64 oracle ran and refused the inputs.
    ForwardError,
    /// The oracle gave outputs.
    Outputs,
}

/// Models built from (config text, checkpoint bytes) by earlier executions of [`infer`], most
/// recent last: the build is a deterministic function of those bytes, so an input that repeats
/// them (most inputs of a run: the fuzzer mutates the inputs section as often as the others)
/// reuses the built model and its compiled graph instead of building and compiling again.
/// Bounded to [`MODEL_CACHE_ENTRIES`] models.
struct ModelCache {
    entries: Vec<CachedModel>,
}

struct CachedModel {
    config: Vec<u8>,
    weights: Vec<u8>,
    model: Model,
    /// The compiled graph once an execution asked for it (`Err` if it did not build).
    compiled: Option<Result<CompiledModel, ()>>,
}

/// Models [`infer`] keeps (tiny models: a few kilobytes to a few megabytes each).
const MODEL_CACHE_ENTRIES: usize = 8;

thread_local! {
    static MODELS: std::cell::RefCell<ModelCache> =
        const { std::cell::RefCell::new(ModelCache { entries: Vec::new() }) };
}

/// `se3 infer` end to end from bytes: config text, checkpoint and inputs, each a length-prefixed
/// section, then the steps of `src/cli/infer.rs` (parse, load, validate, build, run the float64
/// oracle; with the last byte odd, also compile and run the float32 graph). A model built from
/// the same config and checkpoint bytes before is reused with its compiled graph ([`ModelCache`]);
/// parsing and reading the inputs run every time.
pub fn infer(data: &[u8]) -> InferReach {
    let compile = data.last().is_some_and(|b| b % 2 == 1);
    let mut rest = data;
    let (Some(config), Some(weights), Some(inputs)) =
        (section(&mut rest), section(&mut rest), section(&mut rest))
    else {
        return InferReach::Sections;
    };
    MODELS.with(|cache| {
        let mut cache = cache.borrow_mut();
        let hit = cache
            .entries
            .iter()
            .position(|e| e.config == config && e.weights == weights);
        let (file, mut entry) = match hit {
            Some(p) => {
                let entry = cache.entries.remove(p);
                // the text parsed before; parse again for the inputs' names (cheap)
                let Ok(file) = std::str::from_utf8(config)
                    .map_err(|_| ())
                    .and_then(|t| ModelFile::from_json(t, "config").map_err(|_| ()))
                else {
                    return InferReach::Refused;
                };
                (file, entry)
            }
            None => {
                let Ok(text) = std::str::from_utf8(config) else {
                    return InferReach::Refused;
                };
                let Ok(file) = ModelFile::from_json(text, "config") else {
                    return InferReach::Refused;
                };
                let Ok(sd) = StateDict::from_bytes(weights) else {
                    return InferReach::Refused;
                };
                // inputs are read before the build, as `se3 infer` does (and read again below)
                if ModelInputs::from_bytes(inputs, &file.forward_kwargs.tensors, "inputs").is_err()
                {
                    return InferReach::Refused;
                }
                let Ok(model) = Model::from_parts(&file, &sd) else {
                    return InferReach::Refused;
                };
                (
                    file,
                    CachedModel {
                        config: config.to_vec(),
                        weights: weights.to_vec(),
                        model,
                        compiled: None,
                    },
                )
            }
        };
        let reach = run_cached(&file, weights, inputs, compile, &mut entry);
        if cache.entries.len() >= MODEL_CACHE_ENTRIES {
            cache.entries.remove(0);
        }
        cache.entries.push(entry);
        reach
    })
}

/// The inputs section read under the config's names, the oracle forward, and with `compile` the
/// compiled graph's forward (compiled on first use).
fn run_cached(
    file: &ModelFile,
    weights: &[u8],
    inputs: &[u8],
    compile: bool,
    entry: &mut CachedModel,
) -> InferReach {
    let Ok(inputs) = ModelInputs::from_bytes(inputs, &file.forward_kwargs.tensors, "inputs") else {
        return InferReach::Refused;
    };
    let reach = match entry.model.forward(&inputs) {
        Ok(_) => InferReach::Outputs,
        Err(_) => InferReach::ForwardError,
    };
    if compile {
        if entry.compiled.is_none() {
            let built = StateDict::from_bytes(weights)
                .map_err(|_| ())
                .and_then(|sd| {
                    CompiledModel::from_model(entry.model.clone(), None, file, &sd).map_err(|_| ())
                });
            entry.compiled = Some(built);
        }
        if let Some(Ok(compiled)) = &mut entry.compiled {
            let _ = compiled.forward(&inputs);
        }
    }
    reach
}
