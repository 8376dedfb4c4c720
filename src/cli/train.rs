//! `advlens train` and `advlens eval`: argument parsing and printing around `crate::nn::train`.
use std::path::PathBuf;
use std::sync::Arc;

use super::{emit, Ctx};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::optim::OptimConfig;
use crate::nn::train::{self, RunDirs, TrainConfig};
use crate::nn::Model;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  advlens train --model small-resnet18 --data data/fmnist/train.safetensors \
    --val data/fmnist/test.safetensors --epochs 3 --out runs/resnet\n  \
    advlens train --model small-resnet18 --data data/fmnist/train.safetensors --epochs 5 \
    --out runs/resnet --resume runs/resnet/last.safetensors"
)]
pub struct TrainArgs {
    /// Model: alexnet, vgg16, resnet18 (3x224x224) or small-alexnet, small-vgg16, small-resnet18.
    #[arg(long)]
    pub model: String,
    /// Training split (safetensors from `advlens data import-*`).
    #[arg(long)]
    pub data: PathBuf,
    /// Validation split, evaluated after every epoch.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Total number of epochs (a resumed run continues up to it).
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Base learning rate (default 0.001 for adam, 0.05 for sgd).
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value = "adam", value_parser = ["sgd", "adam"])]
    pub optim: String,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// L2 weight decay (added to the gradient, torch semantics).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Comma-separated 0-based epochs at which the lr is multiplied by --lr-gamma (e.g. 2,4).
    #[arg(long, value_delimiter = ',')]
    pub lr_milestones: Vec<usize>,
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f32,
    /// Width knob of the small models (channels of the first conv; default 8).
    #[arg(long)]
    pub width: Option<usize>,
    /// Output directory: epoch-XXX.safetensors, last.safetensors, train.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from a checkpoint written by `advlens train` (its config and seed are used).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Train on the first N images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Validate on the first N images only.
    #[arg(long)]
    pub val_limit: Option<usize>,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  advlens eval --ckpt runs/resnet/last.safetensors --data data/fmnist/test.safetensors"
)]
pub struct EvalArgs {
    /// Checkpoint written by `advlens train`.
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Split to evaluate on.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Evaluate the first N images only.
    #[arg(long)]
    pub limit: Option<usize>,
}

pub fn run_train(ctx: &Ctx, a: &TrainArgs) -> Result<()> {
    let optim = match a.optim.as_str() {
        "sgd" => OptimConfig::sgd(a.lr.unwrap_or(0.05), a.momentum, a.weight_decay),
        "adam" => OptimConfig::adam(a.lr.unwrap_or(1e-3), a.weight_decay),
        o => return Err(Error::unknown("optimiser", o, &["sgd", "adam"])),
    };
    let cfg = TrainConfig {
        model: a.model.clone(),
        width: a.width,
        epochs: a.epochs,
        batch: a.batch,
        optim,
        lr_milestones: a.lr_milestones.clone(),
        lr_gamma: a.lr_gamma,
        seed: ctx.seed,
        limit: a.limit,
        val_limit: a.val_limit,
        precision: ctx.precision,
    };
    // Fail on a bad model name before opening data or a device.
    if !crate::nn::KNOWN_MODELS.contains(&a.model.as_str()) {
        return Err(Error::unknown("model", &a.model, crate::nn::KNOWN_MODELS));
    }
    let mut inputs = vec![("--data", a.data.as_path())];
    if let Some(v) = &a.val {
        inputs.push(("--val", v.as_path()));
    }
    let _lock = super::claim_out_dir(&a.out, &inputs)?;
    let data = Arc::new(Dataset::open(&a.data)?);
    let val = match &a.val {
        Some(p) => Some(Arc::new(Dataset::open(p)?)),
        None => None,
    };
    let be = ctx.backend()?;
    let dirs = RunDirs {
        out: a.out.clone(),
        resume: a.resume.clone(),
    };
    let json = ctx.json;
    let epochs = a.epochs;
    let out = train::train(be.as_ref(), &cfg, &data, val.as_ref(), &dirs, &mut |r| {
        if !json {
            super::say(&r.line(epochs));
        }
    })?;
    let summary = serde_json::json!({
        "model": out.model.spec(),
        "params": out.model.num_params(),
        "config": out.config,
        "history": out.history,
        "checkpoint": out.last_checkpoint,
    });
    emit(ctx, &summary, || {
        format!(
            "{} ({} params) -> {}",
            out.model.name(),
            out.model.num_params(),
            out.last_checkpoint.display()
        )
    });
    Ok(())
}

pub fn run_eval(ctx: &Ctx, a: &EvalArgs) -> Result<()> {
    let mut model = Model::load(&a.ckpt)?;
    let data = Arc::new(Dataset::open(&a.data)?);
    let be = ctx.backend()?;
    let r = train::evaluate(be.as_ref(), &mut model, &data, a.batch.max(1), a.limit)?;
    let value = serde_json::json!({
        "checkpoint": a.ckpt,
        "data": a.data,
        "model": model.spec(),
        "images": r.images,
        "top1": r.top1,
        "top5": r.top5,
        "loss": r.loss,
        "seconds": r.seconds,
    });
    emit(ctx, &value, || {
        format!(
            "{} on {} ({} images): top-1 {:.2}%  top-5 {:.2}%  loss {:.4}  ({:.1}s)",
            model.name(),
            a.data.display(),
            r.images,
            100.0 * r.top1,
            100.0 * r.top5,
            r.loss,
            r.seconds
        )
    });
    Ok(())
}
