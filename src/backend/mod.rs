//! The Backend seam: every numeric primitive the models, attacks and analyses need.
//!
//! The CPU backend ([`cpu::CpuBackend`]) is the oracle: plain, parallel with rayon, f32 GEMM
//! through our packed micro-kernels (`cpu::sgemm`), f64 through `matrixmultiply`. The CUDA backend (feature `cuda`) implements the same contracts with the
//! hand-written kernels in `kernels/`. Models and experiments only ever talk to `dyn Backend`.
//!
//! Conventions shared by every implementation:
//! - f32, row-major, images NCHW, conv weights KCRS (torch layout), linear weights [out, in].
//! - Tensors passed in must live on this backend (`upload` puts a host tensor there).
//! - Labels are host slices of class indices; the backend copies them where it needs them.
//! - Output spatial size of conv/pool: `(H + 2*pad - k) / stride + 1` (floor, like torch).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod op_runner;
pub mod precision;

pub use precision::Precision;

use crate::error::Result;
use crate::tensor::Tensor;

/// Square-kernel convolution geometry (every conv of AlexNet/VGG/ResNet is square).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub pad: usize,
}

/// Square pooling window geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

/// Largest padding, pooling window and stride the conv and pool ops accept.
pub const MAX_GEOM: usize = 1 << 16;
/// Most elements of one op output (32 GiB of f32).
pub const MAX_OUTPUT_ELEMS: usize = 1 << 33;

/// `(in + 2*pad - k) / stride + 1`, or None when the window does not fit or the arithmetic
/// overflows.
pub fn out_dim(input: usize, k: usize, stride: usize, pad: usize) -> Option<usize> {
    let padded = pad.checked_mul(2)?.checked_add(input)?;
    if stride == 0 || padded < k {
        return None;
    }
    Some((padded - k) / stride + 1)
}

/// Result of a training-mode batch-norm forward: the output and the batch statistics needed by the
/// backward pass and by the running-average update.
pub struct BatchNormTrain {
    pub y: Tensor,
    /// Per-channel batch mean, [C].
    pub mean: Tensor,
    /// Per-channel biased batch variance, [C] (torch normalises with the biased variance and
    /// updates running_var with the unbiased one: n/(n-1) * var).
    pub var: Tensor,
}

/// Per-element gradients of the three gradient paths of a convolution.
pub struct Conv2dGrads {
    /// None when `want_dx` was false (first layer, weight-only backward).
    pub dx: Option<Tensor>,
    pub dw: Tensor,
    pub db: Tensor,
}

pub struct LinearGrads {
    pub dx: Tensor,
    pub dw: Tensor,
    pub db: Tensor,
}

/// Hyper-parameters of one Adam step (torch.optim.Adam semantics, L2 weight decay added to grad).
#[derive(Clone, Copy, Debug)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// 1-based step count, for bias correction.
    pub step: u64,
}

/// Hyper-parameters of one SGD step (torch.optim.SGD semantics: g += wd*p; buf = m*buf + g; p -= lr*buf).
#[derive(Clone, Copy, Debug)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

pub trait Backend: Send + Sync {
    /// Short name for messages: "cpu", "cuda:0".
    fn name(&self) -> String;
    /// What the work runs on, for reports: the name plus, on CUDA, the device's own name and
    /// architecture (which says "emulated" on the emulated driver).
    fn description(&self) -> String {
        with_precision_note(self.name(), self.precision())
    }
    /// Input precision of this backend's convolutions (f32 unless opened with another).
    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// Into how many parts a per-image batch computation of `rows` rows is best cut, each part
    /// run on its own thread as a whole (`attack::ifgs`): 1 (the default, and on a GPU), or on
    /// the CPU one per worker thread while each keeps enough rows.
    fn batch_parts(&self, rows: usize) -> usize {
        let _ = rows;
        1
    }

    /// Block until queued work is finished (no-op on the CPU). Benchmarks call it before reading
    /// the clock.
    fn synchronize(&self) -> Result<()>;

    // ---- memory -------------------------------------------------------------------------------
    /// Copy a tensor (from anywhere) onto this backend.
    fn upload(&self, t: &Tensor) -> Result<Tensor>;
    /// Zeros of `shape` on this backend.
    fn zeros(&self, shape: &[usize]) -> Result<Tensor>;

    // ---- convolution --------------------------------------------------------------------------
    /// y[N,K,P,Q] = conv(x[N,C,H,W], w[K,C,R,R]) + b[K] (b optional), zero padding.
    fn conv2d(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>, p: Conv2dParams)
        -> Result<Tensor>;
    /// Gradients of `conv2d` given dy[N,K,P,Q]. db is the sum of dy over N,P,Q (always returned).
    fn conv2d_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
        want_dx: bool,
    ) -> Result<Conv2dGrads>;
    /// dx of `conv2d` alone, the same values as `conv2d_backward(.., true).dx`; `x` is read for its
    /// shape only. Attacks and the consistency branch freeze the weights, so they skip dw and db,
    /// which cost as much as dx.
    fn conv2d_backward_data(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
    ) -> Result<Tensor>;

    /// relu(conv2d(x, w, b)), the same bits. Backends that fuse it apply the ReLU as they write
    /// y, which saves a pass over y and its allocation.
    fn conv2d_relu(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        let y = self.conv2d(x, w, b, p)?;
        self.relu(&y)
    }
    /// `conv2d_backward(.., true)` with dx = relu_backward(x, dx), the same bits: a training
    /// backward through a conv and the ReLU whose output x it reads.
    fn conv2d_backward_relu(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
    ) -> Result<Conv2dGrads> {
        let mut g = self.conv2d_backward(x, w, dy, p, true)?;
        if let Some(dx) = &g.dx {
            g.dx = Some(self.relu_backward(x, dx)?);
        }
        Ok(g)
    }
    /// relu_backward(x, conv2d_backward_data(x, w, dy)), the same bits: the gradient at the input
    /// of the ReLU whose output x this conv reads.
    fn conv2d_backward_data_relu(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        p: Conv2dParams,
    ) -> Result<Tensor> {
        let dx = self.conv2d_backward_data(x, w, dy, p)?;
        self.relu_backward(x, &dx)
    }

    // ---- pooling ------------------------------------------------------------------------------
    /// Max pool; padded cells are -inf (never selected). Ties pick the first maximum in row-major
    /// window order, and the backward routes the gradient to that one element.
    fn maxpool2d(&self, x: &Tensor, p: Pool2dParams) -> Result<Tensor>;
    fn maxpool2d_backward(&self, x: &Tensor, dy: &Tensor, p: Pool2dParams) -> Result<Tensor>;
    /// relu_backward(x, maxpool2d_backward(x, dy)), the same bits: the gradient at the input of
    /// the ReLU whose output x this pool reads.
    fn maxpool2d_relu_backward(&self, x: &Tensor, dy: &Tensor, p: Pool2dParams) -> Result<Tensor> {
        let dx = self.maxpool2d_backward(x, dy, p)?;
        self.relu_backward(x, &dx)
    }
    /// torch.nn.AdaptiveAvgPool2d((oh, ow)): window i spans [floor(i*H/oh), ceil((i+1)*H/oh)).
    /// (oh, ow) = (1, 1) is global average pooling.
    fn adaptive_avgpool2d(&self, x: &Tensor, oh: usize, ow: usize) -> Result<Tensor>;
    fn adaptive_avgpool2d_backward(&self, dy: &Tensor, h: usize, w: usize) -> Result<Tensor>;

    // ---- pointwise ----------------------------------------------------------------------------
    fn relu(&self, x: &Tensor) -> Result<Tensor>;
    /// dx = dy where y > 0 else 0 (y is the relu output).
    fn relu_backward(&self, y: &Tensor, dy: &Tensor) -> Result<Tensor>;
    /// Inverted dropout: element i is kept iff `crate::rng::uniform01(seed, i) >= p`, and kept
    /// elements are scaled by 1/(1-p). Returns (y, mask) with mask = 0 or 1/(1-p), so
    /// dx = dy * mask (`mul`).
    fn dropout(&self, x: &Tensor, p: f32, seed: u64) -> Result<(Tensor, Tensor)>;
    /// a + b elementwise (same shape).
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// a * b elementwise (same shape).
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// y = alpha * x.
    fn scale(&self, x: &Tensor, alpha: f32) -> Result<Tensor>;
    /// acc += alpha * x, in place (gradient accumulation, residual adds).
    fn axpy(&self, acc: &mut Tensor, alpha: f32, x: &Tensor) -> Result<()>;
    /// Sum of squares of all elements (for norms), f64 accumulation.
    fn sum_squares(&self, x: &Tensor) -> Result<f64>;

    // ---- dense --------------------------------------------------------------------------------
    /// y[N,O] = x[N,I] w[O,I]^T + b[O].
    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor>;
    fn linear_backward(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<LinearGrads>;

    // ---- batch norm ---------------------------------------------------------------------------
    /// Training mode: normalise with batch statistics over N,H,W per channel.
    fn batchnorm2d_train(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<BatchNormTrain>;
    /// Eval mode: normalise with running statistics.
    fn batchnorm2d_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
    ) -> Result<Tensor>;
    /// relu(batchnorm2d_eval(x) + skip) (skip optional), the same bits: a residual block's
    /// eval-mode tail, or its first BN and ReLU. Backends that fuse it read x once and write y
    /// once, where the separate ops made two or three passes.
    #[allow(clippy::too_many_arguments)]
    fn batchnorm2d_eval_relu(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        skip: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut z = self.batchnorm2d_eval(x, gamma, beta, running_mean, running_var, eps)?;
        if let Some(s) = skip {
            self.axpy(&mut z, 1.0, s)?;
        }
        self.relu(&z)
    }
    /// batchnorm2d_eval_backward(relu_backward(y, dy)), the same bits: the gradient at the input
    /// of an eval-mode BN whose output feeds a ReLU with output y.
    fn batchnorm2d_eval_relu_backward(
        &self,
        y: &Tensor,
        gamma: &Tensor,
        running_var: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<Tensor> {
        let d = self.relu_backward(y, dy)?;
        self.batchnorm2d_eval_backward(gamma, running_var, eps, &d)
    }
    /// Backward of the training-mode forward. Returns (dx, dgamma, dbeta).
    #[allow(clippy::too_many_arguments)]
    fn batchnorm2d_backward(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)>;
    /// Backward of the eval-mode forward with respect to x only (input gradients of attacks):
    /// dx = dy * gamma / sqrt(running_var + eps).
    fn batchnorm2d_eval_backward(
        &self,
        gamma: &Tensor,
        running_var: &Tensor,
        eps: f32,
        dy: &Tensor,
    ) -> Result<Tensor>;

    // ---- losses and heads ---------------------------------------------------------------------
    /// Softmax cross-entropy per sample: loss[N] = logsumexp(z) - z[label];
    /// dlogits[N,K] = softmax(z) - onehot(label) (the gradient of each sample's own loss, not
    /// divided by N). Labels must be < K.
    fn softmax_xent(&self, logits: &Tensor, labels: &[u32]) -> Result<(Tensor, Tensor)>;
    /// Row-wise softmax probabilities [N,K].
    fn softmax(&self, logits: &Tensor) -> Result<Tensor>;

    // ---- optimisers (in place) ----------------------------------------------------------------
    fn sgd_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        buf: &mut Tensor,
        h: SgdParams,
    ) -> Result<()>;
    fn adam_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        h: AdamParams,
    ) -> Result<()>;

    // ---- attacks ------------------------------------------------------------------------------
    /// x_next = clamp(x - eps * sign(grad), lo, hi), sign(0) = 0. (FGS ascent uses -eps.)
    fn fgs_step(&self, x: &Tensor, grad: &Tensor, eps: f32, lo: f32, hi: f32) -> Result<Tensor>;
    /// Gradient of lambda * ||a_n - b_n||_2 (unsquared) for every row n of a, b (first dim N):
    /// (lambda / norm) * (a - b), zero for a row with norm 0. The norm sums the f32 differences
    /// squared in f64.
    fn l2_distance_grad(&self, a: &Tensor, b: &Tensor, lambda: f32) -> Result<Tensor>;

    // ---- analysis -----------------------------------------------------------------------------
    /// Per-channel spatial max of x[N,C,H,W] -> [N,C].
    fn channel_max(&self, x: &Tensor) -> Result<Tensor>;
    /// Per-channel spatial mean of x[N,C,H,W] -> [N,C].
    fn channel_mean(&self, x: &Tensor) -> Result<Tensor>;
    /// For N pairs: pcq = p^T C q, pcp = p^T C p, qcq = q^T C q, cos = pcq / sqrt(pcp * qcq)
    /// (0 when either norm is 0). p, q: [N,K], c: [K,K]. Returns [N] each.
    fn quadform(&self, p: &Tensor, c: &Tensor, q: &Tensor) -> Result<QuadForm>;
    /// A streaming per-channel top-k (E3 mining) kept where this backend computes: host heaps
    /// by default, the device state of kernels/topk.cu on CUDA (no per-batch download).
    fn topk_stream(&self, channels: usize, k: usize) -> Result<Box<dyn TopKStream + '_>> {
        Ok(Box::new(crate::analysis::topk::TopK::new(channels, k)?))
    }
}

/// Streaming top-k over batches of per-image channel values (see `analysis::topk` for the
/// ranking: larger value first, ties to the smaller image id; NaN is an error).
pub trait TopKStream {
    /// Offer `acts` [B, C] (on this backend) whose row b is image `ids[b]`.
    fn push(&mut self, acts: &Tensor, ids: &[u32]) -> Result<()>;
    /// Every channel's kept hits, best first.
    fn finish(self: Box<Self>) -> Result<Vec<Vec<crate::analysis::topk::Hit>>>;
}

pub struct QuadForm {
    pub pcq: Tensor,
    pub pcp: Tensor,
    pub qcq: Tensor,
    pub cos: Tensor,
}

/// A backend description with its convolution precision when that is not f32, so results name
/// it (e.g. "cpu, conv tf32").
pub fn with_precision_note(desc: String, p: Precision) -> String {
    match p {
        Precision::F32 => desc,
        p => format!("{desc}, conv {p}"),
    }
}

/// Which device the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceRequest {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(DeviceRequest::Cuda(n)),
                _ => Err(format!(
                    "unknown device '{s}': expected auto, cpu, cuda or cuda:N"
                )),
            },
        }
    }
}

/// Open the requested backend. `Auto` tries CUDA (when built with it) and falls back to the CPU,
/// saying so once on stderr. An explicit `Cuda` request that cannot be met is an error.
pub fn open(req: DeviceRequest) -> Result<std::sync::Arc<dyn Backend>> {
    open_with(req, Precision::F32)
}

/// [`open`] with convolutions at `precision` (see [`precision`]): tensor-core kernels on CUDA,
/// the same input rounding emulated by the CPU oracle.
pub fn open_with(req: DeviceRequest, prec: Precision) -> Result<std::sync::Arc<dyn Backend>> {
    let cpu = || std::sync::Arc::new(cpu::CpuBackend::with_precision(prec));
    match req {
        DeviceRequest::Cpu => Ok(cpu()),
        DeviceRequest::Cuda(ordinal) => open_cuda(ordinal, prec),
        DeviceRequest::Auto => match open_cuda(0, prec) {
            Ok(b) => Ok(b),
            Err(e) => {
                eprintln!("advlens: using the CPU ({e})");
                Ok(cpu())
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize, prec: Precision) -> Result<std::sync::Arc<dyn Backend>> {
    Ok(std::sync::Arc::new(
        cuda::CudaBackend::new(ordinal)?.with_precision(prec),
    ))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize, _prec: Precision) -> Result<std::sync::Arc<dyn Backend>> {
    Err(crate::error::Error::Device(
        "this advlens was built without the `cuda` feature (cargo build --release --features cuda)"
            .into(),
    ))
}
