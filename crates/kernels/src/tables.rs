//! Device-resident copies of the catalog's tables: item embeddings, user profiles, recent
//! histories and seen sets, kept in step with the host [`UserTable`] by real-time events.

use std::sync::Arc;

use half::f16;
use parking_lot::Mutex;

use hyperrec_catalog::{ItemEmbeddings, UserTable};
use hyperrec_stage::UserIndex;

use crate::device::{Cuda, CudaBuffer};
use crate::quantized::quantize_rows;
use crate::similarity::score_row_stride;
use crate::{CudaError, MemoryReport};

/// Tables shared by the GPU stages of one pipeline.
pub type SharedTables = Arc<Mutex<DeviceTables>>;

/// Settings of the device tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TablesConfig {
    /// Most recent interactions kept per user for the rerank stage.
    pub history_len: usize,
    /// Users the tables have room for before they first grow (then capacity doubles).
    pub initial_user_capacity: usize,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            history_len: 50,
            initial_user_capacity: 1 << 16,
        }
    }
}

/// Marks an unused history slot.
pub const NO_ITEM: u32 = u32::MAX;

/// Device copies of item embeddings (fp16 `[n_items, dim]`) and of every user's profile
/// (fp16 `[capacity, dim]`, zero rows for users without one), recent history (item rows
/// and ratings, `[capacity, history_len]`, oldest first, unused slots [`NO_ITEM`]) and seen
/// set (sorted item rows in an arena, each user's run with room to grow).
///
/// fp16 halves the bytes the similarity GEMM streams and fits 10 million users (7.7 GB of
/// profiles) on one GPU; its rounding (relative 2^-11) is below what ranking can resolve.
pub struct DeviceTables {
    dim: usize,
    n_items: usize,
    history_len: usize,
    n_users: usize,
    user_capacity: usize,
    items: CudaBuffer<u16>,
    /// int8 copy of `items` (`[n_items, dim]`) and its per-row bounds (`[n_items, 4]`), for
    /// the batch-1 kernel's first pass (see [`crate::quantized`]).
    item_codes: CudaBuffer<u8>,
    item_bounds: CudaBuffer<f32>,
    users: CudaBuffer<u16>,
    history_items: CudaBuffer<u32>,
    history_ratings: CudaBuffer<f32>,
    seen_offsets: CudaBuffer<u32>,
    seen_lens: CudaBuffer<u32>,
    seen_items: CudaBuffer<u32>,
    /// Host mirror of each user's seen run: (offset, room).
    seen_runs: Vec<(u32, u32)>,
    seen_used: usize,
    /// History length of the host table when each user was last uploaded, so an event
    /// observed by several stages is uploaded once.
    synced_history: Vec<usize>,
    /// Bumped whenever a buffer moves (growth), so captured CUDA graphs know to re-capture.
    generation: u64,
}

impl DeviceTables {
    /// Uploads `items` and every user of `users`.
    pub fn new(
        cuda: &Cuda,
        items: &ItemEmbeddings,
        users: &UserTable,
        config: TablesConfig,
    ) -> Result<DeviceTables, CudaError> {
        let mut tables = DeviceTables::empty(cuda, items, config, users.len())?;
        for user in 0..users.len() {
            tables.upload_user(cuda, users, user as UserIndex)?;
        }
        Ok(tables)
    }

    /// Tables for `n_users` synthetic users whose profiles are pseudo-random unit rows made
    /// on the device (seeded by `seed`), each with `history_len` history items and as many
    /// seen items drawn from the catalog on the host. For benchmarks at millions of users.
    pub fn synthetic(
        cuda: &Cuda,
        items: &ItemEmbeddings,
        n_users: usize,
        config: TablesConfig,
        seed: u64,
    ) -> Result<DeviceTables, CudaError> {
        let mut tables = DeviceTables::empty(cuda, items, config, n_users)?;
        tables.n_users = n_users;
        cuda.fill_random_unit_rows(&mut tables.users, n_users, tables.dim, seed)?;
        let h = tables.history_len;
        let n_items = tables.n_items.max(1) as u64;
        // Histories and seen sets in chunks, so host memory stays small at 10M users.
        let chunk = 1 << 18;
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut ids = Vec::with_capacity(chunk * h);
        let mut ratings = Vec::with_capacity(chunk * h);
        let mut seen = Vec::with_capacity(chunk * h);
        let mut offsets = Vec::with_capacity(chunk);
        let mut lens = Vec::with_capacity(chunk);
        cuda.grow_keep(&mut tables.seen_items, n_users * h)?;
        for start in (0..n_users).step_by(chunk) {
            let end = (start + chunk).min(n_users);
            ids.clear();
            ratings.clear();
            seen.clear();
            offsets.clear();
            lens.clear();
            for user in start..end {
                let first = ids.len();
                for _ in 0..h {
                    ids.push((next() % n_items) as u32);
                    ratings.push(0.5 + (next() % 10) as f32 * 0.5);
                }
                // Exclusion only marks items; a seen run need not be sorted or unique.
                offsets.push((user * h) as u32);
                lens.push(h as u32);
                tables.seen_runs.push(((user * h) as u32, h as u32));
                seen.extend_from_slice(&ids[first..]);
                seen.resize(offsets.len() * h, NO_ITEM);
            }
            cuda.upload_at(&ids, &mut tables.history_items, start * h)?;
            cuda.upload_at(&ratings, &mut tables.history_ratings, start * h)?;
            cuda.upload_at(&seen, &mut tables.seen_items, start * h)?;
            cuda.upload_at(&offsets, &mut tables.seen_offsets, start)?;
            cuda.upload_at(&lens, &mut tables.seen_lens, start)?;
        }
        tables.seen_used = n_users * h;
        tables.synced_history = vec![usize::MAX; n_users];
        Ok(tables)
    }

    fn empty(
        cuda: &Cuda,
        items: &ItemEmbeddings,
        config: TablesConfig,
        n_users: usize,
    ) -> Result<DeviceTables, CudaError> {
        let dim = items.dim();
        // Rows padded with zeros to the score matrices' row stride, so the score GEMM's item
        // dimension is the stride itself.
        let mut half_items: Vec<u16> = items
            .as_slice()
            .iter()
            .map(|&x| f16::from_f32(x).to_bits())
            .collect();
        // The int8 copy the batch-1 kernel scores first, quantized from the fp16 values
        // the exact pass multiplies (its bounds are about those).
        let rounded: Vec<f32> = half_items
            .iter()
            .map(|&bits| f16::from_bits(bits).to_f32())
            .collect();
        let quantized = quantize_rows(&rounded, dim.max(1));
        half_items.resize(score_row_stride(items.len()) * dim, 0);
        let mut device_items = cuda.alloc::<u16>(half_items.len())?;
        cuda.upload_at(&half_items, &mut device_items, 0)?;
        let mut item_codes = cuda.alloc::<u8>(quantized.codes.len())?;
        cuda.upload_at(&quantized.codes, &mut item_codes, 0)?;
        let mut item_bounds = cuda.alloc::<f32>(quantized.bounds.len())?;
        cuda.upload_at(&quantized.bounds, &mut item_bounds, 0)?;
        let capacity = config.initial_user_capacity.max(n_users).max(1);
        let h = config.history_len;
        let mut tables = DeviceTables {
            dim,
            n_items: items.len(),
            history_len: h,
            n_users: 0,
            user_capacity: capacity,
            items: device_items,
            item_codes,
            item_bounds,
            users: cuda.alloc(capacity * dim)?,
            history_items: cuda.alloc(capacity * h)?,
            history_ratings: cuda.alloc(capacity * h)?,
            seen_offsets: cuda.alloc(capacity)?,
            seen_lens: cuda.alloc(capacity)?,
            seen_items: cuda.alloc(0)?,
            seen_runs: Vec::with_capacity(n_users),
            seen_used: 0,
            synced_history: Vec::with_capacity(n_users),
            generation: 0,
        };
        cuda.memset_zero(&mut tables.users)?;
        cuda.memset_zero(&mut tables.seen_lens)?;
        Ok(tables)
    }

    /// Brings `user`'s device rows in line with the host table (profile, recent history,
    /// seen set), adding the user when new. Cheap when nothing changed since the last call,
    /// so every stage may call it from `observe`.
    pub fn sync_user(
        &mut self,
        cuda: &Cuda,
        users: &UserTable,
        user: UserIndex,
    ) -> Result<(), CudaError> {
        let u = user as usize;
        if u < self.n_users && self.synced_history.get(u) == Some(&users.history(user).len()) {
            return Ok(());
        }
        while self.n_users < u {
            // Users created by events for other rows in between (never seen by this stage).
            let missing = self.n_users as UserIndex;
            self.upload_user(cuda, users, missing)?;
        }
        self.upload_user(cuda, users, user)
    }

    fn upload_user(
        &mut self,
        cuda: &Cuda,
        users: &UserTable,
        user: UserIndex,
    ) -> Result<(), CudaError> {
        let u = user as usize;
        if u >= self.user_capacity {
            self.grow_users(cuda, (u + 1).max(self.user_capacity * 2))?;
        }
        let dim = self.dim;
        let row: Vec<u16> = match users.embedding(user) {
            Some(profile) => profile
                .iter()
                .map(|&x| f16::from_f32(x).to_bits())
                .collect(),
            None => vec![0; dim],
        };
        cuda.upload_at(&row, &mut self.users, u * dim)?;

        let h = self.history_len;
        let recent = users.recent(user, h);
        let mut ids = vec![NO_ITEM; h];
        let mut ratings = vec![0.0f32; h];
        for (slot, entry) in recent.iter().enumerate() {
            ids[slot] = entry.item;
            ratings[slot] = entry.rating;
        }
        cuda.upload_at(&ids, &mut self.history_items, u * h)?;
        cuda.upload_at(&ratings, &mut self.history_ratings, u * h)?;

        let seen = users.seen(user);
        let len = seen.len() as u32;
        if u >= self.seen_runs.len() {
            self.seen_runs.resize(u + 1, (0, 0));
        }
        let (mut offset, room) = self.seen_runs[u];
        if len > room {
            // Move the run to the end of the arena with room to double.
            let room = len.next_power_of_two().max(16);
            offset = self.seen_used as u32;
            self.seen_used += room as usize;
            if self.seen_used > self.seen_items.len() {
                let before = self.seen_items.device_ptr();
                cuda.grow_keep(&mut self.seen_items, self.seen_used)?;
                if self.seen_items.device_ptr() != before {
                    self.generation += 1;
                }
            }
            self.seen_runs[u] = (offset, room);
        }
        cuda.upload_at(seen, &mut self.seen_items, offset as usize)?;
        cuda.upload_at(&[offset], &mut self.seen_offsets, u)?;
        cuda.upload_at(&[len], &mut self.seen_lens, u)?;

        if u >= self.synced_history.len() {
            self.synced_history.resize(u + 1, usize::MAX);
        }
        self.synced_history[u] = users.history(user).len();
        self.n_users = self.n_users.max(u + 1);
        Ok(())
    }

    fn grow_users(&mut self, cuda: &Cuda, capacity: usize) -> Result<(), CudaError> {
        let (dim, h) = (self.dim, self.history_len);
        cuda.grow_keep(&mut self.users, capacity * dim)?;
        cuda.grow_keep(&mut self.history_items, capacity * h)?;
        cuda.grow_keep(&mut self.history_ratings, capacity * h)?;
        cuda.grow_keep(&mut self.seen_offsets, capacity)?;
        cuda.grow_keep(&mut self.seen_lens, capacity)?;
        self.user_capacity = capacity;
        self.generation += 1;
        Ok(())
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn n_items(&self) -> usize {
        self.n_items
    }

    pub fn n_users(&self) -> usize {
        self.n_users
    }

    pub fn history_len(&self) -> usize {
        self.history_len
    }

    /// Changes whenever a table moved in device memory (captured graphs must re-capture).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn items(&self) -> &CudaBuffer<u16> {
        &self.items
    }

    /// The int8 item codes and their per-row bounds (see [`crate::quantized`]).
    pub fn item_codes(&self) -> (&CudaBuffer<u8>, &CudaBuffer<f32>) {
        (&self.item_codes, &self.item_bounds)
    }

    pub fn users(&self) -> &CudaBuffer<u16> {
        &self.users
    }

    pub(crate) fn history_items(&self) -> &CudaBuffer<u32> {
        &self.history_items
    }

    pub(crate) fn history_ratings(&self) -> &CudaBuffer<f32> {
        &self.history_ratings
    }

    pub(crate) fn seen(&self) -> (&CudaBuffer<u32>, &CudaBuffer<u32>, &CudaBuffer<u32>) {
        (&self.seen_offsets, &self.seen_lens, &self.seen_items)
    }

    /// Device bytes held, by component.
    pub fn memory_report(&self) -> MemoryReport {
        MemoryReport {
            items: self.items.allocated_bytes()
                + self.item_codes.allocated_bytes()
                + self.item_bounds.allocated_bytes(),
            users: self.users.allocated_bytes(),
            histories: self.history_items.allocated_bytes()
                + self.history_ratings.allocated_bytes()
                + self.seen_offsets.allocated_bytes()
                + self.seen_lens.allocated_bytes()
                + self.seen_items.allocated_bytes(),
            ..MemoryReport::default()
        }
    }
}
