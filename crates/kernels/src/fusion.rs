//! The fusion stage on the GPU.

use hyperrec_catalog::SharedUsers;
use hyperrec_stage::{Batch, Event, Stage, StageError, UserIndex};

use crate::device::{Cuda, CudaBuffer, StageRecords, arg};
use crate::similarity_one::FoldedFusion;
use crate::{CudaError, SharedTables};

/// GPU twin of `hyperrec_fusion::Fusion` (`"fusion"`): the same formula, notes and
/// cold-start rule, reading profiles from the device tables.
///
/// `u = normalize(sum of the profiles of the requester and found companions)`,
/// `fused = normalize(alpha * q + (1 - alpha) * u)`; a request with nobody who has a profile
/// (or whose profiles cancel out) is a cold start with `fused = q`.
///
/// Reads `query_embeddings`, `requests`; writes `fused` and `notes[i].{user, companions,
/// cold_start}`. The host resolves who is in each request (id lookups); one kernel does
/// the arithmetic.
pub struct CudaFusion {
    users: SharedUsers,
    tables: SharedTables,
    alpha: f32,
    member_offsets_host: Vec<u32>,
    members_host: Vec<u32>,
    /// `[offsets; n + 1] [members]` in one buffer: one upload per batch instead of two (at
    /// batch 1 each upload is a visible share of the host step), or a range of the path's
    /// arena.
    records: StageRecords,
}

impl CudaFusion {
    /// Fails unless `alpha` is in `[0, 1]`.
    pub fn new(
        cuda: &Cuda,
        users: SharedUsers,
        tables: SharedTables,
        alpha: f32,
    ) -> Result<Self, CudaError> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(CudaError::Unsupported(format!(
                "alpha must be in [0, 1], got {alpha}"
            )));
        }
        Ok(CudaFusion {
            users,
            tables,
            alpha,
            member_offsets_host: Vec::new(),
            members_host: Vec::new(),
            records: StageRecords::new(cuda)?,
        })
    }

    /// Resolves the batch's members on the host and uploads them for the kernel (nothing
    /// runs on the device yet). Split from `run` so a captured graph can replay the kernel
    /// after only this host step.
    pub(crate) fn prepare(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<(), StageError> {
        self.plan(batch);
        self.records.upload_own(cuda, 0)?;
        Ok(())
    }

    /// The host half of [`CudaFusion::prepare`]: the records, planned but not uploaded
    /// (`GpuPath` uploads every stage's records in one copy and places them).
    pub(crate) fn plan(&mut self, batch: &mut Batch<Cuda>) {
        let users = self.users.read();
        plan_members(
            &users,
            &batch.requests,
            &mut batch.notes,
            &mut self.member_offsets_host,
            &mut self.members_host,
        );
        drop(users);
        let records = self.records.host_mut();
        records.clear();
        records.extend_from_slice(&self.member_offsets_host);
        records.extend_from_slice(&self.members_host);
    }

    /// The planned records, for the path to upload and place.
    pub(crate) fn records_mut(&mut self) -> &mut StageRecords {
        &mut self.records
    }

    /// Enqueues the fusion kernel for a prepared batch.
    pub(crate) fn enqueue(&self, cuda: &Cuda, batch: &mut Batch<Cuda>) -> Result<(), StageError> {
        self.enqueue_into(cuda, batch, None)
    }

    /// Runs the stage on `batch` (as [`Stage::run`]) and also writes the fused rows in fp16
    /// into `half` (`[n, dim]`, sized here), exactly as `f32_to_f16` would round them: what
    /// a score GEMM over fp16 queries reads, without a conversion pass of its own.
    pub fn run_with_half(
        &mut self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
        half: &mut CudaBuffer<u16>,
    ) -> Result<(), StageError> {
        self.prepare(cuda, batch)?;
        self.enqueue_into(cuda, batch, Some(half))
    }

    /// The fusion kernel, optionally with the fp16 copy of the fused rows.
    pub(crate) fn enqueue_into(
        &self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
        half: Option<&mut CudaBuffer<u16>>,
    ) -> Result<(), StageError> {
        let n = batch.len();
        let dim = batch.dim;
        if n == 0 {
            return Ok(());
        }
        let tables = self.tables.lock();
        if tables.dim() != dim || batch.query_embeddings.len() != n * dim {
            return Err(StageError::BatchShape {
                stage: "fusion",
                expected: format!("query_embeddings [{n}, {}]", tables.dim()),
                found: format!("{} values of width {dim}", batch.query_embeddings.len()),
            });
        }
        cuda.ensure_len(&mut batch.fused, n * dim)?;
        let half_ptr = match half {
            Some(half) => {
                cuda.ensure_len(half, n * dim)?;
                half.device_ptr()
            }
            None => 0,
        };
        let (queries, users, offsets, members) = (
            batch.query_embeddings.device_ptr(),
            tables.users().device_ptr(),
            self.records.device_ptr(),
            self.records.ptr_at(n + 1),
        );
        let (alpha, dim_u, n_u, fused) =
            (self.alpha, dim as u32, n as u32, batch.fused.device_ptr());
        if warp_fusion_fits(dim) {
            let mut params = [
                arg(&queries),
                arg(&users),
                arg(&offsets),
                arg(&members),
                arg(&alpha),
                arg(&dim_u),
                arg(&n_u),
                arg(&fused),
                arg(&half_ptr),
            ];
            // SAFETY: parameter list matches `fuse_queries_warp` (dim a multiple of 128 up to
            // 1024, checked above); every member row is < n_users; `fused` and `half` hold
            // n * dim elements.
            unsafe {
                cuda.launch(
                    &cuda.kernels.fuse_queries_warp,
                    (n.div_ceil(WARP_FUSION_QUERIES_PER_BLOCK) as u32, 1, 1),
                    (WARP_FUSION_QUERIES_PER_BLOCK as u32 * 32, 1, 1),
                    0,
                    &mut params,
                )?;
            }
            return Ok(());
        }
        let mut params = [
            arg(&queries),
            arg(&users),
            arg(&offsets),
            arg(&members),
            arg(&alpha),
            arg(&dim_u),
            arg(&fused),
            arg(&half_ptr),
        ];
        // One thread per coordinate (up to 1024): a query's member rows are read in one
        // round of loads instead of dim / 128 dependent ones, which is the kernel's latency
        // at batch 1.
        let threads = dim.div_ceil(32).clamp(1, 32) as u32 * 32;
        // SAFETY: parameter list matches `fuse_queries`; every member row is < n_users.
        unsafe {
            cuda.launch(
                &cuda.kernels.fuse_queries,
                (n as u32, 1, 1),
                (threads, 1, 1),
                (dim * 4) as u32,
                &mut params,
            )?;
        }
        Ok(())
    }
}

impl CudaFusion {
    /// What the batch-1 similarity kernel needs to fuse a prepared batch of one query itself
    /// (GpuPath folds this stage into it: one launch fewer on the latency path); sizes
    /// `batch.fused`, which that kernel writes with this stage's arithmetic (the shared
    /// `fuse_one_warp`).
    pub(crate) fn fold_args(
        &self,
        cuda: &Cuda,
        batch: &mut Batch<Cuda>,
    ) -> Result<FoldedFusion, StageError> {
        let dim = batch.dim;
        let tables = self.tables.lock();
        if batch.len() != 1
            || tables.dim() != dim
            || batch.query_embeddings.len() != dim
            || !warp_fusion_fits(dim)
            || self.records.len() < 2
        {
            return Err(StageError::BatchShape {
                stage: "fusion",
                expected: format!("one prepared query of width {}", tables.dim()),
                found: format!(
                    "{} queries, {} values of width {dim}",
                    batch.len(),
                    batch.query_embeddings.len()
                ),
            });
        }
        cuda.ensure_len(&mut batch.fused, dim)?;
        Ok(FoldedFusion {
            query: batch.query_embeddings.device_ptr(),
            users: tables.users().device_ptr(),
            records: self.records.device_ptr(),
            alpha: self.alpha,
            fused: batch.fused.device_ptr(),
        })
    }

    /// Device addresses a captured graph of this stage bakes in.
    pub(crate) fn graph_key(&self) -> Vec<u64> {
        let tables = self.tables.lock();
        vec![
            self.records.device_ptr(),
            tables.users().device_ptr(),
            tables.generation(),
        ]
    }
}

/// Queries per block of `fuse_queries_warp` (one warp each).
const WARP_FUSION_QUERIES_PER_BLOCK: usize = 8;

/// Whether `fuse_queries_warp` takes rows of `dim`: whole 128-wide chunks (a lane's four
/// coordinates per chunk), at most 8 of them (its registers).
fn warp_fusion_fits(dim: usize) -> bool {
    dim > 0 && dim.is_multiple_of(128) && dim <= 1024
}

/// Pre-launch host step of fusion: each request's user row, companions and cold-start
/// note (`notes[q].{user, companions, cold_start}`), and the members with a profile whose
/// rows the kernel sums, as runs `members[offsets[q]..offsets[q + 1]]`.
#[doc(hidden)]
pub fn plan_members(
    users: &hyperrec_catalog::UserTable,
    requests: &[hyperrec_stage::Request],
    notes: &mut [hyperrec_stage::RequestNotes],
    offsets: &mut Vec<u32>,
    members: &mut Vec<u32>,
) {
    offsets.clear();
    members.clear();
    offsets.push(0);
    // Serial: with the user table's direct id lookup a request is a few array reads, and
    // the rayon pool's wake-ups and per-chunk buffers cost more than the plan itself (1000
    // requests: 39 us on the pool vs 23 us serial on the 2-core VM; the pool also paid off
    // badly on loaded hosts: 50-275 us on the H100's).
    let mut aggregate = Vec::new();
    for (notes, request) in notes.iter_mut().zip(requests) {
        plan_request(users, request, notes, members, &mut aggregate);
        offsets.push(members.len() as u32);
    }
}

/// One request of [`plan_members`]: its note, and its members with a profile appended to
/// `members`. `aggregate` is scratch for the cancellation check of groups.
fn plan_request(
    users: &hyperrec_catalog::UserTable,
    request: &hyperrec_stage::Request,
    notes: &mut hyperrec_stage::RequestNotes,
    members: &mut Vec<u32>,
    aggregate: &mut Vec<f32>,
) {
    notes.user = users.index_of(request.user);
    notes.companions.clear();
    for companion in &request.context.companions {
        if let Some(row) = users.index_of(*companion)
            && Some(row) != notes.user
            && !notes.companions.contains(&row)
        {
            notes.companions.push(row);
        }
    }
    let first = members.len();
    let group = notes
        .user
        .into_iter()
        .chain(notes.companions.iter().copied());
    for member in group {
        if users.embedding(member).is_some() {
            members.push(member);
        }
    }
    // Only groups of two or more with profiles need the sum (cancellation check).
    notes.cold_start = match &members[first..] {
        [] => true,
        // A profile is unit length: one member never cancels out.
        [_] => false,
        group => {
            aggregate.resize(users.dim(), 0.0);
            !aggregate_survives(users, group, aggregate)
        }
    };
}

/// Whether the normalized sum of the group's profiles exists (the sum does not vanish).
fn aggregate_survives(
    users: &hyperrec_catalog::UserTable,
    group: &[UserIndex],
    sum: &mut [f32],
) -> bool {
    sum.fill(0.0);
    for &member in group {
        if let Some(profile) = users.embedding(member) {
            for (s, p) in sum.iter_mut().zip(profile) {
                *s += p;
            }
        }
    }
    sum.iter().map(|x| x * x).sum::<f32>().sqrt() > 1e-6
}

impl Stage<Cuda> for CudaFusion {
    fn name(&self) -> &'static str {
        "fusion"
    }

    fn run(&mut self, device: &Cuda, batch: &mut Batch<Cuda>) -> Result<(), StageError> {
        self.prepare(device, batch)?;
        self.enqueue(device, batch)
    }

    fn observe(&mut self, device: &Cuda, event: &Event) -> Result<(), StageError> {
        let users = self.users.read();
        if let Some(user) = users.index_of(event.user) {
            self.tables.lock().sync_user(device, &users, user)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warp_kernel_takes_whole_chunks_up_to_1024() {
        for dim in [128, 384, 768, 1024] {
            assert!(warp_fusion_fits(dim), "{dim}");
        }
        for dim in [0, 32, 96, 200, 1152, 2048] {
            assert!(!warp_fusion_fits(dim), "{dim}");
        }
    }
}
