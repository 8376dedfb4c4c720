//! `advlens kernels list|compile`: the CUDA kernel table and the offline NVRTC compile that CI
//! runs without a GPU (scripts/check_kernels.sh then assembles the PTX with ptxas).
use std::path::PathBuf;

use super::Ctx;
use crate::error::Result;

#[derive(clap::Subcommand, Debug)]
pub enum KernelsCommand {
    /// List every kernel (family and name) of the CUDA backend.
    #[command(after_help = "Example:\n  advlens kernels list")]
    List,
    /// Compile every kernel family to PTX through the backend's own NVRTC path (no GPU needed,
    /// only libnvrtc), writing <out>/<family>.ptx.
    #[command(
        after_help = "Example:\n  advlens kernels compile --arch sm_90 --out target/ptx\n  scripts/check_kernels.sh   # compile + ptxas -arch=sm_90 -v, fails on spills"
    )]
    Compile {
        /// Target architecture (sm_90 for H100/H200).
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Output directory for the .ptx files.
        #[arg(long)]
        out: PathBuf,
    },
}

#[cfg(feature = "cuda")]
pub fn run(ctx: &Ctx, c: &KernelsCommand) -> Result<()> {
    use crate::backend::cuda::{compile, kernel_table};
    match c {
        KernelsCommand::List => {
            let rows: Vec<serde_json::Value> = kernel_table::ALL
                .iter()
                .map(|k| serde_json::json!({"family": k.family, "name": k.name}))
                .collect();
            super::emit(ctx, &rows, || {
                kernel_table::ALL
                    .iter()
                    .map(|k| format!("{:<12} {}", k.family, k.name))
                    .collect::<Vec<_>>()
                    .join("\n")
            });
            Ok(())
        }
        KernelsCommand::Compile { arch, out } => {
            let t0 = std::time::Instant::now();
            let files = compile::compile_all_to_dir(arch, out)?;
            let secs = t0.elapsed().as_secs_f64();
            let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
            super::emit(
                ctx,
                &serde_json::json!({"arch": arch, "files": names, "kernels": kernel_table::ALL.len(), "seconds": secs}),
                || {
                    format!(
                        "compiled {} kernels in {} families for {arch} in {secs:.1} s:\n{}",
                        kernel_table::ALL.len(),
                        files.len(),
                        names.join("\n")
                    )
                },
            );
            Ok(())
        }
    }
}

#[cfg(not(feature = "cuda"))]
pub fn run(_ctx: &Ctx, _c: &KernelsCommand) -> Result<()> {
    Err(crate::error::Error::Device(
        "this advlens was built without the `cuda` feature (cargo build --features cuda)".into(),
    ))
}
