//! Copies between host and device, inserted by [`CudaCompiler`](super::CudaCompiler) where a
//! buffer crosses: [`ToDevice`] uploads a host buffer as it is, [`ToHost`] downloads a device
//! buffer as it is; the consumer keeps reading it through its own view.

use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;

use super::{device_buffer, BackendRef};
use crate::exec::view::{buffer, View};
use crate::{Error, Location};

/// Host → device copy of a buffer (layout unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct ToDevice {
    pub backend: BackendRef,
}

impl ToDevice {
    fn run(&self, inp: Vec<(InputTensor, ShapeTracker)>) -> Result<Vec<Tensor>, Error> {
        let host = inp.first().map(|(t, _)| buffer(t)).unwrap_or(&[]);
        Ok(vec![Tensor::new(self.backend.0.upload(host)?)])
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
