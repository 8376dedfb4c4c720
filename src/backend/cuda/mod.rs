//! The CUDA backend (feature `cuda`): hand-written kernels from `kernels/`, compiled by NVRTC.
use crate::error::{Error, Result};

/// A device buffer of f32 values.
#[derive(Clone, Debug)]
pub struct DeviceBuf {
    pub slice: std::sync::Arc<cudarc::driver::CudaSlice<f32>>,
}

impl DeviceBuf {
    pub fn to_host(&self) -> Result<Vec<f32>> {
        Err(Error::Device("cuda backend not implemented yet".into()))
    }
}

pub struct CudaBackend;

impl CudaBackend {
    pub fn new(_ordinal: usize) -> Result<CudaBackend> {
        Err(Error::Device("cuda backend not implemented yet".into()))
    }
}
