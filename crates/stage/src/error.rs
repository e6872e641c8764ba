use thiserror::Error;

/// What a device can fail at: allocation, transfers, kernel launches, synchronization.
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("device out of memory: asked for {requested} bytes")]
    OutOfMemory { requested: usize },
    #[error("device transfer of {len} elements does not fit a buffer of {capacity}")]
    SizeMismatch { len: usize, capacity: usize },
    #[error("device driver error: {0}")]
    Driver(String),
}

/// Why a stage could not process a batch. Requests are validated before stages run, so
/// these are mostly state or device failures.
#[derive(Debug, Error)]
pub enum StageError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("unknown item {0}")]
    UnknownItem(u32),
    #[error("unknown user {0}")]
    UnknownUser(u32),
    #[error("stage `{stage}` expected {expected} in the batch, found {found}")]
    BatchShape {
        stage: &'static str,
        expected: String,
        found: String,
    },
    #[error("stage `{stage}` failed: {message}")]
    Failed {
        stage: &'static str,
        message: String,
    },
    #[error(transparent)]
    Device(#[from] DeviceError),
}
