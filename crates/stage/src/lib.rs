//! The Stage API of hyperrec: what a stage is, what it works on, and where that lives.
//!
//! A request flows through a fixed order of stages (encode -> fuse -> retrieve -> rerank),
//! each of which reads and writes a [`Batch`] that lives on one [`Device`]. Stages are
//! swappable: anything that implements [`Stage`] for a device can take a slot in the
//! pipeline. This crate is deliberately light (serde and thiserror only) so that every
//! stage crate, the bench suite and outside teams can depend on it cheaply; CI checks
//! that with `cargo xtask check-invariants`.
//!
//! Architecture Invariant: this crate depends on no tensor library and no GPU binding.
//! GPU devices implement [`Device`] in `hyperrec-kernels`, behind its `cuda` feature.

mod batch;
mod device;
mod error;
mod request;

pub use batch::{Batch, RequestNotes, SharedItems, Sources, StageTiming};
pub use device::{Cpu, Device, DeviceKind, Element};
pub use error::{DeviceError, StageError};
pub use request::{
    Context, Contribution, Event, Explanation, HistoryEntry, Interaction, ItemId, Recommendation,
    Request, Social, Source, TimeOfDay, UserId,
};

/// Most retrieval candidates a similarity stage keeps per query, on every device: the CPU
/// reference and the GPU stage must agree on `Batch::candidates` for the same request.
pub const MAX_CANDIDATES: usize = 1024;

/// Dense row of an item in the catalog's tables (`0..n_items`). Buffers hold these, never
/// external ids; the catalog maps between the two.
pub type ItemIndex = u32;
/// Dense row of a user in the user table (`0..n_users`).
pub type UserIndex = u32;

/// One step of the recommendation path.
///
/// A stage reads the fields of the batch that earlier stages wrote and writes its own.
/// On an asynchronous device (CUDA) `run` only *enqueues* work on the device's stream and
/// must never synchronize: the pipeline synchronizes once per batch, times stages with
/// device marks, and may capture the whole post-encoding path into a CUDA graph, so a stage
/// must not read device results back on the host inside `run`.
pub trait Stage<D: Device>: Send {
    /// Short stable name, used as the key of per-stage timings ("encode", "fusion", ...).
    fn name(&self) -> &'static str;

    /// Reads and writes `batch` on `device`.
    fn run(&mut self, device: &D, batch: &mut Batch<D>) -> Result<(), StageError>;

    /// Sees every real-time event after the shared user state has been updated, so the
    /// stage can refresh what it derives from it (popularity counts, device-resident rows).
    /// The very next batch must observe the change.
    fn observe(&mut self, device: &D, event: &Event) -> Result<(), StageError> {
        let _ = (device, event);
        Ok(())
    }
}

impl<D: Device> Stage<D> for Box<dyn Stage<D>> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn run(&mut self, device: &D, batch: &mut Batch<D>) -> Result<(), StageError> {
        (**self).run(device, batch)
    }
    fn observe(&mut self, device: &D, event: &Event) -> Result<(), StageError> {
        (**self).observe(device, event)
    }
}
