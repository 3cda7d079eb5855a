//! Copies between host and device, inserted by [`CudaCompiler`](super::CudaCompiler) where a
//! buffer crosses: [`ToDevice`] uploads a host buffer as it is, [`ToHost`] downloads a device
//! buffer as it is; the consumer keeps reading it through its own view.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::{device_buffer, BackendRef, CudaBuffer};
use crate::exec::view::{buffer, View};
use crate::{Error, Location};

/// Host → device copy of a buffer (layout unchanged). With a [`Resident`] cache (the
/// session's weights) the copy is made once and handed to every later run until the
/// session's weights change.
#[derive(Debug, Clone, PartialEq)]
pub struct ToDevice {
    pub backend: BackendRef,
    pub resident: Option<Resident>,
}

/// The device copy of a resident weight, valid while the session's weight epoch is unchanged
/// (`Session::set_weight` advances it).
#[derive(Clone, Default)]
pub struct Resident {
    /// The session's weight epoch.
    pub epoch: Arc<AtomicU64>,
    cached: Arc<Mutex<Option<(u64, CudaBuffer)>>>,
}

impl Resident {
    /// A cache following `epoch`.
    pub fn new(epoch: Arc<AtomicU64>) -> Resident {
        Resident {
            epoch,
            cached: Arc::default(),
        }
    }
}

impl PartialEq for Resident {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.cached, &other.cached)
    }
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resident(epoch {})", self.epoch.load(Ordering::Acquire))
    }
}

impl ToDevice {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let host = inp.first().map(|(t, _)| buffer(t)).unwrap_or(&[]);
        let Some(r) = &self.resident else {
            return Ok(vec![Tensor::new(self.backend.0.upload(host)?)]);
        };
        let now = r.epoch.load(Ordering::Acquire);
        let mut cached = r.cached.lock().unwrap_or_else(|p| p.into_inner());
        let buf = match cached.as_ref() {
            Some((epoch, buf)) if *epoch == now && buf.len() == host.len() => buf.clone(),
            _ => {
                let buf = self.backend.0.upload(host)?;
                *cached = Some((now, buf.clone()));
                buf
            }
        };
        Ok(vec![Tensor::new(buf)])
    }
}

impl Operator for ToDevice {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let backend = self.backend.0.clone();
        backend.guard(|| self.run(inp))
    }
    fn custom(&mut self, key: &str, _: Box<dyn std::any::Any>) -> Option<Box<dyn std::any::Any>> {
        (key == crate::device::LOCATION_KEY)
            .then(|| Box::new(Some(Location::Host)) as Box<dyn std::any::Any>)
    }
}

/// Device → host copy of a buffer (layout unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct ToHost {
    pub backend: BackendRef,
}

impl Operator for ToHost {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let b = &self.backend.0;
        let got = inp
            .first()
            .ok_or(Error::MissingIntermediate { node: 0 })
            .and_then(|(t, _)| device_buffer(t))
            .and_then(|d| b.download(d.slice()));
        let host = match got {
            Ok(v) if !b.has_fault() => v,
            other => {
                // an earlier kernel failed (the run reports it): zeros of the size consumers
                // read, so host kernels after this stay in bounds
                let _ = b.guard(|| other.map(|_| Vec::new()));
                let n = inp
                    .first()
                    .map(|(_, st)| {
                        let v = View::new(st, &Default::default());
                        v.n.max(v.physical_len())
                    })
                    .unwrap_or(0);
                vec![0.0; n]
            }
        };
        vec![Tensor::new(host)]
    }
    fn custom(&mut self, key: &str, _: Box<dyn std::any::Any>) -> Option<Box<dyn std::any::Any>> {
        (key == crate::device::LOCATION_KEY).then(|| {
            Box::new(Some(Location::Cuda {
                ordinal: self.backend.0.ordinal(),
            })) as Box<dyn std::any::Any>
        })
    }
}
