//! The analysis experiments E3 (neurons), E4 (ratios), E5 (detect), E8 (explain) end to end on a
//! tiny real pipeline, plus their pictures and bad inputs.
//!
//! Fixture (built once per test binary): 2000 training and 500 test images of Debian's
//! Fashion-MNIST, a small-resnet18 (width 4) trained for one epoch, and an adversarial set of the
//! ensemble attack (that model alone, 2 least-likely targets, 10 Adam steps) on the first 100
//! test images: 200 adversarial images.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use advlens::analysis::ratios::{distance_ratios, RatioConfig};
use advlens::analysis::roc::trapezoid_area;
use advlens::analysis::topk::top_fraction_k;
use advlens::analysis::wordnet::Hierarchy;
use advlens::attack::advset::AdvSet;
use advlens::attack::ensemble::{run_ensemble, EnsembleRun};
use advlens::attack::methods::EnsembleAttack;
use advlens::backend::cpu::CpuBackend;
use advlens::backend::Backend;
use advlens::data::idx::import_fashion_mnist;
use advlens::data::Dataset;
use advlens::experiments::detect::{detect, DetectConfig};
use advlens::experiments::explain::{
    explain, head_probs, prediction_differences, zeroed_channel_batch, ExplainConfig, ExplainImage,
    NeuronsFile,
};
use advlens::experiments::neurons::{neurons, NeuronsConfig, NeuronsResult};
use advlens::experiments::ratios::{logits_and_phi, ratios, RatiosConfig};
use advlens::nn::optim::OptimConfig;
use advlens::nn::train::{self, RunDirs, TrainConfig};
use advlens::nn::Model;
use advlens::rng::Rng;
use advlens::viz::OcclusionConfig;
use advlens::Tensor;

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";
const HIERARCHY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/wordnet/fashion_mnist_hierarchy.json"
);
const N_TEST: usize = 500;
const N_ATTACKED: usize = 100;
const TARGETS: usize = 2;

struct Fixture {
    dir: PathBuf,
    train: PathBuf,
    test: PathBuf,
    ckpt: PathBuf,
    adv: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        advlens::progress::set_quiet(true);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("experiments-fixture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        import_fashion_mnist(Path::new(FMNIST), &dir, Some(2000), Some(N_TEST)).unwrap();
        let be = CpuBackend::new();
        let train_path = dir.join("train.safetensors");
        let data = Arc::new(Dataset::open(&train_path).unwrap());
        let cfg = TrainConfig {
            model: "small-resnet18".into(),
            width: Some(4),
            epochs: 1,
            batch: 32,
            optim: OptimConfig::adam(2e-3, 0.0),
            lr_milestones: vec![],
            lr_gamma: 0.1,
            seed: 3,
            limit: None,
            val_limit: None,
            precision: Default::default(),
        };
        let dirs = RunDirs {
            out: dir.join("model"),
            resume: None,
        };
        let ckpt = train::train(&be, &cfg, &data, None, &dirs, &mut |_| {})
            .unwrap()
            .last_checkpoint;
        let test = dir.join("test.safetensors");
        let adv = dir.join("adv");
        run_ensemble(
            &be,
            &EnsembleRun {
                models: vec![ckpt.clone()],
                data: test.clone(),
                out: adv.clone(),
                targets: TARGETS,
                attack: EnsembleAttack {
                    steps: 10,
                    ..EnsembleAttack::default()
                },
                batch: 25,
                shard_size: 50,
                limit: Some(N_ATTACKED),
                part: None,
                seed: 0,
            },
        )
        .unwrap();
        Fixture {
            dir,
            train: train_path,
            test,
            ckpt,
            adv,
        }
    })
}

fn scratch(name: &str) -> PathBuf {
    let d = fixture().dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn test_set() -> Arc<Dataset> {
    Arc::new(Dataset::open(&fixture().test).unwrap())
}

fn hierarchy() -> Hierarchy {
    Hierarchy::load(Path::new(HIERARCHY)).unwrap()
}

fn err_has(e: impl std::fmt::Display, needles: &[&str]) {
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
    }
}

/// |got - want| <= atol + rtol |want| everywhere, naming the worst index.
fn assert_close64(got: &[f64], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0usize, 0.0f64);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.1 || !g.is_finite() {
            worst = (i, excess.max(f64::MIN_POSITIVE));
        }
    }
    assert!(
        worst.1 <= 0.0,
        "{what}: index {} got {} want {}",
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

fn assert_png(path: &Path) -> (u32, u32) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode as an image: {e}", path.display()));
    assert!(img.width() > 0 && img.height() > 0);
    (img.width(), img.height())
}

fn assert_svg(path: &Path) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.contains("<svg"), "{} is not an SVG", path.display());
    assert!(
        s.trim_end().ends_with("</svg>"),
        "{} is truncated",
        path.display()
    );
}

/// E3 once, shared by the tests that need its output.
fn mined() -> &'static (PathBuf, NeuronsResult) {
    static M: OnceLock<(PathBuf, NeuronsResult)> = OnceLock::new();
    M.get_or_init(|| {
        let f = fixture();
        let out = scratch("neurons");
        let adv = AdvSet::open(&f.adv).unwrap();
        let cfg = NeuronsConfig {
            // 61 does not divide 500 or 200: batches end mid-set.
            batch: 61,
            grid_neurons: 1,
            grid_images: 3,
            ..NeuronsConfig::default()
        };
        let r = neurons(
            &CpuBackend::new(),
            &f.ckpt,
            &test_set(),
            &adv,
            &hierarchy(),
            &cfg,
            &out,
        )
        .unwrap();
        (out, r)
    })
}

// ------------------------------------------------------------------------------------- E3

#[test]
fn neurons_mines_every_conv_channel_with_the_one_percent_rule() {
    let (out, r) = mined();
    let f = fixture();
    let mut model = Model::load(&f.ckpt).unwrap();
    let names = model.conv_layer_names();
    assert_eq!(
        r.layers.iter().map(|l| l.layer.clone()).collect::<Vec<_>>(),
        names
    );
    let n_adv = N_ATTACKED * TARGETS;
    assert_eq!((r.real_images, r.adv_images), (N_TEST, n_adv));
    assert_eq!(r.k_real, top_fraction_k(N_TEST, 0.01));
    assert_eq!(r.k_real, 5);
    assert_eq!(r.k_adv, 2);
    let real = test_set();
    let adv = AdvSet::open(&f.adv).unwrap();
    let mut total = 0;
    for l in &r.layers {
        assert_eq!(l.channels, l.neurons.len());
        for (ch, n) in l.neurons.iter().enumerate() {
            assert_eq!(n.channel, ch);
            assert_eq!(n.top_real.len(), r.k_real, "{} {ch}", l.layer);
            assert_eq!(n.top_adv.len(), r.k_adv, "{} {ch}", l.layer);
            assert!(n.top_real.iter().all(|&i| (i as usize) < N_TEST));
            assert!(n.top_adv.iter().all(|&i| (i as usize) < n_adv));
            assert!(n.top_real_act.windows(2).all(|w| w[0] >= w[1]));
            assert!(n.top_adv_act.windows(2).all(|w| w[0] >= w[1]));
            // Post-ReLU maxima are >= 0.
            assert!(n.top_real_act.iter().all(|&a| a >= 0.0));
            assert!(n.lc > 0.0 && n.lc <= 1.0 + 1e-12, "LC {}", n.lc);
            for cs in [n.cs1, n.cs2] {
                let cs = cs.expect("p, q are non-empty so CS is defined");
                assert!((-1e-12..=1.0 + 1e-12).contains(&cs), "CS {cs}");
            }
            assert!(n.top_class < 10);
            // p's majority class holds at least 1/k of the top images.
            assert!(n.top_class_fraction >= 1.0 / r.k_real as f64 - 1e-12);
            let majority = n
                .top_real
                .iter()
                .filter(|&&i| real.labels()[i as usize] as usize == n.top_class)
                .count();
            assert_eq!(majority as f64 / r.k_real as f64, n.top_class_fraction);
            total += 1;
        }
    }
    assert_eq!(r.summary.neurons, total);
    let binned: usize = r.curve.iter().map(|b| b.count).sum();
    assert_eq!(binned, total, "every LC lies in [0, 1]");
    assert_eq!(r.curve.len(), 10);
    for b in &r.curve {
        for m in [b.cs1_mean, b.cs2_mean].into_iter().flatten() {
            assert!((0.0..=1.0 + 1e-12).contains(&m));
        }
    }

    // The streamed top-k of two layers equals a full sort of all activations (one forward of
    // every image at once), including ids: batch boundaries (61) do not matter.
    let be = CpuBackend::new();
    model.to_backend(&be).unwrap();
    let check = [names[0].as_str(), names[names.len() - 1].as_str()];
    let idx: Vec<usize> = (0..N_TEST).collect();
    let (x, _) = real.batch_f32(&idx).unwrap();
    let (_, acts) = model.forward_with_activations(&be, &x, &check).unwrap();
    let adv_x = adv.batch(&(0..n_adv).collect::<Vec<_>>()).unwrap().images;
    let (_, adv_acts) = model.forward_with_activations(&be, &adv_x, &check).unwrap();
    for ((name, a), aa) in check.iter().zip(&acts).zip(&adv_acts) {
        let layer = r.layers.iter().find(|l| l.layer == *name).unwrap();
        for (full, n_img, k, top_of) in
            [(a, N_TEST, r.k_real, 0usize), (aa, n_adv, r.k_adv, 1usize)]
        {
            let m = be.channel_max(full).unwrap().to_vec().unwrap();
            let c = layer.channels;
            for ch in 0..c {
                let mut v: Vec<(f32, u32)> =
                    (0..n_img).map(|i| (m[i * c + ch], i as u32)).collect();
                v.sort_by(|p, q| q.0.total_cmp(&p.0).then(p.1.cmp(&q.1)));
                let want: Vec<u32> = v[..k].iter().map(|p| p.1).collect();
                let n = &layer.neurons[ch];
                let got = if top_of == 0 { &n.top_real } else { &n.top_adv };
                assert_eq!(got, &want, "layer {name} channel {ch} set {top_of}");
            }
        }
    }

    // Files: neurons.json (compact), Fig. 4, one grid of 2 rows x 3 columns.
    assert_svg(&out.join("fig4_lc_cs.svg"));
    assert_eq!(r.grids.len(), 1);
    let g = &r.grids[0];
    // Rows hold min(grid_images, k) tiles: 3 real, k_adv = 2 adversarial.
    assert_eq!((g.real_ids.len(), g.adv_ids.len()), (3, 2));
    let (w, h) = assert_png(&out.join(&g.file));
    assert!(w > h, "a 2 x 3 grid is wider than tall ({w} x {h})");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("neurons.json")).unwrap()).unwrap();
    assert_eq!(json["k_real"], 5);
    assert_eq!(
        json["layers"][0]["neurons"][0]["top_real"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    // Bounded output: nothing per image is written, only k ids per neuron.
    let mut files: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut want = vec![
        "fig4_lc_cs.svg".to_string(),
        g.file.clone(),
        "neurons.json".to_string(),
    ];
    want.sort();
    assert_eq!(files, want);
    eprintln!(
        "E3: {} neurons, mean LC {:.3}, CS1 {:?}, CS2 {:?}, corr(LC,CS1) {:?}, corr(LC,CS2) {:?}",
        r.summary.neurons,
        r.summary.mean_lc,
        r.summary.mean_cs1,
        r.summary.mean_cs2,
        r.summary.corr_lc_cs1,
        r.summary.corr_lc_cs2
    );
}

#[test]
fn neurons_rejects_unknown_layers_foreign_class_lists_and_wrong_hierarchies() {
    let f = fixture();
    let be = CpuBackend::new();
    let adv = AdvSet::open(&f.adv).unwrap();
    let out = scratch("neurons-bad");
    let cfg = NeuronsConfig {
        layers: Some(vec!["layer1.0.conv1".into(), "features.99".into()]),
        ..NeuronsConfig::default()
    };
    let e = neurons(&be, &f.ckpt, &test_set(), &adv, &hierarchy(), &cfg, &out).unwrap_err();
    err_has(&e, &["unknown conv layer", "features.99", "layer4.1.conv2"]);
    assert!(!out.join("neurons.json").exists());

    // The same shards under a manifest that names another class list.
    let other = scratch("adv-other-classes");
    std::fs::create_dir_all(&other).unwrap();
    for e in std::fs::read_dir(&f.adv).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), other.join(e.file_name())).unwrap();
    }
    let mpath = other.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["classes"][3] = serde_json::Value::String("Tabby cat".into());
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let foreign = AdvSet::open(&other).unwrap();
    let cfg = NeuronsConfig::default();
    let e = neurons(
        &be,
        &f.ckpt,
        &test_set(),
        &foreign,
        &hierarchy(),
        &cfg,
        &out,
    )
    .unwrap_err();
    err_has(&e, &["another class list", "Tabby cat", "Dress"]);
    let e = ratios(
        &be,
        &f.ckpt,
        &test_set(),
        &foreign,
        &RatiosConfig::default(),
        &out,
    )
    .unwrap_err();
    err_has(&e, &["another class list"]);

    // A hierarchy of another class order.
    let mut h = hierarchy();
    h.classes.swap(0, 1);
    let e = neurons(&be, &f.ckpt, &test_set(), &adv, &h, &cfg, &out).unwrap_err();
    err_has(&e, &["class 0", "T-shirt/top", "hierarchy"]);
    assert!(!out.join("neurons.json").exists());
}

// ------------------------------------------------------------------------------------- E4

#[test]
fn ratios_are_finite_positive_and_equal_the_whole_set_reference() {
    let f = fixture();
    let be = CpuBackend::new();
    let real = test_set();
    let adv = AdvSet::open(&f.adv).unwrap();
    let out = scratch("ratios");
    let cfg = RatiosConfig {
        batch: 29,
        chunk: 37,
        ..RatiosConfig::default()
    };
    let r = ratios(&be, &f.ckpt, &real, &adv, &cfg, &out).unwrap();
    let n_adv = N_ATTACKED * TARGETS;
    assert_eq!(r.per_image_r1.len(), n_adv);
    for v in r.per_image_r1.iter().chain(&r.per_image_r2) {
        let v = v.expect("every class has >= 2 real images");
        assert!(v.is_finite() && v > 0.0, "ratio {v}");
    }
    assert_eq!(
        (r.r1.n, r.r1.missing, r.r2.n, r.r2.missing),
        (n_adv, 0, n_adv, 0)
    );
    for h in [&r.hist_r1, &r.hist_r2] {
        assert_eq!(h.counts.iter().sum::<usize>() + h.below + h.above, n_adv);
    }
    assert_eq!(r.real_per_class.iter().sum::<usize>(), N_TEST);

    // Reference: every phi in memory, analysis::ratios::distance_ratios.
    let mut model = Model::load(&f.ckpt).unwrap();
    model.to_backend(&be).unwrap();
    let (x, labels) = real.batch_f32(&(0..N_TEST).collect::<Vec<_>>()).unwrap();
    let (_, phi_real) = logits_and_phi(&be, &mut model, &x).unwrap();
    let ab = adv.batch(&(0..n_adv).collect::<Vec<_>>()).unwrap();
    let (_, phi_adv) = logits_and_phi(&be, &mut model, &ab.images).unwrap();
    let [c, h, w] = r.phi_shape;
    let want = distance_ratios(
        &phi_real.to_vec().unwrap(),
        &labels,
        &phi_adv.to_vec().unwrap(),
        &ab.true_label,
        &ab.target_label,
        c * h * w,
        10,
        &RatioConfig::default(),
    )
    .unwrap();
    let un = |v: &[Option<f64>]| v.iter().map(|x| x.unwrap_or(f64::NAN)).collect::<Vec<_>>();
    assert_close64(&un(&r.per_image_r1), &un(&want.r1), 1e-6, 1e-5, "r1");
    assert_close64(&un(&r.per_image_r2), &un(&want.r2), 1e-6, 1e-5, "r2");
    assert_svg(&out.join("fig5_ratios.svg"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("ratios.json")).unwrap()).unwrap();
    assert!(json["r1"]["mean"].as_f64().unwrap() > 0.0);
    eprintln!(
        "E4: mean r1 {:?} (median {:?}, {:?} above 1), mean r2 {:?} (median {:?}, {:?} below 1)",
        r.r1.mean, r.r1.median, r.r1.frac_above_1, r.r2.mean, r.r2.median, r.r2.frac_below_1
    );

    // A per-class cap keeps at most that many real images per class, the same ones for any
    // batch size (seeded by image index, not arrival order).
    let capped = |batch: usize| {
        let cfg = RatiosConfig {
            batch,
            max_per_class: Some(7),
            seed: 11,
            adv_limit: Some(23),
            ..RatiosConfig::default()
        };
        ratios(&be, &f.ckpt, &real, &adv, &cfg, &scratch("ratios-capped")).unwrap()
    };
    let a = capped(64);
    let b = capped(13);
    assert!(a.real_per_class.iter().all(|&n| n == 7));
    assert_eq!(a.per_image_r1.len(), 23);
    assert_eq!(a.per_image_r1, b.per_image_r1);
    assert_eq!(a.per_image_r2, b.per_image_r2);
}

// ------------------------------------------------------------------------------------- E5

#[test]
fn detect_gives_an_auc_in_range_and_a_consistent_curve() {
    let f = fixture();
    let be = CpuBackend::new();
    let train = Arc::new(Dataset::open(&f.train).unwrap());
    let adv = AdvSet::open(&f.adv).unwrap();
    let out = scratch("detect");
    let cfg = DetectConfig {
        batch: 47,
        max_curve_points: 1_000_000,
        ..DetectConfig::default()
    };
    let r = detect(&be, &f.ckpt, &train, &test_set(), &adv, &cfg, &out).unwrap();
    let auc = r.auc.expect("both classes present");
    assert!((0.0..=1.0).contains(&auc));
    assert_eq!(
        (r.real_images, r.adv_images),
        (N_TEST, N_ATTACKED * TARGETS)
    );
    assert_eq!(r.train_images, 2000);
    assert_eq!(r.class_fit.len(), 10);
    assert_eq!(r.class_fit.iter().map(|c| c.n).sum::<u64>(), 2000);
    assert_eq!(r.curve.len(), r.curve_points_total, "not thinned");
    let first = r.curve.first().unwrap();
    let last = r.curve.last().unwrap();
    assert_eq!(
        (first.fpr, first.tpr, last.fpr, last.tpr),
        (0.0, 0.0, 1.0, 1.0)
    );
    assert!(r
        .curve
        .windows(2)
        .all(|w| w[1].fpr >= w[0].fpr && w[1].tpr >= w[0].tpr));
    assert!((trapezoid_area(&r.curve) - auc).abs() < 1e-9);
    assert!(r.mean_log_density_real.is_finite() && r.mean_log_density_adv.is_finite());
    assert_svg(&out.join("fig6_roc.svg"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("detect.json")).unwrap()).unwrap();
    assert_eq!(json["positive_class"], "real");
    assert!((json["auc"].as_f64().unwrap() - auc).abs() < 1e-12);
    eprintln!(
        "E5: AUC {auc:.4}; mean log-density real {:.2} adversarial {:.2}; real accuracy {:.3}; \
         adversarial predicted as target {:.3}",
        r.mean_log_density_real, r.mean_log_density_adv, r.real_accuracy, r.adv_pred_target
    );

    // Thinning keeps the end points and at most the asked count.
    let thin = advlens::experiments::detect::thin_curve(&r.curve, 5);
    assert!(thin.len() <= 5);
    assert_eq!(thin.first().unwrap().fpr, 0.0);
    assert_eq!(thin.last().unwrap().tpr, 1.0);
}

// ------------------------------------------------------------------------------------- E8

#[test]
fn prediction_difference_batch_equals_one_channel_at_a_time() {
    let f = fixture();
    let be = CpuBackend::new();
    let mut model = Model::load(&f.ckpt).unwrap();
    model.to_backend(&be).unwrap();
    let real = test_set();
    let (x, _) = real.batch_f32(&[7, 123]).unwrap();
    let c = hierarchy().c_matrix();
    // chunk 7 does not divide the 32 channels of phi.
    let res = prediction_differences(&be, &mut model, &x, Some(&c), 7).unwrap();
    let (pc, ph, pw) = model.phi_shape().unwrap();
    assert_eq!(res.len(), 2);
    let (_, phi) = logits_and_phi(&be, &mut model, &x).unwrap();
    let phi = phi.to_vec().unwrap();
    let mut rng = Rng::new(0x5EED);
    for (b, r) in res.iter().enumerate() {
        assert_eq!(r.pd.len(), pc);
        assert!(
            r.pd.iter().all(|&p| p >= 0.0 && p.is_finite()),
            "{:?}",
            r.pd
        );
        assert!(r.pd.iter().any(|&p| p > 0.0));
        assert!((r.probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let one = &phi[b * pc * ph * pw..(b + 1) * pc * ph * pw];
        let g = head_probs(
            &be,
            &model,
            &Tensor::from_vec(&[1, pc, ph, pw], one.to_vec()).unwrap(),
        )
        .unwrap();
        let mut chans = vec![0, pc - 1, rng.below(pc)];
        chans.dedup();
        for &ch in &chans {
            // One head call on phi with only channel ch zeroed, by hand.
            let mut v = one.to_vec();
            v[ch * ph * pw..(ch + 1) * ph * pw].fill(0.0);
            let gi =
                head_probs(&be, &model, &Tensor::from_vec(&[1, pc, ph, pw], v).unwrap()).unwrap();
            let d: Vec<f64> = g.iter().zip(&gi).map(|(a, b)| (*a - *b) as f64).collect();
            let k = d.len();
            let mut want = 0.0;
            for i in 0..k {
                for j in 0..k {
                    want += d[i] * c[i * k + j] * d[j];
                }
            }
            assert_close64(
                &[r.pd[ch]],
                &[want],
                1e-9,
                1e-4,
                &format!("PD image {b} ch {ch}"),
            );
        }
    }
    // The batch builder zeroes exactly one channel per row.
    let one = &phi[..pc * ph * pw];
    let t = zeroed_channel_batch(one, (pc, ph, pw), &[2, 0]).unwrap();
    let v = t.to_vec().unwrap();
    let hw = ph * pw;
    for (row, ch) in [(0usize, 2usize), (1, 0)] {
        let r = &v[row * pc * hw..(row + 1) * pc * hw];
        for i in 0..pc * hw {
            let want = if i / hw == ch { 0.0 } else { one[i] };
            assert_eq!(r[i], want, "row {row} value {i}");
        }
    }
    assert!(zeroed_channel_batch(one, (pc, ph, pw), &[pc]).is_err());
}

#[test]
fn explain_ranks_neurons_and_draws_them_with_their_top_images() {
    let (nout, _) = mined();
    let f = fixture();
    let be = CpuBackend::new();
    let real = test_set();
    let adv = AdvSet::open(&f.adv).unwrap();
    let nf = NeuronsFile::load(&nout.join("neurons.json")).unwrap();
    let out = scratch("explain");
    let b = adv.batch(&[5]).unwrap();
    let img = ExplainImage {
        source: "adversarial".into(),
        set: f.adv.display().to_string(),
        index: 5,
        true_label: b.true_label[0],
        target_label: Some(b.target_label[0]),
        pixels: b.images.to_vec().unwrap(),
    };
    let cfg = ExplainConfig {
        top: 2,
        grid_images: 3,
        occlusion: Some(OcclusionConfig {
            patch: 9,
            stride: 5,
        }),
        ..ExplainConfig::default()
    };
    let c = hierarchy().c_matrix();
    let r = explain(
        &be,
        &f.ckpt,
        &img,
        real.classes(),
        Some(&c),
        Some((&nf, &real)),
        &cfg,
        Some(&out),
    )
    .unwrap();
    assert_eq!(r.top.len(), 2);
    assert!(r.top[0].pd >= r.top[1].pd);
    let max = r.pd.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(r.top[0].pd, max);
    assert_eq!(r.phi_layer, "layer4.1.conv2");
    for t in &r.top {
        assert_eq!(t.top_real.len(), 3);
        let (w, h) = assert_png(&out.join(t.grid.as_ref().unwrap()));
        assert!(w > 3 * h, "one row of 4 tiles ({w} x {h})");
    }
    assert!(r.lines().contains("PD"));

    // Without C and without neurons: identity C, no pictures.
    let r2 = explain(&be, &f.ckpt, &img, real.classes(), None, None, &cfg, None).unwrap();
    assert_eq!(r2.c_matrix, "identity");
    assert!(r2.top.iter().all(|t| t.grid.is_none()));
}

// ------------------------------------------------------------------------------------- CLI

#[test]
fn cli_detect_json_and_clear_errors() {
    let f = fixture();
    let bin = env!("CARGO_BIN_EXE_advlens");
    let out = scratch("cli-detect");
    let o = Command::new(bin)
        .args(["--json", "--device", "cpu", "detect", "--ckpt"])
        .arg(&f.ckpt)
        .arg("--train")
        .arg(&f.train)
        .arg("--data")
        .arg(&f.test)
        .arg("--adv")
        .arg(&f.adv)
        .arg("--out")
        .arg(&out)
        .args([
            "--train-limit",
            "500",
            "--limit",
            "100",
            "--adv-limit",
            "50",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let auc = v["auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc));
    assert!(out.join("detect.json").exists());

    let o = Command::new(bin)
        .args(["--device", "cpu", "neurons", "--ckpt"])
        .arg(&f.ckpt)
        .arg("--data")
        .arg(&f.test)
        .arg("--adv")
        .arg(&f.adv)
        .args(["--hierarchy", HIERARCHY, "--layers", "conv1,nope", "--out"])
        .arg(scratch("cli-neurons"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    err_has(
        String::from_utf8_lossy(&o.stderr),
        &["unknown conv layer 'nope'"],
    );

    for cmd in ["neurons", "ratios", "detect", "explain"] {
        let o = Command::new(bin).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success());
        err_has(String::from_utf8_lossy(&o.stdout), &["Example:", "--ckpt"]);
    }
}

#[test]
fn discrepancy_maps_are_normalised_and_follow_the_neuron() {
    let (_, r) = mined();
    let f = fixture();
    let be = CpuBackend::new();
    let mut model = Model::load(&f.ckpt).unwrap();
    model.to_backend(&be).unwrap();
    let real = test_set();
    let layer = &r.layers[r.layers.len() - 1];
    // A live neuron (a dead one, all zeros, has nothing to drop).
    let n = layer
        .neurons
        .iter()
        .find(|n| n.top_real_act[0] > 0.0)
        .expect("a live neuron in the last layer");
    let ch = n.channel;
    let (x, _) = real.batch_f32(&[n.top_real[0] as usize]).unwrap();
    let px = x.to_vec().unwrap();
    // Awkward geometry: patch 5, stride 3 (last position aligned to the border), batch 7.
    let occ = OcclusionConfig {
        patch: 5,
        stride: 3,
    };
    let m = advlens::viz::discrepancy_map(&be, &mut model, &px, &layer.layer, ch, &occ, 7).unwrap();
    assert_eq!(m.len(), 28 * 28);
    assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
    let top = m.iter().cloned().fold(0.0f32, f32::max);
    assert!(
        top == 1.0,
        "the top image's activation drops somewhere (max {top})"
    );
    // Same map whatever the batch of occluded copies.
    let m1 =
        advlens::viz::discrepancy_map(&be, &mut model, &px, &layer.layer, ch, &occ, 1000).unwrap();
    let a: Vec<f64> = m.iter().map(|&v| v as f64).collect();
    let b: Vec<f64> = m1.iter().map(|&v| v as f64).collect();
    assert_close64(&a, &b, 1e-5, 1e-4, "map vs batch size");
    let bad = OcclusionConfig {
        patch: 29,
        stride: 1,
    };
    assert!(
        advlens::viz::discrepancy_map(&be, &mut model, &px, &layer.layer, ch, &bad, 7).is_err()
    );
    assert!(
        advlens::viz::discrepancy_map(&be, &mut model, &px, &layer.layer, 999, &occ, 7).is_err()
    );
}
