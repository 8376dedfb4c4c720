//! The golden files of tests/golden_ops.rs (float64 JAX references, scripts/make_golden.py)
//! through the CUDA backend: every op, with the default (v2) kernels and with the direct v1
//! kernels, against the same tolerances as the CPU. Needs the `cuda` feature; without a usable
//! GPU (no driver, no NVRTC, no device) it prints "skipped: <reason>" and passes, so the suite
//! runs on the build machines and checks for real on a GPU box (ADVLENS_REQUIRE_GPU=1 turns the
//! skip into a failure there).
#![cfg(feature = "cuda")]
mod common;

use advlens::backend::cuda::{ConvVersion, CudaBackend};
use common::golden::run_all;

#[test]
fn golden_library_cuda() {
    let be = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            common::skip_gpu("golden_library_cuda", &e);
            return;
        }
    };
    run_all(&be, "cuda v2");
    run_all(
        &be.with_versions(ConvVersion::V1, ConvVersion::V1),
        "cuda v1",
    );
}
