//! `advlens reproduce`: every experiment of the paper (E1-E8, DESIGN.md section 4) for three
//! models, one command, one report.
//!
//! Stages run in order and each caches its result in `OUT/<stage>/stage.json` together with the
//! settings that produced it (the "key"): a rerun with the same settings skips finished stages, an
//! interrupted run resumes at the first unfinished one (training and adversarial training also
//! resume inside a stage from their last epoch checkpoint, the attack from its last shard), and a
//! changed setting reruns the stage and every stage that reads its output.
//!
//! Profiles (`--profile`):
//! - `quick`: seconds per stage, a smoke test of the whole pipeline (CI runs it end to end); its
//!   numbers are not meant to support the paper's findings.
//! - `default`: the embedded Fashion-MNIST setting for a 2-core CPU (about 20 minutes).
//! - `full`: the GPU-box setting: every image, all targets, the paper's iteration counts; with
//!   `--data DIR` pointing at an ImageNet-style import and `--weights DIR` at torchvision weights
//!   exported to safetensors (`alexnet.safetensors`, `vgg16.safetensors`, `resnet18.safetensors`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::analysis::wordnet::{parse_class_list, Hierarchy, WordNet};
use crate::attack::advset::AdvSet;
use crate::attack::ensemble::{run_ensemble, EnsembleRun, DEFAULT_SHARD_SIZE};
use crate::attack::eval::fgs_table;
use crate::attack::methods::EnsembleAttack;
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::optim::OptimConfig;
use crate::nn::train::{evaluate, topk_hits, train, RunDirs, TrainConfig};
use crate::nn::{Model, ModelSpec};

use super::advtrain::{advtrain, AdvTrainConfig};
use super::detect::{detect, DetectConfig};
use super::explain::{explain, ExplainConfig, ExplainImage, NeuronsFile};
use super::neurons::{neurons, NeuronsConfig};
use super::ratios::{ratios, RatiosConfig};

/// The Fashion-MNIST class -> WordNet synset table shipped with advlens.
pub const FASHION_MNIST_CLASSES: &str =
    include_str!("../../data/wordnet/fashion_mnist_classes.txt");

/// What a profile sets. Every count is an upper bound (`None`: all).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Profile {
    pub name: String,
    pub models: Vec<String>,
    /// Width knob of the small models (None: the model's default).
    pub width: Option<usize>,
    pub train_limit: Option<usize>,
    /// Training epochs of each model (in `models` order).
    pub epochs: Vec<usize>,
    pub batch: usize,
    pub lr: f32,
    /// Epochs (0-based) at which each model's learning rate drops 10x.
    pub lr_milestones: Vec<Vec<usize>>,
    pub eval_limit: Option<usize>,
    /// Source images of the ensemble attack.
    pub attack_images: Option<usize>,
    /// Targets per image (None: min(10, classes - 1)).
    pub targets: Option<usize>,
    pub attack_steps: usize,
    pub neurons_real_limit: Option<usize>,
    pub detect_train_limit: Option<usize>,
    pub ratios_max_per_class: Option<usize>,
    pub explain_images: usize,
    pub advtrain_limit: Option<usize>,
    pub advtrain_epochs: usize,
    pub advtrain_steps: usize,
    pub advtrain_eps: f32,
    pub advtrain_lr: f32,
    pub fgs_limit: Option<usize>,
    pub fgs_eps: Vec<f32>,
}

impl Profile {
    pub fn named(name: &str) -> Result<Profile> {
        let small = || -> Vec<String> {
            ["small-alexnet", "small-vgg16", "small-resnet18"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        match name {
            "quick" => Ok(Profile {
                name: name.into(),
                models: small(),
                width: Some(4),
                train_limit: Some(1500),
                epochs: vec![1, 1, 1],
                batch: 64,
                lr: 2e-3,
                lr_milestones: vec![vec![], vec![], vec![]],
                eval_limit: Some(300),
                attack_images: Some(24),
                targets: Some(3),
                attack_steps: 10,
                neurons_real_limit: Some(300),
                detect_train_limit: Some(1000),
                ratios_max_per_class: Some(50),
                explain_images: 1,
                advtrain_limit: Some(256),
                advtrain_epochs: 1,
                advtrain_steps: 3,
                advtrain_eps: 6.0,
                advtrain_lr: 5e-4,
                fgs_limit: Some(200),
                fgs_eps: vec![1.0, 5.0],
            }),
            "default" => Ok(Profile {
                name: name.into(),
                models: small(),
                width: None,
                train_limit: None,
                // Schedules measured on full Fashion-MNIST (README): the last epoch at lr/10.
                epochs: vec![6, 6, 4],
                batch: 128,
                lr: 1e-3,
                lr_milestones: vec![vec![5], vec![5], vec![3]],
                eval_limit: None,
                attack_images: Some(200),
                targets: None,
                attack_steps: 20,
                neurons_real_limit: None,
                detect_train_limit: Some(20_000),
                ratios_max_per_class: Some(500),
                explain_images: 2,
                advtrain_limit: Some(4000),
                advtrain_epochs: 1,
                advtrain_steps: 10,
                advtrain_eps: 2.0,
                advtrain_lr: 5e-4,
                fgs_limit: Some(2000),
                fgs_eps: vec![1.0, 5.0],
            }),
            "full" => Ok(Profile {
                name: name.into(),
                models: vec!["alexnet".into(), "vgg16".into(), "resnet18".into()],
                width: None,
                train_limit: None,
                epochs: vec![90, 90, 90],
                batch: 256,
                // Adam (the orchestrator's optimiser); the paper's SGD 0.05 is for `advlens train`.
                lr: 1e-3,
                lr_milestones: vec![vec![30, 60], vec![30, 60], vec![30, 60]],
                eval_limit: None,
                attack_images: None,
                targets: None,
                attack_steps: 20,
                neurons_real_limit: None,
                detect_train_limit: None,
                ratios_max_per_class: None,
                explain_images: 8,
                advtrain_limit: None,
                advtrain_epochs: 1,
                advtrain_steps: 10,
                advtrain_eps: 1.0,
                advtrain_lr: 1e-4,
                fgs_limit: None,
                fgs_eps: vec![1.0, 5.0],
            }),
            other => Err(Error::unknown(
                "profile",
                other,
                &["quick", "default", "full"],
            )),
        }
    }
}

/// Everything `reproduce` is given.
#[derive(Clone, Debug)]
pub struct ReproduceConfig {
    pub profile: Profile,
    /// Folder with `train.safetensors` and `test.safetensors` (or `val.safetensors`); None:
    /// import Fashion-MNIST from Debian's `dataset-fashion-mnist` into `OUT/data`.
    pub data: Option<PathBuf>,
    /// Folder of pretrained weights (`<model>.safetensors`, torchvision names): skips training.
    pub weights: Option<PathBuf>,
    /// Class hierarchy JSON (`advlens wordnet build`); None: built from WordNet.
    pub hierarchy: Option<PathBuf>,
    pub wordnet: PathBuf,
    pub fmnist_src: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
}

/// One stage's timing, for the report's environment section.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
    pub cached: bool,
}

/// Run `f` in `out/<name>` unless `out/<name>/stage.json` holds a result made with the same key.
fn stage(
    out: &Path,
    name: &str,
    key: &Value,
    times: &mut Vec<StageTime>,
    f: impl FnOnce(&Path) -> Result<Value>,
) -> Result<Value> {
    // Compare keys as they read back from disk: serde_json does not parse every float back to the
    // same bits, so the in-memory key goes through the same text round trip.
    let key = &serde_json::from_str::<Value>(&key.to_string()).unwrap_or_else(|_| key.clone());
    let dir = out.join(name);
    let file = dir.join("stage.json");
    if file.exists() {
        if let Ok(v) = crate::io::read_json::<Value>(&file) {
            if v.get("key") == Some(key) {
                if let Some(r) = v.get("result") {
                    eprintln!("reproduce: {name}: cached");
                    times.push(StageTime {
                        stage: name.into(),
                        seconds: v.get("seconds").and_then(Value::as_f64).unwrap_or(0.0),
                        cached: true,
                    });
                    return Ok(r.clone());
                }
            }
        }
    }
    // A stage directory holding (part of) a run made with another key is never resumed or mixed
    // into this one: it is reproduce's own cache, so it is cleared. `stage-key.json` names the
    // key of the run in progress; a directory without it (or with an unreadable one) is stale.
    let pending = dir.join("stage-key.json");
    if dir.exists() {
        let same = crate::io::read_json::<Value>(&pending).is_ok_and(|k| &k == key);
        if !same {
            eprintln!("reproduce: {name}: settings changed, discarding the old stage files");
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
    }
    eprintln!("reproduce: {name} ...");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    crate::io::write_json(&pending, key)?;
    let t0 = Instant::now();
    let result = f(&dir)?;
    let seconds = t0.elapsed().as_secs_f64();
    crate::io::write_json(
        &file,
        &json!({ "key": key, "result": &result, "seconds": seconds }),
    )?;
    eprintln!("reproduce: {name}: done in {seconds:.1}s");
    times.push(StageTime {
        stage: name.into(),
        seconds,
        cached: false,
    });
    Ok(result)
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::InvalidArg(format!("cannot serialise: {e}")))
}

/// The class hierarchy of the data's classes: wnids directly, Fashion-MNIST names through the
/// shipped table, or a user-given file.
fn hierarchy_for(cfg: &ReproduceConfig, classes: &[String]) -> Result<Hierarchy> {
    if let Some(p) = &cfg.hierarchy {
        return Hierarchy::load(p);
    }
    let fm = parse_class_list(
        FASHION_MNIST_CLASSES,
        Path::new("data/wordnet/fashion_mnist_classes.txt"),
    )?;
    let list: Vec<_> = if fm.len() == classes.len()
        && fm
            .iter()
            .zip(classes)
            .all(|(e, c)| e.name.as_deref() == Some(c.as_str()))
    {
        fm
    } else {
        let text: String = classes.iter().map(|c| format!("{c}\n")).collect();
        parse_class_list(&text, Path::new("<dataset classes>")).map_err(|e| {
            Error::InvalidArg(format!(
                "the data's classes are neither wnids nor Fashion-MNIST's ({e}); give --hierarchy \
                 H.json from `advlens wordnet build`"
            ))
        })?
    };
    let wn = WordNet::load(&cfg.wordnet)?;
    Hierarchy::build(&wn, &list, 1.0, &cfg.wordnet)
}

fn open(p: &Path) -> Result<Arc<Dataset>> {
    Ok(Arc::new(Dataset::open(p)?))
}

/// Locate or import the train and test splits.
fn data_splits(cfg: &ReproduceConfig) -> Result<(PathBuf, PathBuf)> {
    match &cfg.data {
        Some(dir) => {
            let train = dir.join("train.safetensors");
            let test = ["test.safetensors", "val.safetensors"]
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.exists())
                .ok_or_else(|| {
                    Error::format(dir, "no test.safetensors or val.safetensors in this folder")
                })?;
            if !train.exists() {
                return Err(Error::format(dir, "no train.safetensors in this folder"));
            }
            Ok((train, test))
        }
        None => {
            let dir = cfg.out.join("data");
            let (train, test) = (dir.join("train.safetensors"), dir.join("test.safetensors"));
            if !(train.exists() && test.exists()) {
                if !cfg.fmnist_src.exists() {
                    return Err(Error::InvalidArg(format!(
                        "--fmnist {} does not exist: install Debian's dataset-fashion-mnist \
                         (apt-get install dataset-fashion-mnist) or pass --data DIR",
                        cfg.fmnist_src.display()
                    )));
                }
                eprintln!(
                    "reproduce: importing Fashion-MNIST from {}",
                    cfg.fmnist_src.display()
                );
                crate::data::idx::import_fashion_mnist(&cfg.fmnist_src, &dir, None, None)?;
            }
            Ok((train, test))
        }
    }
}

/// Top-1/top-5 of a model on an adversarial set, with respect to the TRUE labels (Table 1
/// "Valid-Adv").
pub fn eval_on_advset(be: &dyn Backend, ckpt: &Path, adv: &AdvSet, batch: usize) -> Result<Value> {
    let mut m = Model::load(ckpt)?;
    m.to_backend(be)?;
    let k = m.num_classes();
    let (mut t1, mut t5, mut hit_t, mut n) = (0usize, 0usize, 0usize, 0usize);
    for b in adv.batches(batch) {
        let b = b?;
        let logits = m.predict(be, &b.images)?.to_vec()?;
        let (a, c) = topk_hits(&logits, k, &b.true_label);
        t1 += a;
        t5 += c;
        hit_t += topk_hits(&logits, k, &b.target_label).0;
        n += b.true_label.len();
    }
    let nf = n.max(1) as f64;
    Ok(
        json!({ "images": n, "top1": t1 as f64 / nf, "top5": t5 as f64 / nf, "target_hit": hit_t as f64 / nf }),
    )
}

/// Run the whole pipeline; returns the results document (also written to `OUT/results.json`,
/// with `report.md` and `index.html` beside it).
pub fn reproduce(be: &dyn Backend, cfg: &ReproduceConfig) -> Result<Value> {
    let t_all = Instant::now();
    let p = &cfg.profile;
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut times = Vec::new();
    let (train_p, test_p) = data_splits(cfg)?;
    let (train_ds, test_ds) = (open(&train_p)?, open(&test_p)?);
    if train_ds.classes() != test_ds.classes() {
        return Err(Error::InvalidArg(format!(
            "{} and {} have different class lists",
            train_p.display(),
            test_p.display()
        )));
    }
    let classes = train_ds.classes().to_vec();
    let k = classes.len();
    let hier = hierarchy_for(cfg, &classes)?;
    let hier_path = out.join("hierarchy.json");
    hier.write_json(&hier_path, 100)?;
    let c = hier.c_matrix();
    // The content checksums make every cached stage stale when the data is replaced, even by
    // files of the same size and labels.
    let data_key = json!({ "train": train_p, "test": test_p, "train_n": train_ds.len(), "test_n": test_ds.len(),
        "train_checksum": crate::attack::advset::checksum_file(&train_p)?,
        "test_checksum": crate::attack::advset::checksum_file(&test_p)? });

    // ---- E1: train (or load) and evaluate the three models --------------------------------
    let mut ckpts: Vec<PathBuf> = Vec::new();
    let mut e1 = Vec::new();
    for (mi, name) in p.models.iter().enumerate() {
        let key = json!({ "data": data_key, "model": name, "width": p.width, "epochs": p.epochs.get(mi),
            "batch": p.batch, "lr": p.lr, "milestones": p.lr_milestones.get(mi), "limit": p.train_limit,
            "eval_limit": p.eval_limit, "seed": cfg.seed, "weights": cfg.weights });
        let r = stage(out, &format!("e1-{name}"), &key, &mut times, |dir| {
            let ck = dir.join("model.safetensors");
            let history = match &cfg.weights {
                Some(wdir) => {
                    let (ch, h, w) = train_ds.shape();
                    let mut spec = ModelSpec::new(name, k, (ch, h, w));
                    if let Some(wd) = p.width {
                        spec.width = wd;
                    }
                    let mut m = Model::from_spec(&spec, cfg.seed)?;
                    m.load_weights(&wdir.join(format!("{name}.safetensors")))?;
                    m.save(&ck, 0)?;
                    Value::Null
                }
                None => {
                    let tcfg = TrainConfig {
                        model: name.clone(),
                        width: p.width,
                        epochs: p.epochs.get(mi).copied().unwrap_or(1),
                        batch: p.batch,
                        optim: OptimConfig::adam(p.lr, 0.0),
                        lr_milestones: p.lr_milestones.get(mi).cloned().unwrap_or_default(),
                        lr_gamma: 0.1,
                        seed: cfg.seed.wrapping_add(mi as u64),
                        limit: p.train_limit,
                        val_limit: None,
                    };
                    let last = dir.join("last.safetensors");
                    let dirs = RunDirs {
                        out: dir.to_path_buf(),
                        resume: last.exists().then_some(last),
                    };
                    let res = train(be, &tcfg, &train_ds, None, &dirs, &mut |r| {
                        eprintln!("  {name}: {}", r.line(tcfg.epochs))
                    })?;
                    std::fs::copy(&res.last_checkpoint, &ck).map_err(|e| Error::io(&ck, e))?;
                    to_value(&res.history)?
                }
            };
            let mut m = Model::load(&ck)?;
            let ev = evaluate(be, &mut m, &test_ds, 256, p.eval_limit)?;
            Ok(
                json!({ "model": name, "ckpt": ck, "params": m.num_params(), "valid": ev, "history": history }),
            )
        })?;
        ckpts.push(PathBuf::from(r["ckpt"].as_str().unwrap_or_default()));
        e1.push(r);
    }

    // ---- E2: the ensemble adversarial set -----------------------------------------------------
    let targets = p.targets.unwrap_or(10).min(k.saturating_sub(1));
    let attack = EnsembleAttack {
        steps: p.attack_steps,
        ..EnsembleAttack::default()
    };
    let e1_key: Vec<Value> = e1.iter().map(|r| r["valid"].clone()).collect();
    let e2_key = json!({ "data": data_key, "models": e1_key, "targets": targets, "attack": to_value(&attack)?,
        "images": p.attack_images, "seed": cfg.seed });
    let adv_dir = out.join("e2").join("adv");
    let e2 = stage(out, "e2", &e2_key, &mut times, |_| {
        let run = EnsembleRun {
            models: ckpts.clone(),
            data: test_p.clone(),
            out: adv_dir.clone(),
            targets,
            attack,
            batch: 16,
            shard_size: DEFAULT_SHARD_SIZE,
            limit: p.attack_images,
            part: None,
            seed: cfg.seed,
        };
        to_value(&run_ensemble(be, &run)?)
    })?;
    let adv = AdvSet::open(&adv_dir)?;

    // ---- E3, E4, E5, E7, E8 on a set of checkpoints (before and after E6) --------------------
    let analyse = |tag: &str, ckpts: &[PathBuf], times: &mut Vec<StageTime>| -> Result<Value> {
        let mut per_model = Vec::new();
        for (name, ck) in p.models.iter().zip(ckpts) {
            let base = json!({ "ckpt": ck, "ckpt_len": std::fs::metadata(ck).map(|m| m.len()).unwrap_or(0),
                "adv": e2["manifest"], "adv_n": adv.len(), "data": data_key });
            let valid_adv = stage(out, &format!("{tag}-validadv-{name}"), &base, times, |_| {
                eval_on_advset(be, ck, &adv, 256)
            })?;
            let ncfg = NeuronsConfig {
                limit: p.neurons_real_limit,
                ..NeuronsConfig::default()
            };
            let e3 = stage(
                out,
                &format!("{tag}-e3-{name}"),
                &json!({ "b": base, "limit": ncfg.limit }),
                times,
                |dir| {
                    let r = neurons(be, ck, &test_ds, &adv, &hier, &ncfg, dir)?;
                    Ok(
                        json!({ "summary": r.summary, "curve": r.curve, "lc_edges": r.lc_edges,
                    "k_real": r.k_real, "k_adv": r.k_adv, "real_images": r.real_images,
                    "adv_images": r.adv_images, "figures": r.figures, "grids": r.grids.len(),
                    "activation": r.activation, "dir": dir }),
                    )
                },
            )?;
            let rcfg = RatiosConfig {
                max_per_class: p.ratios_max_per_class,
                seed: cfg.seed,
                ..RatiosConfig::default()
            };
            let e4 = stage(
                out,
                &format!("{tag}-e4-{name}"),
                &json!({ "b": base, "cap": rcfg.max_per_class }),
                times,
                |dir| {
                    let r = ratios(be, ck, &test_ds, &adv, &rcfg, dir)?;
                    Ok(
                        json!({ "r1": r.r1, "r2": r.r2, "hist_r1": r.hist_r1, "hist_r2": r.hist_r2,
                    "figures": r.figures, "definition": r.definition, "dir": dir }),
                    )
                },
            )?;
            let dcfg = DetectConfig {
                train_limit: p.detect_train_limit,
                ..DetectConfig::default()
            };
            let e5 = stage(
                out,
                &format!("{tag}-e5-{name}"),
                &json!({ "b": base, "train_limit": dcfg.train_limit }),
                times,
                |dir| {
                    let r = detect(be, ck, &train_ds, &test_ds, &adv, &dcfg, dir)?;
                    Ok(
                        json!({ "auc": r.auc, "curve": r.curve, "real_accuracy": r.real_accuracy,
                    "adv_pred_target": r.adv_pred_target, "adv_pred_true": r.adv_pred_true,
                    "mean_log_density_real": r.mean_log_density_real,
                    "mean_log_density_adv": r.mean_log_density_adv, "features": r.features,
                    "covariance": r.covariance, "figures": r.figures, "dir": dir }),
                    )
                },
            )?;
            let e7 = stage(
                out,
                &format!("{tag}-e7-{name}"),
                &json!({ "b": base, "eps": p.fgs_eps, "limit": p.fgs_limit }),
                times,
                |_| {
                    let mut m = Model::load(ck)?;
                    to_value(&fgs_table(
                        be,
                        &mut m,
                        ck,
                        &test_ds,
                        &p.fgs_eps,
                        128,
                        p.fgs_limit,
                    )?)
                },
            )?;
            let e8 = stage(
                out,
                &format!("{tag}-e8-{name}"),
                &json!({ "b": base, "n": p.explain_images }),
                times,
                |dir| {
                    let nf = NeuronsFile::load(&super::neurons::json_path(
                        &out.join(format!("{tag}-e3-{name}")),
                    ))?;
                    let names: Vec<String> = classes.clone();
                    let mut items = Vec::new();
                    for i in 0..p.explain_images.min(adv.len()) {
                        let ai = adv.batch(&[i])?;
                        let src = adv.source_indices()[i];
                        let real = ExplainImage {
                            source: "real".into(),
                            set: test_p.display().to_string(),
                            index: src,
                            true_label: test_ds.label(src)?,
                            target_label: None,
                            pixels: test_ds.batch_f32(&[src])?.0.to_vec()?,
                        };
                        let advi = ExplainImage {
                            source: "adversarial".into(),
                            set: adv_dir.display().to_string(),
                            index: i,
                            true_label: ai.true_label[0],
                            target_label: Some(ai.target_label[0]),
                            pixels: ai.images.to_vec()?,
                        };
                        for (tagi, img) in [("real", real), ("adv", advi)] {
                            let sub = dir.join(format!("{tagi}-{i}"));
                            let r = explain(
                                be,
                                ck,
                                &img,
                                &names,
                                Some(&c),
                                Some((&nf, &test_ds)),
                                &ExplainConfig::default(),
                                Some(&sub),
                            )?;
                            items.push(
                                json!({ "source": r.source, "index": r.index, "true": r.true_name,
                            "target": r.target_label, "predicted": r.predicted_name,
                            "prob": r.predicted_prob, "top": r.top, "dir": sub }),
                            );
                        }
                    }
                    Ok(Value::Array(items))
                },
            )?;
            per_model.push(
                json!({ "model": name, "ckpt": ck, "valid_adv": valid_adv, "e3": e3,
                "e4": e4, "e5": e5, "e7": e7, "e8": e8 }),
            );
        }
        Ok(Value::Array(per_model))
    };
    let before = analyse("before", &ckpts, &mut times)?;

    // ---- E6: adversarial training, then everything again on the -Adv models ------------------
    let mut adv_ckpts = Vec::new();
    let mut e6 = Vec::new();
    for (mi, (name, ck)) in p.models.iter().zip(&ckpts).enumerate() {
        let acfg = AdvTrainConfig {
            steps: p.advtrain_steps,
            eps: p.advtrain_eps,
            epochs: p.advtrain_epochs,
            batch: 64,
            optim: OptimConfig::adam(p.advtrain_lr, 5e-5),
            seed: cfg.seed.wrapping_add(100 + mi as u64),
            limit: p.advtrain_limit,
            val_limit: None,
            ..AdvTrainConfig::default()
        };
        let key = json!({ "base": e1[mi]["valid"], "cfg": acfg, "data": data_key });
        let r = stage(out, &format!("e6-{name}"), &key, &mut times, |dir| {
            let last = dir.join("last.safetensors");
            let resume = last.exists().then(|| last.clone());
            let res = advtrain(
                be,
                ck,
                &acfg,
                &train_ds,
                None,
                dir,
                resume.as_deref(),
                &mut |r| eprintln!("  {name}: {}", r.line(acfg.epochs)),
            )?;
            let ckp = dir.join("model-adv.safetensors");
            std::fs::copy(&res.last_checkpoint, &ckp).map_err(|e| Error::io(&ckp, e))?;
            let mut m = Model::load(&ckp)?;
            let ev = evaluate(be, &mut m, &test_ds, 256, p.eval_limit)?;
            Ok(
                json!({ "model": format!("{name}-adv"), "ckpt": ckp, "config": acfg, "history": res.history, "valid": ev }),
            )
        })?;
        adv_ckpts.push(PathBuf::from(r["ckpt"].as_str().unwrap_or_default()));
        e6.push(r);
    }
    let after = analyse("after", &adv_ckpts, &mut times)?;

    let env = json!({
        "device": be.name(),
        "commit": option_env!("ADVLENS_GIT_COMMIT").unwrap_or("unknown"),
        "version": env!("CARGO_PKG_VERSION"),
        "seed": cfg.seed,
        "profile": p,
        "train_data": train_p, "test_data": test_p,
        "classes": classes,
        "hierarchy": hier_path,
        "seconds_total": t_all.elapsed().as_secs_f64(),
        "stages": times,
    });
    let results = super::report::assemble(&env, &e1, &e2, &before, &e6, &after)?;
    crate::io::write_json(&out.join("results.json"), &results)?;
    super::report::write_report(out, &results)?;
    Ok(results)
}

#[cfg(test)]
mod stage_tests {
    use super::*;

    #[test]
    fn a_stage_of_other_settings_is_never_resumed() {
        let out = tempfile::tempdir().unwrap();
        let mut times = Vec::new();
        let a = json!({ "lr": 0.001 });
        let b = json!({ "lr": 0.002 });
        // An interrupted run with key a leaves a partial file (no stage.json).
        let r = stage(out.path(), "e1", &a, &mut times, |dir| {
            std::fs::write(dir.join("partial"), b"a").unwrap();
            Err(Error::InvalidArg("interrupted".into()))
        });
        assert!(r.is_err());
        // Resuming with the same key sees the partial file ...
        let r = stage(out.path(), "e1", &a, &mut times, |dir| {
            assert!(dir.join("partial").exists());
            Err(Error::InvalidArg("interrupted again".into()))
        });
        assert!(r.is_err());
        // ... a run with another key does not.
        let r = stage(out.path(), "e1", &b, &mut times, |dir| {
            assert!(!dir.join("partial").exists(), "stale files of key a");
            Ok(json!(1))
        })
        .unwrap();
        assert_eq!(r, json!(1));
        // Finished with b: cached for b.
        let r = stage(out.path(), "e1", &b, &mut times, |_| {
            panic!("must be cached")
        })
        .unwrap();
        assert_eq!(r, json!(1));
    }
}
