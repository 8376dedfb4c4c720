//! The CUDA backend (feature `cuda`): the hand-written kernels of `kernels/`, compiled at run time
//! by NVRTC for the device's architecture and driven through cudarc.
//!
//! Runtime shape: one [`Device`] per ordinal per process (context, one stream, module cache,
//! memory pool), shared by every [`CudaBackend`] opened on it, so compiling happens once per
//! family per process and freed buffers are reused by later ops. All work goes to the one
//! stream in order, so cudarc's per-buffer event tracking is switched off.
//!
//! cudarc panics on its first call when libcuda or libnvrtc is missing; [`CudaBackend::new`]
//! probes both libraries first and returns `Error::Device` with a one-line explanation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    sys::CUresult, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr,
    DriverError, LaunchConfig,
};

use crate::backend::precision::Precision;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Build and submit a launch of kernel `$k` with `$cfg` and the listed arguments (device slices
/// by reference, scalars as references to locals). Expands to the unsafe `launch` call without an
/// `unsafe` block: every call site wraps it in one, with a SAFETY comment giving the kernel's
/// .cu argument order.
macro_rules! launch {
    ($self:expr, $k:expr, $cfg:expr, [$($arg:expr),* $(,)?]) => {{
        let f = $self.func($k)?;
        let mut b = $self.stream().launch_builder(&f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, $arg); )*
        b.launch($cfg)
            .map(|_| ())
            .map_err($crate::backend::cuda::drv(format!("launch {}", $k.name)))
    }};
}

pub mod compile;
pub mod kernel_table;

mod analysis;
mod conv;
#[cfg(feature = "cudnn")]
pub mod cudnn;
mod dense;
mod mma;
mod norm;
mod pointwise;
mod pool;
mod staging;

pub use analysis::TopK;
use kernel_table::Kernel;

/// Threads per block of the 1-D (grid-stride) kernels; must match the kernels' assumptions
/// (block reductions size their scratch for <= 1024 threads).
pub(crate) const BLOCK: u32 = 256;

/// Driver error -> our error, naming the call or kernel it came from. Out-of-memory becomes the
/// dedicated variant (the caller knows the size; see [`Device::alloc`]).
pub(crate) fn drv(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |e| Error::Cuda {
        context,
        msg: format!("{e:?}"),
    }
}

// ------------------------------------------------------------------------------------------------
// Memory pool
// ------------------------------------------------------------------------------------------------

/// Freed device buffers, by (rounded) element count, reused by later allocations of the same
/// size class so training and attack loops stop allocating after their first step.
struct MemPool {
    free: Mutex<PoolState>,
    /// Cached (idle) bytes above this are released to the driver instead of kept.
    cap_bytes: usize,
}

#[derive(Default)]
struct PoolState {
    by_len: HashMap<usize, Vec<CudaSlice<f32>>>,
    cached_bytes: usize,
}

/// Size class of a request: exact multiples of 64 elements up to 64 Ki elements, then steps of
/// 1/8 of the power of two above, so reuse works across slightly different batch tails without
/// wasting more than 12.5%.
fn size_class(len: usize) -> usize {
    let len = len.max(1);
    if len <= 1 << 16 {
        return len.div_ceil(64) * 64;
    }
    let p = len.next_power_of_two();
    let step = p / 16; // half the power below p, divided by 8
    len.div_ceil(step) * step
}

impl MemPool {
    fn take(&self, class: usize) -> Option<CudaSlice<f32>> {
        let mut st = self.free.lock().ok()?;
        let s = st.by_len.get_mut(&class)?.pop()?;
        st.cached_bytes -= class * 4;
        Some(s)
    }

    fn give_back(&self, s: CudaSlice<f32>) {
        let bytes = s.len() * 4;
        if let Ok(mut st) = self.free.lock() {
            if st.cached_bytes + bytes <= self.cap_bytes {
                st.cached_bytes += bytes;
                st.by_len.entry(s.len()).or_default().push(s);
                return;
            }
        }
        drop(s); // over the cap (or poisoned lock): free it
    }

    /// Release every cached buffer (before retrying an allocation that ran out of memory).
    fn release_all(&self) {
        if let Ok(mut st) = self.free.lock() {
            st.by_len.clear();
            st.cached_bytes = 0;
        }
    }
}

/// A pooled device allocation: returns to the pool when the last [`DeviceBuf`] using it drops.
pub(crate) struct Block {
    slice: Option<CudaSlice<f32>>,
    pool: Arc<MemPool>,
}

impl Block {
    fn slice(&self) -> &CudaSlice<f32> {
        // The Option is only emptied in Drop.
        self.slice
            .as_ref()
            .unwrap_or_else(|| unreachable!("block used after drop"))
    }
    fn slice_mut(&mut self) -> &mut CudaSlice<f32> {
        self.slice
            .as_mut()
            .unwrap_or_else(|| unreachable!("block used after drop"))
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.pool.give_back(s);
        }
    }
}

/// A device buffer of f32 values (the storage of a CUDA tensor). Cloning shares the allocation;
/// in-place ops copy first when it is shared (copy-on-write), so a cloned `Tensor` keeps value
/// semantics.
#[derive(Clone)]
pub struct DeviceBuf {
    block: Arc<Block>,
    len: usize,
}

impl std::fmt::Debug for DeviceBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuf {{ len: {}, device: cuda:{} }}",
            self.len,
            self.block.slice().ordinal()
        )
    }
}

impl DeviceBuf {
    /// Number of f32 values (the allocation may be larger: pool size classes).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub(crate) fn slice(&self) -> &CudaSlice<f32> {
        self.block.slice()
    }

    /// Copy the values to the host (waits for the queued work that produces them).
    pub fn to_host(&self) -> Result<Vec<f32>> {
        let s = self.slice();
        let mut out = vec![0.0f32; self.len];
        // The buffer's device is open (it allocated this buffer), so this is a registry lookup.
        Device::open(s.ordinal())?.dtoh(s, &mut out, "to_host")?;
        Ok(out)
    }
}

// ------------------------------------------------------------------------------------------------
// Device: context, stream, module cache, pool (one per ordinal per process)
// ------------------------------------------------------------------------------------------------

pub(crate) struct Device {
    ordinal: usize,
    name: String,
    arch: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    pool: Arc<MemPool>,
    total_mem: usize,
    /// Pinned staging buffers for large host<->device copies: None until first used,
    /// Some(None) when pinned memory could not be allocated (plain copies then).
    staging: Mutex<Option<Option<staging::Staging>>>,
}

fn registry() -> &'static Mutex<HashMap<usize, Arc<Device>>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Device>>>> = OnceLock::new();
    DEVICES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Ok when libcuda and libnvrtc can be loaded (cudarc panics otherwise).
pub fn libraries_present() -> Result<()> {
    // SAFETY: only tries dlopen on cudarc's candidate library names; no CUDA symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Device(
            "libcuda.so not found: no NVIDIA driver on this machine (use --device cpu)".into(),
        ));
    }
    compile::nvrtc_present()
}

impl Device {
    fn open(ordinal: usize) -> Result<Arc<Device>> {
        let mut reg = registry()
            .lock()
            .map_err(|_| Error::Device("device registry poisoned by an earlier panic".into()))?;
        if let Some(d) = reg.get(&ordinal) {
            return Ok(d.clone());
        }
        libraries_present()?;
        let count = CudaContext::device_count().map_err(|e| {
            Error::Device(format!(
                "the CUDA driver cannot list devices ({e:?}); is a GPU visible to this process?"
            ))
        })?;
        if count <= 0 {
            return Err(Error::Device(
                "no CUDA device found (use --device cpu)".into(),
            ));
        }
        if ordinal >= count as usize {
            return Err(Error::Device(format!(
                "cuda:{ordinal} asked for, but this machine has {count} CUDA device(s) (cuda:0..{})",
                count - 1
            )));
        }
        let ctx =
            CudaContext::new(ordinal).map_err(drv(format!("create context on cuda:{ordinal}")))?;
        // SAFETY: this backend issues all work on the single stream created below, so cudarc's
        // cross-stream event tracking is not needed: no buffer is used by two streams.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(drv("create stream"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(drv("query compute capability"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let total_mem = ctx.total_mem().unwrap_or(0);
        let pool = Arc::new(MemPool {
            free: Mutex::new(PoolState::default()),
            // Keep at most a quarter of the device idle in the pool.
            cap_bytes: (total_mem / 4).max(256 << 20),
        });
        let dev = Arc::new(Device {
            ordinal,
            name,
            arch: compile::arch_name(major, minor),
            ctx,
            stream,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            pool,
            total_mem,
            staging: Mutex::new(None),
        });
        reg.insert(ordinal, dev.clone());
        Ok(dev)
    }

    /// Copy `src` into the first `src.len()` values of `dst` (queued on the stream), through the
    /// pinned staging buffers when the copy is large.
    fn htod(&self, src: &[f32], dst: &mut CudaSlice<f32>, what: &str) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind(what)?;
        if src.len() >= staging::STAGING_MIN {
            if let Some(mut g) = staging::lock_staging(&self.staging, &self.ctx) {
                if let Some(Some(st)) = g.as_mut() {
                    return staging::htod(st, &self.stream, src, dst, what);
                }
            }
        }
        self.stream
            .memcpy_htod(src, &mut dst.slice_mut(0..src.len()))
            .map_err(drv(format!("copy host -> device ({what})")))
    }

    /// Fill `dst` with the first `dst.len()` values of `src`, after the queued work; returns
    /// when the values are on the host.
    fn dtoh(&self, src: &CudaSlice<f32>, dst: &mut [f32], what: &str) -> Result<()> {
        self.bind(what)?;
        if dst.len() >= staging::STAGING_MIN {
            if let Some(mut g) = staging::lock_staging(&self.staging, &self.ctx) {
                if let Some(Some(st)) = g.as_mut() {
                    return staging::dtoh(st, &self.stream, src, dst, what);
                }
            }
        }
        if !dst.is_empty() {
            self.stream
                .memcpy_dtoh(&src.slice(0..dst.len()), dst)
                .map_err(drv(format!("copy device -> host ({what})")))?;
        }
        self.stream
            .synchronize()
            .map_err(drv(format!("synchronize after copy to host ({what})")))
    }

    /// Make this device's context current on the calling thread. cudarc binds it for its own
    /// stream calls, but not in `load_function` nor for the raw copies of the staging path, so
    /// every entry point of the backend that reaches the driver calls this first (a test thread
    /// that did not open the device has no current context otherwise).
    fn bind(&self, what: &str) -> Result<()> {
        self.ctx.bind_to_thread().map_err(drv(format!(
            "bind the cuda:{} context ({what})",
            self.ordinal
        )))
    }

    /// The function for `k`, compiling and loading its family's module on first use.
    fn function(&self, k: Kernel) -> Result<CudaFunction> {
        self.bind(k.name)?;
        if let Some(f) = self
            .functions
            .lock()
            .ok()
            .and_then(|m| m.get(k.name).cloned())
        {
            return Ok(f);
        }
        let module = self.module(k.family)?;
        let f = module.load_function(k.name).map_err(drv(format!(
            "load kernel {} from kernels/{}.cu",
            k.name, k.family
        )))?;
        if let Ok(mut m) = self.functions.lock() {
            m.insert(k.name, f.clone());
        }
        Ok(f)
    }

    fn module(&self, family: &'static str) -> Result<Arc<CudaModule>> {
        // Held across the compile so two threads do not compile the same family twice.
        let mut mods = self
            .modules
            .lock()
            .map_err(|_| Error::Device("module cache poisoned by an earlier panic".into()))?;
        if let Some(m) = mods.get(family) {
            return Ok(m.clone());
        }
        let ptx = compile::compile_family(family, &self.arch)?;
        let m = self.ctx.load_module(ptx).map_err(|e| {
            let too_new = e.0 == CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
            let mut err = drv(format!("load module kernels/{family}.cu ({})", self.arch))(e);
            if too_new {
                // The PTX comes from the NVRTC that was loaded; the driver JIT only takes PTX
                // of its own CUDA version or older.
                let mut v = 0i32;
                // SAFETY: cuDriverGetVersion writes one int; the driver library is loaded.
                let driver = match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) } {
                    CUresult::CUDA_SUCCESS => format!("CUDA {}.{}", v / 1000, (v % 1000) / 10),
                    _ => "unknown".into(),
                };
                if let Error::Cuda { msg, .. } = &mut err {
                    msg.push_str(&format!(
                        "; the NVRTC library is newer than the NVIDIA driver (driver supports \
                         {driver}): update the driver (CUDA 13 needs >= 580) or put an NVRTC no \
                         newer than the driver on LD_LIBRARY_PATH"
                    ));
                }
            }
            err
        })?;
        mods.insert(family, m.clone());
        Ok(m)
    }

    /// An uninitialised pooled buffer of `len` f32 (`what` names the tensor for OOM messages).
    fn alloc(&self, len: usize, what: &str) -> Result<Block> {
        self.bind(what)?;
        let class = size_class(len);
        if let Some(s) = self.pool.take(class) {
            return Ok(Block {
                slice: Some(s),
                pool: self.pool.clone(),
            });
        }
        // SAFETY: the memory is uninitialised; every caller fully writes the first `len` values
        // (a kernel output or a copy) before reading them.
        let s = unsafe { self.alloc_raw::<f32>(class, what) }?;
        Ok(Block {
            slice: Some(s),
            pool: self.pool.clone(),
        })
    }

    /// An uninitialised, unpooled device buffer of `len` values of `T` on the stream. When the
    /// device is out of memory, the idle pooled buffers are released and the allocation retried
    /// once; a second failure is `Error::OutOfMemory` with the size, the free memory and what to
    /// lower.
    ///
    /// # Safety
    /// The memory is uninitialised: the caller writes every value it later reads.
    unsafe fn alloc_raw<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<CudaSlice<T>> {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        match unsafe { self.stream.alloc::<T>(len) } {
            Ok(s) => return Ok(s),
            Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {}
            Err(e) => return Err(drv(format!("allocate {bytes} bytes for {what}"))(e)),
        }
        // Idle pooled buffers may be what fills the device: give them back and retry.
        self.pool.release_all();
        let _ = self.stream.synchronize();
        match unsafe { self.stream.alloc::<T>(len) } {
            Ok(s) => Ok(s),
            Err(DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY)) => {
                let free = match self.ctx.mem_get_info() {
                    Ok((free, _)) => format!("{} MiB free of ", free >> 20),
                    Err(_) => String::new(),
                };
                Err(Error::OutOfMemory {
                    requested_bytes: bytes,
                    what: format!("{what} on cuda:{} ({})", self.ordinal, self.name),
                    hint: format!(
                        "the device has {free}{} MiB in total; lower --batch (or the model/image size)",
                        self.total_mem >> 20
                    ),
                })
            }
            Err(e) => Err(drv(format!("allocate {bytes} bytes for {what}"))(e)),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// CudaBackend
// ------------------------------------------------------------------------------------------------

/// Which version of the convolution kernels to run (benchmarks compare them; `V3` is the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvVersion {
    /// Direct kernels: the second oracle and the bench baseline.
    V1,
    /// Tiled implicit GEMM in shared memory.
    V2,
    /// Implicit GEMM on BM x 128 tiles (BM 128 or 64 by shape) with 8x8 / 4x8 register tiles
    /// and two cp.async stages; split-K backward-filter (partials reduced in a fixed order by a
    /// second kernel). The default. For linear GEMMs the same as V2.
    V3,
}

/// Same choice for the linear-layer GEMM.
pub type GemmVersion = ConvVersion;

#[derive(Clone)]
pub struct CudaBackend {
    dev: Arc<Device>,
    conv_version: ConvVersion,
    gemm_version: GemmVersion,
    /// f32: the SIMT kernels of `conv_version`; tf32/bf16: the tensor-core kernels.
    precision: Precision,
    /// Rows per block tile of the v3 convolutions: None picks by shape (conv::v3_tile_rows).
    v3_rows: Option<usize>,
}

impl CudaBackend {
    /// Open device `ordinal` (shares context, stream, compiled modules and pool with every other
    /// backend on that device in this process).
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        Ok(CudaBackend {
            dev: Device::open(ordinal)?,
            conv_version: ConvVersion::V3,
            gemm_version: ConvVersion::V2,
            precision: Precision::F32,
            v3_rows: None,
        })
    }

    /// The same device with another kernel version for convolutions and linear GEMMs (bench
    /// baselines, and tests that check the versions against each other).
    pub fn with_versions(&self, conv: ConvVersion, gemm: GemmVersion) -> CudaBackend {
        CudaBackend {
            conv_version: conv,
            gemm_version: gemm,
            ..self.clone()
        }
    }

    /// The linear-layer GEMM version in use.
    pub fn gemm_version(&self) -> GemmVersion {
        self.gemm_version
    }

    /// The same device with convolutions at `precision` (tf32/bf16: tensor-core kernels).
    pub fn with_precision(&self, precision: Precision) -> CudaBackend {
        CudaBackend {
            precision,
            ..self.clone()
        }
    }

    /// The same device with the v3 convolutions on block tiles of `rows` rows (64 or 128) for
    /// every shape instead of the shape heuristic (tests reach both tile kernels on small
    /// shapes; benchmarks compare them). None restores the heuristic.
    pub fn with_v3_tile_rows(&self, rows: Option<usize>) -> Result<CudaBackend> {
        if let Some(r) = rows {
            if r != 64 && r != 128 {
                return Err(Error::InvalidArg(format!(
                    "v3 convolution tiles have 64 or 128 rows, not {r}"
                )));
            }
        }
        Ok(CudaBackend {
            v3_rows: rows,
            ..self.clone()
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Architecture the kernels are compiled for (e.g. "sm_90").
    pub fn arch(&self) -> &str {
        &self.dev.arch
    }
    /// Marketing name of the GPU.
    pub fn device_name(&self) -> &str {
        &self.dev.name
    }

    /// Compile (if needed) and load every kernel of the table: the GPU test of the table.
    pub fn load_all_kernels(&self) -> Result<usize> {
        for k in kernel_table::ALL {
            self.dev.function(*k)?;
        }
        Ok(kernel_table::ALL.len())
    }

    pub(crate) fn func(&self, k: Kernel) -> Result<CudaFunction> {
        self.dev.function(k)
    }
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.dev.stream
    }

    /// A fresh pooled output buffer of `len` values.
    pub(crate) fn alloc(&self, len: usize, what: &str) -> Result<Block> {
        self.dev.alloc(len, what)
    }

    /// An unpooled uninitialised device buffer of `len` values of `T`, with the pool's
    /// out-of-memory handling (release idle pooled buffers, retry, `Error::OutOfMemory`).
    ///
    /// # Safety
    /// The memory is uninitialised: the caller writes every value it later reads.
    pub(crate) unsafe fn alloc_raw<T: DeviceRepr>(
        &self,
        len: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        unsafe { self.dev.alloc_raw(len, what) }
    }

    /// Wrap a written block as a tensor of `shape`.
    pub(crate) fn tensor(&self, shape: &[usize], block: Block) -> Tensor {
        let len = crate::tensor::numel(shape);
        Tensor::from_storage(
            shape,
            Storage::Cuda(DeviceBuf {
                block: Arc::new(block),
                len,
            }),
        )
    }

    /// Zero-filled pooled tensor.
    pub(crate) fn zeros_tensor(&self, shape: &[usize], what: &str) -> Result<Tensor> {
        let len = crate::tensor::numel(shape);
        let mut b = self.alloc(len, what)?;
        self.stream()
            .memset_zeros(b.slice_mut())
            .map_err(drv(format!("zero {what}")))?;
        Ok(self.tensor(shape, b))
    }

    /// The device slice of a tensor, or a Shape error naming `op` when it lives on the host.
    pub(crate) fn dev_slice<'a>(
        &self,
        t: &'a Tensor,
        op: &'static str,
    ) -> Result<&'a CudaSlice<f32>> {
        match t.storage() {
            Storage::Cuda(b) => {
                if b.slice().ordinal() != self.dev.ordinal {
                    return Err(Error::shape(
                        op,
                        format!(
                            "tensor lives on cuda:{}, this backend is cuda:{}",
                            b.slice().ordinal(),
                            self.dev.ordinal
                        ),
                    ));
                }
                Ok(b.slice())
            }
            Storage::Cpu(_) => Err(Error::shape(
                op,
                format!(
                    "expected a tensor on cuda:{}, got a host tensor of shape {:?} (upload it first)",
                    self.dev.ordinal,
                    t.shape()
                ),
            )),
        }
    }

    /// Mutable device slice of a tensor for in-place ops; copies the buffer first when another
    /// tensor shares it (copy-on-write).
    pub(crate) fn dev_slice_mut<'a>(
        &self,
        t: &'a mut Tensor,
        op: &'static str,
    ) -> Result<&'a mut CudaSlice<f32>> {
        self.dev_slice(t, op)?;
        let shape = t.shape().to_vec();
        let Storage::Cuda(buf) = t.storage_mut() else {
            return Err(Error::shape(op, "expected a device tensor"));
        };
        if Arc::get_mut(&mut buf.block).is_none() {
            let mut fresh = self.alloc(buf.len, op)?;
            if buf.len > 0 {
                self.stream()
                    .memcpy_dtod(
                        &buf.block.slice().slice(0..buf.len),
                        &mut fresh.slice_mut().slice_mut(0..buf.len),
                    )
                    .map_err(drv(format!(
                        "{op}: copy-on-write of a shared {shape:?} tensor"
                    )))?;
            }
            buf.block = Arc::new(fresh);
        }
        let block = Arc::get_mut(&mut buf.block)
            .ok_or_else(|| Error::shape(op, "device buffer still shared after copy"))?;
        Ok(block.slice_mut())
    }
}

/// Launch geometry of the grid-stride kernels: 256 threads, enough blocks to cover `n` up to a
/// cap (the loop covers the rest), at least one block.
pub(crate) fn grid_1d(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of `threads` per item, `items` blocks (grid.x up to 2^31-1).
pub(crate) fn grid_per_item(items: usize, threads: u32, op: &'static str) -> Result<LaunchConfig> {
    let blocks = u32::try_from(items.max(1))
        .ok()
        .filter(|b| *b <= i32::MAX as u32)
        .ok_or_else(|| Error::shape(op, format!("{items} blocks exceed the CUDA grid limit")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A dimension as the kernels' `int`, or a Shape error.
pub(crate) fn as_i32(v: usize, op: &'static str, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::shape(op, format!("{what} = {v} exceeds the kernels' int range")))
}

/// Element count as the kernels' `long long`.
pub(crate) fn as_i64(v: usize) -> i64 {
    v as i64
}

pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(
            op,
            format!("shapes differ: {:?} vs {:?}", a.shape(), b.shape()),
        ));
    }
    Ok(())
}

mod backend_impl;
