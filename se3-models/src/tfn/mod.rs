//! TFN
