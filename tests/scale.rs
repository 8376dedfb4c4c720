//! The consistency-scale probe (`advlens consistency-scale`, reproduce's `scale-<model>` stages)
//! measures the term and cross-entropies exactly as the fine-tune's first step computes them.

mod common;

use advlens::attack::methods::{ifgs, random_targets};
use advlens::backend::cpu::CpuBackend;
use advlens::experiments::advtrain::{objective_and_grads, AdvTrainConfig, Consistency};
use advlens::experiments::scale::{probe, PAPER_BETA};
use advlens::nn::train::epoch_batches;
use advlens::nn::{Model, ModelSpec};
use common::tiny_dataset;

fn model(name: &str) -> Model {
    let mut spec = ModelSpec::new(name, 5, (1, 12, 12));
    spec.width = 3;
    Model::from_spec(&spec, 7).unwrap()
}

fn cfg(steps: usize) -> AdvTrainConfig {
    AdvTrainConfig {
        steps,
        eps: 8.0,
        batch: 9,
        seed: 11,
        ..AdvTrainConfig::default()
    }
}

/// The fine-tune objective's (term, CE clean, CE adv) on every full batch of the first
/// `images` images, as the probe draws them.
fn objective_per_batch(
    data: &std::sync::Arc<advlens::data::Dataset>,
    name: &str,
    images: usize,
    c: &AdvTrainConfig,
) -> Vec<(f64, f64, f64)> {
    let be = CpuBackend::new();
    let mut m = model(name);
    let (batches, _) = epoch_batches(data, c.batch, c.seed, 0, Some(images)).unwrap();
    batches
        .map(|b| {
            let b = b.unwrap();
            let ts = random_targets(
                advlens::rng::hash64(c.seed, 0xAD7_0000),
                &b.indices,
                &b.labels,
                5,
            )
            .unwrap();
            let xa = ifgs(&be, &mut m, &b.images, &ts, c.eps, c.steps).unwrap();
            let s = objective_and_grads(
                &be,
                &mut m,
                &b.images,
                &xa,
                &b.labels,
                0.5,
                0.1,
                Consistency::Sum,
            )
            .unwrap();
            (s.consistency, s.ce_clean, s.ce_adv)
        })
        .collect()
}

#[test]
fn probe_over_several_batches_is_their_mean() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("d.safetensors"), 31, 5, 3);
    let be = CpuBackend::new();
    let c = cfg(2);
    // 27 images at batch 9: three full batches, each with its own targets and attack.
    let r = probe(&be, &mut model("small-resnet18"), &data, 27, &c).unwrap();
    let per = objective_per_batch(&data, "small-resnet18", 27, &c);
    assert_eq!(per.len(), 3);
    let mean = |f: fn(&(f64, f64, f64)) -> f64| per.iter().map(f).sum::<f64>() / 3.0;
    let (term, ce_c, ce_a) = (mean(|t| t.0), mean(|t| t.1), mean(|t| t.2));
    for (got, want, what) in [
        (r.term, term, "term"),
        (r.ce_clean, ce_c, "CE clean"),
        (r.ce_adv, ce_a, "CE adv"),
    ] {
        assert!(
            (got - want).abs() <= 1e-9 + 1e-6 * want.abs(),
            "{what}: probe {got} vs mean of batches {want}"
        );
    }
    // The batches differ, so a probe that read only the first would fail above.
    assert!(
        (per[0].0 - per[1].0).abs() > 1e-6 * per[0].0.abs(),
        "{per:?}"
    );
    assert_eq!(r.images, 27);
}

#[test]
fn probe_refuses_data_the_model_does_not_take() {
    let dir = tempfile::tempdir().unwrap();
    // 4 classes against the model's 5.
    let data = tiny_dataset(&dir.path().join("d.safetensors"), 12, 4, 3);
    let be = CpuBackend::new();
    let e = probe(&be, &mut model("small-vgg16"), &data, 9, &cfg(1)).unwrap_err();
    assert!(e.to_string().contains("does not fit model"), "{e}");
}

#[test]
fn probe_matches_the_finetune_objective_on_its_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("d.safetensors"), 23, 5, 3);
    let be = CpuBackend::new();
    // small-resnet18: BatchNorm, no dropout, so two training-mode passes see the same network.
    let c = cfg(3);
    let r = probe(&be, &mut model("small-resnet18"), &data, 9, &c).unwrap();
    assert_eq!(r.images, 9);
    assert!(r.batchnorm);

    let (consistency, ce_clean, ce_adv) = objective_per_batch(&data, "small-resnet18", 9, &c)[0];
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-9 + 1e-6 * b.abs(),
            "{what}: probe {a} vs objective {b}"
        );
    };
    close(r.term, consistency, "term");
    close(r.ce_clean, ce_clean, "CE clean");
    close(r.ce_adv, ce_adv, "CE adv");
    close(r.ce_part, 0.5 * ce_clean + 0.5 * ce_adv, "CE part");
    assert!(consistency > 0.0, "the attack moved phi");
    close(
        r.beta_match.unwrap() * r.term,
        r.ce_part,
        "matched beta balances the CE part",
    );
    close(
        r.ratio_at_paper_beta,
        PAPER_BETA * r.term / r.ce_part,
        "ratio at 0.1",
    );
    let (ch, h, w) = r.phi_shape;
    assert_eq!(r.phi_values, ch * h * w);
    close(r.term_per_value, r.term / r.phi_values as f64, "per value");
    assert!(
        r.term_relative > 0.0 && r.term_relative <= 2.0,
        "{}",
        r.term_relative
    );
    assert!(r.phi_sq_per_value > 0.0);
}

#[test]
fn no_attack_means_no_term_and_no_matched_beta() {
    let dir = tempfile::tempdir().unwrap();
    let data = tiny_dataset(&dir.path().join("d.safetensors"), 12, 5, 4);
    let be = CpuBackend::new();
    let r = probe(&be, &mut model("small-vgg16"), &data, 12, &cfg(0)).unwrap();
    assert!(!r.batchnorm, "small-vgg16 has no BatchNorm");
    assert_eq!(r.term, 0.0);
    assert_eq!(r.term_relative, 0.0);
    assert_eq!(r.beta_match, None);
    assert!(r.ce_part > 0.0);
}
