//! The golden files of tests/golden_ops.rs (float64 JAX references, scripts/make_golden.py)
//! through the CUDA backend: every op, with the default (v2) kernels and with the direct v1
//! kernels, against the same tolerances as the CPU. Needs the `cuda` feature; without a usable
//! GPU (no driver, no NVRTC, no device) it prints "skipped: <reason>" and passes, so the suite
//! runs on the build machines and checks for real on a GPU box.
#![cfg(feature = "cuda")]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use advlens::backend::cuda::{ConvVersion, CudaBackend};
use advlens::backend::op_runner::{run_op, OpAttrs};
use advlens::io::{Dtype, OwnedTensor, SafeFile};

/// Same tolerances as tests/golden_ops.rs (see the reasoning there).
const RTOL: f64 = 1e-4;
const ATOL_FRACTION: f64 = 1e-5;

struct Case {
    name: String,
    input: PathBuf,
    expected: PathBuf,
    op: String,
    attrs: OpAttrs,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(golden_dir()).expect("tests/fixtures/golden exists") {
        let path = e.expect("dir entry").path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(name) = file.strip_suffix(".in.safetensors") else {
            continue;
        };
        let meta = SafeFile::open(&path)
            .expect("golden input opens")
            .metadata();
        let op = meta.get("op").expect("metadata 'op'").clone();
        let attrs: HashMap<String, f64> =
            serde_json::from_str(meta.get("attrs").map_or("{}", |s| s.as_str()))
                .expect("attrs JSON");
        let get = |k: &str| attrs.get(k).copied();
        v.push(Case {
            name: name.to_string(),
            expected: golden_dir().join(format!("{name}.out.safetensors")),
            input: path,
            op,
            attrs: OpAttrs {
                stride: get("stride").map(|x| x as usize),
                pad: get("pad").map(|x| x as usize),
                kernel: get("kernel").map(|x| x as usize),
                eps: get("eps").map(|x| x as f32),
                lo: get("lo").map(|x| x as f32),
                hi: get("hi").map(|x| x as f32),
            },
        });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn read_f64(f: &SafeFile, name: &str) -> (Vec<usize>, Vec<f64>) {
    let (dt, shape, bytes) = f.bytes(name).expect("expected tensor");
    assert_eq!(dt, Dtype::F64, "{}: {name} must be f64", f.path().display());
    let v = bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape.to_vec(), v)
}

fn owned_f32(t: &OwnedTensor) -> Vec<f32> {
    assert_eq!(t.dtype, Dtype::F32);
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn run_all(be: &CudaBackend, via: &str) {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} golden cases", cases.len());
    for case in &cases {
        let input = SafeFile::open(&case.input).expect("golden input opens");
        let out = run_op(be, &case.op, &input, &case.attrs)
            .unwrap_or_else(|e| panic!("{} ({via}): run_op failed: {e}", case.name));
        let got: HashMap<String, (Vec<usize>, Vec<f32>)> = out
            .iter()
            .map(|(n, t)| (n.clone(), (t.shape.clone(), owned_f32(t))))
            .collect();
        let exp = SafeFile::open(&case.expected).expect("golden output opens");
        for name in exp.names() {
            let (shape, want) = read_f64(&exp, &name);
            let what = format!("{} ({via}) output '{name}'", case.name);
            let (gshape, g) = got
                .get(&name)
                .unwrap_or_else(|| panic!("{what}: missing; got {:?}", got.keys()));
            assert_eq!(gshape, &shape, "{what}: shape");
            let scale = want.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
            common::assert_close(g, &want, ATOL_FRACTION * scale + 1e-30, RTOL, &what);
        }
    }
}

#[test]
fn golden_library_cuda() {
    let be = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            println!("golden_library_cuda: skipped: {e}");
            return;
        }
    };
    run_all(&be, "cuda v2");
    run_all(
        &be.with_versions(ConvVersion::V1, ConvVersion::V1),
        "cuda v1",
    );
}
