//! `advlens bench conv` end to end through the binary: the JSON report on the CPU carries finite,
//! positive figures for the selected layers, and `--device cuda` on a machine without a usable
//! GPU (or a build without the `cuda` feature) fails with a one-line explanation.
mod common;

use std::process::Command;

fn advlens(args: &[&str]) -> std::process::Output {
    Command::new(common::advlens_bin())
        .args(args)
        .output()
        .expect("advlens runs")
}

fn positive(v: &serde_json::Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what}: {x}");
    x
}

#[test]
fn bench_conv_cpu_json() {
    // Two cheap ResNet-18 layers (a 3x3 stride-1 and a 1x1 stride-2 downsample) at batch 1.
    let out = advlens(&[
        "--device",
        "cpu",
        "bench",
        "conv",
        "--net",
        "resnet18",
        "--batch",
        "1",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--json",
        "--layers",
        "layer4.1.conv1,layer3.0.downsample.0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "advlens failed: {stderr}");
    let r: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(r["bench"], "conv");
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["dtype"], "f32");
    assert!(r["commit"].as_str().is_some_and(|s| !s.is_empty()));
    let layers = r["layers"].as_array().expect("layers array");
    let names: Vec<&str> = layers
        .iter()
        .map(|l| l["layer"]["name"].as_str().unwrap())
        .collect();
    // Execution order of the model, whatever order --layers gave.
    assert_eq!(names, ["layer3.0.downsample.0", "layer4.1.conv1"]);
    let ds = &layers[0]["layer"];
    assert_eq!(
        (ds["c"].as_u64(), ds["h"].as_u64(), ds["k"].as_u64()),
        (Some(128), Some(28), Some(256))
    );
    assert_eq!(
        (ds["r"].as_u64(), ds["stride"].as_u64()),
        (Some(1), Some(2))
    );
    let mut flop_sum = 0.0;
    for l in layers {
        let name = l["layer"]["name"].as_str().unwrap();
        let gflop = positive(&l["forward"]["gflop"], name);
        flop_sum += gflop;
        for pass in ["forward", "backward_data", "backward_filter"] {
            let o = &l[pass];
            let what = format!("{name} {pass}");
            assert_eq!(
                positive(&o["gflop"], &what),
                gflop,
                "{what}: same FLOPs per pass"
            );
            let ms = positive(&o["ours"]["ms"], &format!("{what} ms"));
            let gf = positive(&o["ours"]["gflops"], &format!("{what} GFLOP/s"));
            // The rate is the work over the time.
            assert!((gf * ms * 1e-3 - gflop).abs() <= 1e-6 * gflop, "{what}");
            positive(&o["baseline"]["ms"], &format!("{what} sgemm ms"));
            positive(&o["time_ratio"], &format!("{what} ratio"));
        }
    }
    let total = &r["totals"]["forward"];
    assert!((positive(&total["gflop"], "total") - flop_sum).abs() < 1e-9);
    positive(&r["totals"]["all"]["ours"]["ms"], "total ms");
    // The CPU floor comes from a measured FMA peak, and each fraction is floor / time.
    let peak = positive(&r["peak_tflops"], "peak");
    let how = r["peak_assumption"].as_str().unwrap_or_default();
    assert!(
        how.starts_with("measured peak:") && how.contains("FMA"),
        "{how}"
    );
    for l in layers {
        let o = &l["forward"];
        let frac = positive(&o["peak_fraction"], "peak fraction");
        let floor_s = o["gflop"].as_f64().unwrap() / (peak * 1e3);
        let ms = o["ours"]["ms"].as_f64().unwrap();
        // (Whether a conv stays under the peak is left to the unit test of the peak, which
        // measures both on one quiet thread: here other tests share the cores.)
        assert!((frac - floor_s / (ms * 1e-3)).abs() <= 1e-9 * frac.max(1.0));
    }
}

/// The default run's small models: single-channel 28 px input, the chosen width, all five conv
/// layers of small-alexnet; --width is refused for the fixed-width ImageNet nets.
#[test]
fn bench_conv_times_the_small_models() {
    let out = advlens(&[
        "--device",
        "cpu",
        "--json",
        "bench",
        "conv",
        "--net",
        "small-alexnet",
        "--width",
        "4",
        "--batch",
        "3",
        "--iters",
        "1",
        "--warmup",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "advlens failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(
        (r["net"].as_str(), r["width"].as_u64()),
        (Some("small-alexnet"), Some(4))
    );
    assert_eq!(r["input"].as_u64(), Some(28));
    let layers = r["layers"].as_array().expect("layers");
    let shape = |l: &serde_json::Value| {
        let l = &l["layer"];
        ["n", "c", "h", "k", "r"].map(|f| l[f].as_u64().unwrap())
    };
    let shapes: Vec<[u64; 5]> = layers.iter().map(shape).collect();
    assert_eq!(
        shapes,
        [
            [3, 1, 28, 4, 5],
            [3, 4, 14, 8, 5],
            [3, 8, 7, 16, 3],
            [3, 16, 7, 16, 3],
            [3, 16, 7, 16, 3]
        ]
    );
    let out = advlens(&[
        "--device", "cpu", "bench", "conv", "--net", "vgg16", "--width", "8",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--width"), "{err}");
}

#[test]
fn bench_conv_rejects_unknown_layer_and_net() {
    let out = advlens(&[
        "--device",
        "cpu",
        "bench",
        "conv",
        "--net",
        "resnet18",
        "--layers",
        "layer9.conv1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("layer9.conv1") && err.contains("layer1.0.conv1"),
        "{err}"
    );
    let out = advlens(&["--device", "cpu", "bench", "conv", "--net", "lenet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("lenet") && err.contains("resnet18"), "{err}");
}

#[test]
fn bench_conv_cuda_without_gpu_explains() {
    let out = advlens(&[
        "--device",
        "cuda",
        "bench",
        "conv",
        "--net",
        "resnet18",
        "--batch",
        "1",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--layers",
        "layer3.0.downsample.0",
    ]);
    if out.status.success() {
        // A GPU box: the run must then be a CUDA report.
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            r["device"].as_str().is_some_and(|d| d.starts_with("cuda")) || text.contains("cuda:"),
            "{text}"
        );
        // The emulated driver must say that its timings are not GPU timings.
        if std::env::var("ADVLENS_CUDA_EMULATED").is_ok_and(|v| v == "1") {
            assert!(
                text.contains("emulated") && text.contains("not GPU timings"),
                "{text}"
            );
            println!("the emulated device ran the bench and said its timings are not GPU timings");
        } else {
            println!("a GPU is present: bench ran on it");
        }
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("advlens: error:"), "{err}");
    assert!(
        lines[0].contains("cuda") || lines[0].contains("CUDA") || lines[0].contains("GPU"),
        "{err}"
    );
    assert!(!lines[0].contains("panicked"), "{err}");
}

/// `bench conv` on CUDA for every kernel choice: f32 with the default (v3) and with
/// `--conv-version v1|v2`, and the tensor-core kernels at `--precision tf32|bf16`. Each report
/// names the kernels it timed and the precision, carries positive times for the three passes,
/// and, on the emulated driver, says that its timings are not GPU timings. One small layer at
/// input 64, so the emulator's warp-shuffle MMA twin stays cheap.
#[test]
fn bench_conv_runs_every_kernel_choice_on_cuda() {
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("f32", None, "v3 (default)"),
        ("f32", Some("v1"), "v1 (--conv-version)"),
        ("f32", Some("v2"), "v2 (--conv-version)"),
        ("tf32", None, "tf32 tensor-core v1"),
        ("bf16", None, "bf16 tensor-core v1"),
    ];
    let emulated = std::env::var("ADVLENS_CUDA_EMULATED").is_ok_and(|v| v == "1");
    for (precision, version, kernels) in cases {
        let mut args = vec![
            "--device",
            "cuda",
            "--precision",
            precision,
            "--json",
            "bench",
            "conv",
            "--net",
            "resnet18",
            "--input",
            "64",
            "--batch",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--layers",
            "layer3.0.downsample.0",
        ];
        if let Some(v) = version {
            args.extend(["--conv-version", v]);
        }
        let out = advlens(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            assert!(
                err.contains("device unavailable") || err.contains("without the `cuda` feature"),
                "{precision} {version:?}: {err}"
            );
            common::skip_gpu("bench_conv_runs_every_kernel_choice_on_cuda", &err.trim());
            return;
        }
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
        let case = format!("{precision} {version:?}");
        assert!(
            r["device"].as_str().is_some_and(|d| d.starts_with("cuda")),
            "{case}: {r}"
        );
        assert_eq!(r["dtype"], precision, "{case}");
        assert_eq!(r["kernels"], kernels, "{case}");
        assert_eq!(r["emulated"], emulated, "{case}");
        for pass in ["forward", "backward_data", "backward_filter"] {
            positive(
                &r["totals"][pass]["ours"]["ms"],
                &format!("{case} {pass} ms"),
            );
        }
        println!("{case}: {kernels}, emulated {emulated}");
    }
}

/// `--conv-version` names a CUDA f32 kernel version; anything else is refused before any device
/// is opened: an unknown version, the CPU, and a reduced precision (whose tensor-core kernels
/// have one version).
#[test]
fn bench_conv_refuses_a_conv_version_that_cannot_apply() {
    let run = |extra: &[&str]| {
        let mut a = vec!["bench", "conv", "--net", "resnet18", "--layers", "conv1"];
        a.splice(0..0, extra.iter().copied().take(2));
        a.extend(extra.iter().copied().skip(2));
        let out = advlens(&a);
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--device", "cuda", "--conv-version", "v9"]);
    assert!(err.contains("v9") && err.contains("v3"), "{err}");
    let err = run(&["--device", "cpu", "--conv-version", "v2"]);
    assert!(
        err.contains("--conv-version") && err.contains("CPU"),
        "{err}"
    );
    let err = run(&[
        "--device",
        "cuda",
        "--conv-version",
        "v2",
        "--precision",
        "tf32",
    ]);
    assert!(err.contains("tensor-core") && err.contains("tf32"), "{err}");
}
