//! Safetensors loading.
