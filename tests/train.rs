//! Training on real Fashion-MNIST (Debian's dataset-fashion-mnist): a small model must learn, and
//! the `train`/`eval` commands must work end to end.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use advlens::backend::cpu::CpuBackend;
use advlens::data::{idx, Dataset};
use advlens::nn::optim::OptimConfig;
use advlens::nn::train::{self, RunDirs, TrainConfig};

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Import the first `n_train`/`n_test` images, or None (with a printed reason) when the Debian
/// package is not installed.
fn subset(dir: &Path, n_train: usize, n_test: usize) -> Option<(PathBuf, PathBuf)> {
    let src = Path::new(FMNIST);
    let find = |stem: &str| idx::locate(src, stem).ok();
    let (Some(tri), Some(trl), Some(tei), Some(tel)) = (
        find("train-images-idx3-ubyte"),
        find("train-labels-idx1-ubyte"),
        find("t10k-images-idx3-ubyte"),
        find("t10k-labels-idx1-ubyte"),
    ) else {
        println!("skipped: {FMNIST} not found (apt-get install dataset-fashion-mnist)");
        return None;
    };
    let tr = dir.join("train.safetensors");
    let te = dir.join("test.safetensors");
    idx::import_split(&tri, &trl, &tr, "train", Some(n_train)).unwrap();
    idx::import_split(&tei, &tel, &te, "test", Some(n_test)).unwrap();
    Some((tr, te))
}

/// small-resnet18 on 3000 training images for 3 epochs reaches >= 70% top-1 on 1000 test images
/// (chance is 10%), and the loss falls.
#[test]
fn small_resnet_learns_fashion_mnist_subset() {
    let dir = tempfile::tempdir().unwrap();
    let Some((tr, te)) = subset(dir.path(), 3000, 1000) else {
        return;
    };
    let train_ds = Arc::new(Dataset::open(&tr).unwrap());
    let test_ds = Arc::new(Dataset::open(&te).unwrap());
    let be = CpuBackend::new();
    let cfg = TrainConfig {
        model: "small-resnet18".into(),
        width: None,
        epochs: 3,
        batch: 64,
        optim: OptimConfig::adam(2e-3, 0.0),
        lr_milestones: vec![2],
        lr_gamma: 0.3,
        seed: 5,
        limit: None,
        val_limit: None,
        precision: Default::default(),
    };
    let t = Instant::now();
    let mut lines = Vec::new();
    let out = train::train(
        &be,
        &cfg,
        &train_ds,
        Some(&test_ds),
        &RunDirs {
            out: dir.path().join("run"),
            resume: None,
        },
        &mut |r| lines.push(r.line(3)),
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    for l in &lines {
        println!("{l}");
    }
    println!("trained in {secs:.1}s");
    let h = &out.history;
    assert!(h[2].loss < h[0].loss, "loss did not fall: {lines:?}");
    let val = h[2].val.as_ref().unwrap();
    assert_eq!(val.images, 1000);
    assert!(
        val.top1 >= 0.70,
        "test top-1 {:.3} < 0.70: {lines:?}",
        val.top1
    );
    assert!(val.top5 >= val.top1);
    // The library evaluation of the saved checkpoint gives the same numbers.
    let mut m = advlens::nn::Model::load(&out.last_checkpoint).unwrap();
    let again = train::evaluate(&be, &mut m, &test_ds, 200, None).unwrap();
    assert_eq!(again.top1, val.top1);
}

/// `advlens train` then `advlens eval --json` through the binary, and the class-count check.
#[test]
fn train_and_eval_commands() {
    let dir = tempfile::tempdir().unwrap();
    let Some((tr, te)) = subset(dir.path(), 600, 300) else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_advlens");
    let run = dir.path().join("run");
    let o = Command::new(bin)
        .args([
            "--device",
            "cpu",
            "--seed",
            "3",
            "train",
            "--model",
            "small-vgg16",
        ])
        .arg("--data")
        .arg(&tr)
        .arg("--val")
        .arg(&te)
        .args(["--epochs", "1", "--batch", "50", "--width", "4", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("epoch 1/1: loss"), "{stdout}");
    assert!(run.join("epoch-001.safetensors").exists());
    let o = Command::new(bin)
        .args(["--device", "cpu", "--json", "eval", "--ckpt"])
        .arg(run.join("last.safetensors"))
        .arg("--data")
        .arg(&te)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"], 300);
    let top1 = v["top1"].as_f64().unwrap();
    let top5 = v["top5"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1) && top5 >= top1, "{v}");
    // Unknown model: one clear error, nothing written.
    let o = Command::new(bin)
        .args(["--device", "cpu", "train", "--model", "lenet", "--data"])
        .arg(&tr)
        .arg("--out")
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unknown model 'lenet'"),
        "{err}"
    );
    assert!(!dir.path().join("nope").exists());
}
