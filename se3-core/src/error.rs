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
    /// CUDA was asked for in a build without the `cuda` feature.
    #[error("se3 was built without CUDA support; rebuild with `--features cuda`")]
    CudaNotCompiled,
}
