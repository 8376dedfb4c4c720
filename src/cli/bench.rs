//! `advlens bench conv`: per-layer conv timings with a same-run baseline (sgemm on the CPU,
//! cuDNN on CUDA). The numerics live in `crate::bench`.
use std::path::PathBuf;

use super::Ctx;
use crate::backend::DeviceRequest;
use crate::bench::conv::{self, ConvBenchConfig, NETS};
use crate::bench::model::{self, ModelBenchConfig};
use crate::error::{Error, Result};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Time forward, backward-data and backward-filter of every conv layer of an ImageNet-size
    /// model; on CUDA next to cuDNN in the same run (build with --features cudnn), on the CPU
    /// next to a plain sgemm of the same GEMM work.
    #[command(
        after_help = "Examples:\n  advlens --device cuda bench conv --net resnet18 --batch 32 --json\n  advlens --device cuda --precision tf32 bench conv --net vgg16 --batch 64\n  advlens --device cpu bench conv --net vgg16 --batch 1 --layers features.0,features.2"
    )]
    Conv(ConvArgs),
    /// Time whole-model workloads of a small model in-process (training step, targeted I-FGS,
    /// one ensemble-attack step), the same units `benches/peer_cpu.py` times in PyTorch.
    #[command(
        after_help = "Examples:\n  advlens --device cpu --threads 2 bench model --model small-vgg16 --width 8 --batch 128 --json\n  advlens --device cpu bench model --model small-resnet18 --width 16 --workloads train,ifgs"
    )]
    Model(ModelArgs),
}

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// small-alexnet, small-vgg16 or small-resnet18 (1x28x28 inputs, 10 classes).
    #[arg(long)]
    pub model: String,
    /// Width knob (channels of the first conv).
    #[arg(long, default_value_t = 8)]
    pub width: usize,
    /// Batch of the train and ifgs workloads.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Comma-separated workloads: train, ifgs, ensemble.
    #[arg(long, value_delimiter = ',', default_value = "train,ifgs,ensemble")]
    pub workloads: Vec<String>,
    /// I-FGS steps T.
    #[arg(long, default_value_t = 10)]
    pub ifgs_steps: usize,
    /// Source images of the ensemble workload (each replicated once per target).
    #[arg(long, default_value_t = 32)]
    pub sources: usize,
    /// Targets per source image of the ensemble workload.
    #[arg(long, default_value_t = 9)]
    pub targets: usize,
    /// Unmeasured runs per workload before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Measured runs per workload; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
}

#[derive(clap::Args, Debug)]
pub struct ConvArgs {
    /// Model whose conv layers are timed: vgg16, resnet18, alexnet (ImageNet-size) or
    /// small-vgg16, small-alexnet, small-resnet18 (the default run's models).
    #[arg(long)]
    pub net: String,
    /// Batch size (default: 1 on the CPU, 32 on CUDA).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Input height and width (default: 224, or 28 for the small nets).
    #[arg(long)]
    pub input: Option<usize>,
    /// Channel width of a small net (default: its default width, 8).
    #[arg(long)]
    pub width: Option<usize>,
    /// Unmeasured runs per pass before timing (default: 1 on the CPU, 3 on CUDA).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Measured runs per pass; the median is reported (default: 3 on the CPU, 20 on CUDA).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Only these conv layers (comma-separated torchvision names, e.g. conv1,layer1.0.conv1).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    /// Peak in TFLOP/s for the floor. Default on CUDA by --precision, H100 SXM: f32 67 without
    /// tensor cores, tf32 495, bf16 990 dense; on the CPU, measured with an FMA loop on the same
    /// threads once the layers are timed.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Let cuDNN use TF32 tensor cores (default: FMA-only fp32, the same arithmetic as ours;
    /// always on with --precision tf32).
    #[arg(long)]
    pub cudnn_tf32: bool,
    /// Our CUDA f32 kernels to time against the baseline: v1 (direct), v2 (64x64 tiles) or v3
    /// (128x128 / 64x128 tiles, cp.async; the default). CUDA and f32 only.
    #[arg(long)]
    pub conv_version: Option<String>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, c: &BenchCommand) -> Result<()> {
    match c {
        BenchCommand::Conv(a) => run_conv(ctx, a),
        BenchCommand::Model(a) => run_model(ctx, a),
    }
}

fn run_model(ctx: &Ctx, a: &ModelArgs) -> Result<()> {
    let cfg = ModelBenchConfig {
        model: a.model.clone(),
        width: a.width,
        batch: a.batch,
        warmup: a.warmup,
        iters: a.iters,
        workloads: a.workloads.clone(),
        ifgs_steps: a.ifgs_steps,
        sources: a.sources,
        targets: a.targets,
        seed: ctx.seed,
    };
    cfg.validate()?;
    let be = ctx.backend()?;
    let report = model::run(&cfg, be.as_ref())?;
    super::emit(ctx, &report, || model::render(&report));
    Ok(())
}

fn run_conv(ctx: &Ctx, a: &ConvArgs) -> Result<()> {
    if !NETS.contains(&a.net.as_str()) {
        return Err(Error::unknown("net", a.net.clone(), NETS));
    }
    if let Some(p) = a.peak_tflops {
        if !(p.is_finite() && p > 0.0) {
            return Err(Error::InvalidArg(format!(
                "--peak-tflops must be a positive number, got {p}"
            )));
        }
    }
    // Which device: an explicit cuda request that cannot be met is an error (with the reason);
    // auto falls back to the CPU and says so.
    let cuda = match ctx.device {
        DeviceRequest::Cpu => None,
        DeviceRequest::Cuda(n) => Some(n),
        DeviceRequest::Auto => match crate::backend::open(DeviceRequest::Auto)?.name() {
            name if name.starts_with("cuda") => Some(0),
            _ => None,
        },
    };
    let gpu = cuda.is_some();
    let cfg = ConvBenchConfig {
        net: a.net.clone(),
        batch: a.batch.unwrap_or(if gpu { 32 } else { 1 }),
        input: a.input.unwrap_or_else(|| conv::default_input(&a.net)),
        width: a.width,
        warmup: a.warmup.unwrap_or(if gpu { 3 } else { 1 }),
        iters: a.iters.unwrap_or(if gpu { 20 } else { 3 }),
        layers: a.layers.clone(),
        peak_tflops: a.peak_tflops,
        cudnn_tf32: a.cudnn_tf32,
        precision: ctx.precision,
        conv_version: a.conv_version.clone(),
        seed: ctx.seed,
    };
    cfg.validate_conv_version(gpu)?;
    if cfg.iters == 0 {
        return Err(Error::InvalidArg("--iters must be at least 1".into()));
    }
    let report = match cuda {
        Some(n) => conv::run_cuda(&cfg, n)?,
        None => conv::run_cpu(&cfg)?,
    };
    if let Some(path) = &a.out {
        crate::io::write_json(path, &report)?;
    }
    super::emit(ctx, &report, || conv::render(&report));
    Ok(())
}
