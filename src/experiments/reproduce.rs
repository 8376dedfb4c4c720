//! `advlens reproduce`: every experiment of the paper (E1-E8, DESIGN.md section 4) for three
//! models, one command, one report.
//!
//! Stages run in order and each caches its result in `OUT/<stage>/stage.json` together with the
//! settings that produced it (the "key"): a rerun with the same settings skips finished stages, an
//! interrupted run resumes at the first unfinished one (training and adversarial training also
//! resume inside a stage from their last epoch checkpoint, the attack from its last shard), and a
//! changed setting reruns the stage and every stage that reads its output.
//!
//! The stages are data (`super::stages::table`): the in-process run walks the table,
//! `reproduce --stage NAME` runs one stage whose inputs are already finished in `OUT` (an error
//! names any that is missing or was made with other settings), and `reproduce --emit slurm DIR`
//! (`super::slurm`) writes the table as a Slurm job graph. E2 splits into `--shards N` parts
//! (`--stage e2 --shard K/N`) that its own stage joins; the result is the same for every N.
//!
//! Profiles (`--profile`):
//! - `quick`: seconds per stage, a smoke test of the whole pipeline (CI runs it end to end); its
//!   numbers are not meant to support the paper's findings.
//! - `default`: the embedded Fashion-MNIST setting for a 2-core CPU (about 20 minutes).
//! - `full`: the GPU-box setting: every image, all targets, the paper's iteration counts; with
//!   `--data DIR` pointing at an ImageNet-style import and `--weights DIR` at torchvision weights
//!   exported to safetensors (`alexnet.safetensors`, `vgg16.safetensors`, `resnet18.safetensors`).

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::analysis::wordnet::{parse_class_list, Hierarchy, WordNet};
use crate::attack::advset::AdvSet;
use crate::attack::ensemble::DEFAULT_SHARD_SIZE;
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::train::topk_hits;
use crate::nn::Model;

use super::stages::{table, E6Variant, Inputs, Stage};

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
    /// Source images per E2 shard: the unit of resume and of `--shards` parts.
    pub attack_shard_size: usize,
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
    /// Forms of the E6 fine-tune to run; the first must be the paper's (the findings read it).
    pub e6_variants: Vec<E6Variant>,
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
                // Three shards, so that a job graph can split E2 three ways.
                attack_shard_size: 8,
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
                e6_variants: vec![E6Variant::Paper, E6Variant::Relative, E6Variant::Matched],
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
                // 600 sources x 9 targets = 5,400 adversarial images: E3's top 1% holds 54 per neuron
                // (18 at 200 sources); README, "Why the default profile has these sizes".
                attack_images: Some(600),
                attack_shard_size: DEFAULT_SHARD_SIZE,
                targets: None,
                attack_steps: 20,
                neurons_real_limit: None,
                detect_train_limit: Some(20_000),
                ratios_max_per_class: Some(500),
                explain_images: 2,
                // One full pass over the training set, as issue 14 asks of a fine-tune that converges.
                advtrain_limit: None,
                advtrain_epochs: 1,
                advtrain_steps: 10,
                advtrain_eps: 2.0,
                advtrain_lr: 5e-4,
                fgs_limit: Some(2000),
                fgs_eps: vec![1.0, 5.0],
                e6_variants: vec![E6Variant::Paper, E6Variant::Relative, E6Variant::Matched],
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
                attack_shard_size: DEFAULT_SHARD_SIZE,
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
                // One ImageNet fine-tune is the most expensive stage of the run: the variants,
                // a study of the small models' term scale, are not tripled here.
                e6_variants: vec![E6Variant::Paper],
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
    /// E2 is built as this many `--shard K/N` parts, then joined (1: in one piece).
    pub shards: usize,
}

/// One stage's timing, for the report's environment section.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
    pub cached: bool,
}

/// What every stage reads: the settings, the backend, the data splits and the class hierarchy.
pub struct Env<'a> {
    pub be: &'a dyn Backend,
    pub cfg: &'a ReproduceConfig,
    pub train_p: PathBuf,
    pub test_p: PathBuf,
    pub train_ds: Arc<Dataset>,
    pub test_ds: Arc<Dataset>,
    pub classes: Vec<String>,
    pub hier: Hierarchy,
    pub hier_path: PathBuf,
    /// The data's identity in every stage key.
    pub data_key: Value,
    adv: OnceCell<AdvSet>,
}

impl<'a> Env<'a> {
    /// Open the data (importing Fashion-MNIST when `import`) and build the class hierarchy.
    pub fn open(be: &'a dyn Backend, cfg: &'a ReproduceConfig, import: bool) -> Result<Env<'a>> {
        std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
        let (train_p, test_p) = data_splits(cfg, import)?;
        let (train_ds, test_ds) = (open(&train_p)?, open(&test_p)?);
        if train_ds.classes() != test_ds.classes() {
            return Err(Error::InvalidArg(format!(
                "{} and {} have different class lists",
                train_p.display(),
                test_p.display()
            )));
        }
        let classes = train_ds.classes().to_vec();
        let hier = hierarchy_for(cfg, &classes)?;
        // The content checksums make every cached stage stale when the data is replaced, even
        // by files of the same size and labels.
        let data_key = json!({ "train": train_p, "test": test_p, "train_n": train_ds.len(), "test_n": test_ds.len(),
            "train_checksum": crate::attack::advset::checksum_file(&train_p)?,
            "test_checksum": crate::attack::advset::checksum_file(&test_p)? });
        Ok(Env {
            be,
            cfg,
            train_p,
            test_p,
            train_ds,
            test_ds,
            classes,
            hier,
            hier_path: cfg.out.join("hierarchy.json"),
            data_key,
            adv: OnceCell::new(),
        })
    }

    /// Where E2 writes the adversarial set.
    pub fn adv_dir(&self) -> PathBuf {
        self.cfg.out.join("e2").join("adv")
    }

    /// The adversarial set of E2 (opened on first use, after E2).
    pub fn adv(&self) -> Result<&AdvSet> {
        if let Some(a) = self.adv.get() {
            return Ok(a);
        }
        let a = AdvSet::open(&self.adv_dir())?;
        Ok(self.adv.get_or_init(|| a))
    }
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

/// The train and test splits of a user-given `--data` folder.
fn given_splits(dir: &Path) -> Result<(PathBuf, PathBuf)> {
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

/// Locate the train and test splits; import Fashion-MNIST into `OUT/data` when none is given
/// and `import` (otherwise its absence is an error: `prepare` imports it).
fn data_splits(cfg: &ReproduceConfig, import: bool) -> Result<(PathBuf, PathBuf)> {
    if let Some(dir) = &cfg.data {
        return given_splits(dir);
    }
    let dir = cfg.out.join("data");
    let (train, test) = (dir.join("train.safetensors"), dir.join("test.safetensors"));
    if train.exists() && test.exists() {
        return Ok((train, test));
    }
    if !import {
        return Err(Error::InvalidArg(format!(
            "{} holds no imported Fashion-MNIST: run `advlens reproduce ... --stage prepare` \
             first (or give --data DIR)",
            dir.display()
        )));
    }
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
    Ok((train, test))
}

/// Import Fashion-MNIST into `OUT/data` unless it is there (the data every seed of
/// `--seeds` shares).
pub fn import_default_data(cfg: &ReproduceConfig) -> Result<()> {
    data_splits(cfg, true).map(|_| ())
}

/// Top-1/top-5 of a model on an adversarial set, with respect to the TRUE labels (Table 1
/// "Valid-Adv").
pub fn eval_on_advset(be: &dyn Backend, ckpt: &Path, adv: &AdvSet, batch: usize) -> Result<Value> {
    let mut m = Model::load(ckpt)?;
    m.to_backend(be)?;
    let k = m.num_classes();
    let (mut t1, mut t5, mut hit_t, mut n) = (0usize, 0usize, 0usize, 0usize);
    let mut hits = Vec::with_capacity(adv.len());
    for b in adv.batches(batch) {
        let b = b?;
        let logits = m.predict(be, &b.images)?.to_vec()?;
        hits.extend(crate::nn::train::top1_flags(&logits, k, &b.true_label));
        let (a, c) = topk_hits(&logits, k, &b.true_label);
        t1 += a;
        t5 += c;
        hit_t += topk_hits(&logits, k, &b.target_label).0;
        n += b.true_label.len();
    }
    let nf = n.max(1) as f64;
    Ok(
        json!({ "images": n, "top1": t1 as f64 / nf, "top5": t5 as f64 / nf, "target_hit": hit_t as f64 / nf,
            "units": { "top1": crate::analysis::stats::bits_to_string(&hits) } }),
    )
}

/// The walk over the stage table: results and timings so far.
struct Walk<'e, 'a> {
    env: &'e Env<'a>,
    results: BTreeMap<String, Value>,
    times: Vec<StageTime>,
    started: Instant,
    /// Build the parts of a splitting stage here (in one process; a job graph runs them as
    /// separate jobs).
    parts_here: bool,
}

/// Marks the key of the run in progress in a stage folder (written before the stage's work).
const STAGE_KEY_FILE: &str = "stage-key.json";

/// Make `OUT/<name>` the folder of a run of this stage with `key`, and return it. A folder that
/// holds (part of) a run with another key, finished or interrupted, or files of unknown origin
/// (no `stage-key.json`), is cleared first: it is reproduce's own cache, and its files must never
/// be resumed or mixed into this run's outputs (nor make `train` or `attack ensemble` refuse a
/// folder of another run). A folder marked with this key is kept, so an interrupted run
/// resumes inside the stage. The check, clearing and marking happen under a flock on the folder,
/// so parallel part jobs of one stage (`--stage e2 --shard K/N`) clear it at most once.
pub fn claim_stage_dir(out: &Path, name: &str, key: &Value) -> Result<PathBuf> {
    let dir = out.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // The folder itself is locked and emptied, never removed, so every job locks the same inode.
    let lock = std::fs::File::open(&dir).map_err(|e| Error::io(&dir, e))?;
    lock.lock().map_err(|e| Error::io(&dir, e))?;
    let marker = dir.join(STAGE_KEY_FILE);
    if crate::io::read_json::<Value>(&marker).is_ok_and(|k| &k == key) {
        return Ok(dir);
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(&dir, e)))
        .collect::<Result<_>>()?;
    if !entries.is_empty() {
        eprintln!("reproduce: {name}: its folder holds files of other settings; clearing it");
    }
    for p in entries {
        let r = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|e| Error::io(&p, e))?;
    }
    crate::io::write_json(&marker, key)?;
    Ok(dir)
}

/// What `OUT/<name>/stage.json` says about a stage with this key.
enum Cached {
    Hit(Value, f64),
    Missing,
    OtherSettings,
}

fn read_cached(out: &Path, name: &str, key: &Value) -> Cached {
    let file = out.join(name).join("stage.json");
    let Ok(v) = crate::io::read_json::<Value>(&file) else {
        return Cached::Missing;
    };
    match (v.get("key"), v.get("result")) {
        (Some(k), Some(r)) if k == key => {
            Cached::Hit(r.clone(), v["seconds"].as_f64().unwrap_or(0.0))
        }
        (Some(_), Some(_)) => Cached::OtherSettings,
        _ => Cached::Missing,
    }
}

impl Walk<'_, '_> {
    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            results: &self.results,
            times: &self.times,
            started: self.started,
        }
    }

    /// The stage's key, as it reads back from disk: serde_json does not parse every float back
    /// to the same bits, so the in-memory key goes through the same text round trip.
    fn key(&self, st: &Stage) -> Result<Value> {
        let mut key = (st.key)(self.env, st, &self.inputs())?;
        // A run at another convolution precision is other settings (f32 keys stay as before).
        let prec = self.env.be.precision();
        if let (false, Some(o)) = (prec.is_f32(), key.as_object_mut()) {
            o.insert("precision".into(), Value::String(prec.name().into()));
        }
        Ok(serde_json::from_str::<Value>(&key.to_string()).unwrap_or(key))
    }

    fn record(&mut self, st: &Stage, result: Value, seconds: f64, cached: bool) {
        self.results.insert(st.name.clone(), result);
        self.times.push(StageTime {
            stage: st.name.clone(),
            seconds,
            cached,
        });
    }

    /// Run `st` unless its stage.json holds a result made with the same key.
    fn run(&mut self, st: &Stage) -> Result<()> {
        let out = &self.env.cfg.out;
        if !st.cached {
            let r = (st.run)(self.env, st, &self.inputs(), out)?;
            self.results.insert(st.name.clone(), r);
            return Ok(());
        }
        let key = self.key(st)?;
        if let Cached::Hit(r, secs) = read_cached(out, &st.name, &key) {
            eprintln!("reproduce: {}: cached", st.name);
            self.record(st, r, secs, true);
            return Ok(());
        }
        let t0 = Instant::now();
        let dir = claim_stage_dir(out, &st.name, &key)?;
        self.run_parts(st)?;
        eprintln!("reproduce: {} ...", st.name);
        let result = (st.run)(self.env, st, &self.inputs(), &dir)?;
        let seconds = t0.elapsed().as_secs_f64();
        let doc = json!({ "key": key, "result": &result, "seconds": seconds });
        crate::io::write_json(&dir.join("stage.json"), &doc)?;
        eprintln!("reproduce: {}: done in {seconds:.1}s", st.name);
        self.record(st, result, seconds, false);
        Ok(())
    }

    /// In one process, a stage that splits into `--shards N` parts builds them one by one.
    fn run_parts(&self, st: &Stage) -> Result<()> {
        let n = self.env.cfg.shards;
        if let (Some(part), true) = (st.part, n > 1 && self.parts_here) {
            for k in 1..=n {
                part(self.env, st, &self.inputs(), (k, n))?;
            }
        }
        Ok(())
    }

    /// Load the cached result of `st`, which a later stage needs: an error when it is missing
    /// or was made with other settings.
    fn require(&mut self, st: &Stage, wanted_by: &str) -> Result<()> {
        if !st.cached {
            return Ok(());
        }
        let key = self.key(st)?;
        let out = &self.env.cfg.out;
        let why = match read_cached(out, &st.name, &key) {
            Cached::Hit(r, secs) => {
                self.record(st, r, secs, true);
                return Ok(());
            }
            Cached::Missing => "is not finished",
            Cached::OtherSettings => "was made with other settings",
        };
        Err(Error::InvalidArg(format!(
            "stage '{wanted_by}' needs the result of stage '{}', which {} in {}: run \
             `advlens reproduce ... --stage {}` first (or the whole graph)",
            st.name,
            why,
            out.display(),
            st.name
        )))
    }
}

/// Run the whole pipeline; returns the results document (also written to `OUT/results.json`,
/// with `report.md` and `index.html` beside it).
pub fn reproduce(be: &dyn Backend, cfg: &ReproduceConfig) -> Result<Value> {
    let started = Instant::now();
    let env = Env::open(be, cfg, true)?;
    let mut walk = Walk {
        env: &env,
        results: BTreeMap::new(),
        times: Vec::new(),
        started,
        parts_here: true,
    };
    for st in &table(&cfg.profile) {
        walk.run(st)?;
    }
    walk.results
        .remove("report")
        .ok_or_else(|| Error::InvalidArg("internal: the stage table has no report".into()))
}

/// The names of every stage of a profile, in run order.
pub fn stage_names(p: &Profile) -> Vec<String> {
    table(p).into_iter().map(|s| s.name).collect()
}

/// Every stage `name` reads, directly or through other stages.
fn closure<'t>(t: &'t [Stage], st: &Stage) -> BTreeSet<&'t str> {
    let mut need: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = st.inputs.iter().map(String::as_str).collect();
    while let Some(n) = todo.pop() {
        if let Some(s) = t.iter().find(|s| s.name == n) {
            if need.insert(s.name.as_str()) {
                todo.extend(s.inputs.iter().map(String::as_str));
            }
        }
    }
    need
}

/// `reproduce --stage NAME [--shard K/N]`: run one stage (or one part of a splitting stage)
/// whose inputs are already finished in the output directory. Returns its result.
pub fn reproduce_stage(
    be: &dyn Backend,
    cfg: &ReproduceConfig,
    name: &str,
    part: Option<(usize, usize)>,
) -> Result<Value> {
    let started = Instant::now();
    let t = table(&cfg.profile);
    let names: Vec<&str> = t.iter().map(|s| s.name.as_str()).collect();
    let st = t
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::unknown("stage", name, &names))?;
    let env = Env::open(be, cfg, name == "prepare")?;
    let mut walk = Walk {
        env: &env,
        results: BTreeMap::new(),
        times: Vec::new(),
        started,
        parts_here: false,
    };
    let need = closure(&t, st);
    for s in t.iter().filter(|s| need.contains(s.name.as_str())) {
        walk.require(s, name)?;
    }
    match (part, st.part) {
        (Some(p), Some(f)) => {
            if st.cached {
                claim_stage_dir(&cfg.out, name, &walk.key(st)?)?;
            }
            return f(&env, st, &walk.inputs(), p);
        }
        (Some(_), None) => {
            return Err(Error::InvalidArg(format!(
                "--shard: stage '{name}' does not split (only e2 does)"
            )))
        }
        _ => {}
    }
    walk.run(st)?;
    walk.results
        .remove(name)
        .ok_or_else(|| Error::InvalidArg(format!("internal: stage '{name}' left no result")))
}

#[cfg(test)]
mod stage_dir_tests {
    use super::*;

    #[test]
    fn a_stage_folder_is_kept_for_its_own_key_and_cleared_for_any_other() {
        let out = tempfile::tempdir().unwrap();
        let (a, b) = (json!({ "lr": 0.001 }), json!({ "lr": 0.002 }));
        // Files of unknown origin (no stage-key.json), a subfolder, and a link out of the folder.
        let d = out.path().join("e1");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/old"), b"x").unwrap();
        std::fs::write(d.join("stage.json"), b"{}").unwrap();
        let outside = out.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, d.join("link")).unwrap();
        let dir = claim_stage_dir(out.path(), "e1", &a).unwrap();
        assert_eq!(dir, d);
        assert_eq!(crate::io::sorted_entry_names(&d).unwrap(), [STAGE_KEY_FILE]);
        assert!(
            outside.join("keep").exists(),
            "followed a link out of the folder"
        );
        // An interrupted run of key a resumes: its partial files stay.
        std::fs::write(d.join("partial"), b"a").unwrap();
        claim_stage_dir(out.path(), "e1", &a).unwrap();
        assert!(d.join("partial").exists());
        // Key b never sees them.
        claim_stage_dir(out.path(), "e1", &b).unwrap();
        assert!(!d.join("partial").exists());
        let k: Value = crate::io::read_json(&d.join(STAGE_KEY_FILE)).unwrap();
        assert_eq!(k, b);
    }
}
