//! The instruction set of the CPU kernels that are compiled several times (AVX-512 + FMA,
//! AVX2 + FMA, portable) and picked at run time: one detection, cached, for every kernel.
//!
//! A kernel writes its body once as an `#[inline(always)]` function, wraps it in one
//! `#[target_feature]` function per instruction set, and dispatches on [`isa()`]; the
//! wrappers may only be called on the instruction set [`isa()`] reported.

use std::sync::OnceLock;

/// Instruction sets a kernel can be compiled for, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2 with FMA.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The baseline of the target.
    Plain,
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Plain
}

/// The best instruction set of this CPU (detected once).
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}
