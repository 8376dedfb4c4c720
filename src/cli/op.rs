//! `advlens op NAME --in IN --out OUT` (owned by the CPU-backend work).
use super::Ctx;
use crate::error::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct OpArgs {
    /// Op name (conv2d, conv2d_backward, ...).
    pub name: String,
}

pub fn run(_ctx: &Ctx, _a: &OpArgs) -> Result<()> {
    Err(Error::InvalidArg("op: not implemented yet".into()))
}
