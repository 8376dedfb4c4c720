//! `advlens attack ...` (owned by the attack work).
use clap::Subcommand;

use super::Ctx;
use crate::error::{Error, Result};

#[derive(Subcommand, Debug)]
pub enum AttackCommand {
    /// Fast gradient sign (paper Eq. 13).
    Fgs {},
}

pub fn run(_ctx: &Ctx, _c: &AttackCommand) -> Result<()> {
    Err(Error::InvalidArg("attack: not implemented yet".into()))
}
