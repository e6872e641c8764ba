//! The CUDA device: one context, one stream, the kernel modules and (when the library is
//! present) a cuBLAS handle. Implements [`hyperrec_stage::Device`].

use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cudarc::cublas::sys as blas_sys;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, result, sys};
use cudarc::nvrtc::Ptx;

use hyperrec_stage::{Device, DeviceError, DeviceKind, Element};

use crate::CudaError;
use crate::ptx::MODULES;
use crate::similarity_batch::{LT_WORKSPACE_BYTES, LtGemm};

/// An owned device allocation of `len` elements of `T` (capacity may be larger).
///
/// A raw allocation rather than a `cudarc::CudaSlice`: stages pass its address to kernels
/// and CUDA graphs, so it must not carry per-use event bookkeeping.
pub struct CudaBuffer<T: Element> {
    ptr: sys::CUdeviceptr,
    len: usize,
    capacity: usize,
    ctx: Arc<CudaContext>,
    _element: PhantomData<T>,
}

impl<T: Element> CudaBuffer<T> {
    /// Device address of the first element (0 for an empty, never allocated buffer).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Device address of element `at`.
    pub fn ptr_at(&self, at: usize) -> u64 {
        self.ptr + (at * size_of::<T>()) as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated on the device (capacity, not length).
    pub fn allocated_bytes(&self) -> usize {
        self.capacity * size_of::<T>()
    }
}

impl<T: Element> Drop for CudaBuffer<T> {
    fn drop(&mut self) {
        if self.capacity > 0 && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once. cuMemFree
            // waits for work using it to finish.
            unsafe {
                let _ = result::free_sync(self.ptr);
            }
        }
    }
}

impl<T: Element> std::fmt::Debug for CudaBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaBuffer<{}>[{}]",
            std::any::type_name::<T>(),
            self.len
        )
    }
}

/// A stage's per-batch records (user rows, member runs, packed rerank records): planned on
/// the host, then on the device either in the stage's own buffer (one upload by the stage,
/// when it runs alone) or in a range of the path's shared arena (`GpuPath` uploads every
/// stage's records in one copy: at batch 1 each upload call was a visible share of the host
/// step). Kernels read them through [`StageRecords::ptr_at`].
pub(crate) struct StageRecords {
    host: Vec<u32>,
    own: CudaBuffer<u32>,
    /// Device address of the records in the path's arena, when placed there.
    placed: Option<u64>,
}

impl StageRecords {
    pub(crate) fn new(cuda: &Cuda) -> Result<StageRecords, CudaError> {
        Ok(StageRecords {
            host: Vec::new(),
            own: cuda.alloc(0)?,
            placed: None,
        })
    }

    /// The host records to plan into (cleared by the caller as needed).
    pub(crate) fn host_mut(&mut self) -> &mut Vec<u32> {
        &mut self.host
    }

    pub(crate) fn host(&self) -> &[u32] {
        &self.host
    }

    /// Uploads the planned records into the stage's own buffer (at least `room` words, so
    /// a later batch of the same shape keeps its address) and reads them from there.
    pub(crate) fn upload_own(&mut self, cuda: &Cuda, room: usize) -> Result<(), CudaError> {
        cuda.ensure_len(&mut self.own, room.max(self.host.len()))?;
        cuda.upload_at(&self.host, &mut self.own, 0)?;
        self.placed = None;
        Ok(())
    }

    /// Reads the records from `ptr` (the caller uploaded them there).
    pub(crate) fn place(&mut self, ptr: u64) {
        self.placed = Some(ptr);
    }

    /// Device address of word `i`.
    pub(crate) fn ptr_at(&self, i: usize) -> u64 {
        match self.placed {
            Some(ptr) => ptr + (i * size_of::<u32>()) as u64,
            None => self.own.ptr_at(i),
        }
    }

    pub(crate) fn device_ptr(&self) -> u64 {
        self.ptr_at(0)
    }

    /// Planned words.
    pub(crate) fn len(&self) -> usize {
        self.host.len()
    }

    pub(crate) fn allocated_bytes(&self) -> usize {
        self.own.allocated_bytes()
    }
}

/// A point on the stream's timeline (a CUDA event with timing enabled).
pub struct CudaMark(CudaEvent);

impl CudaMark {
    /// Blocks the host until the device has passed this mark: how a caller keeps a bounded
    /// number of batches in flight (the host step of the next batch overlaps the device work
    /// of the previous ones).
    pub fn wait(&self) -> Result<(), CudaError> {
        self.0.synchronize().map_err(CudaError::from)
    }
}

/// Per-thread stack the context starts with. The driver reserves the stack for every thread
/// the device can hold at once (2048 per SM: 270K on the H100), so its default of 1 KB is
/// 256 MiB of device memory, where the largest stack frame of the kernels here is 8 bytes
/// (`rerank_fused`, `ptxas -v`). A launch that needs more grows the limit (and keeps it), so this is a
/// floor, not a cap: cuBLAS's kernels get what they need.
const INITIAL_STACK_BYTES: usize = 32;

/// Every kernel the stages launch, loaded once from the committed PTX.
pub(crate) struct Kernels {
    _modules: Vec<Arc<CudaModule>>,
    pub fuse_queries: CudaFunction,
    pub fuse_queries_warp: CudaFunction,
    pub f32_to_f16: CudaFunction,
    pub random_unit_rows: CudaFunction,
    pub item_scores_small: CudaFunction,
    pub item_scores_one: CudaFunction,
    pub similarity_top_k_one: CudaFunction,
    pub similarity_top_k_one_int8: CudaFunction,
    pub topk_rows: CudaFunction,
    pub topk_filter: CudaFunction,
    pub topk_filter_wide: CudaFunction,
    pub topk_filter_batch: CudaFunction,
    pub rerank_attend: CudaFunction,
    pub rerank_attend_async: CudaFunction,
    pub rerank_select: CudaFunction,
    pub rerank_fused: CudaFunction,
    pub rerank_fused_cluster: CudaFunction,
    pub gather_rows: CudaFunction,
    pub quantize_rows: CudaFunction,
    pub mask_diagonal: CudaFunction,
    pub cache_prior: CudaFunction,
    pub dequantize_row: CudaFunction,
    pub combine_rows: CudaFunction,
    pub add_vectors: CudaFunction,
}

/// Directories where CUDA toolkits put their libraries, most specific first. cuBLAS is often
/// installed there but not on the loader's default path (the device image has it only under
/// `/usr/local/cuda-13.0/targets/x86_64-linux/lib`).
fn cuda_library_dirs() -> Vec<std::path::PathBuf> {
    use std::path::PathBuf;
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(root) = std::env::var_os(var) {
            let root = PathBuf::from(root);
            dirs.push(root.join("lib64"));
            dirs.push(root.join("targets/x86_64-linux/lib"));
            dirs.push(root.join("lib"));
        }
    }
    for root in [
        "/usr/local/cuda",
        "/usr/local/cuda-13.0",
        "/usr/local/cuda-13",
    ] {
        let root = PathBuf::from(root);
        dirs.push(root.join("lib64"));
        dirs.push(root.join("targets/x86_64-linux/lib"));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/local") {
        let mut versioned: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("cuda-"))
            })
            .collect();
        // Newest toolkit first.
        versioned.sort();
        versioned.reverse();
        for root in versioned {
            dirs.push(root.join("targets/x86_64-linux/lib"));
            dirs.push(root.join("lib64"));
        }
    }
    dirs
}

/// Loads cuBLAS (and cuBLASLt, which it needs) by full path from the usual toolkit
/// directories and keeps them loaded, once per process. cudarc opens libraries by soname
/// (`libcublas.so.13`); the dynamic loader answers a soname that an already-loaded library
/// carries with that library, so after this cudarc finds cuBLAS without `LD_LIBRARY_PATH`.
/// Does nothing where the loader already finds it.
fn preload_cuda_libraries() {
    use std::sync::OnceLock;
    static LOADED: OnceLock<Vec<libloading::Library>> = OnceLock::new();
    LOADED.get_or_init(|| {
        // SAFETY: probing whether the loader finds the library by name; loading cuBLAS runs
        // only its own initializers.
        if unsafe { libloading::Library::new("libcublas.so.13") }.is_ok() {
            return Vec::new();
        }
        for dir in cuda_library_dirs() {
            let (lt, blas) = (dir.join("libcublasLt.so.13"), dir.join("libcublas.so.13"));
            if !blas.is_file() {
                continue;
            }
            let mut kept = Vec::new();
            // SAFETY: as above; cuBLASLt first so cuBLAS's dependency resolves to it.
            if let Ok(lib) = unsafe { libloading::Library::new(&lt) } {
                kept.push(lib);
            }
            if let Ok(lib) = unsafe { libloading::Library::new(&blas) } {
                kept.push(lib);
                return kept;
            }
        }
        Vec::new()
    });
}

/// Dynamic shared memory the top-K kernel may use (the H100's per-block maximum).
pub(crate) const TOPK_MAX_SHARED_BYTES: usize = 227 * 1024;
/// Dynamic shared memory the rerank kernel may use.
pub(crate) const RERANK_MAX_SHARED_BYTES: usize = 200 * 1024;
/// Dynamic shared memory `rerank_fused` may use (the H100's per-block maximum).
pub(crate) const RERANK_FUSED_MAX_SHARED_BYTES: usize = 227 * 1024;

impl Kernels {
    fn load(ctx: &Arc<CudaContext>) -> Result<Kernels, CudaError> {
        let mut modules = Vec::new();
        for module in MODULES {
            let loaded =
                ctx.load_module(Ptx::from_src(module.ptx))
                    .map_err(|e| CudaError::Module {
                        module: module.name,
                        message: e.to_string(),
                    })?;
            modules.push((module.name, loaded));
        }
        let function = |module: &'static str, name: &'static str| {
            let (_, loaded) =
                modules
                    .iter()
                    .find(|(m, _)| *m == module)
                    .ok_or(CudaError::Module {
                        module,
                        message: "not embedded".into(),
                    })?;
            loaded.load_function(name).map_err(|e| CudaError::Module {
                module,
                message: format!("{name}: {e}"),
            })
        };
        let kernels = Kernels {
            fuse_queries: function("fusion", "fuse_queries")?,
            fuse_queries_warp: function("fusion", "fuse_queries_warp")?,
            f32_to_f16: function("fusion", "f32_to_f16")?,
            random_unit_rows: function("fusion", "random_unit_rows")?,
            item_scores_small: function("scores", "item_scores_small")?,
            item_scores_one: function("scores", "item_scores_one")?,
            similarity_top_k_one: function("similarity_one", "similarity_top_k_one")?,
            similarity_top_k_one_int8: function("similarity_one", "similarity_top_k_one_int8")?,
            topk_rows: function("topk", "topk_rows")?,
            topk_filter: function("topk", "topk_filter")?,
            topk_filter_wide: function("topk", "topk_filter_wide")?,
            topk_filter_batch: function("topk", "topk_filter_batch")?,
            rerank_attend: function("rerank", "rerank_attend")?,
            rerank_attend_async: function("rerank", "rerank_attend_async")?,
            rerank_select: function("rerank", "rerank_select")?,
            rerank_fused: function("rerank", "rerank_fused")?,
            rerank_fused_cluster: function("rerank", "rerank_fused_cluster")?,
            gather_rows: function("cache", "gather_rows")?,
            quantize_rows: function("cache", "quantize_rows")?,
            mask_diagonal: function("cache", "mask_diagonal")?,
            cache_prior: function("cache", "cache_prior")?,
            dequantize_row: function("cache", "dequantize_row")?,
            combine_rows: function("cache", "combine_rows")?,
            add_vectors: function("cache", "add_vectors")?,
            _modules: modules.into_iter().map(|(_, m)| m).collect(),
        };
        for (kernel, bytes) in [
            (&kernels.topk_rows, TOPK_MAX_SHARED_BYTES),
            (&kernels.topk_filter, TOPK_MAX_SHARED_BYTES),
            (&kernels.topk_filter_wide, TOPK_MAX_SHARED_BYTES),
            (&kernels.topk_filter_batch, TOPK_MAX_SHARED_BYTES),
            (&kernels.rerank_attend, RERANK_MAX_SHARED_BYTES),
            (&kernels.rerank_attend_async, RERANK_MAX_SHARED_BYTES),
            (&kernels.rerank_fused, RERANK_FUSED_MAX_SHARED_BYTES),
            (&kernels.rerank_fused_cluster, RERANK_FUSED_MAX_SHARED_BYTES),
        ] {
            kernel
                .set_attribute(
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
                .map_err(CudaError::from)?;
        }
        Ok(kernels)
    }
}

/// A cuBLAS handle bound to the device's stream, with a fixed workspace so GEMMs can be
/// captured into CUDA graphs (cuBLAS may not allocate during capture), and the cuBLASLt
/// GEMM of the similarity stage's large batches (its own handle and workspace: the cache's
/// rebuild moves the cuBLAS handle to its side stream while it runs).
pub(crate) struct Blas {
    handle: blas_sys::cublasHandle_t,
    _workspace: CudaBuffer<u8>,
    /// `None` where cuBLASLt does not open; `cublasGemmEx` then runs every GEMM.
    pub(crate) lt: Option<LtGemm>,
}

// SAFETY: the handle is only used through `&Cuda` on the device's one stream; cuBLAS handles
// may be used from any thread as long as calls are not concurrent, which the stages'
// `&mut self` runs guarantee for a pipeline.
unsafe impl Send for Blas {}
// SAFETY: as above.
unsafe impl Sync for Blas {}

impl Blas {
    pub(crate) fn handle(&self) -> blas_sys::cublasHandle_t {
        self.handle
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate, destroyed once.
        unsafe {
            let _ = cudarc::cublas::result::destroy_handle(self.handle);
        }
    }
}

const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// A CUDA GPU: the [`Device`] GPU stages run on.
///
/// Work is enqueued on one stream; nothing synchronizes the host except
/// [`Device::download`] and [`Device::synchronize`].
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pub(crate) kernels: Kernels,
    pub(crate) blas: Option<Blas>,
    ordinal: usize,
    name: String,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cuda({}: {})", self.ordinal, self.name)
    }
}

impl Cuda {
    /// Whether a CUDA driver and at least one GPU are present. Never panics.
    pub fn is_available() -> bool {
        Cuda::device_count().is_ok_and(|count| count > 0)
    }

    /// Number of CUDA devices, or why there are none usable.
    pub fn device_count() -> Result<usize, CudaError> {
        preload_cuda_libraries();
        // SAFETY: only probes for the shared library; cudarc panics on a missing driver
        // library, so nothing else may be called before this succeeds.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(CudaError::from)?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Opens device `ordinal`: context, stream, kernels (from the committed PTX) and cuBLAS
    /// when its library is found (the similarity stage falls back to its own kernel
    /// otherwise). Fails cleanly without a driver or GPU.
    pub fn new(ordinal: usize) -> Result<Cuda, CudaError> {
        let count = Cuda::device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(CudaError::from)?;
        // Queries get the highest priority, so the blocks of a cache rebuild on a side
        // stream (lowest priority) yield the SMs to them.
        ctx.bind_to_thread().map_err(CudaError::from)?;
        let (_, greatest) = result::stream::get_priority_range().unwrap_or((0, 0));
        let stream = ctx
            .new_stream_with_priority(greatest)
            .map_err(CudaError::from)?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let kernels = Kernels::load(&ctx)?;
        let mut cuda = Cuda {
            ctx,
            stream,
            kernels,
            blas: None,
            ordinal,
            name,
        };
        cuda.set_stack_limit(INITIAL_STACK_BYTES)?;
        cuda.blas = cuda.open_blas()?;
        Ok(cuda)
    }

    /// The context's per-thread stack size (bytes): the driver reserves it for every thread
    /// the device can hold at once, so it is a fixed share of the device memory in use.
    #[doc(hidden)]
    pub fn stack_limit(&self) -> Result<usize, CudaError> {
        self.bind()?;
        let mut bytes = 0usize;
        // SAFETY: a plain query of the bound context.
        unsafe { sys::cuCtxGetLimit(&mut bytes, sys::CUlimit::CU_LIMIT_STACK_SIZE) }
            .result()
            .map_err(CudaError::from)?;
        Ok(bytes)
    }

    /// Sets the per-thread stack size (bytes) the driver reserves (see
    /// [`Cuda::stack_limit`]).
    #[doc(hidden)]
    pub fn set_stack_limit(&self, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: a plain setting of the bound context; the driver synchronizes it.
        unsafe { sys::cuCtxSetLimit(sys::CUlimit::CU_LIMIT_STACK_SIZE, bytes) }
            .result()
            .map_err(CudaError::from)
    }

    fn open_blas(&self) -> Result<Option<Blas>, CudaError> {
        // SAFETY: probe only (see `device_count`).
        if !unsafe { blas_sys::is_culib_present() } {
            return Ok(None);
        }
        self.bind()?;
        let workspace = self.alloc::<u8>(BLAS_WORKSPACE_BYTES)?;
        let handle = cudarc::cublas::result::create_handle().map_err(CudaError::blas)?;
        let lt = LtGemm::open(self.alloc::<u8>(LT_WORKSPACE_BYTES)?);
        let blas = Blas {
            handle,
            _workspace: workspace,
            lt,
        };
        // SAFETY: valid handle, stream and workspace of this context.
        unsafe {
            cudarc::cublas::result::set_stream(blas.handle, self.stream.cu_stream() as _)
                .map_err(CudaError::blas)?;
            blas_sys::cublasSetWorkspace_v2(
                blas.handle,
                blas._workspace.device_ptr() as *mut c_void,
                BLAS_WORKSPACE_BYTES,
            )
            .result()
            .map_err(CudaError::blas)?;
        }
        Ok(Some(blas))
    }

    /// The GPU's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Whether similarity runs on cuBLAS (otherwise on the crate's own kernel).
    pub fn has_cublas(&self) -> bool {
        self.blas.is_some()
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize), CudaError> {
        self.ctx.mem_get_info().map_err(CudaError::from)
    }

    pub(crate) fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(CudaError::from)
    }

    pub(crate) fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// The stream every stage enqueues on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A second (non-blocking) stream of this context, for work that must not delay the
    /// main stream (cache rebuilds).
    pub(crate) fn new_side_stream(&self) -> Result<Arc<CudaStream>, CudaError> {
        self.bind()?;
        let (least, _) = result::stream::get_priority_range().unwrap_or((0, 0));
        self.ctx
            .new_stream_with_priority(least)
            .map_err(CudaError::from)
    }

    /// An event with timing disabled, recorded on `stream`.
    pub(crate) fn record_on(&self, stream: &CudaStream) -> Result<CudaEvent, CudaError> {
        stream.record_event(None).map_err(CudaError::from)
    }

    /// Enqueues a copy of `host` to `buffer[at..]` on `stream` (pageable memory: the driver
    /// stages it before returning).
    pub(crate) fn upload_at_on<T: Element>(
        &self,
        stream: &CudaStream,
        host: &[T],
        buffer: &mut CudaBuffer<T>,
        at: usize,
    ) -> Result<(), CudaError> {
        if at + host.len() > buffer.len {
            return Err(CudaError::OutOfBounds {
                end: at + host.len(),
                len: buffer.len,
            });
        }
        if host.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: bounds checked above.
        unsafe { result::memcpy_htod_async(buffer.ptr_at(at), host, stream.cu_stream()) }
            .map_err(CudaError::from)
    }

    /// Copies `buffer[at..at + host.len()]` to `host` after all work of `stream` so far
    /// (synchronizes `stream`).
    pub(crate) fn download_at_on<T: Element>(
        &self,
        stream: &CudaStream,
        buffer: &CudaBuffer<T>,
        at: usize,
        host: &mut [T],
    ) -> Result<(), CudaError> {
        if at + host.len() > buffer.len {
            return Err(CudaError::OutOfBounds {
                end: at + host.len(),
                len: buffer.len,
            });
        }
        if host.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: bounds checked above; the stream is synchronized before `host` is read.
        unsafe {
            result::memcpy_dtoh_async(host, buffer.ptr_at(at), stream.cu_stream())
                .map_err(CudaError::from)?;
        }
        stream.synchronize().map_err(CudaError::from)
    }

    /// An uninitialized buffer of `len` elements.
    pub(crate) fn alloc<T: Element>(&self, len: usize) -> Result<CudaBuffer<T>, CudaError> {
        let bytes = len * size_of::<T>();
        let ptr = if bytes == 0 {
            0
        } else {
            self.bind()?;
            // SAFETY: plain device allocation in the bound context.
            unsafe { result::malloc_sync(bytes) }.map_err(|e| match e.0 {
                sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => CudaError::OutOfMemory { bytes },
                _ => CudaError::from(e),
            })?
        };
        Ok(CudaBuffer {
            ptr,
            len,
            capacity: len,
            ctx: self.ctx.clone(),
            _element: PhantomData,
        })
    }

    /// Enqueues `buffer[..] = 0`.
    pub(crate) fn memset_zero<T: Element>(
        &self,
        buffer: &mut CudaBuffer<T>,
    ) -> Result<(), CudaError> {
        if buffer.len == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the range lies inside the allocation.
        unsafe {
            result::memset_d8_async(buffer.ptr, 0, buffer.len * size_of::<T>(), self.cu_stream())
        }
        .map_err(CudaError::from)
    }

    /// Enqueues a copy of `host` to `buffer[at..at + host.len()]`.
    pub(crate) fn upload_at<T: Element>(
        &self,
        host: &[T],
        buffer: &mut CudaBuffer<T>,
        at: usize,
    ) -> Result<(), CudaError> {
        if at + host.len() > buffer.len {
            return Err(CudaError::OutOfBounds {
                end: at + host.len(),
                len: buffer.len,
            });
        }
        if host.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: bounds checked above; pageable host memory is staged by the driver before
        // the call returns, so `host` may be dropped afterwards.
        unsafe { result::memcpy_htod_async(buffer.ptr_at(at), host, self.cu_stream()) }
            .map_err(CudaError::from)
    }

    /// Enqueues `dst[..len] = src[..len]` (device to device).
    pub(crate) fn copy<T: Element>(
        &self,
        src: &CudaBuffer<T>,
        dst: &mut CudaBuffer<T>,
        len: usize,
    ) -> Result<(), CudaError> {
        if len > src.len || len > dst.len {
            return Err(CudaError::OutOfBounds {
                end: len,
                len: src.len.min(dst.len),
            });
        }
        if len == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges lie inside their allocations.
        unsafe {
            result::memcpy_dtod_async(dst.ptr, src.ptr, len * size_of::<T>(), self.cu_stream())
        }
        .map_err(CudaError::from)
    }

    /// Makes `buffer` hold `len` elements, reallocating (contents lost) only when it must.
    pub(crate) fn ensure_len<T: Element>(
        &self,
        buffer: &mut CudaBuffer<T>,
        len: usize,
    ) -> Result<(), CudaError> {
        if len > buffer.capacity {
            *buffer = self.alloc(len)?;
        }
        buffer.len = len;
        Ok(())
    }

    /// Grows `buffer` to at least `len` elements keeping its contents; capacity doubles so
    /// repeated growth is amortized.
    pub(crate) fn grow_keep<T: Element>(
        &self,
        buffer: &mut CudaBuffer<T>,
        len: usize,
    ) -> Result<(), CudaError> {
        if len <= buffer.capacity {
            buffer.len = buffer.len.max(len);
            return Ok(());
        }
        let capacity = len.max(buffer.capacity * 2);
        let mut grown = self.alloc::<T>(capacity)?;
        let keep = buffer.len;
        grown.len = keep;
        self.copy(buffer, &mut grown, keep)?;
        grown.len = len;
        *buffer = grown;
        Ok(())
    }

    /// The whole of `buffer` after all work of the stream so far (synchronizes it); empty
    /// for `None`. For measurement harnesses reading phase marks.
    pub(crate) fn download_words(
        &self,
        buffer: Option<&CudaBuffer<u32>>,
    ) -> Result<Vec<u32>, CudaError> {
        let mut words = Vec::new();
        if let Some(buffer) = buffer {
            words.resize(buffer.len, 0);
            self.download_at_on(&self.stream, buffer, 0, &mut words)?;
        }
        Ok(words)
    }

    /// Launches `function` on the device's stream.
    ///
    /// # Safety
    /// `params` must point at values whose types and order match the kernel's parameters,
    /// and every device address among them must be valid for what the kernel accesses.
    pub(crate) unsafe fn launch(
        &self,
        function: &CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.launch_on(&self.stream, function, grid, block, shared_bytes, params) }
    }

    /// [`Cuda::launch`] as a programmatic dependent launch (Hopper's PDL): the kernel may
    /// start while the previous kernel on the stream still runs (once every block of that
    /// one has started and triggered, or exited), so its prologue overlaps that kernel's
    /// tail. The kernel must execute `griddepcontrol.wait` before it reads anything the
    /// previous kernel writes; the wait returns once that kernel has completed and its
    /// writes are visible. Stream capture keeps the overlap as a programmatic graph edge.
    ///
    /// # Safety
    /// As [`Cuda::launch`], and before its `griddepcontrol.wait` the kernel reads only
    /// memory that no kernel still running on the stream writes.
    pub(crate) unsafe fn launch_dependent(
        &self,
        function: &CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: a zeroed attribute value is valid for every variant (plain integers);
        // the one set here is the flag that allows the overlap.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id =
            sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block.0,
            blockDimY: block.1,
            blockDimZ: block.2,
            sharedMemBytes: shared_bytes,
            hStream: self.cu_stream(),
            attrs: &mut attribute,
            numAttrs: 1,
        };
        // SAFETY: `config` and `attribute` outlive the call; the rest is the caller's.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                function.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(CudaError::from)
    }

    /// [`Cuda::launch`] on another stream of this context.
    ///
    /// # Safety
    /// As [`Cuda::launch`].
    pub(crate) unsafe fn launch_on(
        &self,
        stream: &CudaStream,
        function: &CudaFunction,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: forwarded to the caller.
        unsafe {
            result::launch_kernel(
                function.cu_function(),
                grid,
                block,
                shared_bytes,
                stream.cu_stream(),
                params,
            )
        }
        .map_err(CudaError::from)
    }

    /// Fills `out` (`[rows, dim]` fp16) with pseudo-random unit rows derived from `seed`,
    /// on the device. Used by benchmarks to build large user tables quickly.
    pub fn fill_random_unit_rows(
        &self,
        out: &mut CudaBuffer<u16>,
        rows: usize,
        dim: usize,
        seed: u64,
    ) -> Result<(), CudaError> {
        if rows * dim > out.len() {
            return Err(CudaError::OutOfBounds {
                end: rows * dim,
                len: out.len(),
            });
        }
        let (ptr, rows_u, dim_u) = (out.device_ptr(), rows as u64, dim as u32);
        let mut params = [arg(&ptr), arg(&rows_u), arg(&dim_u), arg(&seed)];
        // SAFETY: `out` holds rows * dim halves.
        unsafe {
            self.launch(
                &self.kernels.random_unit_rows,
                (rows.div_ceil(8).clamp(1, 65535 * 64) as u32, 1, 1),
                (256, 1, 1),
                0,
                &mut params,
            )
        }
    }
}

/// A kernel parameter: the address of a host value the launch copies.
pub(crate) fn arg<T>(value: &T) -> *mut c_void {
    value as *const T as *mut c_void
}

impl Device for Cuda {
    type Buffer<T: Element> = CudaBuffer<T>;
    type Mark = CudaMark;

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cuda {
            ordinal: self.ordinal,
        }
    }

    fn zeros<T: Element>(&self, len: usize) -> Result<CudaBuffer<T>, DeviceError> {
        let mut buffer = self.alloc(len)?;
        self.memset_zero(&mut buffer)?;
        Ok(buffer)
    }

    fn len<T: Element>(&self, buffer: &CudaBuffer<T>) -> usize {
        buffer.len
    }

    fn resize<T: Element>(
        &self,
        buffer: &mut CudaBuffer<T>,
        len: usize,
    ) -> Result<(), DeviceError> {
        Ok(self.ensure_len(buffer, len)?)
    }

    fn upload<T: Element>(
        &self,
        host: &[T],
        buffer: &mut CudaBuffer<T>,
    ) -> Result<(), DeviceError> {
        if host.len() != buffer.len {
            return Err(DeviceError::SizeMismatch {
                len: host.len(),
                capacity: buffer.len,
            });
        }
        Ok(self.upload_at(host, buffer, 0)?)
    }

    fn download<T: Element>(
        &self,
        buffer: &CudaBuffer<T>,
        host: &mut Vec<T>,
    ) -> Result<(), DeviceError> {
        host.clear();
        host.resize(buffer.len, T::default());
        if buffer.len > 0 {
            self.bind()?;
            // SAFETY: `host` holds exactly `len` elements; the stream is synchronized before
            // `host` is read.
            unsafe { result::memcpy_dtoh_async(host.as_mut_slice(), buffer.ptr, self.cu_stream()) }
                .map_err(CudaError::from)?;
        }
        self.synchronize()
    }

    fn mark(&self) -> Result<CudaMark, DeviceError> {
        let event = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(CudaError::from)?;
        event.record(&self.stream).map_err(CudaError::from)?;
        Ok(CudaMark(event))
    }

    fn elapsed(&self, start: &CudaMark, end: &CudaMark) -> Result<Duration, DeviceError> {
        let ms = start.0.elapsed_ms(&end.0).map_err(CudaError::from)?;
        Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        self.stream.synchronize().map_err(CudaError::from)?;
        Ok(())
    }
}
