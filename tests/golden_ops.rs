//! Golden files: every op of DESIGN section 5 against a float64 JAX reference
//! (scripts/make_golden.py wrote tests/fixtures/golden/), through the library (`run_op` on the
//! CPU backend) and through the `advlens op` binary.
mod common;

use std::collections::BTreeSet;
use std::process::Command;

use advlens::backend::cpu::CpuBackend;
use advlens::backend::op_runner::{run_op, OpAttrs, KNOWN_OPS};
use advlens::io::{OwnedTensor, SafeFile};
use common::golden::{cases, check, golden_dir, run_all};

#[test]
fn golden_cases_cover_every_op() {
    let ops: BTreeSet<String> = cases().into_iter().map(|c| c.op).collect();
    let known: BTreeSet<String> = KNOWN_OPS.iter().map(|s| s.to_string()).collect();
    assert_eq!(ops, known);
}

#[test]
fn golden_library_cpu() {
    run_all(&CpuBackend::new(), "run_op cpu");
}

#[test]
fn golden_binary_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    for case in cases() {
        let out = dir.path().join(format!("{}.safetensors", case.name));
        let res = Command::new(common::advlens_bin())
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
    let res = Command::new(common::advlens_bin())
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
