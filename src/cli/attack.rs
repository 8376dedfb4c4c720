//! `advlens attack ...`: FGS tables, iterative FGS, the ensemble attack and merging its parts.
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{emit, Ctx};
use crate::attack::ensemble::{parse_part, DEFAULT_BATCH, DEFAULT_SHARD_SIZE};
use crate::attack::{self, EnsembleAttack, EnsembleRun, TargetRule, DEFAULT_LAMBDA};
use crate::data::Dataset;
use crate::error::Result;
use crate::nn::Model;

#[derive(Subcommand, Debug)]
pub enum AttackCommand {
    /// Accuracy under the fast gradient sign attack (paper Eq. 13, Table 2): top-1/top-5 for
    /// each eps (0..255 pixel scale) and each model.
    #[command(
        after_help = "Example:\n  advlens attack fgs --ckpt runs/vgg/last.safetensors --data data/fmnist/test.safetensors --eps 1,5 --limit 1000"
    )]
    Fgs(FgsArgs),
    /// Targeted iterative FGS (paper Eq. 9-11): T steps of size eps toward a target, clipped to
    /// [0, 255]; reports target success and true-label accuracy.
    #[command(
        after_help = "Example:\n  advlens attack ifgs --ckpt runs/vgg/last.safetensors --data data/fmnist/test.safetensors --eps 1 --steps 10 --target least-likely"
    )]
    Ifgs(IfgsArgs),
    /// Ensemble-optimisation attack (paper Eq. 1): builds the sharded adversarial set in --out
    /// (resumable; --shard K/N for independent jobs, then `attack merge`).
    #[command(
        after_help = "Example:\n  advlens attack ensemble --models a.safetensors,v.safetensors,r.safetensors --data data/fmnist/test.safetensors --targets 9 --steps 20 --lr 5 --out adv/\n  advlens attack ensemble ... --shard 2/8 --out adv/part2   # one job of eight"
    )]
    Ensemble(EnsembleArgs),
    /// Join the parts of a `--shard K/N` ensemble run into one adversarial set (checks that the
    /// parameters match and that the parts cover the source range without gaps or overlaps).
    #[command(
        after_help = "Example:\n  advlens attack merge --out adv/ adv/part1 adv/part2 adv/part3"
    )]
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct FgsArgs {
    /// Model checkpoint(s), comma-separated (one table row per model).
    #[arg(long, value_delimiter = ',', required = true)]
    pub ckpt: Vec<PathBuf>,
    /// Dataset split (.safetensors), e.g. the validation split.
    #[arg(long)]
    pub data: PathBuf,
    /// Step sizes on the 0..255 pixel scale, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,5")]
    pub eps: Vec<f32>,
    /// Use the first N images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Also write the table as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct IfgsArgs {
    /// Model checkpoint.
    #[arg(long)]
    pub ckpt: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// Step size per iteration on the 0..255 pixel scale.
    #[arg(long, default_value_t = 1.0)]
    pub eps: f32,
    /// Iterations T (paper: 10).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Target rule: least-likely (lowest clean probability) or random (seeded by --seed).
    #[arg(long, default_value = "least-likely")]
    pub target: TargetRule,
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct EnsembleArgs {
    /// Model checkpoints of the ensemble, comma-separated (same classes and input shape).
    #[arg(long, value_delimiter = ',', required = true)]
    pub models: Vec<PathBuf>,
    /// Dataset split to attack (e.g. the validation split).
    #[arg(long)]
    pub data: PathBuf,
    /// Targets per image: the least likely classes (paper: 10; at most classes - 1, so 9 on
    /// Fashion-MNIST).
    #[arg(long, default_value_t = 10)]
    pub targets: usize,
    /// Adam iterations (paper: 10-20).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Adam step size on the 0..255 pixel scale (paper: 5).
    #[arg(long, default_value_t = 5.0)]
    pub lr: f32,
    /// Weight of the distance term lambda * ||x* - x||_2 (unsquared L2, 0..255 scale).
    #[arg(long, default_value_t = DEFAULT_LAMBDA)]
    pub lambda: f32,
    /// Source images per batch (each is attacked for all its targets in the same batch).
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Source images per output shard (the unit of resume and of --shard).
    #[arg(long, default_value_t = DEFAULT_SHARD_SIZE)]
    pub shard_size: usize,
    /// Attack the first N images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Build part K of N (contiguous shards), e.g. 3/8 for a job array; join with `attack merge`.
    #[arg(long)]
    pub shard: Option<String>,
    /// Output directory (shards, manifest, report).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Output directory of the joined set.
    #[arg(long)]
    pub out: PathBuf,
    /// Part directories (or part manifest files).
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
}

pub fn run(ctx: &Ctx, c: &AttackCommand) -> Result<()> {
    match c {
        AttackCommand::Fgs(a) => run_fgs(ctx, a),
        AttackCommand::Ifgs(a) => run_ifgs(ctx, a),
        AttackCommand::Ensemble(a) => run_ensemble(ctx, a),
        AttackCommand::Merge(a) => {
            // The parts may lie inside --out (`merge --out adv adv/part1 ...`): their shards are
            // then kept in place. Only one run may write --out at a time.
            let _lock = crate::io::RunLock::acquire(&a.out)?;
            let r = attack::merge(&a.out, &a.parts)?;
            emit(ctx, &r, || r.line());
            Ok(())
        }
    }
}

fn run_fgs(ctx: &Ctx, a: &FgsArgs) -> Result<()> {
    if let Some(out) = &a.out {
        let mut inputs = vec![("--data", a.data.as_path())];
        inputs.extend(a.ckpt.iter().map(|p| ("--ckpt", p.as_path())));
        super::guard_out(out, &inputs)?;
    }
    let ds = Dataset::open(&a.data)?;
    let mut models = a
        .ckpt
        .iter()
        .map(|p| Model::load(p))
        .collect::<Result<Vec<_>>>()?;
    let be = ctx.backend()?;
    let mut reports = Vec::new();
    for (m, p) in models.iter_mut().zip(&a.ckpt) {
        let r = attack::fgs_table(be.as_ref(), m, p, &ds, &a.eps, a.batch, a.limit)?;
        if !ctx.json {
            super::say(&r.line());
        }
        reports.push(r);
    }
    if let Some(out) = &a.out {
        crate::io::write_json(out, &reports)?;
    }
    if ctx.json {
        emit(ctx, &reports, String::new);
    }
    Ok(())
}

fn run_ifgs(ctx: &Ctx, a: &IfgsArgs) -> Result<()> {
    if let Some(out) = &a.out {
        super::guard_out(out, &[("--data", &a.data), ("--ckpt", &a.ckpt)])?;
    }
    let ds = Dataset::open(&a.data)?;
    let mut model = Model::load(&a.ckpt)?;
    let be = ctx.backend()?;
    let r = attack::ifgs_eval(
        be.as_ref(),
        &mut model,
        &a.ckpt,
        &ds,
        a.eps,
        a.steps,
        a.target,
        ctx.seed,
        a.batch,
        a.limit,
    )?;
    if let Some(out) = &a.out {
        crate::io::write_json(out, &r)?;
    }
    emit(ctx, &r, || r.line());
    Ok(())
}

fn run_ensemble(ctx: &Ctx, a: &EnsembleArgs) -> Result<()> {
    let part = a.shard.as_deref().map(parse_part).transpose()?;
    let mut inputs = vec![("--data", a.data.as_path())];
    inputs.extend(a.models.iter().map(|p| ("--models", p.as_path())));
    let _lock = super::claim_out_dir(&a.out, &inputs)?;
    let cfg = EnsembleRun {
        models: a.models.clone(),
        data: a.data.clone(),
        out: a.out.clone(),
        targets: a.targets,
        attack: EnsembleAttack {
            steps: a.steps,
            lr: a.lr,
            lambda: a.lambda,
            ..EnsembleAttack::default()
        },
        batch: a.batch,
        shard_size: a.shard_size,
        limit: a.limit,
        part,
        seed: ctx.seed,
    };
    let be = ctx.backend()?;
    let r = attack::run_ensemble(be.as_ref(), &cfg)?;
    emit(ctx, &r, || r.line());
    Ok(())
}
