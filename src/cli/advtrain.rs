//! `advlens advtrain`: adversarial fine-tuning with the consistency loss (E6, paper Eq. 8).
use std::path::PathBuf;
use std::sync::Arc;

use super::{emit, Ctx};
use crate::data::Dataset;
use crate::error::Result;
use crate::experiments::advtrain::{advtrain, AdvTrainConfig, Consistency};
use crate::nn::optim::OptimConfig;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  advlens advtrain --ckpt runs/resnet/last.safetensors --data data/fmnist/train.safetensors \
    --val data/fmnist/test.safetensors --val-limit 1000 --epochs 1 --out runs/resnet-adv"
)]
pub struct AdvTrainArgs {
    /// Checkpoint of the trained model to fine-tune (from `advlens train`).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Training split.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation split: clean and iterative-FGS accuracy after every epoch.
    #[arg(long)]
    pub val: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Weight of the clean cross-entropy.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Weight of the consistency loss ||phi(x) - phi(G(x, y*))||^2.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f32,
    /// Form of the consistency term: sum (the paper's ||phi(x) - phi(x*)||^2) or relative (the
    /// same divided by ||phi(x)||^2 + ||phi(x*)||^2, scale-free; not in the paper).
    #[arg(long, default_value = "sum", value_parser = ["sum", "relative"])]
    pub consistency: String,
    /// Iterative-FGS steps T of G(x, y*).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Iterative-FGS step size on the 0..255 pixel scale.
    #[arg(long, default_value_t = 2.0)]
    pub eps: f32,
    /// Optimiser of the fine-tune.
    #[arg(long, default_value = "adam", value_parser = ["sgd", "adam"])]
    pub optim: String,
    /// Learning rate.
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 5e-5)]
    pub weight_decay: f32,
    /// Output directory: epoch-XXX.safetensors, last.safetensors, advtrain.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from a checkpoint written by an earlier `advlens advtrain` with the same settings.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Fine-tune on the first N images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Validate on the first N images only.
    #[arg(long)]
    pub val_limit: Option<usize>,
}

pub fn run(ctx: &Ctx, a: &AdvTrainArgs) -> Result<()> {
    let cfg = AdvTrainConfig {
        alpha: a.alpha,
        beta: a.beta,
        consistency: if a.consistency == "relative" {
            Consistency::Relative
        } else {
            Consistency::Sum
        },
        steps: a.steps,
        eps: a.eps,
        epochs: a.epochs,
        batch: a.batch,
        optim: if a.optim == "sgd" {
            OptimConfig::sgd(a.lr, 0.9, a.weight_decay)
        } else {
            OptimConfig::adam(a.lr, a.weight_decay)
        },
        seed: ctx.seed,
        limit: a.limit,
        val_limit: a.val_limit,
        precision: ctx.precision,
    };
    cfg.validate()?;
    let mut inputs = vec![("--ckpt", a.ckpt.as_path()), ("--data", a.data.as_path())];
    if let Some(v) = &a.val {
        inputs.push(("--val", v.as_path()));
    }
    let _lock = super::claim_out_dir(&a.out, &inputs)?;
    let train = Arc::new(Dataset::open(&a.data)?);
    let val = match &a.val {
        Some(p) => Some(Arc::new(Dataset::open(p)?)),
        None => None,
    };
    let be = ctx.backend()?;
    let json = ctx.json;
    let epochs = cfg.epochs;
    let out = advtrain(
        be.as_ref(),
        &a.ckpt,
        &cfg,
        &train,
        val.as_ref(),
        &a.out,
        a.resume.as_deref(),
        &mut |r| {
            if !json {
                super::say(&r.line(epochs));
            }
        },
    )?;
    emit(ctx, &out.history, || {
        format!("wrote {}", out.last_checkpoint.display())
    });
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  advlens consistency-scale --ckpt runs/vgg/last.safetensors --data data/fmnist/train.safetensors\n  \
    advlens consistency-scale --init small-vgg16 --widths 4,8,16 --data data/fmnist/train.safetensors\n\n\
    Batches and attack targets are drawn from --seed, as `advtrain` draws its own. The reproduce \
    stage scale-<model> probes with that model's E6 seed (--seed + 100 + the model's index in the \
    profile), so `--seed 101` repeats the figure of the profile's second model at seed 0."
)]
pub struct ScaleArgs {
    /// Trained checkpoints to probe (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub ckpt: Vec<PathBuf>,
    /// Probe freshly initialised models of this architecture instead (with --widths), to see how
    /// the term grows with the size of phi before training changes its scale.
    #[arg(long)]
    pub init: Option<String>,
    /// Widths of the --init models (default 8; only with --init).
    #[arg(long, value_delimiter = ',')]
    pub widths: Vec<usize>,
    /// Training split (the fine-tune's data).
    #[arg(long)]
    pub data: PathBuf,
    /// Images to probe (the first ones of the fine-tune's first epoch).
    #[arg(long, default_value_t = 512)]
    pub images: usize,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f32,
    /// Iterative-FGS steps T of G(x, y*).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Iterative-FGS step size on the 0..255 pixel scale.
    #[arg(long, default_value_t = 2.0)]
    pub eps: f32,
}

/// `advlens consistency-scale`: the size of Eq. 8's consistency term against its cross-entropies.
pub fn run_scale(ctx: &Ctx, a: &ScaleArgs) -> Result<()> {
    use crate::experiments::scale::probe;
    use crate::nn::{Model, ModelSpec};
    if a.ckpt.is_empty() == a.init.is_none() {
        return Err(crate::error::Error::InvalidArg(
            "consistency-scale: give either --ckpt or --init".into(),
        ));
    }
    if a.init.is_none() && !a.widths.is_empty() {
        return Err(crate::error::Error::InvalidArg(
            "consistency-scale: --widths sizes the --init models; a --ckpt has its own width"
                .into(),
        ));
    }
    let cfg = AdvTrainConfig {
        alpha: a.alpha,
        steps: a.steps,
        eps: a.eps,
        batch: a.batch,
        seed: ctx.seed,
        precision: ctx.precision,
        ..AdvTrainConfig::default()
    };
    cfg.validate()?;
    let data = Arc::new(Dataset::open(&a.data)?);
    let be = ctx.backend()?;
    let mut models = Vec::new();
    for p in &a.ckpt {
        models.push(Model::load(p)?);
    }
    if let Some(name) = &a.init {
        let widths = if a.widths.is_empty() {
            &[8][..]
        } else {
            &a.widths[..]
        };
        for &w in widths {
            let mut spec = ModelSpec::new(name, data.num_classes(), data.shape());
            spec.width = w;
            models.push(Model::from_spec(&spec, ctx.seed)?);
        }
    }
    let mut out = Vec::new();
    for mut m in models {
        m.to_backend(be.as_ref())?;
        let r = probe(be.as_ref(), &mut m, &data, a.images, &cfg)?;
        if !ctx.json {
            super::say(&r.line());
        }
        out.push(r);
    }
    if ctx.json {
        emit(ctx, &out, String::new);
    }
    Ok(())
}
