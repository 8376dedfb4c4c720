//! `advlens wordnet ...`: build the class hierarchy / C matrix file from a class list.
use std::path::PathBuf;

use clap::Subcommand;

use super::Ctx;
use crate::analysis::wordnet::{parse_class_list, Hierarchy, WordNet};
use crate::error::{Error, Result};

/// Classes up to which the full C matrix is written next to D (see `Hierarchy::write_json`).
const FULL_C_MAX_CLASSES: usize = 100;

#[derive(Subcommand, Debug)]
pub enum WordnetCommand {
    /// Write the class hierarchy, tree distances D and C = exp(-D^2 / (2 sigma^2)) as JSON.
    #[command(
        after_help = "Example:\n  advlens wordnet build --classes data/wordnet/fashion_mnist_classes.txt --out data/wordnet/fashion_mnist_hierarchy.json"
    )]
    Build(WordnetBuildArgs),
}

#[derive(clap::Args, Debug)]
pub struct WordnetBuildArgs {
    /// Class list: one WordNet noun id (n + 8 digits) per line, optionally `wnid<TAB>name`.
    #[arg(long)]
    pub classes: PathBuf,
    /// Output JSON file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Decay of the class correlation c = exp(-d^2 / (2 sigma^2)).
    #[arg(long, default_value_t = 1.0)]
    pub sigma: f64,
    /// WordNet 3.0 directory holding data.noun (or the data.noun file itself).
    #[arg(long, default_value = "/usr/share/wordnet")]
    pub wordnet: PathBuf,
}

#[derive(serde::Serialize)]
struct BuildReport {
    out: PathBuf,
    num_classes: usize,
    sigma: f64,
    max_distance: u32,
    mean_offdiag_distance: f64,
    full_c_written: bool,
}

pub fn run(ctx: &Ctx, c: &WordnetCommand) -> Result<()> {
    match c {
        WordnetCommand::Build(a) => build(ctx, a),
    }
}

fn build(ctx: &Ctx, a: &WordnetBuildArgs) -> Result<()> {
    super::guard_out(
        &a.out,
        &[("--classes", &a.classes), ("--wordnet", &a.wordnet)],
    )?;
    let text = std::fs::read_to_string(&a.classes).map_err(|e| Error::io(&a.classes, e))?;
    let classes = parse_class_list(&text, &a.classes)?;
    let wn = WordNet::load(&a.wordnet)?;
    let h = Hierarchy::build(&wn, &classes, a.sigma, &a.classes)?;
    h.write_json(&a.out, FULL_C_MAX_CLASSES)?;
    let k = h.num_classes();
    let off: u64 = h.distance.iter().map(|&d| d as u64).sum();
    let pairs = (k * k - k).max(1) as f64;
    let report = BuildReport {
        out: a.out.clone(),
        num_classes: k,
        sigma: h.sigma,
        max_distance: h.max_distance(),
        mean_offdiag_distance: off as f64 / pairs,
        full_c_written: k <= FULL_C_MAX_CLASSES,
    };
    super::emit(ctx, &report, || {
        format!(
            "wrote {}: {} classes, sigma {}, max d {}, mean off-diagonal d {:.3}{}",
            report.out.display(),
            report.num_classes,
            report.sigma,
            report.max_distance,
            report.mean_offdiag_distance,
            if report.full_c_written {
                ""
            } else {
                " (C stored as c_of_distance[d], not as a full matrix)"
            }
        )
    });
    Ok(())
}
