use hyperrec_stage::{DeviceError, StageError};
use thiserror::Error;

/// What the CUDA device and the GPU stages can fail at.
#[derive(Debug, Error)]
pub enum CudaError {
    #[error("no CUDA driver library found on this machine")]
    NoDriver,
    #[error("no CUDA device {ordinal} (found {count})")]
    NoDevice { ordinal: usize, count: usize },
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("loading kernel module `{module}`: {message}")]
    Module {
        module: &'static str,
        message: String,
    },
    #[error("device out of memory allocating {bytes} bytes")]
    OutOfMemory { bytes: usize },
    #[error("device access up to element {end} of a buffer of {len}")]
    OutOfBounds { end: usize, len: usize },
    #[error("{0}")]
    Unsupported(String),
}

impl CudaError {
    pub(crate) fn blas(error: cudarc::cublas::result::CublasError) -> CudaError {
        CudaError::Blas(format!("{error:?}"))
    }
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(error: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(error.to_string())
    }
}

impl From<CudaError> for DeviceError {
    fn from(error: CudaError) -> Self {
        match error {
            CudaError::OutOfMemory { bytes } => DeviceError::OutOfMemory { requested: bytes },
            other => DeviceError::Driver(other.to_string()),
        }
    }
}

impl From<CudaError> for StageError {
    fn from(error: CudaError) -> Self {
        StageError::Device(error.into())
    }
}
