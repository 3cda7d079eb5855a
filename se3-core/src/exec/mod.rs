//! Execution of luminal graphs: [`Session`] (build, compile, check inputs, run) and
//! [`CpuCompiler`], our CPU compiler: GEMM for matrix products, fused native elementwise
//! loops, native reductions, and the fused edge kernel of [`crate::ops`].

mod compiler;
pub mod elementwise;
#[cfg(test)]
mod luminal_regressions;
pub mod matmul;
pub mod primitives;
pub mod safetensors;
mod session;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod view;

pub use compiler::CpuCompiler;
pub use safetensors::{read_safetensors, write_safetensors, F32Tensor, LoadReport};
pub use session::{IndexBound, InputKind, Output, Session};
