//! `advlens bench conv`: forward, backward-data and backward-filter of every conv layer of an
//! ImageNet-size model, on the CPU (baseline: our sgemm on the same GEMM work) or on CUDA
//! (baseline: cuDNN in the same run, feature `cudnn`).
//!
//! The layer list comes from the model definition itself ([`conv_layers`] walks
//! `Model::layers()`), so the bench follows any change to the architectures.
//!
//! FLOPs of one pass of one layer: 2*N*K*C*R*R*P*Q (a multiply-add counted as two), the same for
//! forward, backward-data and backward-filter. The hardware floor of a pass is FLOPs / peak, and
//! the report gives the fraction of the peak reached with the peak's origin: on CUDA an
//! assumption (default: H100 SXM fp32 non-tensor, 67 TFLOP/s), on the CPU a measurement of the
//! FMA ceiling of the same threads ([`super::cpu_peak`]); `--peak-tflops` overrides either.

use serde::Serialize;

use super::{commit, cpu_name, median_time};
use crate::backend::cpu::{sgemm, CpuBackend, Strides};
use crate::backend::{out_dim, Backend, Conv2dParams, Precision};
use crate::error::{Error, Result};
use crate::nn::layers::{Conv2d, LayerKind};
use crate::nn::{Model, ModelSpec};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Nets the bench knows: the ImageNet-size models of the paper (RGB, 224 px by default) and the
/// small variants the default `reproduce` trains (1 channel, 28 px, a `--width`).
pub const NETS: &[&str] = &[
    "vgg16",
    "resnet18",
    "alexnet",
    "small-vgg16",
    "small-alexnet",
    "small-resnet18",
];

/// Whether `net` is one of the small variants (Fashion-MNIST shaped input, 10 classes).
pub fn is_small(net: &str) -> bool {
    net.starts_with("small-")
}

/// Default input side of a net: 224 (ImageNet) or 28 (Fashion-MNIST).
pub fn default_input(net: &str) -> usize {
    if is_small(net) {
        28
    } else {
        224
    }
}

/// Default fp32 peak used for the floor: H100 SXM5, fp32 without tensor cores.
pub const H100_FP32_PEAK_TFLOPS: f64 = 67.0;
/// Dense tensor-core peaks of the same part (no sparsity): TF32 and BF16.
pub const H100_TF32_PEAK_TFLOPS: f64 = 495.0;
pub const H100_BF16_PEAK_TFLOPS: f64 = 990.0;
#[cfg(feature = "cuda")]
const PEAK_ASSUMPTION: &str = "assumed peak: NVIDIA H100 SXM5 fp32 non-tensor-core, 67 TFLOP/s \
     (NVIDIA datasheet; H200 has the same SMs and clocks); override with --peak-tflops";

fn given_peak(p: f64) -> String {
    format!("peak given with --peak-tflops: {p} TFLOP/s")
}

/// The default peak of a precision and how it is described.
#[cfg(feature = "cuda")]
fn default_peak(p: Precision) -> (f64, &'static str) {
    match p {
        Precision::F32 => (H100_FP32_PEAK_TFLOPS, PEAK_ASSUMPTION),
        Precision::Tf32 => (
            H100_TF32_PEAK_TFLOPS,
            "assumed peak: NVIDIA H100 SXM5 dense TF32 tensor-core, 495 TFLOP/s (datasheet, \
             no sparsity); override with --peak-tflops",
        ),
        Precision::Bf16 => (
            H100_BF16_PEAK_TFLOPS,
            "assumed peak: NVIDIA H100 SXM5 dense BF16 tensor-core, 990 TFLOP/s (datasheet, \
             no sparsity); override with --peak-tflops",
        ),
    }
}

/// One conv layer of a model at a given batch size and input size.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConvLayer {
    /// torchvision module name ("features.0", "layer2.0.downsample.0").
    pub name: String,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub r: usize,
    pub stride: usize,
    pub pad: usize,
    pub p: usize,
    pub q: usize,
}

impl ConvLayer {
    /// FLOPs of one pass (forward, backward-data or backward-filter).
    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.k * self.c * self.r * self.r) as f64 * (self.p * self.q) as f64
    }
    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    pub fn w_shape(&self) -> [usize; 4] {
        [self.k, self.c, self.r, self.r]
    }
    pub fn y_shape(&self) -> [usize; 4] {
        [self.n, self.k, self.p, self.q]
    }
    pub fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            pad: self.pad,
        }
    }
    /// "N1 C64 56x56 K64 3x3 s1 p1".
    pub fn shape_label(&self) -> String {
        format!(
            "N{} C{} {}x{} K{} {}x{} s{} p{}",
            self.n, self.c, self.h, self.w, self.k, self.r, self.r, self.stride, self.pad
        )
    }
}

fn conv_layer(conv: &Conv2d, x: [usize; 4]) -> Result<ConvLayer> {
    let ws = conv.weight.value.shape();
    let name = conv
        .weight
        .name
        .strip_suffix(".weight")
        .unwrap_or(&conv.weight.name)
        .to_string();
    let (k, r) = (ws[0], ws[2]);
    let Conv2dParams { stride, pad } = conv.params;
    let bad = || {
        Error::shape(
            "bench conv",
            format!("{name}: kernel {r} does not fit {x:?}"),
        )
    };
    Ok(ConvLayer {
        n: x[0],
        c: x[1],
        h: x[2],
        w: x[3],
        k,
        r,
        stride,
        pad,
        p: out_dim(x[2], r, stride, pad).ok_or_else(bad)?,
        q: out_dim(x[3], r, stride, pad).ok_or_else(bad)?,
        name,
    })
}

/// Every conv layer of `net` for a batch of `batch` images of `input` x `input`, in execution
/// order, ResNet downsample convs included: ImageNet-size nets take RGB images and 1000 classes,
/// the small ones single-channel images, 10 classes and their default width.
pub fn conv_layers(net: &str, batch: usize, input: usize) -> Result<Vec<ConvLayer>> {
    conv_layers_at(net, batch, input, None)
}

/// [`conv_layers`] with the width of a small net chosen (`None`: its default; the ImageNet-size
/// nets have a fixed width and refuse one).
pub fn conv_layers_at(
    net: &str,
    batch: usize,
    input: usize,
    width: Option<usize>,
) -> Result<Vec<ConvLayer>> {
    if !NETS.contains(&net) {
        return Err(Error::unknown("net", net, NETS));
    }
    if batch == 0 || input == 0 {
        return Err(Error::InvalidArg(
            "--batch and --input must be at least 1".into(),
        ));
    }
    let (c, classes) = if is_small(net) { (1, 10) } else { (3, 1000) };
    let mut spec = ModelSpec::new(net, classes, (c, input, input));
    match width {
        Some(_) if !is_small(net) => {
            return Err(Error::InvalidArg(format!(
                "--width applies to the small nets; {net} has torchvision's fixed width"
            )))
        }
        Some(0) => return Err(Error::InvalidArg("--width must be at least 1".into())),
        Some(w) => spec.width = w,
        None => {}
    }
    let model = Model::from_spec(&spec, 0)?;
    let mut s = [batch, c, input, input];
    let mut out = Vec::new();
    for l in model.layers() {
        match &l.kind {
            LayerKind::Conv2d(c) => {
                let cl = conv_layer(c, s)?;
                s = cl.y_shape();
                out.push(cl);
            }
            LayerKind::BasicBlock(b) => {
                let c1 = conv_layer(&b.conv1, s)?;
                let c2 = conv_layer(&b.conv2, c1.y_shape())?;
                let next = c2.y_shape();
                out.push(c1);
                out.push(c2);
                if let Some((ds, _)) = &b.downsample {
                    out.push(conv_layer(ds, s)?);
                }
                s = next;
            }
            LayerKind::MaxPool2d(p) => {
                let d = |v: usize| {
                    out_dim(v, p.kernel, p.stride, p.pad).ok_or_else(|| {
                        Error::shape(
                            "bench conv",
                            format!("{}: pool does not fit {s:?}", l.module),
                        )
                    })
                };
                s = [s[0], s[1], d(s[2])?, d(s[3])?];
            }
            LayerKind::AdaptiveAvgPool2d(oh, ow) => s = [s[0], s[1], *oh, *ow],
            // Everything after the flatten is dense: no conv layers left.
            LayerKind::Flatten | LayerKind::Linear(_) => break,
            LayerKind::BatchNorm2d(_) | LayerKind::ReLU | LayerKind::Dropout(_) => {}
        }
    }
    Ok(out)
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ConvBenchConfig {
    pub net: String,
    pub batch: usize,
    pub input: usize,
    pub warmup: usize,
    pub iters: usize,
    /// Only these layer names (all when empty).
    pub layers: Vec<String>,
    /// Width of a small net (None: its default).
    pub width: Option<usize>,
    /// Peak for the floor (TFLOP/s); None: the H100 assumption on CUDA, measured on the CPU.
    pub peak_tflops: Option<f64>,
    /// cuDNN with TF32 tensor-core math allowed (default: FMA-only fp32, like our kernels).
    pub cudnn_tf32: bool,
    /// Convolution precision of ours (and of cuDNN: tf32 allows its TF32 math).
    pub precision: Precision,
    /// Our CUDA f32 kernels to time: "v1", "v2" or "v3" (None: the backend's default, v3).
    pub conv_version: Option<String>,
    pub seed: u64,
}

/// `--conv-version` values: our CUDA f32 convolution kernels.
pub const CONV_VERSIONS: &[&str] = &["v1", "v2", "v3"];

impl ConvBenchConfig {
    /// Which of our kernels are timed, for the report ("v3 (default)" unless chosen).
    fn kernels(&self, gpu: bool) -> String {
        match (gpu, self.precision, &self.conv_version) {
            (false, _, _) => "cpu".into(),
            (true, Precision::F32, Some(v)) => format!("{v} (--conv-version)"),
            (true, Precision::F32, None) => "v3 (default)".into(),
            (true, p, _) => format!("{p} tensor-core v1"),
        }
    }

    /// `--conv-version` must name a kernel version and can only apply to CUDA f32.
    pub fn validate_conv_version(&self, gpu: bool) -> Result<()> {
        let Some(v) = &self.conv_version else {
            return Ok(());
        };
        if !CONV_VERSIONS.contains(&v.as_str()) {
            return Err(Error::unknown("conv version", v.clone(), CONV_VERSIONS));
        }
        if !gpu {
            return Err(Error::InvalidArg(
                "--conv-version chooses CUDA kernels; the CPU backend has one convolution path"
                    .into(),
            ));
        }
        if self.precision != Precision::F32 {
            return Err(Error::InvalidArg(format!(
                "--conv-version chooses the f32 SIMT kernels; --precision {} runs the \
                 tensor-core kernels, which have one version",
                self.precision
            )));
        }
        Ok(())
    }
}

/// Time and rate of one pass.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub ms: f64,
    pub gflops: f64,
    pub tflops: f64,
}

impl Figure {
    fn new(seconds: f64, flops: f64) -> Figure {
        let rate = if seconds > 0.0 { flops / seconds } else { 0.0 };
        Figure {
            ms: seconds * 1e3,
            gflops: rate / 1e9,
            tflops: rate / 1e12,
        }
    }
}

/// One pass of one layer (or a total): ours, the baseline of the same run, and how they compare.
#[derive(Clone, Debug, Serialize)]
pub struct OpResult {
    pub gflop: f64,
    pub ours: Figure,
    pub baseline: Option<Figure>,
    /// ours time / baseline time (> 1: slower than the baseline).
    pub time_ratio: Option<f64>,
    /// baseline time / ours time: the fraction of the baseline's speed reached (conv_cpu's
    /// "ratio" column).
    pub speed_vs_baseline: Option<f64>,
    /// Floor = FLOPs / peak; this is floor / ours time.
    pub peak_fraction: Option<f64>,
    /// FLOPs / peak in ms.
    pub floor_ms: Option<f64>,
}

impl OpResult {
    fn new(flops: f64, ours_s: f64, base_s: Option<f64>, peak: Option<f64>) -> OpResult {
        let floor = peak.map(|p| flops / (p * 1e12));
        OpResult {
            gflop: flops / 1e9,
            ours: Figure::new(ours_s, flops),
            baseline: base_s.map(|b| Figure::new(b, flops)),
            time_ratio: base_s.filter(|&b| b > 0.0).map(|b| ours_s / b),
            speed_vs_baseline: base_s.filter(|_| ours_s > 0.0).map(|b| b / ours_s),
            peak_fraction: floor.filter(|_| ours_s > 0.0).map(|f| f / ours_s),
            floor_ms: floor.map(|f| f * 1e3),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerResult {
    pub layer: ConvLayer,
    pub shape: String,
    pub forward: OpResult,
    pub backward_data: OpResult,
    pub backward_filter: OpResult,
    /// cuDNN's chosen algorithms (CUDA with cuDNN only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_algorithms: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Totals {
    pub forward: OpResult,
    pub backward_data: OpResult,
    pub backward_filter: OpResult,
    /// The three passes of every layer together.
    pub all: OpResult,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConvBenchReport {
    pub bench: &'static str,
    pub net: String,
    /// Width of a small net (absent for the ImageNet-size ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    pub input: usize,
    pub batch: usize,
    pub dtype: &'static str,
    pub device: String,
    pub device_name: String,
    /// True on the emulated CUDA driver (tests/cuda-emu): its timings are CPU timings of the
    /// emulator, not GPU timings.
    pub emulated: bool,
    pub commit: String,
    pub warmup: usize,
    pub iters: usize,
    pub timing: &'static str,
    pub flop_count: &'static str,
    /// Which of our kernels were timed: "cpu", "v1|v2|v3 ..." (CUDA f32), "tf32 tensor-core v1".
    pub kernels: String,
    /// What `baseline` figures are.
    pub baseline: String,
    /// Why there are no baseline figures, when there are none.
    pub baseline_unavailable: Option<String>,
    pub peak_tflops: Option<f64>,
    pub peak_assumption: Option<String>,
    pub layers: Vec<LayerResult>,
    pub totals: Totals,
}

/// The layers of the config, filtered by `--layers` (an unknown name is an error listing the
/// known ones).
pub fn selected_layers(cfg: &ConvBenchConfig) -> Result<Vec<ConvLayer>> {
    let all = conv_layers_at(&cfg.net, cfg.batch, cfg.input, cfg.width)?;
    if cfg.layers.is_empty() {
        return Ok(all);
    }
    let names: Vec<&str> = all.iter().map(|l| l.name.as_str()).collect();
    for want in &cfg.layers {
        if !names.contains(&want.as_str()) {
            return Err(Error::unknown("conv layer", want.clone(), &names));
        }
    }
    Ok(all
        .iter()
        .filter(|l| cfg.layers.contains(&l.name))
        .cloned()
        .collect())
}

fn random(rng: &mut Rng, shape: &[usize]) -> Result<Tensor> {
    let n = crate::tensor::numel(shape);
    Tensor::from_vec(
        shape,
        (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect(),
    )
}

/// Per-layer seconds of (ours, baseline) for the three passes.
struct LayerTimes {
    ours: [f64; 3],
    base: Option<[f64; 3]>,
    algorithms: Option<String>,
}

#[allow(clippy::too_many_arguments)]
fn report(
    cfg: &ConvBenchConfig,
    layers: &[ConvLayer],
    times: Vec<LayerTimes>,
    device: String,
    device_name: String,
    baseline: String,
    baseline_unavailable: Option<String>,
    peak: Option<(f64, String)>,
) -> ConvBenchReport {
    let (peak, peak_assumption) = peak.unzip();
    let mut sum_ours = [0.0f64; 3];
    let mut sum_base = [0.0f64; 3];
    let mut sum_flops = 0.0f64;
    let have_base = times.iter().all(|t| t.base.is_some()) && !times.is_empty();
    let mut out = Vec::with_capacity(layers.len());
    for (l, t) in layers.iter().zip(times) {
        let f = l.flops();
        sum_flops += f;
        for i in 0..3 {
            sum_ours[i] += t.ours[i];
            if let Some(b) = t.base {
                sum_base[i] += b[i];
            }
        }
        let op = |i: usize| OpResult::new(f, t.ours[i], t.base.map(|b| b[i]), peak);
        out.push(LayerResult {
            layer: l.clone(),
            shape: l.shape_label(),
            forward: op(0),
            backward_data: op(1),
            backward_filter: op(2),
            baseline_algorithms: t.algorithms,
        });
    }
    let tot = |i: usize| {
        OpResult::new(
            sum_flops,
            sum_ours[i],
            have_base.then_some(sum_base[i]),
            peak,
        )
    };
    let totals = Totals {
        forward: tot(0),
        backward_data: tot(1),
        backward_filter: tot(2),
        all: OpResult::new(
            3.0 * sum_flops,
            sum_ours.iter().sum(),
            have_base.then(|| sum_base.iter().sum()),
            peak,
        ),
    };
    let kernels = cfg.kernels(device != "cpu");
    ConvBenchReport {
        bench: "conv",
        kernels,
        net: cfg.net.clone(),
        width: is_small(&cfg.net).then(|| {
            cfg.width
                .unwrap_or_else(|| crate::nn::arch::default_width(&cfg.net))
        }),
        input: cfg.input,
        batch: cfg.batch,
        dtype: cfg.precision.name(),
        device,
        emulated: device_name.contains("emulated"),
        device_name,
        commit: commit(),
        warmup: cfg.warmup,
        iters: cfg.iters,
        timing: "median of `iters` runs after `warmup` runs; the device is synchronized before \
                 starting and before reading the clock (std::time::Instant)",
        flop_count: "2*N*K*C*R*R*P*Q per pass (multiply-add = 2 FLOPs), same for forward, \
                     backward-data and backward-filter",
        baseline,
        baseline_unavailable,
        peak_tflops: peak,
        peak_assumption,
        layers: out,
        totals,
    }
}

// ------------------------------------------------------------------------------------------------
// CPU
// ------------------------------------------------------------------------------------------------

/// Run on the CPU backend; the baseline is `sgemm` of exactly the conv's GEMMs (N per pass, same
/// M, N, K and transposes, operands already laid out: no im2col/col2im), as in
/// benches/conv_cpu.rs.
pub fn run_cpu(cfg: &ConvBenchConfig) -> Result<ConvBenchReport> {
    let layers = selected_layers(cfg)?;
    let be = CpuBackend::with_precision(cfg.precision);
    let sync = || Ok(());
    let mut rng = Rng::new(cfg.seed);
    let mut times = Vec::with_capacity(layers.len());
    for l in &layers {
        let x = random(&mut rng, &l.x_shape())?;
        let w = random(&mut rng, &l.w_shape())?;
        let dy = random(&mut rng, &l.y_shape())?;
        let p = l.params();
        let (wu, iu) = (cfg.warmup, cfg.iters);
        let fwd = median_time(wu, iu, &sync, &mut || be.conv2d(&x, &w, None, p).map(drop))?;
        let bd = median_time(wu, iu, &sync, &mut || {
            be.conv2d_backward_data(&x, &w, &dy, p).map(drop)
        })?;
        let bf = median_time(wu, iu, &sync, &mut || {
            be.conv2d_backward_filter(&x, &w, &dy, p).map(drop)
        })?;
        drop((x, dy));

        let (k, crr, pq) = (l.k, l.c * l.r * l.r, l.p * l.q);
        let wv = w.to_vec()?;
        let col = random(&mut rng, &[crr, pq])?.to_vec()?;
        let dyv = random(&mut rng, &[k, pq])?.to_vec()?;
        let mut y = vec![0.0f32; k * pq];
        let mut dcol = vec![0.0f32; crr * pq];
        let mut dw = vec![0.0f32; k * crr];
        let (rk, rp) = (Strides::row(crr), Strides::row(pq));
        let gf = median_time(wu, iu, &sync, &mut || {
            for _ in 0..l.n {
                sgemm(k, crr, pq, &wv, rk, &col, rp, 0.0, &mut y, rp);
            }
            Ok(())
        })?;
        let gd = median_time(wu, iu, &sync, &mut || {
            for _ in 0..l.n {
                let wt = Strides::trans(crr);
                sgemm(crr, k, pq, &wv, wt, &dyv, rp, 0.0, &mut dcol, rp);
            }
            Ok(())
        })?;
        let gw = median_time(wu, iu, &sync, &mut || {
            for _ in 0..l.n {
                let ct = Strides::trans(pq);
                sgemm(k, pq, crr, &dyv, rp, &col, ct, 1.0, &mut dw, rk);
            }
            Ok(())
        })?;
        times.push(LayerTimes {
            ours: [fwd, bd, bf],
            base: Some([gf, gd, gw]),
            algorithms: None,
        });
    }
    let peak = match cfg.peak_tflops {
        Some(p) => (p, given_peak(p)),
        None => {
            let m = super::cpu_peak::measure();
            (m.gflops / 1e3, m.describe())
        }
    };
    Ok(report(
        cfg,
        &layers,
        times,
        "cpu".into(),
        cpu_name(),
        format!(
            "advlens sgemm ({} micro-kernel) of the same GEMM work, operands pre-laid-out (no \
             im2col/col2im)",
            crate::backend::cpu::sgemm::isa().name()
        ),
        None,
        Some(peak),
    ))
}

// ------------------------------------------------------------------------------------------------
// CUDA
// ------------------------------------------------------------------------------------------------

/// Run our kernels on cuda:`ordinal`, and cuDNN in the same run when built with `cudnn` and the
/// library loads (otherwise the report says why there is no baseline).
#[cfg(feature = "cuda")]
pub fn run_cuda(cfg: &ConvBenchConfig, ordinal: usize) -> Result<ConvBenchReport> {
    use crate::backend::cuda::CudaBackend;
    use std::sync::Arc;

    let layers = selected_layers(cfg)?;
    use crate::backend::cuda::ConvVersion;
    cfg.validate_conv_version(true)?;
    let mut cuda = CudaBackend::new(ordinal)?.with_precision(cfg.precision);
    if let Some(v) = &cfg.conv_version {
        let conv = match v.as_str() {
            "v1" => ConvVersion::V1,
            "v2" => ConvVersion::V2,
            _ => ConvVersion::V3,
        };
        cuda = cuda.with_versions(conv, cuda.gemm_version());
    }
    let be = Arc::new(cuda);
    let sync_be = be.clone();
    let sync = move || sync_be.synchronize();
    let peak = Some(match cfg.peak_tflops {
        Some(p) => (p, given_peak(p)),
        None => {
            let (p, what) = default_peak(cfg.precision);
            (p, what.to_string())
        }
    });
    // cuDNN at the same precision: TF32 math for tf32, BFLOAT16 tensors (packed pairs,
    // `pack_bf16`) with f32 accumulation for bf16.
    #[cfg(feature = "cudnn")]
    let bf16 = cfg.precision == Precision::Bf16;
    #[cfg(feature = "cudnn")]
    let cudnn_tf32 = cfg.cudnn_tf32 || cfg.precision == Precision::Tf32;

    #[cfg(feature = "cudnn")]
    let (cudnn, mut unavailable, baseline) = {
        use crate::backend::cuda::cudnn::CudnnConv;
        match CudnnConv::new(&be, cudnn_tf32) {
            Ok(c) => {
                let v = c.version();
                let math = if bf16 {
                    "BFLOAT16 tensors, FLOAT compute, tensor cores allowed (CUDNN_DEFAULT_MATH)"
                } else if cudnn_tf32 {
                    "TF32 tensor-core (CUDNN_DEFAULT_MATH)"
                } else {
                    "fp32 FMA-only (CUDNN_FMA_MATH)"
                };
                let desc = format!(
                    "cuDNN {}.{}.{} in the same run ({math} math; algorithms chosen by \
                     cudnnFind*Algorithm, as torch.backends.cudnn.benchmark = True)",
                    v / 10000,
                    (v / 100) % 100,
                    v % 100,
                );
                let c = if bf16 { c.with_bf16() } else { c };
                (Some(c), None, desc)
            }
            Err(e) => (None, Some(e.to_string()), "cuDNN".to_string()),
        }
    };
    #[cfg(not(feature = "cudnn"))]
    #[allow(unused_mut)]
    let (mut unavailable, baseline) = (
        Some(
            "built without the `cudnn` feature (cargo build --release --features cudnn)"
                .to_string(),
        ),
        "cuDNN".to_string(),
    );
    if let Some(u) = &unavailable {
        eprintln!("advlens bench: no cuDNN baseline: {u}");
    }

    let mut rng = Rng::new(cfg.seed);
    let mut times = Vec::with_capacity(layers.len());
    for l in &layers {
        let host = [
            random(&mut rng, &l.x_shape())?,
            random(&mut rng, &l.w_shape())?,
            random(&mut rng, &l.y_shape())?,
        ];
        let x = be.upload(&host[0])?;
        let w = be.upload(&host[1])?;
        let dy = be.upload(&host[2])?;
        let p = l.params();
        let (wu, iu) = (cfg.warmup, cfg.iters);
        let fwd = median_time(wu, iu, &sync, &mut || be.conv2d(&x, &w, None, p).map(drop))?;
        let bd = median_time(wu, iu, &sync, &mut || {
            be.conv2d_backward_data(&x, &w, &dy, p).map(drop)
        })?;
        let bf = median_time(wu, iu, &sync, &mut || {
            be.conv2d_backward_filter(&x, &w, &dy, p).map(drop)
        })?;
        #[allow(unused_mut)]
        let mut base = None;
        #[allow(unused_mut)]
        let mut algorithms = None;
        #[cfg(feature = "cudnn")]
        if let Some(c) = &cudnn {
            match c.plan(l.x_shape(), l.w_shape(), p) {
                Ok(mut plan) => {
                    let bf16 = cfg.precision == Precision::Bf16;
                    let buf = |shape: [usize; 4]| -> Result<Tensor> {
                        let n = crate::tensor::numel(&shape);
                        be.zeros(&if bf16 {
                            vec![n.div_ceil(2)]
                        } else {
                            shape.to_vec()
                        })
                    };
                    let packed = |t: &Tensor| be.upload(&pack_bf16(t)?);
                    let bufs = if bf16 {
                        Some([packed(&host[0])?, packed(&host[1])?, packed(&host[2])?])
                    } else {
                        None
                    };
                    let (x, w, dy) = match &bufs {
                        Some([a, b, c]) => (a, b, c),
                        None => (&x, &w, &dy),
                    };
                    let mut y = buf(l.y_shape())?;
                    let mut dx = buf(l.x_shape())?;
                    let mut dw = buf(l.w_shape())?;
                    let cf = median_time(wu, iu, &sync, &mut || plan.forward(x, w, &mut y))?;
                    let cd =
                        median_time(wu, iu, &sync, &mut || plan.backward_data(w, dy, &mut dx))?;
                    let cw =
                        median_time(wu, iu, &sync, &mut || plan.backward_filter(x, dy, &mut dw))?;
                    base = Some([cf, cd, cw]);
                    algorithms = Some(plan.algorithms());
                }
                Err(e) => {
                    // One layer cuDNN cannot run must not hide the others' figures; the totals
                    // then carry no baseline.
                    eprintln!("advlens bench: cuDNN failed on {}: {e}", l.name);
                    unavailable.get_or_insert_with(|| format!("{}: {e}", l.name));
                }
            }
        }
        times.push(LayerTimes {
            ours: [fwd, bd, bf],
            base,
            algorithms,
        });
    }
    Ok(report(
        cfg,
        &layers,
        times,
        be.name(),
        format!("{} ({})", be.device_name(), be.arch()),
        baseline,
        unavailable,
        peak,
    ))
}

#[cfg(not(feature = "cuda"))]
pub fn run_cuda(_cfg: &ConvBenchConfig, _ordinal: usize) -> Result<ConvBenchReport> {
    Err(Error::Device(
        "this advlens was built without the `cuda` feature (cargo build --release --features \
         cudnn for the bench with its cuDNN baseline)"
            .into(),
    ))
}

/// The values of `t` rounded to bfloat16 (round to nearest even, the `half` crate) and packed two
/// to an f32 slot, element 2i in the low 16 bits of slot i: the bytes of a dense bf16 tensor, for
/// cuDNN's BFLOAT16 descriptors. An odd count leaves the last high half zero.
pub fn pack_bf16(t: &Tensor) -> Result<Tensor> {
    let v = t.cpu("pack_bf16")?;
    let bits = |x: f32| u32::from(half::bf16::from_f32(x).to_bits());
    let packed: Vec<f32> = v
        .chunks(2)
        .map(|p| f32::from_bits(bits(p[0]) | (p.get(1).map_or(0, |&h| bits(h)) << 16)))
        .collect();
    Tensor::from_vec(&[packed.len()], packed)
}

/// Printed above every table measured on the emulated driver.
pub const EMULATED_NOTE: &str = "NOTE: this is the emulated CUDA device (tests/cuda-emu): the \
timings below are CPU timings of the emulator, not GPU timings";

/// The human-readable table of a report.
pub fn render(r: &ConvBenchReport) -> String {
    use std::fmt::Write;
    let gpu = r.device != "cpu";
    let (unit, scale) = if gpu {
        ("TFLOP/s", 1e-3)
    } else {
        ("GFLOP/s", 1.0)
    };
    let base = if gpu { "cuDNN" } else { "sgemm" };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "advlens bench conv: {}{} input {}x{} batch {}, {} on {} ({}), commit {}",
        r.net,
        r.width.map_or(String::new(), |w| format!(" width {w}")),
        r.input,
        r.input,
        r.batch,
        r.dtype,
        r.device,
        r.device_name,
        r.commit
    );
    let _ = writeln!(
        s,
        "timing: median of {} runs after {} warm-up runs, synchronized; ours: {}; baseline: {}",
        r.iters, r.warmup, r.kernels, r.baseline
    );
    if r.emulated {
        let _ = writeln!(s, "{EMULATED_NOTE}");
    }
    if let Some(u) = &r.baseline_unavailable {
        let _ = writeln!(s, "no baseline figures: {u}");
    }
    if let Some(a) = &r.peak_assumption {
        let _ = writeln!(s, "floor = FLOPs / peak; {a}");
    }
    let _ = writeln!(
        s,
        "{:<24} {:<32} {:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "layer",
        "shape",
        "pass",
        "GFLOP",
        "ms",
        unit,
        format!("{base} ms"),
        format!("{base} {}", if gpu { "TF/s" } else { "GF/s" }),
        "ours/base",
        if r.peak_tflops.is_some() { "%peak" } else { "" }
    );
    let row = |s: &mut String, name: &str, shape: &str, pass: &str, o: &OpResult| {
        let (bms, brate) = match &o.baseline {
            Some(b) => (format!("{:.3}", b.ms), format!("{:.1}", b.gflops * scale)),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:<24} {:<32} {:<10} {:>8.3} {:>9.3} {:>9.1} {:>9} {:>9} {:>8} {:>7}",
            name,
            shape,
            pass,
            o.gflop,
            o.ours.ms,
            o.ours.gflops * scale,
            bms,
            brate,
            o.time_ratio.map_or("-".into(), |t| format!("{t:.2}")),
            o.peak_fraction
                .map_or(String::new(), |f| format!("{:.1}", f * 100.0))
        );
    };
    for l in &r.layers {
        row(&mut s, &l.layer.name, &l.shape, "forward", &l.forward);
        row(&mut s, "", "", "bwd-data", &l.backward_data);
        row(&mut s, "", "", "bwd-filter", &l.backward_filter);
        if let Some(a) = &l.baseline_algorithms {
            let _ = writeln!(s, "{:<24} cuDNN: {a}", "");
        }
    }
    row(&mut s, "TOTAL", "", "forward", &r.totals.forward);
    row(&mut s, "", "", "bwd-data", &r.totals.backward_data);
    row(&mut s, "", "", "bwd-filter", &r.totals.backward_filter);
    row(&mut s, "", "", "all", &r.totals.all);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16 packing: round to nearest even (1 + 2^-8 is a tie and goes to 1; 1 + 3 * 2^-9 rounds
    /// up), element 2i in the low half, and an odd count's last high half zero.
    #[test]
    fn pack_bf16_rounds_and_packs_pairs_low_first() {
        let v = [
            1.0f32,
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-9),
            -2.5,
            7.0,
        ];
        let t = Tensor::from_vec(&[5], v.to_vec()).unwrap();
        let p = pack_bf16(&t).unwrap();
        assert_eq!(p.shape(), &[3]);
        let words: Vec<u32> = p.cpu("test").unwrap().iter().map(|f| f.to_bits()).collect();
        let bf = |x: f32| x.to_bits() >> 16;
        assert_eq!(words[0] & 0xffff, bf(1.0));
        assert_eq!(words[0] >> 16, bf(1.0), "the tie rounds to even (1.0)");
        assert_eq!(words[1] & 0xffff, bf(1.0 + 2f32.powi(-7)), "rounds up");
        assert_eq!(words[1] >> 16, bf(-2.5));
        assert_eq!(words[2], bf(7.0), "odd count: high half zero");
    }

    #[test]
    fn resnet18_layers_follow_torchvision() {
        let l = conv_layers("resnet18", 2, 224).unwrap();
        // stem + 8 blocks x 2 convs + 3 downsamples
        assert_eq!(l.len(), 20);
        assert_eq!(l[0].name, "conv1");
        assert_eq!((l[0].k, l[0].r, l[0].stride, l[0].p), (64, 7, 2, 112));
        let ds = l
            .iter()
            .find(|c| c.name == "layer2.0.downsample.0")
            .unwrap();
        assert_eq!((ds.c, ds.h, ds.k, ds.r, ds.p), (64, 56, 128, 1, 28));
        let last = l.iter().find(|c| c.name == "layer4.1.conv2").unwrap();
        assert_eq!(
            (last.n, last.c, last.h, last.k, last.p),
            (2, 512, 7, 512, 7)
        );
    }

    #[test]
    fn vgg16_and_alexnet_layers() {
        let v = conv_layers("vgg16", 1, 224).unwrap();
        assert_eq!(v.len(), 13);
        assert_eq!((v[12].c, v[12].h, v[12].k), (512, 14, 512));
        let total: f64 = v.iter().map(|l| l.flops()).sum();
        // torchvision VGG-16 convs: 15.35 GMACs at 224x224 -> ~30.7 GFLOP forward.
        assert!((total / 1e9 - 30.7).abs() < 0.3, "{total}");
        let a = conv_layers("alexnet", 1, 224).unwrap();
        assert_eq!(a.len(), 5);
        assert_eq!((a[0].r, a[0].stride, a[0].p), (11, 4, 55));
        assert_eq!((a[4].c, a[4].h), (256, 13));
        assert!(conv_layers("lenet", 1, 224).is_err());
    }
}
