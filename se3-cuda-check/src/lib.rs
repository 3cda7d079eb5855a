//! Checks of se3's CUDA kernels on a machine without a GPU (a dev-only crate; tests only).
//!
//! - [`shim`]: the kernel sources (`se3-core/src/**/*.cu`) compiled as C++ over a CPU
//!   emulation of the CUDA execution model (`shim/cuda_shim.h`), with safe launchers, so the
//!   tests in `tests/shim.rs` run every kernel's logic and compare it with the CPU backend.
//! - [`compile`]: every kernel compiled with NVRTC to PTX for a GPU architecture and assembled
//!   with ptxas, registers and spills per kernel (`tests/compile.rs`).

pub mod compile;
pub mod shim;
