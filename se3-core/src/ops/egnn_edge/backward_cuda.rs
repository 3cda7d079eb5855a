//! CUDA kernel of [`EgnnEdgeBackward`] (`egnn_edge_backward.cu`): a block per destination node
//! re-running its edges and taking the chain rule back through them. The layer's weights are
//! uploaded on the first run and stay on the device.

use std::sync::{Arc, Mutex};

use cudarc::driver::{LaunchConfig, PushKernelArg};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::backward::EgnnEdgeBackward;
use super::device_args::EgnnDeviceArgs;
use crate::exec::cuda::{call_err, cuda_operator, dense, u32_of, BackendRef, CudaBuffer, LowerCtx};
use crate::exec::view::View;
use crate::Error;

/// Threads per block (a node's edges share one block).
const THREADS: u32 = 128;

/// The weights on the device, in the kernel's argument order.
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

/// [`EgnnEdgeBackward`] on a CUDA device.
#[derive(Clone)]
pub struct CudaEgnnEdgeBackward {
    pub backend: BackendRef,
    pub op: EgnnEdgeBackward,
    args: EgnnDeviceArgs,
    resident: Arc<Mutex<Option<Arc<DeviceWeights>>>>,
}

impl PartialEq for CudaEgnnEdgeBackward {
    fn eq(&self, other: &Self) -> bool {
        self.backend == other.backend && self.op == other.op
    }
}

impl std::fmt::Debug for CudaEgnnEdgeBackward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEgnnEdgeBackward")
            .field("backend", &self.backend)
            .field("hidden", &self.op.0.hidden)
            .field("m_dim", &self.op.0.m_dim)
            .finish()
    }
}

impl CudaEgnnEdgeBackward {
    fn weights(&self) -> Result<Arc<DeviceWeights>, Error> {
        let mut slot = self.resident.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = slot.as_ref() {
            return Ok(w.clone());
        }
        let b = &self.backend.0;
        let (k, a) = (&self.op.0, &self.args);
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

    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let kern = &self.op.0;
        let vshape = View::new(&inp[4].1, &Default::default()).shape();
        let (rows, k) = (
            vshape.first().copied().unwrap_or(0),
            vshape.get(1).copied().unwrap_or(0),
        );
        let width = kern.hidden + 3;
        let mut out = b.zeros((rows * k + rows) * width)?;
        if rows > 0 {
            let w = self.weights()?;
            let read = |i: usize| dense(b, &inp[i].0, &inp[i].1);
            let (hi, hj, coors, src, valid) = (read(0)?, read(1)?, read(2)?, read(3)?, read(4)?);
            let term = if kern.edge_term { Some(read(5)?) } else { None };
            let grad = read(if kern.edge_term { 6 } else { 5 })?;
            let f = b.function("egnn_edge_backward_nodes")?;
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
                // without an edge term the kernel never reads this argument
                .arg(term.as_ref().map_or(valid.slice(), |t| t.slice()))
                .arg(grad.slice())
                .arg(w.phi_t.slice())
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
            // the CPU kernel's inputs; grad (rows, M + 3); out (rows k + rows, H + 3).
            call_err("cuLaunchKernel", unsafe { lb.launch(cfg) })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaEgnnEdgeBackward);

/// Lowers [`EgnnEdgeBackward`] when its rows fit the kernel's shared memory.
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    let o = op.as_any().downcast_ref::<EgnnEdgeBackward>()?;
    EgnnDeviceArgs::fits_backward(&o.0).then(|| {
        Box::new(CudaEgnnEdgeBackward {
            backend: cx.backend.clone(),
            op: o.clone(),
            args: EgnnDeviceArgs::new(&o.0),
            resident: Arc::new(Mutex::new(None)),
        }) as Box<dyn Operator>
    })
}
