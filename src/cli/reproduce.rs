//! `advlens reproduce`: every experiment of the paper, one command, one report.
use std::path::PathBuf;

use super::{emit, Ctx};
use crate::attack::ensemble::parse_part;
use crate::backend::DeviceRequest;
use crate::error::{Error, Result};
use crate::experiments::reproduce::{
    reproduce, reproduce_stage, stage_names, Profile, ReproduceConfig,
};
use crate::experiments::slurm::{emit_slurm, sh_quote, SlurmOptions};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  advlens reproduce                      # default profile, Fashion-MNIST from Debian's package\n  \
    advlens reproduce --profile quick --out runs/quick\n  \
    advlens --device cuda reproduce --profile full --data data/imagenet --weights weights/ --out runs/imagenet\n  \
    advlens --device cuda reproduce --profile full --out /shared/run --shards 16 --partition gpu --emit slurm jobs/ && jobs/submit.sh\n  \
    advlens reproduce --profile quick --out runs/quick --stage e2 --shard 2/3   # one array task"
)]
pub struct ReproduceArgs {
    /// quick (a smoke test), default (Fashion-MNIST on a 2-core CPU, ~20 min) or full (GPU box).
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// Folder with train.safetensors and test.safetensors (or val.safetensors) from `advlens data
    /// import-*`. Default: Fashion-MNIST imported from --fmnist into OUT/data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Folder of pretrained weights <model>.safetensors (torchvision names): no training.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Class hierarchy JSON from `advlens wordnet build` (default: built from WordNet).
    #[arg(long)]
    pub hierarchy: Option<PathBuf>,
    /// WordNet 3.0 dict folder (Debian: wordnet-base).
    #[arg(long, default_value = "/usr/share/wordnet")]
    pub wordnet: PathBuf,
    /// Fashion-MNIST IDX folder (Debian: dataset-fashion-mnist).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub fmnist: PathBuf,
    /// Output folder: stage caches, results.json, report.md, index.html.
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Run one stage only (prepare, e1-MODEL, e2, before-e3-MODEL, ..., report); its inputs
    /// must be finished in --out. `--stage list` prints the stages.
    #[arg(long, value_name = "NAME")]
    pub stage: Option<String>,
    /// With --stage e2: build part K of N of the adversarial set (a job-array task).
    #[arg(long, value_name = "K/N", requires = "stage")]
    pub shard: Option<String>,
    /// E2 is built as N --shard parts and joined (job arrays of --emit slurm; in one process the
    /// parts run one after another). The result is the same for every N.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub shards: usize,
    /// Run the whole pipeline once per seed (OUT/seed-N, sharing OUT/data) and report the
    /// findings combined over the seeds in OUT (replaces --seed for this command).
    #[arg(long, value_name = "LIST", conflicts_with_all = ["stage", "emit", "shard"])]
    pub seeds: Option<String>,
    /// Write a job graph instead of running: `--emit slurm DIR` (sbatch scripts, submit.sh).
    #[arg(long, num_args = 2, value_names = ["KIND", "DIR"], conflicts_with = "stage")]
    pub emit: Option<Vec<String>>,
    #[command(flatten)]
    pub slurm: SlurmArgs,
}

/// Job resources for `--emit slurm`.
#[derive(clap::Args, Debug)]
pub struct SlurmArgs {
    /// CPUs of each job.
    #[arg(long, default_value_t = 4)]
    pub cpus_per_task: usize,
    /// Time limit of each job (Slurm format).
    #[arg(long, default_value = "24:00:00")]
    pub time: String,
    /// Partition (default: the cluster's).
    #[arg(long)]
    pub partition: Option<String>,
    /// Generic resources of the compute jobs (default: gpu:1 with --device cuda, none otherwise).
    #[arg(long)]
    pub gres: Option<String>,
    /// Memory of each job, e.g. 32G (default: the cluster's).
    #[arg(long)]
    pub mem: Option<String>,
    /// Another #SBATCH argument for every job, e.g. --sbatch-arg=--account=proj (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub sbatch_arg: Vec<String>,
}

fn config(ctx: &Ctx, a: &ReproduceArgs) -> Result<ReproduceConfig> {
    Ok(ReproduceConfig {
        profile: Profile::named(&a.profile)?,
        data: a.data.clone(),
        weights: a.weights.clone(),
        hierarchy: a.hierarchy.clone(),
        wordnet: a.wordnet.clone(),
        fmnist_src: a.fmnist.clone(),
        out: a.out.clone(),
        seed: ctx.seed,
        shards: a.shards,
    })
}

/// What a run reads, for the no-overwrite check of --out.
fn inputs(a: &ReproduceArgs) -> Vec<(&'static str, &std::path::Path)> {
    let mut inputs = vec![("--wordnet", a.wordnet.as_path())];
    // --fmnist is read only when --data is not given; OUT/data is where reproduce itself puts
    // the imported data, so naming it as --data on a rerun is no overwrite.
    match &a.data {
        Some(d) => {
            let own = crate::io::resolve_path(&a.out.join("data")).ok();
            if own.is_none() || own != crate::io::resolve_path(d).ok() {
                inputs.push(("--data", d.as_path()));
            }
        }
        None => inputs.push(("--fmnist", a.fmnist.as_path())),
    }
    for (flag, p) in [("--weights", &a.weights), ("--hierarchy", &a.hierarchy)] {
        if let Some(p) = p {
            inputs.push((flag, p.as_path()));
        }
    }
    inputs
}

pub fn run(ctx: &Ctx, a: &ReproduceArgs) -> Result<()> {
    let cfg = config(ctx, a)?;
    if a.shards == 0 {
        return Err(Error::InvalidArg("--shards must be at least 1".into()));
    }
    super::guard_out(&a.out, &inputs(a))?;
    if let Some(e) = &a.emit {
        return emit_graph(ctx, a, &cfg, e);
    }
    // The jobs of a graph share --out (each stage writes its own folder through temporary
    // names), so only a whole in-process run takes the directory's exclusive lock.
    if let Some(name) = &a.stage {
        return run_stage(ctx, a, &cfg, name);
    }
    let _lock = super::claim_out_dir(&a.out, &inputs(a))?;
    let be = ctx.backend()?;
    if let Some(list) = &a.seeds {
        let seeds = crate::experiments::seeds::parse_seeds(list)?;
        let r = crate::experiments::seeds::reproduce_seeds(be.as_ref(), &cfg, &seeds)?;
        emit(ctx, &r["findings"], || {
            format!(
                "report over seeds {seeds:?}: {}/report.md ({:.0} s)",
                a.out.display(),
                r["seconds_total"].as_f64().unwrap_or(0.0)
            )
        });
        return Ok(());
    }
    let r = reproduce(be.as_ref(), &cfg)?;
    emit(ctx, &r["findings"], || {
        format!(
            "report: {}/index.html, {}/report.md, {}/results.json ({:.0} s)",
            a.out.display(),
            a.out.display(),
            a.out.display(),
            r["environment"]["seconds_total"].as_f64().unwrap_or(0.0)
        )
    });
    Ok(())
}

fn run_stage(ctx: &Ctx, a: &ReproduceArgs, cfg: &ReproduceConfig, name: &str) -> Result<()> {
    if name == "list" {
        for n in stage_names(&cfg.profile) {
            println!("{n}");
        }
        return Ok(());
    }
    let part = a.shard.as_deref().map(parse_part).transpose()?;
    let be = ctx.backend()?;
    let r = reproduce_stage(be.as_ref(), cfg, name, part)?;
    emit(ctx, &r, || match part {
        Some((k, n)) => format!("stage {name} part {k}/{n}: done"),
        None => format!("stage {name}: done ({})", a.out.display()),
    });
    Ok(())
}

/// The command line every job of the graph runs, up to `--stage` (absolute paths).
fn job_command(ctx: &Ctx, a: &ReproduceArgs) -> Result<String> {
    let abs = |p: &PathBuf| -> Result<String> {
        let q = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        Ok(q.display().to_string())
    };
    let exe = std::env::current_exe()
        .map_err(|e| Error::InvalidArg(format!("cannot locate the advlens binary: {e}")))?;
    let device = match ctx.device {
        DeviceRequest::Auto => "auto",
        DeviceRequest::Cpu => "cpu",
        // Slurm hands each job its GPU as device 0 (CUDA_VISIBLE_DEVICES).
        DeviceRequest::Cuda(_) => "cuda",
    };
    let mut w: Vec<String> = vec![exe.display().to_string(), "--device".into(), device.into()];
    w.extend(["--seed".into(), ctx.seed.to_string(), "reproduce".into()]);
    w.extend([
        "--profile".into(),
        a.profile.clone(),
        "--out".into(),
        abs(&a.out)?,
    ]);
    w.extend([
        "--wordnet".into(),
        abs(&a.wordnet)?,
        "--fmnist".into(),
        abs(&a.fmnist)?,
    ]);
    for (flag, p) in [
        ("--data", &a.data),
        ("--weights", &a.weights),
        ("--hierarchy", &a.hierarchy),
    ] {
        if let Some(p) = p {
            w.extend([flag.to_string(), abs(p)?]);
        }
    }
    w.extend(["--shards".into(), a.shards.to_string()]);
    Ok(w.iter().map(|s| sh_quote(s)).collect::<Vec<_>>().join(" "))
}

fn emit_graph(ctx: &Ctx, a: &ReproduceArgs, cfg: &ReproduceConfig, e: &[String]) -> Result<()> {
    let [kind, dir] = e else {
        return Err(Error::InvalidArg(
            "--emit: expected KIND DIR, e.g. --emit slurm jobs/".into(),
        ));
    };
    if kind != "slurm" {
        return Err(Error::unknown("--emit kind", kind.as_str(), &["slurm"]));
    }
    let s = &a.slurm;
    let gpu = matches!(ctx.device, DeviceRequest::Cuda(_));
    let opts = SlurmOptions {
        cpus_per_task: s.cpus_per_task,
        time: s.time.clone(),
        partition: s.partition.clone(),
        gres: s.gres.clone().or_else(|| gpu.then(|| "gpu:1".to_string())),
        mem: s.mem.clone(),
        extra: s.sbatch_arg.clone(),
        shards: a.shards,
    };
    let files = emit_slurm(&cfg.profile, &job_command(ctx, a)?, &opts, dir.as_ref())?;
    let submit = files.last().cloned().unwrap_or_default();
    emit(ctx, &files, || {
        format!(
            "{} sbatch scripts in {dir}; submit with {} (nothing was submitted)",
            files.len() - 1,
            submit.display()
        )
    });
    Ok(())
}
