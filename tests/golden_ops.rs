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

/// `advlens op --precision tf32|bf16` on every conv golden case: the binary gives exactly what
/// the library's CPU twin at that precision gives (inputs rounded, f32 oracle), that differs from
/// f32 (the rounding happens), and it lies within the rounding bound of the float64 reference:
/// |got - want| <= golden tolerance + ((2u + u^2)(1 + g) + 2g)(1 + g) S_i, where u is the input
/// unit roundoff (tf32 2^-11, bf16 2^-8), g = gamma_n for n = the element count of the inputs (a
/// bound on every reduction length) and S_i = the same conv of |rounded inputs| (f32 oracle).
/// db is a plain f32 sum at every precision: golden tolerance only.
#[test]
fn golden_binary_precisions() {
    use advlens::backend::{Backend, Conv2dParams, Precision};
    use advlens::Tensor;
    let dir = tempfile::tempdir().expect("tempdir");
    let f32o = CpuBackend::new();
    for case in cases().iter().filter(|c| c.op.starts_with("conv2d")) {
        let input = SafeFile::open(&case.input).expect("golden input opens");
        let get = |n: &str| input.f32(n).expect("golden input tensor");
        let prm = Conv2dParams {
            stride: case.attrs.stride.unwrap_or(1),
            pad: case.attrs.pad.unwrap_or(0),
        };
        let n_in: usize = input.names().iter().map(|n| get(n).numel()).sum();
        let gam = {
            let nu = n_in as f64 / 16_777_216.0;
            nu / (1.0 - nu)
        };
        let f32_out = run_op(&f32o, &case.op, &input, &case.attrs).expect("f32 run_op");
        for p in [Precision::Tf32, Precision::Bf16] {
            let what = format!("{} --precision {p}", case.name);
            let out = dir.path().join(format!("{}-{p}.safetensors", case.name));
            let res = Command::new(common::advlens_bin())
                .args([
                    "--device",
                    "cpu",
                    "--precision",
                    p.name(),
                    "op",
                    &case.op,
                    "--in",
                ])
                .arg(&case.input)
                .arg("--out")
                .arg(&out)
                .args(&case.flags)
                .output()
                .expect("advlens runs");
            assert!(
                res.status.success(),
                "{what}: advlens op failed: {}",
                String::from_utf8_lossy(&res.stderr)
            );
            let f = SafeFile::open(&out).expect("output opens");
            let lib = run_op(
                &CpuBackend::with_precision(p),
                &case.op,
                &input,
                &case.attrs,
            )
            .expect("run_op at precision");
            // S: the same op on |rounded inputs| in f32.
            let abs = |n: &str| {
                let t = get(n);
                let v: Vec<f32> = t
                    .to_vec()
                    .unwrap()
                    .iter()
                    .map(|&x| p.round(x).abs())
                    .collect();
                Tensor::from_vec(t.shape(), v).unwrap()
            };
            let (ax, aw) = (abs("x"), abs("w"));
            let s: Vec<(String, Vec<f32>)> = if case.op == "conv2d" {
                let ab = abs("b");
                let y = f32o.conv2d(&ax, &aw, Some(&ab), prm).unwrap();
                vec![("y".into(), y.to_vec().unwrap())]
            } else {
                let g = f32o
                    .conv2d_backward(&ax, &aw, &abs("dy"), prm, true)
                    .unwrap();
                vec![
                    ("dx".into(), g.dx.unwrap().to_vec().unwrap()),
                    ("dw".into(), g.dw.to_vec().unwrap()),
                ]
            };
            let exp = SafeFile::open(&case.expected).expect("golden output opens");
            let u = p.input_unit_roundoff();
            for (name, t) in &lib {
                let got = f.f32(name).expect("binary output").to_vec().unwrap();
                let want_lib = common::golden::owned_f32(t);
                assert!(
                    got.iter()
                        .zip(&want_lib)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what} '{name}': the binary differs from the library's CPU twin"
                );
                let (_, plain) = f32_out.iter().find(|(n, _)| n == name).expect("f32 output");
                let plain = common::golden::owned_f32(plain);
                let (_, ref64) = common::golden::read_f64(&exp, name);
                let scale = ref64.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
                let tol = common::golden::ATOL_FRACTION * scale + 1e-30;
                let allow: Vec<f64> = match s.iter().find(|(n, _)| n == name) {
                    Some((_, sv)) => {
                        assert!(got != plain, "{what} '{name}': equals the f32 result");
                        let c = ((2.0 * u + u * u) * (1.0 + gam) + 2.0 * gam) * (1.0 + gam);
                        ref64
                            .iter()
                            .zip(sv)
                            .map(|(r, &sv)| tol + common::golden::RTOL * r.abs() + c * sv as f64)
                            .collect()
                    }
                    None => ref64
                        .iter()
                        .map(|r| tol + common::golden::RTOL * r.abs())
                        .collect(),
                };
                let ref32: Vec<f32> = ref64.iter().map(|&v| v as f32).collect();
                let allow: Vec<f64> = allow
                    .iter()
                    .zip(&ref64)
                    .map(|(a, &r)| a + (r - r as f32 as f64).abs())
                    .collect();
                common::assert_within(&got, &ref32, &allow, &format!("{what} '{name}' vs float64"));
            }
        }
    }
}
