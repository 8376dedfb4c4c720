//! NVRTC: turn the embedded `kernels/<family>.cu` sources into PTX for one GPU architecture.
//! The runtime (module cache) and the offline check (`advlens kernels compile`, CI's ptxas pass)
//! share this one path, so what CI assembles is exactly what a GPU box loads.

use std::path::{Path, PathBuf};

use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

use super::kernel_table::{embedded, families, source};
use crate::error::{Error, Result};

/// What to do when NVRTC cannot be loaded; shared by the backend and the offline command.
pub const NVRTC_HINT: &str = "NVRTC (libnvrtc.so.13) not found: install the CUDA 13 toolkit, or \
`pip install \"nvidia-cuda-nvrtc==13.0.*\"` and put its nvidia/cu13/lib directory on LD_LIBRARY_PATH";

/// Ok when libnvrtc can be loaded. cudarc panics on its first NVRTC call when the library is
/// missing, so every compile goes through this check first.
pub fn nvrtc_present() -> Result<()> {
    // SAFETY: only tries dlopen on cudarc's candidate names and drops the handle; no symbol of
    // the library is called.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Device(NVRTC_HINT.into()))
    }
}

/// The text NVRTC compiles for `family`: common.cuh, then the family file with a `#line` reset so
/// compiler messages point at kernels/<family>.cu lines.
pub fn full_source(family: &str) -> Result<String> {
    let src = source(family).ok_or_else(|| Error::unknown("kernel family", family, &families()))?;
    Ok(format!(
        "{}\n#line 1 \"kernels/{family}.cu\"\n{src}",
        embedded::COMMON_HEADER
    ))
}

/// `sm_90` style name for a compute capability.
pub fn arch_name(major: i32, minor: i32) -> String {
    format!("sm_{major}{minor}")
}

fn check_arch(arch: &str) -> Result<()> {
    let ok = arch
        .strip_prefix("sm_")
        .or_else(|| arch.strip_prefix("compute_"))
        .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArg(format!(
            "GPU architecture '{arch}' is not of the form sm_NN (e.g. sm_90 for H100/H200)"
        )))
    }
}

/// Compile one family to PTX for `arch` (e.g. "sm_90").
pub fn compile_family(family: &str, arch: &str) -> Result<Ptx> {
    check_arch(arch)?;
    nvrtc_present()?;
    let src = full_source(family)?;
    let opts = CompileOptions {
        // Full-precision division and sqrt and no flush-to-zero: results are compared with the
        // CPU oracle at 1e-4 relative error. fmad stays on (NVRTC default).
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "--generate-line-info".into(),
        ],
        name: Some(format!("{family}.cu")),
        ..Default::default()
    };
    compile_ptx_with_opts(src, opts).map_err(|e| nvrtc_error(family, arch, e))
}

fn nvrtc_error(family: &str, arch: &str, e: CompileError) -> Error {
    let msg = match e {
        CompileError::CompileError { nvrtc, log, .. } => {
            format!("{nvrtc:?}\n{}", log.to_string_lossy())
        }
        other => format!("{other:?}"),
    };
    Error::Cuda {
        context: format!("nvrtc compile of kernels/{family}.cu for {arch}"),
        msg,
    }
}

/// One family's PTX as text.
pub fn ptx_text(ptx: &Ptx) -> String {
    ptx.to_src().trim_end_matches('\0').to_string()
}

/// Compile every family for `arch` and write `<out>/<family>.ptx` (atomically). Returns the files
/// written. This is the offline check's first half; scripts/check_kernels.sh assembles the
/// files with ptxas.
pub fn compile_all_to_dir(arch: &str, out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for family in families() {
        let ptx = compile_family(family, arch)?;
        let text = ptx_text(&ptx);
        let path = out.join(format!("{family}.ptx"));
        crate::io::write_atomic(&path, |w| std::io::Write::write_all(w, text.as_bytes()))?;
        written.push(path);
    }
    Ok(written)
}
