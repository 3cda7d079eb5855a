//! The error type of se3-core: every way input can be wrong, each variant naming what was
//! expected and what was found.

/// Errors of se3-core. Input is checked once at the boundary (math entry points, graph
/// build, session run); inner kernels assume checked input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A coordinate or vector holds NaN or an infinity.
    #[error("{what} holds a non-finite value ({value}) at index {index}")]
    NonFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    /// A direction was needed but the vector has zero length.
    #[error("{what} at index {index} is the zero vector, which has no direction")]
    ZeroVector { what: &'static str, index: usize },
    /// A degree above the supported maximum was asked for.
    #[error("degree {l} is above the supported maximum {max}")]
    DegreeTooHigh { l: usize, max: usize },
    /// A Clebsch-Gordan triple that breaks the selection rule |l1 - l2| <= j <= l1 + l2.
    #[error("no Clebsch-Gordan path {l1} x {l2} -> {j}: j must lie in |l1 - l2| ..= l1 + l2")]
    SelectionRule { l1: usize, l2: usize, j: usize },
    /// A fiber spec entry that is not `l:channels` or `lp:channels`.
    #[error("fiber spec `{input}`: entry `{entry}` is malformed, expected {expected}")]
    FiberSyntax {
        input: String,
        entry: String,
        expected: &'static str,
    },
    /// A parity letter other than `e` (even) or `o` (odd).
    #[error("unknown parity `{found}`: expected `e` (even) or `o` (odd)")]
    UnknownParity { found: String },
    /// A degree listed twice in a fiber.
    #[error("degree {l} appears twice in the fiber; list each degree once")]
    DuplicateDegree { l: usize },
    /// A degree with zero channels.
    #[error("degree {l} has 0 channels; give it at least 1 or leave it out")]
    ZeroChannels { l: usize },
    /// Degrees not in increasing order.
    #[error("degrees must increase: {found} comes after {previous}")]
    UnsortedDegrees { previous: usize, found: usize },
    /// Some degrees of a fiber carry a parity and others do not.
    #[error("degree {l} has no parity but other degrees do (or the reverse); an E(3) fiber gives every degree a parity, an SE(3) fiber none")]
    MixedParity { l: usize },
    /// A run-time fiber spec (from a config or checkpoint) differs from the compiled fiber.
    #[error("fiber `{fiber}` is `{expected}`, but the input describes `{found}`")]
    FiberMismatch {
        fiber: &'static str,
        expected: String,
        found: String,
    },
    /// Two lengths that must agree do not.
    #[error("{what}: expected length {expected}, found {found}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    /// A tensor has the wrong shape.
    #[error("{what} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        what: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// An index points outside the range it indexes.
    #[error("{what}: index {index} at position {position} is out of range 0..{len}")]
    IndexOutOfRange {
        what: &'static str,
        position: usize,
        index: i64,
        len: usize,
    },
    /// A graph or point cloud with nothing in it.
    #[error("{what} is empty")]
    Empty { what: &'static str },
    /// A matrix that should be a rotation (or, for O(3), orthogonal) is not.
    #[error(
        "matrix is not a rotation: |M^T M - I| = {orthogonality_error:e}, det = {determinant}"
    )]
    NotARotation {
        determinant: f64,
        orthogonality_error: f64,
    },
    /// A table or cache has no entry for the degrees asked for.
    #[error("{what} has no entry for degrees {degrees:?}")]
    NotTabulated {
        what: &'static str,
        degrees: Vec<usize>,
    },
    /// A parameter outside its valid range (e.g. a non-positive cutoff).
    #[error("{what} must be {expected}, found {found}")]
    InvalidParameter {
        what: &'static str,
        expected: &'static str,
        found: f64,
    },
    /// A session input or output name that the graph does not have.
    #[error("the graph has no {role} named `{name}`")]
    UnknownName { role: &'static str, name: String },
    /// An input of the graph was not given a value before running.
    #[error("input `{name}` was not set before running the graph")]
    MissingInput { name: String },
    /// An input's number of axes differs from the graph's.
    #[error("input `{name}` has {found} axes, the graph expects {expected}")]
    RankMismatch {
        name: String,
        expected: usize,
        found: usize,
    },
    /// An input's axis has a size that differs from the graph (fixed size) or from another
    /// input sharing the same dynamic dimension.
    #[error("input `{name}` axis {axis} has size {found}, expected {expected}")]
    AxisMismatch {
        name: String,
        axis: usize,
        expected: usize,
        found: usize,
    },
    /// An input's data length does not match the product of its shape.
    #[error("input `{name}` has {found} values, its shape needs {expected}")]
    DataLength {
        name: String,
        expected: usize,
        found: usize,
    },
    /// An input has an axis of size zero (an empty point cloud or edge list).
    #[error("input `{name}` is empty along axis {axis}")]
    EmptyInput { name: String, axis: usize },
    /// A coordinate or index input holds NaN or an infinity.
    #[error("input `{name}` holds a non-finite value ({value}) at flat index {index}")]
    NonFiniteInput {
        name: String,
        index: usize,
        value: f32,
    },
    /// A mask input holds a value other than 0 and 1.
    #[error("mask `{name}` holds {value} at flat index {index}; masks hold 0 or 1")]
    NotAMask {
        name: String,
        index: usize,
        value: f32,
    },
    /// An index input holds a value that is not an integer in range.
    #[error("index input `{name}` holds {value} at flat index {index}; expected an integer in {min}..{len}")]
    BadIndex {
        name: String,
        index: usize,
        value: f32,
        min: i64,
        len: usize,
    },
    /// A dynamic dimension was set to zero.
    #[error("dynamic dimension `{dim}` was set to 0; graphs need at least one element per axis")]
    EmptyDim { dim: char },
    /// A dynamic dimension was never given a size.
    #[error(
        "dynamic dimension `{dim}` has no size: no input sets it and it was not set explicitly"
    )]
    UnsetDim { dim: char },
    /// The execution order reached a graph node before one of its inputs was computed (a broken
    /// schedule: an internal error).
    #[error("graph node {node} was needed before it was computed")]
    MissingIntermediate { node: usize },
    /// Reverse-mode differentiation met an operator that has no vector-Jacobian product.
    #[error("cannot differentiate through `{op}`: it has no vector-Jacobian product (build the layer in its unfused form)")]
    NoGradient { op: String },
    /// A gradient was asked with respect to a view (permuted, broadcast, padded or sliced).
    #[error("gradient target {index} is a view of a tensor; differentiate with respect to the tensor itself")]
    GradientOfView { index: usize },
    /// A cotangent whose rank differs from the output it weights.
    #[error("cotangent {index} has {cotangent} axes, its output has {output}")]
    CotangentRank {
        index: usize,
        output: usize,
        cotangent: usize,
    },
    /// A gradient handed to an optimizer holds NaN or an infinity.
    #[error("gradient of `{name}` holds a non-finite value ({value}) at flat index {index}")]
    NonFiniteGradient {
        name: String,
        index: usize,
        value: f64,
    },
    /// Optimizer state saved by one optimizer was loaded into another.
    #[error("optimizer state was saved by `{found}`, cannot load it into `{expected}`")]
    OptimizerStateMismatch {
        expected: &'static str,
        found: String,
    },
    /// The graph has a cycle, so it has no reverse order to differentiate in.
    #[error("the graph has a cycle through node {node}")]
    CyclicGraph { node: usize },
    /// A tensor was asked for that the last run did not produce.
    #[error("output `{name}` has no value: run the session first")]
    NoOutput { name: String },
    /// A checkpoint lacks a tensor the graph needs.
    #[error("checkpoint has no tensor `{key}` (expected shape {expected:?})")]
    MissingKey { key: String, expected: Vec<usize> },
    /// A checkpoint tensor has the wrong shape.
    #[error("tensor `{key}` has shape {found:?}, expected {expected:?}")]
    WrongShape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A checkpoint tensor has a dtype that cannot become f32.
    #[error("tensor `{key}` has dtype {dtype}; supported are f32, f16, bf16, f64")]
    UnsupportedDtype { key: String, dtype: String },
    /// A checkpoint tensor holds NaN or an infinity.
    #[error("tensor `{key}` holds a non-finite value ({value}) at flat index {index}")]
    NonFiniteWeight {
        key: String,
        index: usize,
        value: f32,
    },
    /// A safetensors tensor name that se3 does not accept: empty, longer than
    /// [`crate::exec::safetensors::MAX_TENSOR_NAME_BYTES`], or holding a control character (a
    /// name is printed in one-line errors, so it may not break the line). `name` is escaped.
    #[error("tensor name `{name}` is not accepted: {problem}")]
    InvalidTensorName { name: String, problem: &'static str },
    /// The bytes are not a valid safetensors file.
    #[error("not a valid safetensors file: {reason}")]
    InvalidSafetensors { reason: String },
    /// A file could not be read.
    #[error("cannot read `{path}`: {reason}")]
    Io { path: String, reason: String },
    /// A graph operation got arguments it cannot use.
    #[error("{op}: {problem}")]
    InvalidOp {
        op: &'static str,
        problem: &'static str,
    },
    /// A checkpoint says one of its layers has other fibers than the module's field of that
    /// name (fiber metadata written by `Module::save`).
    #[error("checkpoint field `{field}` holds a {layer} {found}, but the module's `{field}` is a {layer} {expected}")]
    CheckpointFibers {
        field: String,
        layer: String,
        expected: String,
        found: String,
    },
    /// A checkpoint's fiber metadata (`se3.fibers`) is not what `Module::save` writes.
    #[error("checkpoint fiber metadata `se3.fibers` is malformed: {reason}")]
    CheckpointMetadata { reason: String },
    /// An input to a compiled module does not fit the cloud it is run on.
    #[error("{what}: expected {expected}, found {found}")]
    CloudInput {
        what: &'static str,
        expected: String,
        found: String,
    },
    /// CUDA was asked for in a build without the `cuda` feature.
    #[error("se3 was built without CUDA support; rebuild with `--features cuda`")]
    CudaNotCompiled,
    /// CUDA is compiled in but cannot run on this machine.
    #[error("CUDA is not available: {missing} was not found")]
    CudaUnavailable { missing: crate::device::CudaMissing },
    /// A CUDA library call failed.
    #[error("CUDA call `{call}` failed: {reason}")]
    CudaCall { call: &'static str, reason: String },
    /// A kernel was handed a buffer that lives on another device (a broken lowering pass).
    #[error("kernel {op} reads input {input} from {expected}, but the buffer is in {found}")]
    WrongDevice {
        op: String,
        input: usize,
        expected: crate::device::Location,
        found: crate::device::Location,
    },
}
