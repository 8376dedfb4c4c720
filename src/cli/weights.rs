//! `advlens weights ...`: bring outside weights in as advlens checkpoints.
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{emit, Ctx};
use crate::error::{Error, Result};
use crate::nn::import::{import_weights, ImportConfig};

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Turn a torchvision state_dict (exported to safetensors) into an advlens checkpoint that
    /// every command accepts (train --resume aside: it has no optimiser state). BatchNorm
    /// `num_batches_tracked` buffers may be absent, as torch's load_state_dict allows.
    #[command(
        after_help = "Example (in Python: safetensors.torch.save_file(torchvision.models.resnet18(weights='DEFAULT').state_dict(), 'resnet18-sd.safetensors')):\n  \
        advlens weights import --model resnet18 --from resnet18-sd.safetensors --classes imagenet_synsets.txt --out weights/resnet18.safetensors"
    )]
    Import(ImportArgs),
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Architecture: alexnet, vgg16, resnet18 (or a small-* model).
    #[arg(long)]
    pub model: String,
    /// The state_dict as safetensors, torchvision parameter names.
    #[arg(long)]
    pub from: PathBuf,
    /// Class list, one per line (wnids or names) in the order of the last layer's outputs.
    #[arg(long)]
    pub classes: PathBuf,
    /// Input shape CxHxW.
    #[arg(long, default_value = "3x224x224")]
    pub in_shape: String,
    /// Width knob (default: the model's; torchvision's for the full-size models).
    #[arg(long)]
    pub width: Option<usize>,
    /// The checkpoint to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// Parse `CxHxW` (each 1..=65536).
pub fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let bad = || Error::InvalidArg(format!("--in-shape '{s}': expected CxHxW, e.g. 3x224x224"));
    let d: Vec<usize> = s
        .split('x')
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    match d[..] {
        [c, h, w] if [c, h, w].iter().all(|&v| (1..=65536).contains(&v)) => Ok((c, h, w)),
        _ => Err(bad()),
    }
}

pub fn run(ctx: &Ctx, c: &WeightsCommand) -> Result<()> {
    match c {
        WeightsCommand::Import(a) => {
            let cfg = ImportConfig {
                model: a.model.clone(),
                from: a.from.clone(),
                classes: a.classes.clone(),
                out: a.out.clone(),
                in_shape: parse_shape(&a.in_shape)?,
                width: a.width,
            };
            let r = import_weights(&cfg)?;
            emit(ctx, &r, || format!("imported {}", r.line()));
            Ok(())
        }
    }
}
