//! `advlens reproduce`: every experiment of the paper, one command, one report.
use std::path::PathBuf;

use super::{emit, Ctx};
use crate::error::Result;
use crate::experiments::reproduce::{reproduce, Profile, ReproduceConfig};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  advlens reproduce                      # default profile, Fashion-MNIST from Debian's package\n  \
    advlens reproduce --profile quick --out runs/quick\n  \
    advlens --device cuda reproduce --profile full --data data/imagenet --weights weights/ --out runs/imagenet"
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
}

pub fn run(ctx: &Ctx, a: &ReproduceArgs) -> Result<()> {
    let profile = Profile::named(&a.profile)?;
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
    let _lock = super::claim_out_dir(&a.out, &inputs)?;
    let cfg = ReproduceConfig {
        profile,
        data: a.data.clone(),
        weights: a.weights.clone(),
        hierarchy: a.hierarchy.clone(),
        wordnet: a.wordnet.clone(),
        fmnist_src: a.fmnist.clone(),
        out: a.out.clone(),
        seed: ctx.seed,
    };
    let be = ctx.backend()?;
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
