//! `advlens data ...` (owned by the data work).
use clap::Subcommand;

use super::Ctx;
use crate::error::{Error, Result};

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Print shapes, dtypes and class counts of a dataset file.
    Info { file: std::path::PathBuf },
}

pub fn run(_ctx: &Ctx, _c: &DataCommand) -> Result<()> {
    Err(Error::InvalidArg("data: not implemented yet".into()))
}
