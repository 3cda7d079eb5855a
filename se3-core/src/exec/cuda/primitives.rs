//! CUDA kernels of the exec primitives: [`CudaMatMul`] (cuBLAS strided-batched SGEMM),
//! [`CudaReduce`] (`reduce.cu`), [`CudaElementwise`] (`elementwise.cu`, the fused register
//! program of the CPU fusion) and [`ViewCopy`] (`view_copy.cu`, luminal's `Contiguous`).

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::PushKernelArg;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::{
    call_err, cuda_operator, dense, device_buffer, launch_for, u32_of, BackendRef, CudaBuffer,
    LowerCtx,
};
use crate::exec::elementwise::FusedElementwise;
use crate::exec::kernels::{DeviceInstr, ViewDesc};
use crate::exec::matmul::MatMul;
use crate::exec::primitives::{Materialize, Reduce, ReduceFn};
use crate::exec::view::View;
use crate::Error;

/// `C[.., m, n] = sum_k A[.., m, k] B[.., n, k]` on cuBLAS: both operands are made dense
/// (`view_copy`, the broadcast axis of the matmul pattern dropped), then one strided-batched
/// SGEMM (row-major C = A B^T is column-major C^T = B A^T).
#[derive(Debug, Clone, PartialEq)]
pub struct CudaMatMul {
    pub backend: BackendRef,
}

impl CudaMatMul {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let empty = Default::default();
        let va = View::new(&inp[0].1, &empty);
        let r = va.axes.len();
        let (m, n, k) = (va.axes[r - 3].len, va.axes[r - 2].len, va.axes[r - 1].len);
        let batches: usize = va.axes[..r - 3].iter().map(|a| a.len).product();
        let mut c = b.zeros(batches * m * n)?;
        if batches * m * n > 0 && k > 0 {
            let da = ViewDesc::new(&inp[0].1, &empty).without_axis(r - 2);
            let db = ViewDesc::new(&inp[1].1, &empty).without_axis(r - 3);
            let a = b.view_copy(device_buffer(&inp[0].0)?.slice(), &da)?;
            let bb = b.view_copy(device_buffer(&inp[1].0)?.slice(), &db)?;
            let i = |x: usize| i32::try_from(x).map_err(|_| too_big());
            let cfg = StridedBatchedConfig {
                gemm: GemmConfig {
                    transa: cublasOperation_t::CUBLAS_OP_T,
                    transb: cublasOperation_t::CUBLAS_OP_N,
                    m: i(n)?,
                    n: i(m)?,
                    k: i(k)?,
                    alpha: 1.0f32,
                    lda: i(k)?,
                    ldb: i(k)?,
                    beta: 0.0f32,
                    ldc: i(n)?,
                },
                batch_size: i(batches)?,
                stride_a: (n * k) as i64,
                stride_b: (m * k) as i64,
                stride_c: (m * n) as i64,
            };
            // SAFETY: a is (batches, m, k), bb (batches, n, k), c (batches, m, n), dense.
            call_err("cublasSgemmStridedBatched", unsafe {
                b.blas().gemm_strided_batched(cfg, &bb, &a, &mut c)
            })?;
        }
        Ok(vec![Tensor::new(CudaBuffer::new(c, b.ordinal()))])
    }
}
cuda_operator!(CudaMatMul);

fn too_big() -> Error {
    Error::InvalidOp {
        op: "cuda matmul",
        problem: "a matrix size exceeds 2^31 - 1",
    }
}

/// Lowers [`MatMul`].
pub fn lower_matmul(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<MatMul>().then(|| {
        Box::new(CudaMatMul {
            backend: cx.backend.clone(),
        }) as Box<dyn Operator>
    })
}

/// Sum or max over one axis (`reduce.cu`), written where the CPU [`Reduce`] writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaReduce {
    pub backend: BackendRef,
    pub f: ReduceFn,
    pub axis: usize,
}

impl CudaReduce {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let x = dense(b, &inp[0].0, &inp[0].1)?;
        let shape = View::new(&inp[0].1, &Default::default()).shape();
        let front: usize = shape[..self.axis.min(shape.len())].iter().product();
        let len = shape.get(self.axis).copied().unwrap_or(1);
        let back: usize = shape[(self.axis + 1).min(shape.len())..].iter().product();
        let mut out = b.zeros(front * back)?;
        if front * back > 0 {
            let name = match self.f {
                ReduceFn::Sum => "reduce_sum",
                ReduceFn::Max => "reduce_max",
            };
            let f = b.function(name)?;
            let (o, l, i) = (u32_of(front)?, u32_of(len)?, u32_of(back)?);
            let mut lb = b.stream().launch_builder(&f);
            lb.arg(x.slice()).arg(&mut out).arg(&o).arg(&l).arg(&i);
            // SAFETY: x holds front len back elements, out front back.
            call_err("cuLaunchKernel", unsafe {
                lb.launch(launch_for(front * back))
            })?;
        }
        let mut rest = inp[0].1;
        if self.axis < rest.len() {
            rest.remove_dim(self.axis);
        }
        let out_view = View::new(&rest, &Default::default());
        if !out_view.plain && out_view.n == front * back {
            // consumers read through a permuted view: place values as the CPU kernel does
            // (on the host; rare in our graphs)
            let logical = b.download(&out)?;
            let mut placed = vec![0.0; out_view.physical_len()];
            out_view.scatter(&logical, &mut placed);
            return Ok(vec![Tensor::new(b.upload(&placed)?)]);
        }
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaReduce);

/// Lowers [`Reduce`].
pub fn lower_reduce(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().downcast_ref::<Reduce>().map(|r| {
        Box::new(CudaReduce {
            backend: cx.backend.clone(),
            f: r.f,
            axis: r.axis,
        }) as Box<dyn Operator>
    })
}

/// A fused elementwise chain (`elementwise.cu`): the CPU fusion's register program, encoded
/// by [`DeviceInstr::encode`], over inputs made dense in the output's logical order.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaElementwise {
    pub backend: BackendRef,
    pub program: Vec<DeviceInstr>,
    pub output: usize,
}

impl CudaElementwise {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let n = inp
            .first()
            .map(|(_, st)| View::new(st, &Default::default()).n)
            .unwrap_or(1);
        let inputs = inp
            .iter()
            .map(|(t, st)| dense(b, t, st))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = b.zeros(n)?;
        if n > 0 && !self.program.is_empty() {
            let stream = b.stream();
            let ptrs: Vec<u64> = inputs
                .iter()
                .map(|d| {
                    use cudarc::driver::DevicePtr;
                    let (p, _sync) = d.slice().device_ptr(stream);
                    p
                })
                .collect();
            let scalar = vec![0i32; ptrs.len().max(1)];
            let dptrs = call_err("cuMemcpyHtoD", stream.clone_htod(&ptrs))?;
            let dscalar = call_err("cuMemcpyHtoD", stream.clone_htod(&scalar))?;
            let dprog = call_err("cuMemcpyHtoD", stream.clone_htod(&self.program))?;
            let f = b.function("elementwise_program")?;
            let (len, reg, total) = (u32_of(self.program.len())?, u32_of(self.output)?, n as u64);
            let mut lb = stream.launch_builder(&f);
            lb.arg(&dprog)
                .arg(&len)
                .arg(&dptrs)
                .arg(&dscalar)
                .arg(&reg)
                .arg(&mut out)
                .arg(&total);
            // SAFETY: every input is dense with n elements; the program reads earlier
            // registers only (built by the CPU fusion).
            call_err("cuLaunchKernel", unsafe { lb.launch(launch_for(n)) })?;
            // the input buffers must outlive the kernel
            call_err("cuStreamSynchronize", stream.synchronize())?;
        }
        drop(inputs);
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(CudaElementwise);

/// Lowers [`FusedElementwise`] chains of at most 64 instructions that read inputs through
/// their views (a raw buffer map stays on the host).
pub fn lower_elementwise(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    let f = op.as_any().downcast_ref::<FusedElementwise>()?;
    (!f.raw && f.program.len() <= 64).then(|| {
        Box::new(CudaElementwise {
            backend: cx.backend.clone(),
            program: f.program.iter().map(DeviceInstr::encode).collect(),
            output: f.output,
        }) as Box<dyn Operator>
    })
}

/// luminal's `Contiguous` (`view_copy.cu`).
#[derive(Debug, Clone, PartialEq)]
pub struct ViewCopy {
    pub backend: BackendRef,
}

impl ViewCopy {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let b = &self.backend.0;
        let desc = ViewDesc::new(&inp[0].1, &Default::default());
        let out = b.view_copy(device_buffer(&inp[0].0)?.slice(), &desc)?;
        Ok(vec![Tensor::new(CudaBuffer::new(out, b.ordinal()))])
    }
}
cuda_operator!(ViewCopy);

/// Lowers [`Materialize`].
pub fn lower_materialize(op: &dyn Operator, cx: &LowerCtx) -> Option<Box<dyn Operator>> {
    op.as_any().is::<Materialize>().then(|| {
        Box::new(ViewCopy {
            backend: cx.backend.clone(),
        }) as Box<dyn Operator>
    })
}
