//! The se3 model zoo.

pub mod error;
pub use error::Error;
