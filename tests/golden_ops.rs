//! Golden files: every op of DESIGN section 5 against a float64 JAX reference
//! (scripts/make_golden.py wrote tests/fixtures/golden/), through the library (`run_op` on the
//! CPU backend) and through the `advlens op` binary.
mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use advlens::backend::cpu::CpuBackend;
use advlens::backend::op_runner::{run_op, OpAttrs, KNOWN_OPS};
use advlens::io::{Dtype, OwnedTensor, SafeFile};

/// Relative tolerance of DESIGN section 5 for f32 against a float64 reference.
const RTOL: f64 = 1e-4;
/// Absolute floor, as a fraction of the largest |reference| value in the same tensor. Outputs
/// that come out of cancellation (a conv sum of a few hundred O(1) products landing near 0) carry
/// f32 accumulation error of order n * 2^-24 times the size of the terms, i.e. the tensor's scale,
/// not their own tiny value: 1e-5 of the scale covers n up to ~100 with margin, and a wrong
/// index, pad or transpose moves values by O(scale), 1e5 times more.
const ATOL_FRACTION: f64 = 1e-5;

struct Case {
    name: String,
    input: PathBuf,
    expected: PathBuf,
    op: String,
    attrs: OpAttrs,
    flags: Vec<String>,
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let entries = std::fs::read_dir(golden_dir()).expect("tests/fixtures/golden exists");
    for e in entries {
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
        let mut flags = Vec::new();
        for (k, v) in &attrs {
            // `--eps=-1`: the = form keeps a negative value from reading as a flag.
            flags.push(format!("--{k}={v}"));
        }
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
            flags,
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

/// Compare every expected tensor of `case` with `got` (name -> (shape, values)).
fn check(case: &Case, via: &str, got: &HashMap<String, (Vec<usize>, Vec<f32>)>) {
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

#[test]
fn golden_cases_cover_every_op() {
    let ops: BTreeSet<String> = cases().into_iter().map(|c| c.op).collect();
    let known: BTreeSet<String> = KNOWN_OPS.iter().map(|s| s.to_string()).collect();
    assert_eq!(ops, known);
}

#[test]
fn golden_library_cpu() {
    let be = CpuBackend::new();
    let cases = cases();
    assert!(cases.len() >= 40, "only {} golden cases", cases.len());
    for case in &cases {
        let input = SafeFile::open(&case.input).expect("golden input opens");
        let out = run_op(&be, &case.op, &input, &case.attrs)
            .unwrap_or_else(|e| panic!("{}: run_op failed: {e}", case.name));
        let got = out
            .iter()
            .map(|(n, t)| (n.clone(), (t.shape.clone(), owned_f32(t))))
            .collect();
        check(case, "run_op cpu", &got);
    }
}

#[test]
fn golden_binary_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    for case in cases() {
        let out = dir.path().join(format!("{}.safetensors", case.name));
        let res = Command::new(env!("CARGO_BIN_EXE_advlens"))
            .args(["--device", "cpu", "op", &case.op, "--in"])
            .arg(&case.input)
            .arg("--out")
            .arg(&out)
            .args(&case.flags)
            .output()
            .expect("advlens runs");
        assert!(
            res.status.success(),
            "{}: advlens op failed: {}",
            case.name,
            String::from_utf8_lossy(&res.stderr)
        );
        let f = SafeFile::open(&out).expect("output opens");
        let got = f
            .names()
            .into_iter()
            .map(|n| {
                let t = f.f32(&n).expect("f32 output");
                (n, (t.shape().to_vec(), t.to_vec().unwrap()))
            })
            .collect();
        check(&case, "advlens op", &got);
    }
}

#[test]
fn op_errors_name_the_problem() {
    let err = |r: advlens::Result<Vec<(String, OwnedTensor)>>| match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let be = CpuBackend::new();
    let golden = golden_dir();
    let input = SafeFile::open(&golden.join("linear_b1.in.safetensors")).unwrap();
    let e = err(run_op(&be, "convolve", &input, &OpAttrs::default()));
    assert!(
        e.contains("unknown op 'convolve'") && e.contains("conv2d_backward"),
        "{e}"
    );
    // linear_b1 has x, w, b but no dy.
    let e = err(run_op(&be, "linear_backward", &input, &OpAttrs::default()));
    assert!(
        e.contains("'dy'") && e.contains("linear_b1.in.safetensors"),
        "{e}"
    );
    // A rank-2 x handed to conv2d names the tensor and the file.
    let e = err(run_op(&be, "conv2d", &input, &OpAttrs::default()));
    assert!(e.contains("'x'") && e.contains("linear_b1"), "{e}");

    // Out-of-range labels, and the binary leaves no output behind on failure.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    advlens::io::save_safetensors(
        &bad,
        &[
            ("logits".into(), OwnedTensor::f32(&[2, 3], &[0.; 6])),
            ("labels".into(), OwnedTensor::i64(&[2], &[1, 3])),
        ],
        None,
    )
    .unwrap();
    let out = dir.path().join("out.safetensors");
    let res = Command::new(env!("CARGO_BIN_EXE_advlens"))
        .args(["--device", "cpu", "op", "softmax_xent", "--in"])
        .arg(&bad)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert!(
        err.contains("labels[1] = 3") && err.contains("bad.safetensors"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "stray files"
    );
}
