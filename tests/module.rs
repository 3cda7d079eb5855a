//! Modules (`#[derive(Module)]` + `Forward`): reference checkpoints read by field names and
//! reproduced (`parity`), checkpoints with fiber metadata (`checkpoint`), equivariance of
//! compiled modules under fresh random motions (`equivariance`).

#[path = "parity/reference.rs"]
#[allow(dead_code)]
mod reference;

#[path = "module/parity.rs"]
mod parity;

#[path = "module/checkpoint.rs"]
mod checkpoint;

#[path = "module/equivariance.rs"]
mod equivariance;
