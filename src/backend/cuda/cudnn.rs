//! cuDNN convolutions (feature `cudnn`): the baseline `advlens bench conv` measures our kernels
//! against, in the same process, on the same stream and the same device buffers. Never a compute
//! path of the backend (DESIGN section 2: convolutions are ours).
//!
//! Written on cudarc's `cudnn::result`/`sys` layer rather than its safe wrappers because the safe
//! wrappers only expose the heuristic algorithm query (`cudnnGet*Algorithm_v7`), while a fair
//! baseline must pick algorithms the way PyTorch does with `torch.backends.cudnn.benchmark =
//! True`: by running them (`cudnnFind*Algorithm`) and taking the fastest.
//!
//! cudarc panics on the first cuDNN call when libcudnn cannot be loaded; [`CudnnConv::new`]
//! probes the library first and returns `Error::Device` with the reason instead.

use std::ffi::c_void;

use cudarc::cudnn::{result, sys};
use cudarc::driver::{CudaSlice, DevicePtr};

use super::{drv, CudaBackend};
use crate::backend::{out_dim, Conv2dParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn cudnn_err(context: impl Into<String>) -> impl FnOnce(result::CudnnError) -> Error {
    let context = context.into();
    move |e| Error::Cuda {
        context: format!("cuDNN {context}"),
        msg: format!("{:?}", e.0),
    }
}

fn c_int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::shape("cudnn_conv", format!("{what} = {v} exceeds int")))
}

/// A cuDNN handle bound to the backend's stream.
pub struct CudnnConv {
    handle: sys::cudnnHandle_t,
    be: CudaBackend,
    version: usize,
    /// Allow TF32 tensor-core math (CUDNN_DEFAULT_MATH) instead of FMA-only fp32.
    tf32: bool,
    /// Tensors and filters in bfloat16 (f32 accumulation, tensor cores allowed): the baseline of
    /// `--precision bf16`. Its buffers hold packed bf16 pairs (see [`CudnnConvPlan`]).
    bf16: bool,
}

impl Drop for CudnnConv {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed exactly once, here.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// Ok when libcudnn can be loaded; otherwise the one-line reason.
pub fn cudnn_present() -> Result<()> {
    // SAFETY: only tries dlopen on cudarc's candidate names for libcudnn; no symbol is called.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Device(
            "libcudnn.so (cuDNN 9) not found: install it (e.g. pip install nvidia-cudnn-cu13) and \
             add its lib directory (site-packages/nvidia/cudnn/lib) to LD_LIBRARY_PATH"
                .into(),
        ));
    }
    Ok(())
}

impl CudnnConv {
    /// A handle on `be`'s device and stream. `tf32` selects CUDNN_DEFAULT_MATH (TF32 tensor cores
    /// allowed on sm_80+) instead of CUDNN_FMA_MATH (plain fp32, comparable with our kernels).
    pub fn new(be: &CudaBackend, tf32: bool) -> Result<CudnnConv> {
        cudnn_present()?;
        let version = result::get_version();
        // cudarc's bindings are those of cuDNN 9.2; an 8.x library lacks some of their symbols
        // and cudarc would panic on the first one it looks up.
        if version < 90000 {
            return Err(Error::Device(format!(
                "cuDNN {version} found, but this build needs cuDNN 9 (libcudnn.so.9)"
            )));
        }
        be.dev
            .ctx
            .bind_to_thread()
            .map_err(drv("bind context for cuDNN"))?;
        let handle = result::create_handle().map_err(cudnn_err("create handle"))?;
        let conv = CudnnConv {
            handle,
            be: be.with_versions(be.conv_version, be.gemm_version),
            version,
            tf32,
            bf16: false,
        };
        // SAFETY: the handle is valid (created above) and the stream outlives it (the backend
        // clone held in `conv` keeps the device, and so its stream, alive).
        unsafe { result::set_stream(handle, be.stream().cu_stream() as sys::cudaStream_t) }
            .map_err(cudnn_err("set stream"))?;
        Ok(conv)
    }

    /// The same handle planning bfloat16 convolutions (BFLOAT16 tensors and filters, FLOAT
    /// compute type, tensor-core math allowed), cuDNN's counterpart of our `_bf16_v1` kernels.
    pub fn with_bf16(mut self) -> CudnnConv {
        self.bf16 = true;
        self
    }

    /// cudnnGetVersion(), e.g. 90100 for 9.1.0.
    pub fn version(&self) -> usize {
        self.version
    }

    /// Descriptors and the fastest algorithm of each pass (found by running them) for a conv of
    /// input `x_shape` [N,C,H,W] and weights `w_shape` [K,C,R,R].
    pub fn plan(
        &self,
        x_shape: [usize; 4],
        w_shape: [usize; 4],
        prm: Conv2dParams,
    ) -> Result<CudnnConvPlan<'_>> {
        let [n, c, h, w] = x_shape;
        let [k, wc, r, s] = w_shape;
        let bad = |m: String| Error::shape("cudnn_conv", m);
        if wc != c || r != s {
            return Err(bad(format!(
                "weights {w_shape:?} do not fit input {x_shape:?}"
            )));
        }
        let (Some(p), Some(q)) = (
            out_dim(h, r, prm.stride, prm.pad),
            out_dim(w, r, prm.stride, prm.pad),
        ) else {
            return Err(bad(format!(
                "kernel {r} stride {} pad {} does not fit {h}x{w}",
                prm.stride, prm.pad
            )));
        };
        // Data type of x, w and y; the convolution's compute type is FLOAT in every mode.
        let f = if self.bf16 {
            sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16
        } else {
            sys::cudnnDataType_t::CUDNN_DATA_FLOAT
        };
        let acc = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let xd = TensorDesc::new()?;
        let yd = TensorDesc::new()?;
        let wd = FilterDesc::new()?;
        let cd = ConvDesc::new()?;
        let dims = |a: usize, b: usize, cc: usize, d: usize| -> Result<[i32; 4]> {
            Ok([
                c_int(a, "N")?,
                c_int(b, "C")?,
                c_int(cc, "H")?,
                c_int(d, "W")?,
            ])
        };
        let (pad, stride) = (c_int(prm.pad, "pad")?, c_int(prm.stride, "stride")?);
        let math = if self.tf32 || self.bf16 {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        };
        // SAFETY: every descriptor was just created and is destroyed only by its Drop.
        unsafe {
            result::set_tensor4d_descriptor(xd.0, nchw, f, dims(n, c, h, w)?)
                .map_err(cudnn_err(format!("x descriptor {x_shape:?}")))?;
            result::set_tensor4d_descriptor(yd.0, nchw, f, dims(n, k, p, q)?)
                .map_err(cudnn_err(format!("y descriptor [{n}, {k}, {p}, {q}]")))?;
            result::set_filter4d_descriptor(wd.0, f, nchw, dims(k, c, r, s)?)
                .map_err(cudnn_err(format!("filter descriptor {w_shape:?}")))?;
            result::set_convolution2d_descriptor(
                cd.0,
                pad,
                pad,
                stride,
                stride,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                acc,
            )
            .map_err(cudnn_err("convolution descriptor"))?;
            result::set_convolution_math_type(cd.0, math).map_err(cudnn_err("math type"))?;
        }
        let (h_, x_, y_, w_, c_) = (self.handle, xd.0, yd.0, wd.0, cd.0);
        // The Find calls run every algorithm on scratch buffers of their own and return them
        // sorted by measured time; the first that succeeded is the one torch would cache.
        let fwd = {
            let mut perf = [zeroed_perf::<sys::cudnnConvolutionFwdAlgoPerf_t>(); 8];
            let mut cnt = 0i32;
            // SAFETY: descriptors valid; `perf` holds `perf.len()` entries.
            unsafe {
                sys::cudnnFindConvolutionForwardAlgorithm(
                    h_,
                    x_,
                    w_,
                    c_,
                    y_,
                    perf.len() as i32,
                    &mut cnt,
                    perf.as_mut_ptr(),
                )
            }
            .result()
            .map_err(cudnn_err("find forward algorithm"))?;
            let best = perf[..cnt.max(0) as usize]
                .iter()
                .find(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
                .ok_or_else(|| no_algo("forward", x_shape, w_shape))?;
            (best.algo, best.memory)
        };
        let bwd_data = {
            let mut perf = [zeroed_perf::<sys::cudnnConvolutionBwdDataAlgoPerf_t>(); 8];
            let mut cnt = 0i32;
            // SAFETY: as above.
            unsafe {
                sys::cudnnFindConvolutionBackwardDataAlgorithm(
                    h_,
                    w_,
                    y_,
                    c_,
                    x_,
                    perf.len() as i32,
                    &mut cnt,
                    perf.as_mut_ptr(),
                )
            }
            .result()
            .map_err(cudnn_err("find backward-data algorithm"))?;
            let best = perf[..cnt.max(0) as usize]
                .iter()
                .find(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
                .ok_or_else(|| no_algo("backward-data", x_shape, w_shape))?;
            (best.algo, best.memory)
        };
        let bwd_filter = {
            let mut perf = [zeroed_perf::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>(); 8];
            let mut cnt = 0i32;
            // SAFETY: as above.
            unsafe {
                sys::cudnnFindConvolutionBackwardFilterAlgorithm(
                    h_,
                    x_,
                    y_,
                    c_,
                    w_,
                    perf.len() as i32,
                    &mut cnt,
                    perf.as_mut_ptr(),
                )
            }
            .result()
            .map_err(cudnn_err("find backward-filter algorithm"))?;
            let best = perf[..cnt.max(0) as usize]
                .iter()
                .find(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
                .ok_or_else(|| no_algo("backward-filter", x_shape, w_shape))?;
            (best.algo, best.memory)
        };
        let ws_bytes = fwd.1.max(bwd_data.1).max(bwd_filter.1);
        let workspace = if ws_bytes > 0 {
            Some(
                self.be
                    .stream()
                    .alloc_zeros::<u8>(ws_bytes)
                    .map_err(drv(format!("allocate {ws_bytes} bytes of cuDNN workspace")))?,
            )
        } else {
            None
        };
        Ok(CudnnConvPlan {
            cudnn: self,
            xd,
            yd,
            wd,
            cd,
            x_shape,
            w_shape,
            y_shape: [n, k, p, q],
            fwd_algo: fwd.0,
            bwd_data_algo: bwd_data.0,
            bwd_filter_algo: bwd_filter.0,
            workspace,
            ws_bytes,
        })
    }
}

fn no_algo(pass: &str, x: [usize; 4], w: [usize; 4]) -> Error {
    Error::Device(format!(
        "cuDNN has no working {pass} algorithm for x {x:?} w {w:?}"
    ))
}

/// The perf structs are plain C data; all-zero is a valid value (status 0 = SUCCESS is then
/// overwritten by the Find call for the `returned` entries, and the rest are never read).
fn zeroed_perf<T: Copy>() -> T {
    // SAFETY: only instantiated with cuDNN's repr(C) perf structs (enums with a 0 variant,
    // floats, integers), for which the all-zero bit pattern is valid.
    unsafe { std::mem::zeroed() }
}

/// One convolution geometry, ready to run its three passes. In bf16 mode every buffer is an f32
/// tensor of ceil(elements / 2) slots holding bfloat16 pairs (element 2i in the low half of slot
/// i, as `bench::conv::pack_bf16` writes them), so cuDNN reads the bytes of a dense bf16 tensor.
pub struct CudnnConvPlan<'a> {
    cudnn: &'a CudnnConv,
    xd: TensorDesc,
    yd: TensorDesc,
    wd: FilterDesc,
    cd: ConvDesc,
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    y_shape: [usize; 4],
    fwd_algo: sys::cudnnConvolutionFwdAlgo_t,
    bwd_data_algo: sys::cudnnConvolutionBwdDataAlgo_t,
    bwd_filter_algo: sys::cudnnConvolutionBwdFilterAlgo_t,
    workspace: Option<CudaSlice<u8>>,
    ws_bytes: usize,
}

impl CudnnConvPlan<'_> {
    /// Output shape [N, K, P, Q].
    pub fn y_shape(&self) -> [usize; 4] {
        self.y_shape
    }
    /// The chosen algorithms, for the bench report.
    pub fn algorithms(&self) -> String {
        format!(
            "fwd {:?}, bwd-data {:?}, bwd-filter {:?}, workspace {} KiB",
            self.fwd_algo,
            self.bwd_data_algo,
            self.bwd_filter_algo,
            self.ws_bytes.div_ceil(1024)
        )
    }

    fn check(&self, t: &Tensor, want: &[usize], what: &str) -> Result<()> {
        if self.cudnn.bf16 {
            // Packed bf16 pairs: half as many f32 slots as the plan's elements, rounded up.
            let elems: usize = want.iter().product();
            if t.numel() != elems.div_ceil(2) {
                return Err(Error::shape(
                    "cudnn_conv",
                    format!(
                        "{what} holds {} packed bf16 pairs, the plan's {want:?} needs {}",
                        t.numel(),
                        elems.div_ceil(2)
                    ),
                ));
            }
            return Ok(());
        }
        if t.shape() != want {
            return Err(Error::shape(
                "cudnn_conv",
                format!("{what} has shape {:?}, the plan needs {want:?}", t.shape()),
            ));
        }
        Ok(())
    }

    /// y = conv(x, w) into the existing device tensor `y`.
    pub fn forward(&mut self, x: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
        const OP: &str = "cudnn_conv_forward";
        // cuDNN reads and writes by the plan's descriptors: every buffer must have their shape.
        self.check(x, &self.x_shape, "x")?;
        self.check(w, &self.w_shape, "w")?;
        self.check(y, &self.y_shape, "y")?;
        let be = &self.cudnn.be;
        let stream = be.stream().clone();
        let (xs, ws) = (be.dev_slice(x, OP)?, be.dev_slice(w, OP)?);
        let ys = be.dev_slice_mut(y, OP)?;
        let (xp, _gx) = xs.device_ptr(&stream);
        let (wp, _gw) = ws.device_ptr(&stream);
        let (yp, _gy) = ys.device_ptr(&stream);
        let (wsp, _gws) = self.workspace_ptr(&stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: descriptors describe x, w, y exactly (shapes checked against the plan, NCHW
        // f32, dense); the workspace holds `ws_bytes`, the largest need of the chosen algorithms.
        unsafe {
            result::convolution_forward(
                self.cudnn.handle,
                &alpha as *const f32 as *const c_void,
                self.xd.0,
                xp as *const c_void,
                self.wd.0,
                wp as *const c_void,
                self.cd.0,
                self.fwd_algo,
                wsp,
                self.ws_bytes,
                &beta as *const f32 as *const c_void,
                self.yd.0,
                yp as *mut c_void,
            )
        }
        .map_err(cudnn_err("convolution forward"))
    }

    /// The workspace's device pointer (null when the algorithms need none) and its guard.
    fn workspace_ptr<'a>(
        &'a self,
        stream: &'a std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> (*mut c_void, Option<cudarc::driver::SyncOnDrop<'a>>) {
        match &self.workspace {
            Some(s) => {
                let (p, g) = s.device_ptr(stream);
                (p as *mut c_void, Some(g))
            }
            None => (std::ptr::null_mut(), None),
        }
    }

    /// dx = backward-data(w, dy) into the existing device tensor `dx`.
    pub fn backward_data(&mut self, w: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        const OP: &str = "cudnn_conv_backward_data";
        self.check(w, &self.w_shape, "w")?;
        self.check(dy, &self.y_shape, "dy")?;
        self.check(dx, &self.x_shape, "dx")?;
        let be = &self.cudnn.be;
        let stream = be.stream().clone();
        let (ws, dys) = (be.dev_slice(w, OP)?, be.dev_slice(dy, OP)?);
        let dxs = be.dev_slice_mut(dx, OP)?;
        let (wp, _gw) = ws.device_ptr(&stream);
        let (dyp, _gdy) = dys.device_ptr(&stream);
        let (dxp, _gdx) = dxs.device_ptr(&stream);
        let (wsp, _gws) = self.workspace_ptr(&stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`; w, dy, dx have the plan's shapes (checked above).
        unsafe {
            result::convolution_backward_data(
                self.cudnn.handle,
                &alpha as *const f32 as *const c_void,
                self.wd.0,
                wp as *const c_void,
                self.yd.0,
                dyp as *const c_void,
                self.cd.0,
                self.bwd_data_algo,
                wsp,
                self.ws_bytes,
                &beta as *const f32 as *const c_void,
                self.xd.0,
                dxp as *mut c_void,
            )
        }
        .map_err(cudnn_err("convolution backward data"))
    }

    /// dw = backward-filter(x, dy) into the existing device tensor `dw`.
    pub fn backward_filter(&mut self, x: &Tensor, dy: &Tensor, dw: &mut Tensor) -> Result<()> {
        const OP: &str = "cudnn_conv_backward_filter";
        self.check(x, &self.x_shape, "x")?;
        self.check(dy, &self.y_shape, "dy")?;
        self.check(dw, &self.w_shape, "dw")?;
        let be = &self.cudnn.be;
        let stream = be.stream().clone();
        let (xs, dys) = (be.dev_slice(x, OP)?, be.dev_slice(dy, OP)?);
        let dws = be.dev_slice_mut(dw, OP)?;
        let (xp, _gx) = xs.device_ptr(&stream);
        let (dyp, _gdy) = dys.device_ptr(&stream);
        let (dwp, _gdw) = dws.device_ptr(&stream);
        let (wsp, _gws) = self.workspace_ptr(&stream);
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`; x, dy, dw have the plan's shapes (checked above).
        unsafe {
            result::convolution_backward_filter(
                self.cudnn.handle,
                &alpha as *const f32 as *const c_void,
                self.xd.0,
                xp as *const c_void,
                self.yd.0,
                dyp as *const c_void,
                self.cd.0,
                self.bwd_filter_algo,
                wsp,
                self.ws_bytes,
                &beta as *const f32 as *const c_void,
                self.wd.0,
                dwp as *mut c_void,
            )
        }
        .map_err(cudnn_err("convolution backward filter"))
    }
}

// RAII owners of the raw descriptors.
struct TensorDesc(sys::cudnnTensorDescriptor_t);
struct FilterDesc(sys::cudnnFilterDescriptor_t);
struct ConvDesc(sys::cudnnConvolutionDescriptor_t);

impl TensorDesc {
    fn new() -> Result<Self> {
        Ok(TensorDesc(
            result::create_tensor_descriptor().map_err(cudnn_err("create tensor descriptor"))?,
        ))
    }
}
impl FilterDesc {
    fn new() -> Result<Self> {
        Ok(FilterDesc(
            result::create_filter_descriptor().map_err(cudnn_err("create filter descriptor"))?,
        ))
    }
}
impl ConvDesc {
    fn new() -> Result<Self> {
        Ok(ConvDesc(
            result::create_convolution_descriptor()
                .map_err(cudnn_err("create convolution descriptor"))?,
        ))
    }
}
impl Drop for TensorDesc {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { result::destroy_tensor_descriptor(self.0) };
    }
}
impl Drop for FilterDesc {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { result::destroy_filter_descriptor(self.0) };
    }
}
impl Drop for ConvDesc {
    fn drop(&mut self) {
        // SAFETY: created by `new`, destroyed once.
        let _ = unsafe { result::destroy_convolution_descriptor(self.0) };
    }
}
