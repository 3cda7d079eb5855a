//! [`CudaBuffer`]: f32 data in the memory of one CUDA device, as luminal tensor data.

use std::sync::Arc;

use cudarc::driver::CudaSlice;

/// A device buffer of f32 inside a luminal `Tensor` ([`Location::Cuda`](crate::Location)).
/// Kernels only read their inputs, so a clone shares the device memory (resident weights are
/// handed to every run this way, never copied).
#[derive(Clone)]
pub struct CudaBuffer {
    slice: Arc<CudaSlice<f32>>,
    ordinal: usize,
}

impl CudaBuffer {
    /// Wraps a device slice of device `ordinal`.
    pub fn new(slice: CudaSlice<f32>, ordinal: usize) -> CudaBuffer {
        CudaBuffer {
            slice: Arc::new(slice),
            ordinal,
        }
    }

    /// The device slice.
    pub fn slice(&self) -> &CudaSlice<f32> {
        &self.slice
    }

    /// The device ordinal the buffer lives on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuffer({} f32 on cuda:{})", self.len(), self.ordinal)
    }
}

impl luminal::prelude::Data for CudaBuffer {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
