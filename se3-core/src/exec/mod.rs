//! Execution of luminal graphs: [`Session`] (build, compile, check inputs, run) and
//! [`CpuCompiler`], our CPU compiler: GEMM for matrix products, fused native elementwise
//! loops, native reductions, and the fused edge kernel of [`crate::ops`].
//!
//! How a layer author uses it:
//! 1. `let mut s = Session::new();` then declare inputs (`s.input::<(Dyn<'n'>, Const<3>)>("coords",
//!    InputKind::Coordinates)`), weights (`s.weight::<(Const<16>, Const<8>)>("layer.w")`) and
//!    build with luminal operations and [`crate::ops`] (`gather`, `scatter_add`, `neighbors`,
//!    `edge_conv`, ...); mark results with `s.output("name", t)`.
//! 2. `s.compile()` (or let the first run do it); set weights once (`set_weight` or
//!    `load_safetensors`); then for each input size: `s.set(..)`, `s.run()?`, `s.get("name")?`.
//!
//! Luminal 0.2 pitfalls to avoid when building graphs (each pinned by a test in
//! `luminal_regressions`): make a padded view `.contiguous()` before a unary op (else the
//! padding stays 0, not f(0)); make a sliced view `.contiguous()` before `concat_along`; give
//! slices of dynamic axes an explicit end; a padded or reshaped axis needs its own dynamic
//! dimension (`Session::set_dim`); `pow` drops the sign of its base; tensors have at most 6
//! axes; use [`crate::ops::gather()`] rather than luminal's one-hot `gather`.

mod compiler;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod elementwise;
pub mod kernels;
#[cfg(test)]
mod luminal_regressions;
pub mod matmul;
pub mod pool;
pub mod primitives;
pub mod profile;
pub mod safetensors;
mod schedule;
mod session;
pub(crate) mod simd;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod view;

pub use compiler::CpuCompiler;
pub use safetensors::{read_safetensors, write_safetensors, F32Tensor, LoadReport};
pub use schedule::MemoryStats;
pub use session::{IndexBound, InputKind, Output, Session};
