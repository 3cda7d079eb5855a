//! [`CpuCompiler`]: our CPU compiler, a tuple of passes run after luminal's `GenericCompiler`.
//!
//! Order matters: matrix products are matched on the stock `Mul`/`SumReduce` pattern first,
//! then the fused edge kernel on its unfused pattern, then elementwise chains are fused, then
//! the remaining reductions and copies get native kernels. Luminal's own `CPUCompiler` is
//! never used (its gather gives wrong results, its matmul passes do not fire and a retrieved
//! `arange` panics; see `luminal_regressions`).

use luminal::prelude::GenericCompiler;

use super::elementwise::ElementwiseFusion;
use super::matmul::MatMulPass;
use super::primitives::NativePrimitives;
use crate::ops::edge_conv::EdgeConvFusion;

/// The CPU compiler of se3 (see the module documentation).
pub type CpuCompiler = (
    GenericCompiler,
    MatMulPass,
    EdgeConvFusion,
    ElementwiseFusion,
    NativePrimitives,
);
