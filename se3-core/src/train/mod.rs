//! Training on the host: optimizers with PyTorch's exact update rules ([`Sgd`], [`Adam`],
//! [`AdamW`]), gradient clipping by global norm ([`clip_grad_norm`]), learning-rate schedules
//! ([`LrSchedule`]) and freezing parameters by name prefix.
//!
//! Parameters are named f32 buffers ([`Param`], e.g. a session's weights under their PyTorch
//! keys) with their gradients (e.g. from [`autodiff`](crate::autodiff) graph outputs); the
//! optimizer state (momentum, moments) is kept per name in f64.

mod clip;
mod optimizer;
mod schedule;
mod state;

#[cfg(test)]
mod tests;

pub use clip::clip_grad_norm;
pub use optimizer::{Adam, AdamW, Optimizer, Param, Sgd};
pub use schedule::LrSchedule;
pub use state::OptimizerState;
