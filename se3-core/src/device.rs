//! Where kernels run and buffers live: the [`Device`] a [`Session`](crate::exec::Session)
//! runs on, the [`Location`] of a buffer, and the check that every kernel reads buffers from
//! its own device.
//!
//! A graph op is a backend-neutral description (its parameters and shapes); a backend's
//! compiler pass swaps in its kernel. Kernels say where they read their inputs through the
//! luminal `Operator::custom` key [`LOCATION_KEY`] (an answer of `Option<Location>`, `None` for
//! ops that accept any location, i.e. copies between devices); an op that does not answer is a
//! host kernel. The executor checks every input against that before the kernel runs, so a
//! buffer on the wrong device is [`Error::WrongDevice`], never a silently empty read.

use luminal::op::Operator;
use luminal::prelude::Tensor;

use crate::Error;

/// The backend a session runs its kernels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The host CPU (the default): every kernel of `CpuCompiler`.
    #[default]
    Cpu,
    /// The CUDA device with this ordinal (needs the `cuda` feature, a driver and a device).
    Cuda { ordinal: usize },
}

impl Device {
    /// The first CUDA device.
    pub const CUDA0: Device = Device::Cuda { ordinal: 0 };

    /// Checks that this build and machine can run kernels on the device.
    ///
    /// # Errors
    /// `CudaNotCompiled` for a CUDA device in a build without the `cuda` feature;
    /// `CudaUnavailable` naming what is missing (driver library, NVRTC library, cuBLAS library,
    /// device) when the feature is on.
    pub fn check(self) -> Result<(), Error> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda { ordinal } => cuda_check(ordinal),
        }
    }

    /// Where this device's kernels read and write their buffers.
    pub fn location(self) -> Location {
        match self {
            Device::Cpu => Location::Host,
            Device::Cuda { ordinal } => Location::Cuda { ordinal },
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_check(_ordinal: usize) -> Result<(), Error> {
    Err(Error::CudaNotCompiled)
}

#[cfg(feature = "cuda")]
fn cuda_check(ordinal: usize) -> Result<(), Error> {
    crate::exec::cuda::CudaBackend::open(ordinal).map(|_| ())
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Where a buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Host memory (`Vec<f32>`).
    Host,
    /// Memory of the CUDA device with this ordinal.
    Cuda { ordinal: usize },
    /// A buffer type no backend of this build knows.
    Unknown,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Host => write!(f, "host memory"),
            Location::Cuda { ordinal } => write!(f, "memory of cuda:{ordinal}"),
            Location::Unknown => write!(f, "an unknown buffer type"),
        }
    }
}

/// What is missing when CUDA is compiled in but cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaMissing {
    /// The CUDA driver library (`libcuda.so`): no NVIDIA driver installed.
    DriverLibrary,
    /// The NVRTC library (`libnvrtc.so`) that compiles the kernels at run time.
    NvrtcLibrary,
    /// The cuBLAS library (`libcublas.so`) for matrix products.
    CublasLibrary,
    /// The driver found fewer devices than the ordinal asked for.
    Device { ordinal: usize, count: usize },
}

impl std::fmt::Display for CudaMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaMissing::DriverLibrary => write!(f, "the CUDA driver library (libcuda.so)"),
            CudaMissing::NvrtcLibrary => write!(f, "the NVRTC library (libnvrtc.so)"),
            CudaMissing::CublasLibrary => write!(f, "the cuBLAS library (libcublas.so)"),
            CudaMissing::Device { ordinal, count } => {
                write!(f, "CUDA device {ordinal} (the driver sees {count} devices)")
            }
        }
    }
}

/// One CUDA device as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub memory_bytes: usize,
    pub compute_capability: (i32, i32),
}

/// What this machine offers the CUDA backend (for `se3 doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CudaReport {
    /// The driver's CUDA version (e.g. 12040 for 12.4), if the driver library loads.
    pub driver: Option<i32>,
    /// NVRTC's version (major, minor), if the NVRTC library loads.
    pub nvrtc: Option<(i32, i32)>,
    /// Whether the cuBLAS library loads.
    pub cublas: bool,
    pub devices: Vec<DeviceInfo>,
    /// Why devices could not be listed, if the driver is there but refused.
    pub device_error: Option<String>,
}

/// Looks for the CUDA driver, NVRTC, cuBLAS and devices without failing on their absence.
///
/// # Errors
/// `CudaNotCompiled` in a build without the `cuda` feature.
pub fn probe_cuda() -> Result<CudaReport, Error> {
    #[cfg(feature = "cuda")]
    {
        Ok(crate::exec::cuda::probe())
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(Error::CudaNotCompiled)
    }
}

/// The instruction set the CPU kernels use on this machine (detected once at run time).
pub fn cpu_instruction_set() -> &'static str {
    crate::exec::simd::isa().describe()
}

/// The `Operator::custom` key a kernel answers with `Option<Location>`: where it reads its
/// inputs (`None`: anywhere, for copies between devices).
pub const LOCATION_KEY: &str = "se3.location";

/// Where `t`'s buffer lives.
pub fn location_of(t: &Tensor) -> Location {
    let any = t.data.as_any();
    if any.is::<Vec<f32>>() {
        return Location::Host;
    }
    #[cfg(feature = "cuda")]
    if let Some(b) = any.downcast_ref::<crate::exec::cuda::CudaBuffer>() {
        return Location::Cuda {
            ordinal: b.ordinal(),
        };
    }
    Location::Unknown
}

/// Where `op` reads its inputs: its answer to [`LOCATION_KEY`], host if it does not answer.
pub(crate) fn expected_location(op: &mut dyn Operator) -> Option<Location> {
    match op.custom(LOCATION_KEY, Box::new(())) {
        Some(answer) => answer
            .downcast::<Option<Location>>()
            .map_or(Some(Location::Host), |l| *l),
        None => Some(Location::Host),
    }
}

/// Whether a view reads no data: every axis is fake (a size carrier), so its buffer may live
/// anywhere.
pub(crate) fn reads_no_data(st: &luminal::prelude::ShapeTracker) -> bool {
    !st.fake.is_empty() && st.fake.iter().all(|&f| f)
}

/// Checks that every input buffer of `op` that it reads lives where `op` reads it.
///
/// # Errors
/// `WrongDevice` naming the op, the input, and both locations.
pub(crate) fn check_inputs<'a>(
    op: &mut dyn Operator,
    inputs: impl Iterator<Item = (&'a Tensor, &'a luminal::prelude::ShapeTracker)>,
) -> Result<(), Error> {
    let Some(expected) = expected_location(op) else {
        return Ok(());
    };
    for (input, (t, st)) in inputs.enumerate() {
        let found = location_of(t);
        if found != expected && !reads_no_data(st) {
            return Err(Error::WrongDevice {
                op: format!("{op:?}").chars().take(60).collect(),
                input,
                expected,
                found,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::any::Any;

    use luminal::op::{InputTensor, Operator};
    use luminal::prelude::*;
    use rand::Rng;

    use super::{Location, LOCATION_KEY};
    use crate::exec::{InputKind, Session};
    use crate::{Device, Error};

    /// A kernel that reads its input from CUDA device 0 (and would copy it through).
    #[derive(Debug, Clone, PartialEq)]
    struct ReadsCuda;

    impl Operator for ReadsCuda {
        fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
            inp.into_iter().map(|(t, _)| t.cloned()).collect()
        }
        fn custom(&mut self, key: &str, _: Box<dyn Any>) -> Option<Box<dyn Any>> {
            (key == LOCATION_KEY)
                .then(|| Box::new(Some(Location::Cuda { ordinal: 0 })) as Box<dyn Any>)
        }
    }

    #[test]
    fn kernel_handed_a_host_buffer_for_the_device_is_wrong_device() {
        let mut s = Session::new();
        let x = s.input::<(Dyn<'n'>,)>("x", InputKind::Values);
        let id = s.graph().add_op(ReadsCuda).input(x.id, 0, x.shape).finish();
        s.output(
            "y",
            GraphTensor::<(Dyn<'n'>,)>::from_id(id, x.shape, x.graph_ref),
        );
        let n = rand::thread_rng().gen_range(1..50);
        let set = s.set("x", vec![1.0; n], &[n]);
        assert!(set.is_ok());
        match s.run() {
            Err(Error::WrongDevice {
                input: 0,
                expected: Location::Cuda { ordinal: 0 },
                found: Location::Host,
                ..
            }) => {}
            other => panic!("expected WrongDevice, got {other:?}"),
        }
    }

    #[test]
    fn host_kernels_run_on_host_buffers() -> Result<(), Error> {
        let mut s = Session::on(Device::Cpu)?;
        let x = s.input::<(Dyn<'n'>,)>("x", InputKind::Values);
        s.output("y", x * 2.0);
        let n = rand::thread_rng().gen_range(1..50);
        s.set("x", vec![1.5; n], &[n])?;
        s.run()?;
        assert_eq!(s.get("y")?.data, vec![3.0; n]);
        assert_eq!(s.device(), Device::Cpu);
        Ok(())
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_cuda_not_compiled() {
        assert!(matches!(
            Session::on(Device::CUDA0),
            Err(Error::CudaNotCompiled)
        ));
        assert!(matches!(
            Device::Cuda { ordinal: 3 }.check(),
            Err(Error::CudaNotCompiled)
        ));
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_with_the_feature_opens_or_names_what_is_missing() {
        match Session::on(Device::CUDA0) {
            Ok(s) => assert_eq!(s.device(), Device::CUDA0),
            Err(Error::CudaUnavailable { missing }) => {
                println!("no CUDA here: {missing} missing")
            }
            Err(e) => panic!("expected a session or CudaUnavailable, got {e}"),
        }
    }
}
