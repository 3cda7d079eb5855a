//! CUDA kernels of [`egnn_edge`](super::egnn_edge) (`egnn_edge.cu`) and of its backward
//! (`egnn_edge_backward.cu`, lowered in [`backward_cuda`](super::backward_cuda)): a block per
//! destination node. Both take the layer's weights in the same argument order, uploaded on the
//! first run and kept on the device; [`EgnnOnDevice`] holds them and launches either kernel.

use std::sync::{Arc, Mutex};

use cudarc::driver::{LaunchConfig, PushKernelArg};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::device_args::EgnnDeviceArgs;
use super::EgnnEdgeKernel;
use crate::exec::cuda::{call_err, cuda_operator, dense, u32_of, BackendRef, CudaBuffer, LowerCtx};
use crate::exec::view::View;
use crate::Error;

/// Threads per block (a node's edges share one block).
const THREADS: u32 = 128;

/// The weights on the device, in the kernels' argument order.
struct DeviceWeights {
    phi_t: CudaBuffer,
    edge_out_t: CudaBuffer,
    edge_out_bias: CudaBuffer,
    gate_w: CudaBuffer,
    coors_hidden_t: CudaBuffer,
    coors_hidden_bias: CudaBuffer,
    coors_out: CudaBuffer,
    scalars: CudaBuffer,
}

/// One EGNN edge stage on a device: its kernel description, the kernels' weight arguments and
/// the weights once uploaded (shared by the clones luminal makes of an operator).
#[derive(Clone)]
pub(super) struct EgnnOnDevice {
    pub kernel: EgnnEdgeKernel,
    args: EgnnDeviceArgs,
    resident: Arc<Mutex<Option<Arc<DeviceWeights>>>>,
}

impl EgnnOnDevice {
    pub fn new(kernel: EgnnEdgeKernel) -> EgnnOnDevice {
        let args = EgnnDeviceArgs::new(&kernel);
        EgnnOnDevice {
            kernel,
            args,
            resident: Arc::new(Mutex::new(None)),
        }
    }

    fn weights(&self, backend: &BackendRef) -> Result<Arc<DeviceWeights>, Error> {
        let mut slot = self.resident.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = slot.as_ref() {
            return Ok(w.clone());
        }
        let b = &backend.0;
        let (k, a) = (&self.kernel, &self.args);
        let w = Arc::new(DeviceWeights {
            phi_t: b.upload(&k.phi_t)?,
            edge_out_t: b.upload(&k.edge_out_t)?,
            edge_out_bias: b.upload(&k.edge_out_bias)?,
            gate_w: b.upload(&a.gate_w)?,
            coors_hidden_t: b.upload(&a.coors_hidden_t)?,
            coors_hidden_bias: b.upload(&a.coors_hidden_bias)?,
            coors_out: b.upload(&a.coors_out)?,
            scalars: b.upload(&a.scalars)?,
        });
        *slot = Some(w.clone());
        Ok(w)
    }

    /// Runs `function` on the stage's inputs `(h_i, h_j, coors, src, valid[, term])`, then
    /// `extra` (the backward's output gradient) if given, the weights, an output of
    /// `out_len(rows, k)` zeros and the sizes; a block per row (destination node).
    pub fn launch(
        &self,
        backend: &BackendRef,
        function: &str,
        inp: &[(InputTensor, ShapeTracker)],
        extra: Option<usize>,
        out_len: impl Fn(usize, usize) -> usize,
    ) -> Result<Vec<Tensor>, Error> {
        let b = &backend.0;
        let kern = &self.kernel;
        let vshape = View::new(&inp[4].1, &Default::default()).shape();
        let (rows, k) = (
            vshape.first().copied().unwrap_or(0),
            vshape.get(1).copied().unwrap_or(0),
        );
        let mut out = b.zeros(out_len(rows, k))?;
        if rows > 0 {
            let w = self.weights(backend)?;
            let read = |i: usize| dense(b, &inp[i].0, &inp[i].1);
            let (hi, hj, coors, src, valid) = (read(0)?, read(1)?, read(2)?, read(3)?, read(4)?);
            let term = if kern.edge_term { Some(read(5)?) } else { None };
            let extra = extra.map(read).transpose()?;
            let f = b.function(function)?;
            let sizes = [
                u32_of(rows)?,
                u32_of(k)?,
                u32_of(kern.hidden)?,
                u32_of(kern.m_dim)?,
                u32_of(kern.fourier_features)?,
                u32_of(self.args.four_m)?,
                self.args.flags,
            ];
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(hi.slice())
                .arg(hj.slice())
                .arg(coors.slice())
                .arg(src.slice())
                .arg(valid.slice())
                // without an edge term the kernels never read this argument
                .arg(term.as_ref().map_or(valid.slice(), |t| t.slice()));
            if let Some(g) = extra.as_ref() {
                lb.arg(g.slice());
            }
            lb.arg(w.phi_t.slice())
                .arg(w.edge_out_t.slice())
                .arg(w.edge_out_bias.slice())
                .arg(w.gate_w.slice())
                .arg(w.coors_hidden_t.slice())
                .arg(w.coors_hidden_bias.slice())
                .arg(w.coors_out.slice())
                .arg(w.scalars.slice())
                .arg(&mut out);
            for s in &sizes {
                lb.arg(s);
            }
            let cfg = LaunchConfig {
                grid_dim: (u32_of(rows.min(65_535))?, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: every buffer holds what the kernel reads for (rows, k, H, M, F, 4M), as
            // the CPU kernels' inputs (the backward's gradient (rows, M + 3)); out holds
            // out_len(rows, k) elements, what the kernel writes.
            call_err("cuLaunchKernel", unsafe { lb.launch(cfg) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}

/// [`EgnnEdgeKernel`] on a CUDA device.
#[derive(Clone)]
pub struct CudaEgnnEdge {
    pub backend: BackendRef,
    device: EgnnOnDevice,
}

impl PartialEq for CudaEgnnEdge {
    fn eq(&self, other: &Self) -> bool {
        self.backend == other.backend && self.device.kernel == other.device.kernel
    }
}

impl std::fmt::Debug for CudaEgnnEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEgnnEdge")
            .field("backend", &self.backend)
            .field("hidden", &self.device.kernel.hidden)
            .field("m_dim", &self.device.kernel.m_dim)
            .finish()
    }
}

impl CudaEgnnEdge {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let width = self.device.kernel.m_dim + 3;
        self.device
            .launch(&self.backend, "egnn_edge_nodes", &inp, None, |rows, _| {
                rows * width
            })
    }
}
cuda_operator!(CudaEgnnEdge);

/// Lowers [`EgnnEdgeKernel`] when its rows fit the kernel's shared memory.
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    let k = op.as_any().downcast_ref::<EgnnEdgeKernel>()?;
    EgnnDeviceArgs::fits(k).then(|| {
        Box::new(CudaEgnnEdge {
            backend: cx.backend.clone(),
            device: EgnnOnDevice::new(k.clone()),
        }) as Box<dyn Operator>
    })
}
