//! E6: a short adversarial fine-tune (Eq. 8) of a small Fashion-MNIST model must measurably raise
//! accuracy on iterative-FGS images of held-out data, at a bounded clean-accuracy cost; resume
//! must reproduce the uninterrupted run.

use std::path::Path;
use std::sync::Arc;

use advlens::backend::cpu::CpuBackend;
use advlens::data::idx::import_fashion_mnist;
use advlens::data::Dataset;
use advlens::experiments::advtrain::{advtrain, evaluate_robust, AdvTrainConfig};
use advlens::nn::optim::OptimConfig;
use advlens::nn::train::{train, RunDirs, TrainConfig};

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

fn data(dir: &Path, n_train: usize, n_test: usize) -> (Arc<Dataset>, Arc<Dataset>) {
    import_fashion_mnist(Path::new(FMNIST), dir, Some(n_train), Some(n_test)).unwrap();
    (
        Arc::new(Dataset::open(&dir.join("train.safetensors")).unwrap()),
        Arc::new(Dataset::open(&dir.join("test.safetensors")).unwrap()),
    )
}

#[test]
fn adversarial_finetune_raises_ifgs_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let (tr, te) = data(dir.path(), 3000, 300);
    let be = CpuBackend::new();
    let cfg = TrainConfig {
        model: "small-resnet18".into(),
        width: None,
        epochs: 2,
        batch: 64,
        optim: OptimConfig::adam(1e-3, 0.0),
        lr_milestones: vec![],
        lr_gamma: 0.1,
        seed: 5,
        limit: None,
        val_limit: None,
        precision: Default::default(),
    };
    let base = train(
        &be,
        &cfg,
        &tr,
        None,
        &RunDirs {
            out: dir.path().join("base"),
            resume: None,
        },
        &mut |_| {},
    )
    .unwrap();
    let (eps, steps) = (6.0, 3);
    let mut m = base.model;
    let before = evaluate_robust(&be, &mut m, &te, 200, None, eps, steps, 99).unwrap();

    let acfg = AdvTrainConfig {
        steps,
        eps,
        epochs: 2,
        batch: 64,
        seed: 1,
        limit: Some(1000),
        ..AdvTrainConfig::default()
    };
    let out = dir.path().join("adv");
    let res = advtrain(
        &be,
        &base.last_checkpoint,
        &acfg,
        &tr,
        None,
        &out,
        None,
        &mut |_| {},
    )
    .unwrap();
    let mut adv_model = res.model;
    let after = evaluate_robust(&be, &mut adv_model, &te, 200, None, eps, steps, 99).unwrap();
    eprintln!(
        "clean {:.3} -> {:.3}, ifgs(eps {eps}, T {steps}) {:.3} -> {:.3}",
        before.clean.top1, after.clean.top1, before.adv_top1, after.adv_top1
    );
    assert!(
        before.clean.top1 > 0.6,
        "base model too weak: {}",
        before.clean.top1
    );
    assert!(
        after.adv_top1 >= before.adv_top1 + 0.10,
        "iterative-FGS accuracy did not rise by 10 points: {} -> {}",
        before.adv_top1,
        after.adv_top1
    );
    // Stated margin: at most 15 points of clean top-1 lost on this short fine-tune of 1000
    // images (the paper reports 1-4 points on ImageNet after full fine-tuning).
    assert!(
        after.clean.top1 >= before.clean.top1 - 0.15,
        "clean accuracy fell too much: {} -> {}",
        before.clean.top1,
        after.clean.top1
    );

    // Resume from epoch 1 reproduces the uninterrupted run's weights bit for bit.
    let out2 = dir.path().join("adv2");
    std::fs::create_dir_all(&out2).unwrap();
    let one = AdvTrainConfig {
        epochs: 1,
        ..acfg.clone()
    };
    advtrain(
        &be,
        &base.last_checkpoint,
        &one,
        &tr,
        None,
        &out2,
        None,
        &mut |_| {},
    )
    .unwrap();
    let resumed = advtrain(
        &be,
        &base.last_checkpoint,
        &acfg,
        &tr,
        None,
        &out2,
        Some(&out2.join("last.safetensors")),
        &mut |_| {},
    )
    .unwrap();
    for (a, b) in adv_model.params().iter().zip(resumed.model.params()) {
        assert_eq!(a.name, b.name);
        assert_eq!(
            a.value.to_vec().unwrap(),
            b.value.to_vec().unwrap(),
            "{}",
            a.name
        );
    }
}

#[test]
fn bad_settings_are_rejected() {
    let bad = AdvTrainConfig {
        alpha: 1.5,
        ..AdvTrainConfig::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("--alpha"));
    let bad = AdvTrainConfig {
        batch: 0,
        ..AdvTrainConfig::default()
    };
    assert!(bad.validate().is_err());
}
