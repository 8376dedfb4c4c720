//! Helpers shared by the integration tests: the CPU/CUDA test macro, float comparison with the
//! worst index, and seeded random tensors.
#![allow(dead_code)]

pub mod golden;

use std::path::PathBuf;

use advlens::backend::Backend;
use advlens::rng::Rng;
use advlens::Tensor;

/// `backend_test!(name, |backend: &dyn Backend| { ... })` makes a module `name` with a test `cpu`
/// (the CPU backend) and, with the `cuda` feature, a test `cuda` that runs the same body on
/// `cuda:0` or prints "skipped: <reason>" and passes when no GPU can be opened. (Stable Rust
/// cannot paste identifiers into `name_cpu`, so the tests are named `name::cpu` and `name::cuda`;
/// `cargo test name` runs both.)
#[macro_export]
macro_rules! backend_test {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn cpu() {
                let body: &dyn Fn(&dyn advlens::backend::Backend) = &$body;
                let backend = advlens::backend::cpu::CpuBackend::new();
                body(&backend);
            }

            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                let body: &dyn Fn(&dyn advlens::backend::Backend) = &$body;
                match advlens::backend::open(advlens::backend::DeviceRequest::Cuda(0)) {
                    Ok(backend) => body(backend.as_ref()),
                    Err(e) => $crate::common::skip_gpu(concat!(stringify!($name), "::cuda"), &e),
                }
            }
        }
    };
}

/// Assert |got - want| <= atol + rtol * |want| elementwise; on failure report the worst element
/// (largest error relative to its allowance) with its index and both values.
pub fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: got {} values, want {}",
        got.len(),
        want.len()
    );
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let allow = atol + rtol * w.abs();
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else if err == 0.0 {
            0.0
        } else {
            err / allow
        };
        if worst.is_none_or(|(_, r)| ratio > r) {
            worst = Some((i, ratio));
        }
    }
    if let Some((i, r)) = worst {
        assert!(
            r <= 1.0,
            "{what}: worst element {i}: got {}, want {}, |diff| {:.3e} > atol {atol:.1e} + rtol {rtol:.1e} * |want| ({} values)",
            got[i],
            want[i],
            (got[i] as f64 - want[i]).abs(),
            got.len()
        );
    }
}

/// f32 convenience form of [`assert_close`].
pub fn assert_close32(got: &[f32], want: &[f32], atol: f64, rtol: f64, what: &str) {
    let w: Vec<f64> = want.iter().map(|&v| v as f64).collect();
    assert_close(got, &w, atol, rtol, what);
}

/// Standard-normal host values.
pub fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// A tensor of standard-normal values placed on `backend`.
pub fn rand_tensor(backend: &dyn Backend, rng: &mut Rng, shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    put(backend, shape, randn(rng, n))
}

/// Host values placed on `backend`.
pub fn put(backend: &dyn Backend, shape: &[usize], v: Vec<f32>) -> Tensor {
    let t = Tensor::from_vec(shape, v).expect("test tensor shape");
    backend.upload(&t).expect("upload")
}

/// Values of any tensor, on the host.
pub fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec().expect("download")
}

/// Where a GPU test cannot open a device: prints "skipped: <reason>" and returns, so the suite
/// passes on machines without a GPU. With `ADVLENS_REQUIRE_GPU=1` (set by scripts/gpu-run.sh on a
/// GPU box) it panics instead, so a GPU run cannot report a pass that was really a skip (for
/// example when libnvrtc is not on LD_LIBRARY_PATH).
pub fn skip_gpu(test: &str, reason: &dyn std::fmt::Display) {
    if std::env::var("ADVLENS_REQUIRE_GPU").is_ok_and(|v| v == "1") {
        panic!("{test}: ADVLENS_REQUIRE_GPU=1 but no usable GPU: {reason}");
    }
    if std::env::var("ADVLENS_CUDA_DEFERRED").is_ok_and(|v| v == "1") {
        // scripts/test.sh runs this test again on the emulated driver, where a skip fails.
        println!("{test}: no CUDA driver in this run; runs later on the emulated driver");
        return;
    }
    println!("{test}: skipped: {reason}");
}

/// The repository root: `ADVLENS_TEST_ROOT` when set (test binaries copied to a GPU box whose
/// checkout lives elsewhere), else the directory this crate was built in.
pub fn repo_root() -> PathBuf {
    std::env::var_os("ADVLENS_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The advlens binary the CLI tests run: `ADVLENS_TEST_BIN` when set, else cargo's build of it.
pub fn advlens_bin() -> PathBuf {
    std::env::var_os("ADVLENS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_advlens")))
}

/// Assert |got - want| <= allow[i] elementwise (per-element error bounds, e.g. from the input
/// rounding of a reduced-precision GEMM); on failure report the worst element.
pub fn assert_within(got: &[f32], want: &[f32], allow: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    assert_eq!(got.len(), allow.len(), "{what}: bound length");
    let mut worst: Option<(usize, f64)> = None;
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i] as f64).abs();
        let ratio = if err.is_nan() {
            f64::INFINITY
        } else if err == 0.0 {
            0.0
        } else {
            err / allow[i]
        };
        if worst.is_none_or(|(_, r)| ratio > r) {
            worst = Some((i, ratio));
        }
    }
    if let Some((i, r)) = worst {
        assert!(
            r <= 1.0,
            "{what}: worst element {i}: got {}, want {}, |diff| {:.3e} > bound {:.3e} ({} values)",
            got[i],
            want[i],
            (got[i] as f64 - want[i] as f64).abs(),
            allow[i],
            got.len()
        );
    }
}

/// A tiny random dataset file (u8 images, i64 labels, class names).
pub fn tiny_dataset(
    path: &std::path::Path,
    n: usize,
    k: usize,
    seed: u64,
) -> std::sync::Arc<advlens::data::Dataset> {
    let mut rng = Rng::new(seed);
    let px: Vec<u8> = (0..n * 12 * 12).map(|_| rng.below(256) as u8).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(k) as i64).collect();
    let classes: Vec<String> = (0..k).map(|i| format!("c{i}")).collect();
    let meta: std::collections::HashMap<String, String> = [
        (
            "classes".to_string(),
            serde_json::to_string(&classes).unwrap(),
        ),
        ("layout".to_string(), "NCHW".to_string()),
    ]
    .into();
    advlens::io::save_safetensors(
        path,
        &[
            (
                "images".into(),
                advlens::io::OwnedTensor::u8(&[n, 1, 12, 12], px),
            ),
            (
                "labels".into(),
                advlens::io::OwnedTensor::i64(&[n], &labels),
            ),
        ],
        Some(meta),
    )
    .unwrap();
    std::sync::Arc::new(advlens::data::Dataset::open(path).unwrap())
}

/// Unit roundoff of f32 (2^-24).
pub const U32: f64 = 1.0 / 16_777_216.0;

/// gamma_n = n u / (1 - n u): the classic bound on the relative error of an n-term f32 sum.
pub fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U32;
    nu / (1.0 - nu)
}

/// A seed from the clock, printed: fresh inputs every run (the failing seed is in the log), so
/// a test cannot pass by the luck of one draw.
pub fn fresh_seed() -> u64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    println!("seed {s}");
    s
}

/// A host tensor of `shape` (panics on a length mismatch: a test bug).
pub fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape, v).expect("shape")
}

/// `cuda:0`, or None after `skip_gpu` (which fails under ADVLENS_REQUIRE_GPU=1).
#[cfg(feature = "cuda")]
pub fn cuda_or_skip(test: &str) -> Option<advlens::backend::cuda::CudaBackend> {
    match advlens::backend::cuda::CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            skip_gpu(test, &e);
            None
        }
    }
}
