use std::fmt;
use std::time::{Duration, Instant};

use crate::DeviceError;

/// Which kind of device a pipeline runs on; printed by the CLI and recorded by the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda { ordinal: usize },
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::Cpu => write!(f, "cpu"),
            DeviceKind::Cuda { ordinal } => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Plain-old-data element types a device buffer can hold. `u16` carries fp16 bits so this
/// crate needs no half-precision dependency.
///
/// # Safety
/// Implementors must have no padding and accept every bit pattern (including all zeros),
/// so device backends may move them as raw bytes.
pub unsafe trait Element: Copy + Default + Send + Sync + fmt::Debug + 'static {}
// SAFETY: primitive numbers: no padding, every bit pattern valid.
unsafe impl Element for f32 {}
// SAFETY: as above.
unsafe impl Element for u32 {}
// SAFETY: as above.
unsafe impl Element for i32 {}
// SAFETY: as above.
unsafe impl Element for u16 {}
// SAFETY: as above.
unsafe impl Element for u8 {}

/// A place where a batch's buffers live and where stages do their work.
///
/// The CPU device ([`Cpu`]) is always built and is the reference every other device is
/// tested against. The CUDA device (in `hyperrec-kernels`) owns a stream; its buffers are
/// device allocations and its marks are CUDA events, so per-stage timings come from the
/// device timeline without host synchronization between stages.
pub trait Device: Send + Sync + 'static {
    /// An owned, contiguous allocation of `T`s on this device.
    type Buffer<T: Element>: Send + Sync;
    /// A point on the device's timeline; see [`Device::elapsed`].
    type Mark: Send;

    fn kind(&self) -> DeviceKind;

    /// A buffer of `len` zeroed elements.
    fn zeros<T: Element>(&self, len: usize) -> Result<Self::Buffer<T>, DeviceError>;
    /// Number of elements `buffer` holds.
    fn len<T: Element>(&self, buffer: &Self::Buffer<T>) -> usize;
    /// Makes `buffer` hold exactly `len` elements, reusing its allocation when it is large
    /// enough (so steady-state batches allocate nothing). Contents are unspecified after.
    fn resize<T: Element>(
        &self,
        buffer: &mut Self::Buffer<T>,
        len: usize,
    ) -> Result<(), DeviceError>;
    /// Copies `host` into `buffer`, which must already hold `host.len()` elements.
    fn upload<T: Element>(
        &self,
        host: &[T],
        buffer: &mut Self::Buffer<T>,
    ) -> Result<(), DeviceError>;
    /// Copies `buffer` into `host` (cleared first). Synchronizes with the device.
    fn download<T: Element>(
        &self,
        buffer: &Self::Buffer<T>,
        host: &mut Vec<T>,
    ) -> Result<(), DeviceError>;

    /// Records a point on the device's timeline (host time on the CPU, an event on CUDA).
    fn mark(&self) -> Result<Self::Mark, DeviceError>;
    /// Time between two marks; valid once both have completed (after [`Device::synchronize`]).
    fn elapsed(&self, start: &Self::Mark, end: &Self::Mark) -> Result<Duration, DeviceError>;
    /// Waits until all work enqueued so far has finished.
    fn synchronize(&self) -> Result<(), DeviceError>;
}

/// The host CPU. Buffers are `Vec`s; work runs synchronously (in parallel with rayon where a
/// stage chooses to).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Device for Cpu {
    type Buffer<T: Element> = Vec<T>;
    type Mark = Instant;

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }

    fn zeros<T: Element>(&self, len: usize) -> Result<Vec<T>, DeviceError> {
        Ok(vec![T::default(); len])
    }

    fn len<T: Element>(&self, buffer: &Vec<T>) -> usize {
        buffer.len()
    }

    fn resize<T: Element>(&self, buffer: &mut Vec<T>, len: usize) -> Result<(), DeviceError> {
        buffer.resize(len, T::default());
        Ok(())
    }

    fn upload<T: Element>(&self, host: &[T], buffer: &mut Vec<T>) -> Result<(), DeviceError> {
        if host.len() != buffer.len() {
            return Err(DeviceError::SizeMismatch {
                len: host.len(),
                capacity: buffer.len(),
            });
        }
        buffer.copy_from_slice(host);
        Ok(())
    }

    fn download<T: Element>(&self, buffer: &Vec<T>, host: &mut Vec<T>) -> Result<(), DeviceError> {
        host.clear();
        host.extend_from_slice(buffer);
        Ok(())
    }

    fn mark(&self) -> Result<Instant, DeviceError> {
        Ok(Instant::now())
    }

    fn elapsed(&self, start: &Instant, end: &Instant) -> Result<Duration, DeviceError> {
        Ok(end.saturating_duration_since(*start))
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        Ok(())
    }
}
