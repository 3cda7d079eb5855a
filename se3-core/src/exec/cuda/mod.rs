//! The CUDA backend (feature `cuda`), on cudarc 0.19, which loads the driver, NVRTC and cuBLAS
//! at run time: the feature builds without a CUDA toolkit, and a machine without them gets
//! [`Error::CudaUnavailable`] naming what is missing.
//!
//! - [`CudaBackend`]: one context and stream per device, kernels compiled with NVRTC for the
//!   device's architecture on first use and cached per source file, cuBLAS for GEMMs.
//! - [`CudaBuffer`]: a device buffer inside a luminal tensor ([`Location::Cuda`]).
//! - [`CudaCompiler`]: the pass run after `CpuCompiler` that swaps in the CUDA kernel of every
//!   op that has one (each op's `cuda.rs` beside its `cpu.rs`, plus the primitives here) and
//!   inserts [`ToDevice`] / [`ToHost`] copies where a buffer crosses between host and device.
//!   Ops without a CUDA kernel keep running on the host.
//!
//! Kernel sources are the `.cu` files listed in [`super::kernels::SOURCES`]. A CUDA failure
//! inside a kernel (which luminal's `Operator::process` cannot return) is recorded on the
//! backend; the kernels after it do no device work, and [`Session::run`](super::Session::run)
//! returns the recorded error.
//!
//! Nothing here has run on a GPU yet: the kernels' logic is checked on the CPU through a shim
//! and their compilation with NVRTC + ptxas (crate `se3-cuda-check`); `scripts/gpu-check` runs
//! the device comparison on a machine with a GPU.

mod backend;
mod buffer;
mod compiler;
mod primitives;
mod transfer;

pub use backend::{probe, CudaBackend};
pub use buffer::CudaBuffer;
pub use compiler::{CudaCompiler, LowerCtx, Lowering, ScatterMode, LOWERINGS};
pub use primitives::{CudaElementwise, CudaMatMul, CudaReduce, ViewCopy};
pub use transfer::{Resident, ToDevice, ToHost};

use std::sync::Arc;

use cudarc::driver::{CudaSlice, LaunchConfig};
use luminal::op::InputTensor;
use luminal::prelude::ShapeTracker;

use super::view::View;
use crate::Error;

/// A shared handle to a backend inside an operator (operators must be `PartialEq` and
/// `Debug`; two handles are equal when they name the same device).
#[derive(Clone)]
pub struct BackendRef(pub Arc<CudaBackend>);

impl PartialEq for BackendRef {
    fn eq(&self, other: &Self) -> bool {
        self.0.ordinal() == other.0.ordinal()
    }
}

impl std::fmt::Debug for BackendRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda:{}", self.0.ordinal())
    }
}

/// Threads per block of the element-wise kernels.
pub(crate) const BLOCK: u32 = 256;

/// A grid-stride launch over `n` items: enough blocks to fill the device, at most 65535.
pub(crate) fn launch_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A cudarc result as se3's error (`CudaCall` naming the call).
///
/// # Errors
/// `CudaCall` with the library's error.
pub(crate) fn call_err<T, E: std::fmt::Debug>(
    call: &'static str,
    r: Result<T, E>,
) -> Result<T, Error> {
    r.map_err(|e| Error::CudaCall {
        call,
        reason: format!("{e:?}"),
    })
}

/// A size as the `unsigned int` kernels take.
///
/// # Errors
/// `InvalidOp` when it does not fit in 32 bits.
pub(crate) fn u32_of(n: usize) -> Result<u32, Error> {
    u32::try_from(n).map_err(|_| Error::InvalidOp {
        op: "cuda kernel",
        problem: "a size exceeds 2^32 - 1",
    })
}

/// An input buffer in logical row-major order on the device: the producer's buffer itself
/// when its view is plain, else a copy made by `view_copy`.
pub(crate) enum Dense<'a> {
    Borrowed(&'a CudaSlice<f32>),
    Owned(CudaSlice<f32>),
}

impl Dense<'_> {
    pub(crate) fn slice(&self) -> &CudaSlice<f32> {
        match self {
            Dense::Borrowed(s) => s,
            Dense::Owned(s) => s,
        }
    }
}

/// The device buffer of input `t`.
///
/// # Errors
/// `WrongDevice` if it is not a [`CudaBuffer`] (the executor checks this before a kernel runs).
pub(crate) fn device_buffer<'a>(t: &'a InputTensor<'a>) -> Result<&'a CudaBuffer, Error> {
    t.borrowed()
        .data
        .as_any()
        .downcast_ref::<CudaBuffer>()
        .ok_or_else(|| Error::WrongDevice {
            op: "cuda kernel".to_string(),
            input: 0,
            expected: crate::Location::Cuda { ordinal: 0 },
            found: crate::device::location_of(t.borrowed()),
        })
}

/// Input `(t, st)` as a dense row-major device buffer of its logical shape.
///
/// # Errors
/// `WrongDevice`, or a failed copy kernel (`CudaCall`).
pub(crate) fn dense<'a>(
    backend: &CudaBackend,
    t: &'a InputTensor<'a>,
    st: &ShapeTracker,
) -> Result<Dense<'a>, Error> {
    let buf = device_buffer(t)?;
    let view = View::new(st, &Default::default());
    if view.plain && buf.slice().len() >= view.n {
        return Ok(Dense::Borrowed(buf.slice()));
    }
    let desc = super::kernels::ViewDesc::new(st, &Default::default());
    backend.view_copy(buf.slice(), &desc).map(Dense::Owned)
}

/// Implements luminal's `Operator` for a CUDA kernel struct with a field `backend:
/// BackendRef` and a method `run(&self, inp) -> Result<Vec<Tensor>, Error>`: the kernel reads
/// its inputs on the backend's device, and a failure is recorded on the backend.
macro_rules! cuda_operator {
    ($t:ty) => {
        impl luminal::op::Operator for $t {
            fn process(
                &mut self,
                inp: Vec<(luminal::op::InputTensor, luminal::prelude::ShapeTracker)>,
            ) -> Vec<luminal::prelude::Tensor> {
                let backend = self.backend.0.clone();
                backend.guard(|| self.run(inp))
            }
            fn custom(
                &mut self,
                key: &str,
                _: Box<dyn std::any::Any>,
            ) -> Option<Box<dyn std::any::Any>> {
                (key == $crate::device::LOCATION_KEY).then(|| {
                    Box::new(Some($crate::Location::Cuda {
                        ordinal: self.backend.0.ordinal(),
                    })) as Box<dyn std::any::Any>
                })
            }
        }
    };
}
pub(crate) use cuda_operator;
