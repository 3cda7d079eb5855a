//! The error type of se3-models: checkpoints, configs and model inputs.

/// Errors of se3-models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the math, layers or execution engine.
    #[error(transparent)]
    Core(#[from] se3_core::Error),
    /// A checkpoint lacks a tensor the model needs.
    #[error("checkpoint has no tensor `{key}` (expected shape {expected:?})")]
    MissingKey { key: String, expected: Vec<usize> },
    /// A checkpoint holds a tensor the model does not use.
    #[error("checkpoint has a tensor `{key}` of shape {shape:?} that the model does not use")]
    UnexpectedKey { key: String, shape: Vec<usize> },
    /// A checkpoint tensor has the wrong shape.
    #[error("tensor `{key}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype that cannot be used where it is read.
    #[error("tensor `{key}` has dtype {found}, expected {expected}")]
    WrongDtype {
        key: String,
        expected: &'static str,
        found: String,
    },
    /// A safetensors file could not be parsed or written.
    #[error("safetensors file `{path}`: {source}")]
    Safetensors {
        path: String,
        source: safetensors::SafeTensorError,
    },
    /// A file could not be read or written.
    #[error("file `{path}`: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A JSON config could not be parsed (syntax or a value of the wrong type).
    #[error("config `{path}` is not valid: {source}")]
    ConfigParse {
        path: String,
        source: serde_json::Error,
    },
    /// A constructor or forward keyword argument that the model does not have.
    #[error("unknown keyword argument `{name}` for {model}")]
    UnknownKwarg { model: &'static str, name: String },
    /// A config value the model cannot take.
    #[error("config field `{field}` is invalid: expected {expected}, found {found}")]
    InvalidConfig {
        field: &'static str,
        expected: &'static str,
        found: String,
    },
    /// A model input is missing.
    #[error("input `{name}` is required by this model configuration")]
    MissingInput { name: &'static str },
    /// A model input that this configuration does not accept.
    #[error("input `{name}` is not accepted by this model configuration")]
    UnexpectedInput { name: &'static str },
    /// A model input has the wrong shape.
    #[error("input `{name}` has shape {found:?}, expected {expected}")]
    InputShape {
        name: &'static str,
        expected: String,
        found: Vec<usize>,
    },
    /// A coordinate or feature input holds NaN or infinity.
    #[error("input `{name}` holds a non-finite value at flat index {index}")]
    NonFinite { name: &'static str, index: usize },
    /// A graph with no nodes (or a batch of size zero), or a single node where the model needs
    /// neighbours.
    #[error("input graph is empty (batch {batch}, nodes {nodes}; at least 2 nodes are needed for neighbours)")]
    EmptyGraph { batch: usize, nodes: usize },
    /// An index input (token or edge type) is out of range.
    #[error("input `{name}` holds index {found} at flat index {index}, expected 0..{bound}")]
    IndexOutOfRange {
        name: &'static str,
        index: usize,
        found: i64,
        bound: usize,
    },
    /// Neighbour selection found nothing to fetch: `num_neighbors = 0` and `adj_mat` holds no bond
    /// (se3-transformer-pytorch asserts that at least one neighbour is fetched).
    #[error("no neighbours to fetch: num_neighbors is 0 and adj_mat holds no bond between distinct nodes")]
    NoNeighbors,
    /// A config option that the compiled graph model does not implement yet (the float64
    /// oracle runs it).
    #[error("option `{option}` is not compiled to a graph yet")]
    NotCompiled { option: &'static str },
    /// A config option whose outputs the fiber types of the typed SE(3)-Transformer
    /// ([`crate::se3_transformer::typed`]) cannot carry (`Se3TransformerNet` runs it).
    #[error("option `{option}` is not available with typed fibers; use Se3TransformerNet")]
    NotTyped { option: &'static str },
    /// A physics simulator, data set or batching parameter out of range.
    #[error("parameter `{name}` is invalid: expected {expected}, found {found}")]
    InvalidParameter {
        name: &'static str,
        expected: &'static str,
        found: String,
    },
    /// A simulation produced non-finite energies or forces (particles collided or blew up).
    #[error("simulation diverged: non-finite energy or forces at step {step}")]
    SimulationDiverged { step: usize },
    /// A safetensors file that is not an se3 physics data set of the supported format version.
    #[error("`{path}` is not an se3 physics data set: metadata `format` is {found:?}, expected \"se3-physics-v1\"")]
    DatasetFormat { path: String, found: Option<String> },
    /// A training data set tensor whose shape disagrees with the set or with the model.
    #[error("data set tensor `{tensor}` has shape {found:?}, expected {expected}")]
    DatasetShape {
        tensor: String,
        expected: String,
        found: Vec<usize>,
    },
    /// A training step was given no samples (or only padding nodes).
    #[error("training step {step} (epoch {epoch}): batch `{split}` is empty (no sample with a real node)")]
    EmptyBatch {
        epoch: usize,
        step: usize,
        split: &'static str,
    },
    /// The loss of a training step is NaN or infinite; no parameter was updated.
    #[error("training step {step} (epoch {epoch}): loss is {value} (non-finite); parameters left unchanged")]
    NonFiniteLoss {
        epoch: usize,
        step: usize,
        value: f64,
    },
    /// A gradient of a training step holds NaN or an infinity; no parameter was updated.
    #[error("training step {step} (epoch {epoch}): gradient `{tensor}` holds {value} at flat index {index}; parameters left unchanged")]
    NonFiniteGradient {
        epoch: usize,
        step: usize,
        tensor: String,
        index: usize,
        value: f64,
    },
    /// A config size above the bound of [`crate::limits`] (checked before anything is allocated).
    #[error("config field `{field}` is {found}, above the limit {limit} se3 accepts")]
    TooLarge {
        field: &'static str,
        limit: usize,
        found: usize,
    },
    /// A text file (config, sign table) longer than [`crate::limits::MAX_TEXT_FILE_BYTES`].
    #[error("file `{path}` is longer than {limit} bytes, more than a config or sign table can be")]
    FileTooLarge { path: String, limit: u64 },
}
