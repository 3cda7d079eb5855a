//! CUDA kernel of [`EgnnEdgeBackward`] (`egnn_edge_backward.cu`): a block per destination node
//! re-running its edges and taking the chain rule back through them, launched by the forward's
//! [`EgnnOnDevice`] (same weights, same argument order, plus the output gradient).

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::backward::EgnnEdgeBackward;
use super::cuda::EgnnOnDevice;
use super::device_args::EgnnDeviceArgs;
use crate::exec::cuda::{cuda_operator, BackendRef, LowerCtx};
use crate::Error;

/// [`EgnnEdgeBackward`] on a CUDA device.
#[derive(Clone)]
pub struct CudaEgnnEdgeBackward {
    pub backend: BackendRef,
    device: EgnnOnDevice,
}

impl PartialEq for CudaEgnnEdgeBackward {
    fn eq(&self, other: &Self) -> bool {
        self.backend == other.backend && self.device.kernel == other.device.kernel
    }
}

impl std::fmt::Debug for CudaEgnnEdgeBackward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEgnnEdgeBackward")
            .field("backend", &self.backend)
            .field("hidden", &self.device.kernel.hidden)
            .field("m_dim", &self.device.kernel.m_dim)
            .finish()
    }
}

impl CudaEgnnEdgeBackward {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let kern = &self.device.kernel;
        let width = kern.hidden + 3;
        let grad = if kern.edge_term { 6 } else { 5 };
        // out: (rows k + rows, H + 3)
        self.device.launch(
            &self.backend,
            "egnn_edge_backward_nodes",
            &inp,
            Some(grad),
            |rows, k| (rows * k + rows) * width,
        )
    }
}
cuda_operator!(CudaEgnnEdgeBackward);

/// Lowers [`EgnnEdgeBackward`] when its rows fit the kernel's shared memory.
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    let o = op.as_any().downcast_ref::<EgnnEdgeBackward>()?;
    EgnnDeviceArgs::fits_backward(&o.0).then(|| {
        Box::new(CudaEgnnEdgeBackward {
            backend: cx.backend.clone(),
            device: EgnnOnDevice::new(o.0.clone()),
        }) as Box<dyn Operator>
    })
}
