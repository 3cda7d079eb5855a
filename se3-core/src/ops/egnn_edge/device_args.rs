//! The arguments of the CUDA kernel `egnn_edge_nodes` (`egnn_edge.cu`) for an
//! [`EgnnEdgeKernel`]: its weights as flat device rows, the optional parts as bit flags and
//! four scalars. Plain data in every build, so the CPU-shim tests pass the kernel exactly what
//! the CUDA backend passes.

use super::EgnnEdgeKernel;

/// Flag: soft-edge gate present.
pub const FLAG_GATE: u32 = 1;
/// Flag: coordinate MLP present (`update_coors`).
pub const FLAG_COORS: u32 = 2;
/// Flag: unit relative vectors scaled (`norm_coors`).
pub const FLAG_COORS_SCALE: u32 = 4;
/// Flag: coordinate weights clamped.
pub const FLAG_CLAMP: u32 = 8;
/// Flag: pooled messages wanted (`update_feats`).
pub const FLAG_POOL: u32 = 16;
/// Flag: a per-edge term of the first layer is an input.
pub const FLAG_EDGE_TERM: u32 = 32;

/// The largest hidden width `H` the kernel holds in shared memory (`EGNN_MAX_HIDDEN`).
pub const MAX_HIDDEN: usize = 2048;
/// The largest `4 M` (and `M`) the kernel holds in shared memory (`EGNN_MAX_COORS`).
pub const MAX_COORS: usize = 2048;

/// The largest hidden width `H` of the backward kernel (`EGNN_BWD_MAX_HIDDEN`).
pub const BACKWARD_MAX_HIDDEN: usize = 1024;
/// The largest message width `M` of the backward kernel (`EGNN_BWD_MAX_MSG`; its `4 M` bound
/// is [`MAX_COORS`]).
pub const BACKWARD_MAX_MSG: usize = 512;

/// `egnn_edge_nodes`'s weight arguments (absent parts as one zero so no buffer is empty).
#[derive(Debug, Clone, PartialEq)]
pub struct EgnnDeviceArgs {
    pub flags: u32,
    /// Gate bias, coordinate output bias, coordinate scale, clamp.
    pub scalars: [f32; 4],
    pub gate_w: Vec<f32>,
    pub coors_hidden_t: Vec<f32>,
    pub coors_hidden_bias: Vec<f32>,
    pub coors_out: Vec<f32>,
    /// `4 M`, or 0 without the coordinate MLP.
    pub four_m: usize,
}

impl EgnnDeviceArgs {
    /// The arguments for `kernel`.
    pub fn new(kernel: &EgnnEdgeKernel) -> EgnnDeviceArgs {
        let mut flags = 0;
        let mut scalars = [0.0f32; 4];
        let one = || vec![0.0f32];
        let gate_w = match &kernel.gate {
            Some((w, b)) => {
                flags |= FLAG_GATE;
                scalars[0] = *b;
                w.clone()
            }
            None => one(),
        };
        let (coors_hidden_t, coors_hidden_bias, coors_out, four_m) = match &kernel.coors {
            Some(c) => {
                flags |= FLAG_COORS;
                scalars[1] = c.out_bias;
                (
                    c.hidden_t.clone(),
                    c.hidden_bias.clone(),
                    c.out.clone(),
                    c.out.len(),
                )
            }
            None => (one(), one(), one(), 0),
        };
        if let Some(s) = kernel.coors_scale {
            flags |= FLAG_COORS_SCALE;
            scalars[2] = s;
        }
        if let Some(c) = kernel.clamp {
            flags |= FLAG_CLAMP;
            scalars[3] = c;
        }
        if kernel.pool_messages {
            flags |= FLAG_POOL;
        }
        if kernel.edge_term {
            flags |= FLAG_EDGE_TERM;
        }
        EgnnDeviceArgs {
            flags,
            scalars,
            gate_w,
            coors_hidden_t,
            coors_hidden_bias,
            coors_out,
            four_m,
        }
    }

    /// Whether the backward kernel's shared memory (`egnn_edge_backward.cu`) holds
    /// `kernel`'s rows (else its backward stays on the host).
    pub fn fits_backward(kernel: &EgnnEdgeKernel) -> bool {
        let four_m = kernel.coors.as_ref().map_or(0, |c| c.out.len());
        kernel.hidden <= BACKWARD_MAX_HIDDEN
            && kernel.m_dim <= BACKWARD_MAX_MSG
            && four_m <= MAX_COORS
    }

    /// Whether the kernel's shared memory holds `kernel`'s rows (else it stays on the host).
    pub fn fits(kernel: &EgnnEdgeKernel) -> bool {
        let four_m = kernel.coors.as_ref().map_or(0, |c| c.out.len());
        kernel.hidden <= MAX_HIDDEN && kernel.m_dim <= MAX_COORS && four_m <= MAX_COORS
    }
}
