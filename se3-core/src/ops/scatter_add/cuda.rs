//! CUDA kernels of [`scatter_add`](super::scatter_add) (`scatter_add.cu`): deterministic by
//! default (destination buckets by a stable counting sort, then each destination's edges summed
//! in edge order, bit for bit the CPU result), or atomic ([`ScatterMode::Atomic`]).

use cudarc::driver::{CudaSlice, PushKernelArg};
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::ScatterAdd;
use crate::exec::cuda::{
    call_err, cuda_operator, dense, launch_for, u32_of, BackendRef, CudaBackend, CudaBuffer,
    LowerCtx,
};
use crate::exec::view::View;
use crate::Error;

/// How a CUDA scatter-add sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScatterMode {
    /// Edge order per destination (the CPU's order): same bits every run.
    #[default]
    Deterministic,
    /// `atomicAdd`: faster, order varies between runs by rounding.
    Atomic,
}

/// Destination buckets of `idx (e,)` over `n` segments on the device: `(start (n + 1), order)`
/// with `order[start[d]..start[d + 1]]` the edges into `d` in edge order.
///
/// # Errors
/// `CudaCall`.
pub(crate) fn device_buckets(
    b: &CudaBackend,
    idx: &CudaSlice<f32>,
    n: usize,
    e: usize,
) -> Result<(CudaSlice<u32>, CudaSlice<u32>), Error> {
    let (n32, e32) = (u32_of(n)?, u32_of(e)?);
    let s = b.stream();
    let mut counts = b.zeros_u32(n)?;
    let mut start = b.zeros_u32(n + 1)?;
    let mut cursor = b.zeros_u32(n)?;
    let mut order = b.zeros_u32(e)?;
    let count = b.function("bucket_count")?;
    let mut lb = s.launch_builder(&count);
    lb.arg(idx).arg(&mut counts).arg(&n32).arg(&e32);
    // SAFETY: idx (e,), counts (n,).
    call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(e)) })?;
    let scan = b.function("bucket_scan")?;
    let mut lb = s.launch_builder(&scan);
    lb.arg(&counts).arg(&mut start).arg(&mut cursor).arg(&n32);
    let one_block = cudarc::driver::LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1024, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: counts/cursor (n,), start (n + 1,); one block of 1024 as the kernel requires.
    call_err("cuLaunchKernel", unsafe { lb.launch(one_block) })?;
    let fill = b.function("bucket_fill")?;
    let mut lb = s.launch_builder(&fill);
    lb.arg(idx)
        .arg(&mut cursor)
        .arg(&mut order)
        .arg(&n32)
        .arg(&e32);
    // SAFETY: order has room for every valid edge (at most e).
    call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(e)) })?;
    let sort = b.function("bucket_sort")?;
    let mut lb = s.launch_builder(&sort);
    lb.arg(&start).arg(&mut order).arg(&n32);
    // SAFETY: start (n + 1,) bounds each bucket inside order.
    call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n)) })?;
    Ok((start, order))
}

/// [`ScatterAdd`] on a CUDA device.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaScatterAdd {
    pub backend: BackendRef,
    pub mode: ScatterMode,
}

impl CudaScatterAdd {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let (sv, iv, nv) = (
            View::new(&inp[0].1, &empty),
            View::new(&inp[1].1, &empty),
            View::new(&inp[2].1, &empty),
        );
        let (c, n, e) = (
            sv.axes[1..].iter().map(|a| a.len).product::<usize>(),
            nv.axes[0].len,
            iv.n,
        );
        let src = dense(b, &inp[0].0, &inp[0].1)?;
        let idx = dense(b, &inp[1].0, &inp[1].1)?;
        let mut out = b.zeros(n * c)?;
        if n * c > 0 && e > 0 {
            let (n32, c32, e32) = (u32_of(n)?, u32_of(c)?, u32_of(e)?);
            match self.mode {
                ScatterMode::Atomic => {
                    let f = b.function("scatter_add_atomic")?;
                    let mut lb = b.stream().launch_builder(&f);
                    lb.arg(src.slice())
                        .arg(idx.slice())
                        .arg(&mut out)
                        .arg(&n32)
                        .arg(&c32)
                        .arg(&e32);
                    // SAFETY: src (e, c), idx (e,), out (n, c) zeroed.
                    call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(e * c)) })?;
                }
                ScatterMode::Deterministic => {
                    let (start, order) = device_buckets(b, idx.slice(), n, e)?;
                    let f = b.function("scatter_add_sorted")?;
                    let mut lb = b.stream().launch_builder(&f);
                    lb.arg(src.slice())
                        .arg(&start)
                        .arg(&order)
                        .arg(&mut out)
                        .arg(&n32)
                        .arg(&c32);
                    // SAFETY: buckets hold edge ids below e; out (n, c).
                    call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n * c)) })?;
                }
            }
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaScatterAdd);

/// Lowers [`ScatterAdd`] in the compiler's [`ScatterMode`].
pub(crate) fn lower(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<ScatterAdd>().then(|| {
        Box::new(CudaScatterAdd {
            backend: cx.backend.clone(),
            mode: cx.scatter,
        }) as Box<dyn Operator>
    })
}
