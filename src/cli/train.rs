//! `advlens train` and `advlens eval` (owned by the nn work).
use super::Ctx;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[arg(long)]
    pub model: String,
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: String,
}

pub fn run_train(_ctx: &Ctx, _a: &TrainArgs) -> Result<()> {
    Err(Error::InvalidArg("train: not implemented yet".into()))
}
pub fn run_eval(_ctx: &Ctx, _a: &EvalArgs) -> Result<()> {
    Err(Error::InvalidArg("eval: not implemented yet".into()))
}
