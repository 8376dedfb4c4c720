//! `advlens info`: which backend opens, which kernels exist.
use super::Ctx;
use crate::error::Result;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {}

pub fn run_info(ctx: &Ctx, _a: &InfoArgs) -> Result<()> {
    let b = ctx.backend()?;
    super::say(&format!("backend: {}", b.name()));
    Ok(())
}
