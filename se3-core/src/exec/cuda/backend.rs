//! [`CudaBackend`]: a CUDA device opened for se3 (context, stream, cuBLAS handle, NVRTC module
//! cache), and [`probe`]: what the machine has, for `se3 doctor`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use luminal::prelude::Tensor;

use super::buffer::CudaBuffer;
use crate::device::{CudaMissing, CudaReport, DeviceInfo};
use crate::exec::kernels::{source_of, ViewDesc};
use crate::Error;

// SAFETY: `ViewDesc` is `repr(C)` plain data with the layout of the kernel's struct.
unsafe impl cudarc::driver::DeviceRepr for ViewDesc {}
// SAFETY: as above, for `elementwise_program`'s `Instr`.
unsafe impl cudarc::driver::DeviceRepr for crate::exec::kernels::DeviceInstr {}

/// A CUDA device ready to run se3's kernels.
pub struct CudaBackend {
    ordinal: usize,
    arch: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// NVRTC-compiled modules by source file, compiled on first use for `arch`.
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// The first failure inside a kernel since the last [`CudaBackend::take_fault`].
    fault: Mutex<Option<Error>>,
}

fn call<T, E: std::fmt::Debug>(call: &'static str, r: Result<T, E>) -> Result<T, Error> {
    r.map_err(|e| Error::CudaCall {
        call,
        reason: format!("{e:?}"),
    })
}

/// Which of the three libraries are missing, in the order they are needed.
fn missing_library() -> Option<CudaMissing> {
    // SAFETY: these only try to dlopen the libraries by name.
    unsafe {
        if !cudarc::driver::sys::is_culib_present() {
            return Some(CudaMissing::DriverLibrary);
        }
        if !cudarc::nvrtc::sys::is_culib_present() {
            return Some(CudaMissing::NvrtcLibrary);
        }
        if !cudarc::cublas::sys::is_culib_present() {
            return Some(CudaMissing::CublasLibrary);
        }
    }
    None
}

impl CudaBackend {
    /// Opens device `ordinal` (once per process; later calls return the same backend).
    ///
    /// # Errors
    /// `CudaUnavailable` naming the missing driver library, NVRTC library, cuBLAS library or
    /// device; `CudaCall` if the driver refuses.
    pub fn open(ordinal: usize) -> Result<Arc<CudaBackend>, Error> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<CudaBackend>>>> = OnceLock::new();
        let open = OPEN.get_or_init(Default::default);
        let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = open.get(&ordinal) {
            return Ok(b.clone());
        }
        if let Some(missing) = missing_library() {
            return Err(Error::CudaUnavailable { missing });
        }
        let count = call("cuDeviceGetCount", CudaContext::device_count())?.max(0) as usize;
        if ordinal >= count {
            return Err(Error::CudaUnavailable {
                missing: CudaMissing::Device { ordinal, count },
            });
        }
        let ctx = call("cuCtxCreate", CudaContext::new(ordinal))?;
        let (major, minor) = call("cuDeviceGetAttribute", ctx.compute_capability())?;
        let stream = ctx.default_stream();
        let blas = call("cublasCreate", CudaBlas::new(stream.clone()))?;
        let b = Arc::new(CudaBackend {
            ordinal,
            arch: format!("compute_{major}{minor}"),
            ctx,
            stream,
            blas,
            modules: Mutex::new(HashMap::new()),
            fault: Mutex::new(None),
        });
        open.insert(ordinal, b.clone());
        Ok(b)
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The virtual architecture kernels are compiled for (`compute_XY`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The stream every kernel runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The cuBLAS handle (on [`CudaBackend::stream`]).
    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// Kernel `name` from its `.cu` source, compiled with NVRTC on first use and cached.
    ///
    /// # Errors
    /// `InvalidOp` for an unknown kernel, `CudaCall` for a compile or load failure.
    pub fn function(&self, name: &str) -> Result<CudaFunction, Error> {
        let src = source_of(name).ok_or(Error::InvalidOp {
            op: "cuda kernel",
            problem: "no kernel source defines this kernel",
        })?;
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        let module = match modules.get(src.file) {
            Some(m) => m.clone(),
            None => {
                let opts = CompileOptions {
                    options: vec![format!("--gpu-architecture={}", self.arch)],
                    name: Some(src.file.to_string()),
                    ..Default::default()
                };
                let ptx = call(
                    "nvrtcCompileProgram",
                    compile_ptx_with_opts(src.program(), opts),
                )?;
                let m = call("cuModuleLoadData", self.ctx.load_module(ptx))?;
                modules.insert(src.file, m.clone());
                m
            }
        };
        call("cuModuleGetFunction", module.load_function(name))
    }

    /// Copies host data to a new device buffer.
    ///
    /// # Errors
    /// `CudaCall`.
    pub fn upload(&self, host: &[f32]) -> Result<CudaBuffer, Error> {
        let s = call("cuMemcpyHtoD", self.stream.clone_htod(host))?;
        Ok(CudaBuffer::new(s, self.ordinal))
    }

    /// Copies a device buffer to the host.
    ///
    /// # Errors
    /// `CudaCall`.
    pub fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>, Error> {
        call("cuMemcpyDtoH", self.stream.clone_dtoh(buf))
    }

    /// A zeroed device buffer of `n` elements.
    ///
    /// # Errors
    /// `CudaCall`.
    pub fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, Error> {
        call("cuMemAlloc", self.stream.alloc_zeros::<f32>(n.max(1)))
    }

    /// A zeroed device buffer of `n` u32.
    ///
    /// # Errors
    /// `CudaCall`.
    pub fn zeros_u32(&self, n: usize) -> Result<CudaSlice<u32>, Error> {
        call("cuMemAlloc", self.stream.alloc_zeros::<u32>(n.max(1)))
    }

    /// `view_copy`: the logical elements of a strided view of `src`, row-major.
    ///
    /// # Errors
    /// `CudaCall`.
    pub fn view_copy(
        &self,
        src: &CudaSlice<f32>,
        desc: &ViewDesc,
    ) -> Result<CudaSlice<f32>, Error> {
        let total = desc.elements();
        let mut out = self.zeros(total)?;
        if total == 0 {
            return Ok(out);
        }
        let f = self.function("view_copy")?;
        let (src_len, total64) = (src.len() as u64, total as u64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(src)
            .arg(&src_len)
            .arg(&mut out)
            .arg(&total64)
            .arg(desc);
        // SAFETY: the kernel reads src within src_len and writes out[..total].
        call("cuLaunchKernel", unsafe {
            b.launch(super::launch_for(total))
        })?;
        Ok(out)
    }

    /// Runs a kernel body, recording a failure (luminal's `process` cannot return one): on
    /// failure, or if an earlier kernel failed, the output is an empty device buffer and
    /// [`CudaBackend::take_fault`] reports the first error.
    pub fn guard(&self, body: impl FnOnce() -> Result<Vec<Tensor>, Error>) -> Vec<Tensor> {
        let failed = self.fault.lock().map(|f| f.is_some()).unwrap_or(true);
        let result = if failed {
            Err(None)
        } else {
            body().map_err(Some)
        };
        match result {
            Ok(out) => out,
            Err(e) => {
                if let Some(e) = e {
                    if let Ok(mut f) = self.fault.lock() {
                        f.get_or_insert(e);
                    }
                }
                let empty = self
                    .stream
                    .null::<f32>()
                    .map(|s| CudaBuffer::new(s, self.ordinal));
                empty.map(|b| vec![Tensor::new(b)]).unwrap_or_default()
            }
        }
    }

    /// Whether a kernel failed since the last [`CudaBackend::take_fault`].
    pub fn has_fault(&self) -> bool {
        self.fault.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    /// The first kernel failure since the last call, clearing it.
    ///
    /// # Errors
    /// That failure.
    pub fn take_fault(&self) -> Result<(), Error> {
        match self.fault.lock().ok().and_then(|mut f| f.take()) {
            Some(e) => Err(e),
            None => call("cuStreamSynchronize", self.stream.synchronize()),
        }
    }
}

/// Looks for the driver, NVRTC, cuBLAS and the devices, without failing.
pub fn probe() -> CudaReport {
    let mut r = CudaReport::default();
    // SAFETY: `is_culib_present` only dlopens; the version calls write one int each and run
    // only when their library is present.
    unsafe {
        if cudarc::driver::sys::is_culib_present() {
            let mut v = 0;
            if cudarc::driver::sys::cuDriverGetVersion(&mut v)
                == cudarc::driver::sys::CUresult::CUDA_SUCCESS
            {
                r.driver = Some(v);
            }
        }
        if cudarc::nvrtc::sys::is_culib_present() {
            let (mut major, mut minor) = (0, 0);
            if cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor)
                == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS
            {
                r.nvrtc = Some((major, minor));
            }
        }
        r.cublas = cudarc::cublas::sys::is_culib_present();
    }
    if r.driver.is_none() {
        return r;
    }
    match CudaContext::device_count() {
        Ok(n) => {
            for ordinal in 0..n.max(0) as usize {
                match CudaContext::new(ordinal) {
                    Ok(ctx) => r.devices.push(DeviceInfo {
                        ordinal,
                        name: ctx.name().unwrap_or_default(),
                        memory_bytes: ctx.total_mem().unwrap_or(0),
                        compute_capability: ctx.compute_capability().unwrap_or((0, 0)),
                    }),
                    Err(e) => r.device_error = Some(format!("{e:?}")),
                }
            }
        }
        Err(e) => r.device_error = Some(format!("{e:?}")),
    }
    r
}
