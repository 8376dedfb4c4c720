//! The stages of `reproduce` as data: one table of named stages, each with the stages whose
//! results it reads (its inputs), a cache key computed from the settings and those results, and
//! a run function. The in-process run, `reproduce --stage NAME` and `reproduce --emit slurm` all
//! walk this one table (`super::reproduce` and `super::slurm`).
//!
//! Order is topological: every stage comes after its inputs. `prepare` (data import, class
//! hierarchy) and `report` (results.json, report.md, index.html) run every time and are not
//! cached; every other stage caches its result in `OUT/<name>/stage.json` under its key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use crate::analysis::stats::{bits_to_string, BootConfig};
use crate::attack::advset::checksum64;
use crate::attack::ensemble::{merge, run_ensemble, EnsembleReport, EnsembleRun};
use crate::attack::eval::fgs_table;
use crate::attack::methods::EnsembleAttack;
use crate::error::{Error, Result};
use crate::nn::optim::OptimConfig;
use crate::nn::train::{evaluate, train, RunDirs, TrainConfig};
use crate::nn::{Model, ModelSpec};

use super::advtrain::{advtrain, AdvTrainConfig, Consistency};
use super::detect::{detect, DetectConfig};
use super::explain::{explain, ExplainConfig, ExplainImage, NeuronsFile};
use super::neurons::{neurons, NeuronsConfig, NeuronsResult};
use super::ratios::{ratios, RatiosConfig};
use super::reproduce::{eval_on_advset, Env, StageTime};
use super::scale::{probe_checkpoint, ScaleReport};

/// What a stage function is given besides the environment: the results of the stages run or
/// found cached so far (a superset of the stage's inputs), their timings and the run's start.
pub struct Inputs<'a> {
    pub results: &'a BTreeMap<String, Value>,
    pub times: &'a [StageTime],
    pub started: Instant,
}

impl Inputs<'_> {
    pub fn get(&self, name: &str) -> Result<&Value> {
        self.results.get(name).ok_or_else(|| {
            Error::InvalidArg(format!("internal: stage result '{name}' is not loaded"))
        })
    }
}

pub type KeyFn = fn(&Env, &Stage, &Inputs) -> Result<Value>;
/// Runs the stage in its directory (`OUT/<name>`) and returns its result.
pub type RunFn = fn(&Env, &Stage, &Inputs, &Path) -> Result<Value>;
/// Runs part K of N of a stage that splits (its result is joined by the stage's own run).
pub type PartFn = fn(&Env, &Stage, &Inputs, (usize, usize)) -> Result<Value>;

/// One named stage of the pipeline.
pub struct Stage {
    pub name: String,
    /// Stages whose results this one reads.
    pub inputs: Vec<String>,
    /// Index into the profile's models for per-model stages.
    pub model: Option<usize>,
    /// The E6 form of E6 stages (`Paper` elsewhere).
    pub variant: E6Variant,
    /// Cached in `OUT/<name>/stage.json` (false: runs every time, untimed).
    pub cached: bool,
    pub key: KeyFn,
    pub run: RunFn,
    /// Stages that split into `--shard K/N` parts (E2): the part function.
    pub part: Option<PartFn>,
}

impl Stage {
    fn new(name: String, inputs: Vec<String>, key: KeyFn, run: RunFn) -> Stage {
        Stage {
            name,
            inputs,
            model: None,
            variant: E6Variant::Paper,
            cached: true,
            key,
            run,
            part: None,
        }
    }
}

fn no_key(_: &Env, _: &Stage, _: &Inputs) -> Result<Value> {
    Ok(Value::Null)
}

/// A form of the E6 fine-tune (issue 14, item 5). `Paper` is Eq. 8 as written (beta = 0.1 on the
/// unnormalised term) and feeds the report's findings; the others are run beside it so the report
/// can say which findings depend on how the consistency term is weighed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum E6Variant {
    /// The paper's form and beta.
    Paper,
    /// `--consistency relative` at the paper's beta: the term divided by ||phi(x)||^2 +
    /// ||phi(x*)||^2, so shrinking phi no longer lowers it.
    Relative,
    /// The paper's form at the beta that makes the term as large as the cross-entropies at the
    /// start of the fine-tune (`scale-<model>`, `super::scale`).
    Matched,
}

impl E6Variant {
    /// The word in the variant's stage names ("" for the paper's, whose names predate variants).
    pub fn infix(self) -> &'static str {
        match self {
            E6Variant::Paper => "",
            E6Variant::Relative => "relative-",
            E6Variant::Matched => "matched-",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            E6Variant::Paper => "paper",
            E6Variant::Relative => "relative",
            E6Variant::Matched => "matched",
        }
    }

    /// The E6 stage of model `m`.
    pub fn e6_stage(self, m: &str) -> String {
        format!("e6-{}{m}", self.infix())
    }

    /// The name of model `m` after this fine-tune (`small-vgg16-adv`, `small-vgg16-adv-relative`).
    pub fn adv_model(self, m: &str) -> String {
        match self {
            E6Variant::Paper => format!("{m}-adv"),
            v => format!("{m}-adv-{}", v.name()),
        }
    }

    /// The tag of its analysis stages (`after-...`).
    pub fn after_tag(self) -> String {
        format!("after-{}", self.infix())
            .trim_end_matches('-')
            .to_string()
    }
}

/// What the analyses of a variant other than the paper's run: the ones the E6 findings read.
const VARIANT_ANALYSES: [&str; 4] = ["validadv", "e3", "e4", "e7"];
const ALL_ANALYSES: [&str; 6] = ["validadv", "e3", "e4", "e5", "e7", "e8"];

/// The pipeline for the profile's models and E6 variants, in run order.
pub fn table(p: &super::reproduce::Profile) -> Vec<Stage> {
    let models = &p.models;
    let mut prepare = Stage::new("prepare".into(), vec![], no_key, run_prepare);
    prepare.cached = false;
    let mut t = vec![prepare];
    let e1: Vec<String> = models.iter().map(|m| format!("e1-{m}")).collect();
    for (mi, name) in e1.iter().enumerate() {
        let mut s = Stage::new(name.clone(), vec!["prepare".into()], key_e1, run_e1);
        s.model = Some(mi);
        t.push(s);
    }
    let mut e2 = Stage::new("e2".into(), e1.clone(), key_e2, run_e2);
    e2.part = Some(run_e2_part);
    t.push(e2);
    analyses(&mut t, models, "before", &e1, &ALL_ANALYSES);
    for (mi, m) in models.iter().enumerate() {
        let mut s = Stage::new(
            format!("scale-{m}"),
            vec![e1[mi].clone()],
            key_scale,
            run_scale,
        );
        s.model = Some(mi);
        t.push(s);
    }
    for &v in &p.e6_variants {
        let e6: Vec<String> = models.iter().map(|m| v.e6_stage(m)).collect();
        for (mi, name) in e6.iter().enumerate() {
            let mut inputs = vec![e1[mi].clone()];
            if v == E6Variant::Matched {
                inputs.push(format!("scale-{}", models[mi]));
            }
            let mut s = Stage::new(name.clone(), inputs, key_e6, run_e6);
            s.model = Some(mi);
            s.variant = v;
            t.push(s);
        }
        let what: &[&str] = if v == E6Variant::Paper {
            &ALL_ANALYSES
        } else {
            &VARIANT_ANALYSES
        };
        analyses(&mut t, models, &v.after_tag(), &e6, what);
    }
    let all: Vec<String> = t
        .iter()
        .filter(|s| s.cached)
        .map(|s| s.name.clone())
        .collect();
    let mut report = Stage::new("report".into(), all, no_key, run_report);
    report.cached = false;
    t.push(report);
    t
}

/// The analysis stages `what` (of valid-adv, E3, E4, E5, E7, E8) of every model on the
/// checkpoints made by `ckpt_stages`, model by model, named `<tag>-<what>-<model>`.
fn analyses(
    t: &mut Vec<Stage>,
    models: &[String],
    tag: &str,
    ckpt_stages: &[String],
    what: &[&str],
) {
    for (mi, m) in models.iter().enumerate() {
        let base = vec![ckpt_stages[mi].clone(), "e2".to_string()];
        let each: [(&str, KeyFn, RunFn); 6] = [
            ("validadv", key_base, run_validadv),
            ("e3", key_e3, run_e3),
            ("e4", key_e4, run_e4),
            ("e5", key_e5, run_e5),
            ("e7", key_e7, run_e7),
            ("e8", key_e8, run_e8),
        ];
        for (w, key, run) in each.into_iter().filter(|(w, _, _)| what.contains(w)) {
            let mut inputs = base.clone();
            if w == "e8" {
                inputs.push(format!("{tag}-e3-{m}"));
            }
            let mut s = Stage::new(format!("{tag}-{w}-{m}"), inputs, key, run);
            s.model = Some(mi);
            t.push(s);
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    serde_json::to_value(v).map_err(|e| Error::InvalidArg(format!("cannot serialise: {e}")))
}

fn model_of(st: &Stage) -> Result<usize> {
    st.model
        .ok_or_else(|| Error::InvalidArg(format!("internal: stage {} has no model", st.name)))
}

fn model_name<'a>(env: &'a Env, st: &Stage) -> Result<&'a str> {
    let mi = model_of(st)?;
    env.cfg
        .profile
        .models
        .get(mi)
        .map(String::as_str)
        .ok_or_else(|| Error::InvalidArg(format!("internal: no model {mi}")))
}

// ---- prepare and report ------------------------------------------------------------------

fn run_prepare(env: &Env, _: &Stage, _: &Inputs, _: &Path) -> Result<Value> {
    env.hier.write_json(&env.hier_path, 100)?;
    Ok(Value::Null)
}

/// The per-model analysis results of `tag` (`before`, `after`, `after-relative` ...), as the
/// report reads them. The analyses in `what` must be there (a missing one is an error, not a
/// silent null in the report); the others, which this phase does not run, are null.
fn phase_results(
    env: &Env,
    inp: &Inputs,
    tag: &str,
    ckpts: &[PathBuf],
    what: &[&str],
) -> Result<Value> {
    let mut per_model = Vec::new();
    for (name, ck) in env.cfg.profile.models.iter().zip(ckpts) {
        let mut entry = json!({ "model": name, "ckpt": ck });
        for w in ALL_ANALYSES {
            let key = if w == "validadv" { "valid_adv" } else { w };
            entry[key] = if what.contains(&w) {
                inp.get(&format!("{tag}-{w}-{name}"))?.clone()
            } else {
                Value::Null
            };
        }
        per_model.push(entry);
    }
    Ok(Value::Array(per_model))
}

/// Every E6 variant but the paper's (which the main findings read): its fine-tunes and their
/// analyses.
fn variant_results(env: &Env, inp: &Inputs) -> Result<Vec<Value>> {
    let p = &env.cfg.profile;
    let mut out = Vec::new();
    for &v in p.e6_variants.iter().filter(|&&v| v != E6Variant::Paper) {
        let e6 = p
            .models
            .iter()
            .map(|m| inp.get(&v.e6_stage(m)).cloned())
            .collect::<Result<Vec<Value>>>()?;
        let after = phase_results(env, inp, &v.after_tag(), &ckpts_of(&e6), &VARIANT_ANALYSES)?;
        out.push(json!({ "variant": v, "e6": e6, "after": after }));
    }
    Ok(out)
}

fn per_model(env: &Env, inp: &Inputs, prefix: &str) -> Result<Vec<Value>> {
    let models = &env.cfg.profile.models;
    models
        .iter()
        .map(|m| inp.get(&format!("{prefix}-{m}")).cloned())
        .collect()
}

fn ckpts_of(results: &[Value]) -> Vec<PathBuf> {
    results
        .iter()
        .map(|r| PathBuf::from(r["ckpt"].as_str().unwrap_or_default()))
        .collect()
}

fn run_report(env: &Env, _: &Stage, inp: &Inputs, _: &Path) -> Result<Value> {
    let (cfg, p) = (env.cfg, &env.cfg.profile);
    let e1 = per_model(env, inp, "e1")?;
    let e6 = per_model(env, inp, "e6")?;
    let before = phase_results(env, inp, "before", &ckpts_of(&e1), &ALL_ANALYSES)?;
    let after = phase_results(env, inp, "after", &ckpts_of(&e6), &ALL_ANALYSES)?;
    let extra = super::report::Extra {
        variants: variant_results(env, inp)?,
        scale: per_model(env, inp, "scale")?,
    };
    let environment = json!({
        "device": env.be.name(),
        "device_description": env.be.description(),
        "commit": crate::bench::commit(),
        "version": env!("CARGO_PKG_VERSION"),
        "seed": cfg.seed,
        "profile": p,
        "train_data": env.train_p, "test_data": env.test_p,
        "classes": env.classes,
        "hierarchy": env.hier_path,
        "seconds_total": inp.started.elapsed().as_secs_f64(),
        "stages": inp.times,
    });
    let e2 = inp.get("e2")?;
    let boot = BootConfig {
        seed: cfg.seed,
        ..BootConfig::default()
    };
    let mut results =
        super::report::assemble(&environment, &e1, e2, &before, &e6, &after, &extra, boot)?;
    let units = super::report::split_units(&mut results);
    crate::io::write_json(&cfg.out.join("units.json"), &units)?;
    crate::io::write_json(&cfg.out.join("results.json"), &results)?;
    super::report::write_report(&cfg.out, &results)?;
    Ok(results)
}

// ---- E1: train (or load) and evaluate each model -------------------------------------------

fn key_e1(env: &Env, st: &Stage, _: &Inputs) -> Result<Value> {
    let (cfg, p) = (env.cfg, &env.cfg.profile);
    let mi = model_of(st)?;
    let name = model_name(env, st)?;
    Ok(
        json!({ "data": env.data_key, "model": name, "width": p.width, "epochs": p.epochs.get(mi),
        "batch": p.batch, "lr": p.lr, "milestones": p.lr_milestones.get(mi), "limit": p.train_limit,
        "eval_limit": p.eval_limit, "seed": cfg.seed, "weights": cfg.weights }),
    )
}

/// A model of the profile's architecture with the weights of `wdir/<name>.safetensors`.
fn load_pretrained(env: &Env, name: &str, wdir: &Path, ck: &Path) -> Result<()> {
    let (ch, h, w) = env.train_ds.shape();
    let mut spec = ModelSpec::new(name, env.classes.len(), (ch, h, w));
    if let Some(wd) = env.cfg.profile.width {
        spec.width = wd;
    }
    let mut m = Model::from_spec(&spec, env.cfg.seed)?;
    m.load_weights(&wdir.join(format!("{name}.safetensors")))?;
    m.save(ck, 0)
}

/// Train model `mi` in `dir` (resuming from `dir/last.safetensors`); returns its history.
fn train_model(env: &Env, mi: usize, name: &str, dir: &Path, ck: &Path) -> Result<Value> {
    let p = &env.cfg.profile;
    let tcfg = TrainConfig {
        model: name.to_string(),
        width: p.width,
        epochs: p.epochs.get(mi).copied().unwrap_or(1),
        batch: p.batch,
        optim: OptimConfig::adam(p.lr, 0.0),
        lr_milestones: p.lr_milestones.get(mi).cloned().unwrap_or_default(),
        lr_gamma: 0.1,
        seed: env.cfg.seed.wrapping_add(mi as u64),
        limit: p.train_limit,
        val_limit: None,
        precision: env.be.precision(),
    };
    let last = dir.join("last.safetensors");
    let dirs = RunDirs {
        out: dir.to_path_buf(),
        resume: last.exists().then_some(last),
    };
    let res = train(env.be, &tcfg, &env.train_ds, None, &dirs, &mut |r| {
        eprintln!("  {name}: {}", r.line(tcfg.epochs))
    })?;
    std::fs::copy(&res.last_checkpoint, ck).map_err(|e| Error::io(ck, e))?;
    to_value(&res.history)
}

fn run_e1(env: &Env, st: &Stage, _: &Inputs, dir: &Path) -> Result<Value> {
    let (mi, name) = (model_of(st)?, model_name(env, st)?);
    let ck = dir.join("model.safetensors");
    let history = match &env.cfg.weights {
        Some(wdir) => {
            load_pretrained(env, name, wdir, &ck)?;
            Value::Null
        }
        None => train_model(env, mi, name, dir, &ck)?,
    };
    let mut m = Model::load(&ck)?;
    let ev = evaluate(
        env.be,
        &mut m,
        &env.test_ds,
        256,
        env.cfg.profile.eval_limit,
    )?;
    Ok(
        json!({ "model": name, "ckpt": ck, "params": m.num_params(), "valid": ev, "history": history,
            "units": { "valid_top1": bits_to_string(&ev.top1_hits) } }),
    )
}

// ---- E2: the ensemble adversarial set ----------------------------------------------------

fn targets(env: &Env) -> usize {
    let k = env.classes.len();
    env.cfg
        .profile
        .targets
        .unwrap_or(10)
        .min(k.saturating_sub(1))
}

fn attack_of(env: &Env) -> EnsembleAttack {
    EnsembleAttack {
        steps: env.cfg.profile.attack_steps,
        ..EnsembleAttack::default()
    }
}

fn key_e2(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    let e1_key = st
        .inputs
        .iter()
        .map(|n| Ok(inp.get(n)?["valid"].clone()))
        .collect::<Result<Vec<Value>>>()?;
    let p = &env.cfg.profile;
    Ok(
        json!({ "data": env.data_key, "models": e1_key, "targets": targets(env), "attack": to_value(&attack_of(env))?,
        "images": p.attack_images, "shard_size": p.attack_shard_size, "seed": env.cfg.seed }),
    )
}

fn ensemble_run(
    env: &Env,
    st: &Stage,
    inp: &Inputs,
    part: Option<(usize, usize)>,
) -> Result<EnsembleRun> {
    let models = st
        .inputs
        .iter()
        .map(|n| {
            Ok(PathBuf::from(
                inp.get(n)?["ckpt"].as_str().unwrap_or_default(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EnsembleRun {
        models,
        data: env.test_p.clone(),
        out: env.adv_dir(),
        targets: targets(env),
        attack: attack_of(env),
        batch: 16,
        shard_size: env.cfg.profile.attack_shard_size,
        limit: env.cfg.profile.attack_images,
        part,
        seed: env.cfg.seed,
    })
}

fn run_e2_part(env: &Env, st: &Stage, inp: &Inputs, part: (usize, usize)) -> Result<Value> {
    let run = ensemble_run(env, st, inp, Some(part))?;
    let r = run_ensemble(env.be, &run)?;
    eprintln!("reproduce: e2 part {}/{}: {}", part.0, part.1, r.line());
    to_value(&r)
}

/// E2 in one process, or (after `--shard K/N` parts, `cfg.shards` > 1) the parts joined by
/// `attack merge` with the work counters of the parts summed.
fn run_e2(env: &Env, st: &Stage, inp: &Inputs, _: &Path) -> Result<Value> {
    let n = env.cfg.shards;
    if n <= 1 {
        return to_value(&run_ensemble(env.be, &ensemble_run(env, st, inp, None)?)?);
    }
    let adv = env.adv_dir();
    let manifest = |k: usize| adv.join(crate::attack::advset::manifest_name(Some((k, n))));
    for k in 1..=n {
        if !manifest(k).exists() {
            return Err(Error::InvalidArg(format!(
                "E2 part {k}/{n} is not built ({} missing): run `advlens reproduce ... --stage \
                 e2 --shard {k}/{n}` first",
                manifest(k).display()
            )));
        }
    }
    let parts: Vec<PathBuf> = (1..=n).map(manifest).collect();
    let mut r = merge(&adv, &parts)?;
    sum_part_work(&adv, n, &mut r)?;
    to_value(&r)
}

/// Credit a merged report with the work of its parts (from their `report-K-of-N.json`), so it
/// reads like the report of one process that built the whole set.
fn sum_part_work(adv: &Path, n: usize, r: &mut EnsembleReport) -> Result<()> {
    let (mut written, mut reused, mut attacked, mut secs) = (0, 0, 0, 0.0);
    for k in 1..=n {
        let part: Value = crate::io::read_json(&adv.join(format!("report-{k}-of-{n}.json")))?;
        let count = |f: &str| part[f].as_u64().unwrap_or(0) as usize;
        written += count("shards_written");
        reused += count("shards_reused");
        attacked += count("attacked_now");
        secs += part["seconds"].as_f64().unwrap_or(0.0);
        if r.device.is_none() {
            r.device = part["device"].as_str().map(str::to_string);
        }
    }
    r.shards_written = written;
    r.shards_reused = reused;
    r.attacked_now = attacked;
    if attacked > 0 {
        r.seconds = Some(secs);
        r.images_per_sec = Some(attacked as f64 / secs.max(1e-9));
    }
    Ok(())
}

// ---- E3, E4, E5, E7, E8 on one model, before or after E6 ---------------------------------

/// The checkpoint a per-model analysis reads: E1's before adversarial training, E6's after.
fn ckpt_in(st: &Stage, inp: &Inputs) -> Result<PathBuf> {
    let src = st.inputs.first().map(String::as_str).unwrap_or_default();
    Ok(PathBuf::from(
        inp.get(src)?["ckpt"].as_str().unwrap_or_default(),
    ))
}

/// Bumped when the analysis stages' `units` (the per-image / per-neuron values behind the
/// report's intervals) change, so analyses cached by an older advlens are recomputed.
const UNITS_VERSION: u32 = 1;

/// What the stage that wrote an analysis' checkpoint was run with: a rerun fine-tune rewrites
/// the same path at the same length, so the path alone would keep stale analyses.
fn made_by(st: &Stage, inp: &Inputs) -> Result<Value> {
    let src = st.inputs.first().map(String::as_str).unwrap_or_default();
    let r = inp.get(src)?;
    Ok(json!({ "valid": r["valid"], "config": r["config"] }))
}

/// What every analysis of one checkpoint on the adversarial set depends on.
fn key_base(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    let ck = ckpt_in(st, inp)?;
    let adv = env.adv()?;
    let sums: String = adv
        .manifest()
        .shards
        .iter()
        .map(|s| s.checksum.as_str())
        .collect();
    Ok(
        json!({ "ckpt": ck, "ckpt_len": std::fs::metadata(&ck).map(|m| m.len()).unwrap_or(0),
        "adv": inp.get("e2")?["manifest"], "adv_n": adv.len(), "adv_sum": checksum64(sums.as_bytes()),
        "data": env.data_key, "units": UNITS_VERSION, "made_by": made_by(st, inp)? }),
    )
}

fn run_validadv(env: &Env, st: &Stage, inp: &Inputs, _: &Path) -> Result<Value> {
    eval_on_advset(env.be, &ckpt_in(st, inp)?, env.adv()?, 256)
}

fn neurons_cfg(env: &Env) -> NeuronsConfig {
    NeuronsConfig {
        limit: env.cfg.profile.neurons_real_limit,
        ..NeuronsConfig::default()
    }
}

fn key_e3(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    Ok(json!({ "b": key_base(env, st, inp)?, "limit": neurons_cfg(env).limit }))
}

fn run_e3(env: &Env, st: &Stage, inp: &Inputs, dir: &Path) -> Result<Value> {
    let ck = ckpt_in(st, inp)?;
    let r = neurons(
        env.be,
        &ck,
        &env.test_ds,
        env.adv()?,
        &env.hier,
        &neurons_cfg(env),
        dir,
    )?;
    Ok(
        json!({ "summary": r.summary, "curve": r.curve, "lc_edges": r.lc_edges,
        "k_real": r.k_real, "k_adv": r.k_adv, "real_images": r.real_images,
        "adv_images": r.adv_images, "figures": r.figures, "grids": r.grids.len(),
        "activation": r.activation, "dir": dir, "units": neuron_units(&r) }),
    )
}

fn ratios_cfg(env: &Env) -> RatiosConfig {
    RatiosConfig {
        max_per_class: env.cfg.profile.ratios_max_per_class,
        seed: env.cfg.seed,
        ..RatiosConfig::default()
    }
}

fn key_e4(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    Ok(json!({ "b": key_base(env, st, inp)?, "cap": ratios_cfg(env).max_per_class }))
}

fn run_e4(env: &Env, st: &Stage, inp: &Inputs, dir: &Path) -> Result<Value> {
    let ck = ckpt_in(st, inp)?;
    let r = ratios(env.be, &ck, &env.test_ds, env.adv()?, &ratios_cfg(env), dir)?;
    Ok(
        json!({ "r1": r.r1, "r2": r.r2, "hist_r1": r.hist_r1, "hist_r2": r.hist_r2,
        "figures": r.figures, "definition": r.definition, "dir": dir,
        "units": { "r1": r.per_image_r1, "r2": r.per_image_r2 } }),
    )
}

fn detect_cfg(env: &Env) -> DetectConfig {
    DetectConfig {
        train_limit: env.cfg.profile.detect_train_limit,
        ..DetectConfig::default()
    }
}

fn key_e5(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    Ok(json!({ "b": key_base(env, st, inp)?, "train_limit": detect_cfg(env).train_limit }))
}

fn run_e5(env: &Env, st: &Stage, inp: &Inputs, dir: &Path) -> Result<Value> {
    let ck = ckpt_in(st, inp)?;
    let (tr, te) = (&env.train_ds, &env.test_ds);
    let r = detect(env.be, &ck, tr, te, env.adv()?, &detect_cfg(env), dir)?;
    Ok(
        json!({ "auc": r.auc, "curve": r.curve, "real_accuracy": r.real_accuracy,
        "adv_pred_target": r.adv_pred_target, "adv_pred_true": r.adv_pred_true,
        "mean_log_density_real": r.mean_log_density_real,
        "mean_log_density_adv": r.mean_log_density_adv, "features": r.features,
        "covariance": r.covariance, "figures": r.figures, "dir": dir,
        "units": { "real": r.scores_real, "adv": r.scores_adv } }),
    )
}

fn key_e7(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    let p = &env.cfg.profile;
    Ok(json!({ "b": key_base(env, st, inp)?, "eps": p.fgs_eps, "limit": p.fgs_limit }))
}

fn run_e7(env: &Env, st: &Stage, inp: &Inputs, _: &Path) -> Result<Value> {
    let (ck, p) = (ckpt_in(st, inp)?, &env.cfg.profile);
    let mut m = Model::load(&ck)?;
    let t = fgs_table(
        env.be,
        &mut m,
        &ck,
        &env.test_ds,
        &p.fgs_eps,
        128,
        p.fgs_limit,
    )?;
    let mut v = to_value(&t)?;
    v["units"] = json!({ "clean": bits_to_string(&t.clean.top1_hits),
        "eps": t.rows.iter().map(|r| r.eps).collect::<Vec<_>>(),
        "top1": t.rows.iter().map(|r| bits_to_string(&r.top1_hits)).collect::<Vec<_>>() });
    Ok(v)
}

/// Per-neuron LC, CS1 and CS2 over every mined layer (the units of E3's intervals).
fn neuron_units(r: &NeuronsResult) -> Value {
    let all = || r.layers.iter().flat_map(|l| &l.neurons);
    json!({ "lc": all().map(|n| n.lc).collect::<Vec<_>>(),
        "cs1": all().map(|n| n.cs1).collect::<Vec<_>>(),
        "cs2": all().map(|n| n.cs2).collect::<Vec<_>>() })
}

fn key_e8(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    Ok(json!({ "b": key_base(env, st, inp)?, "n": env.cfg.profile.explain_images }))
}

/// The real image behind adversarial image `i` and the adversarial image itself.
fn explain_pair(env: &Env, i: usize) -> Result<[(&'static str, ExplainImage); 2]> {
    let adv = env.adv()?;
    let ai = adv.batch(&[i])?;
    let src = adv.source_indices()[i];
    let real = ExplainImage {
        source: "real".into(),
        set: env.test_p.display().to_string(),
        index: src,
        true_label: env.test_ds.label(src)?,
        target_label: None,
        pixels: env.test_ds.batch_f32(&[src])?.0.to_vec()?,
    };
    let advi = ExplainImage {
        source: "adversarial".into(),
        set: env.adv_dir().display().to_string(),
        index: i,
        true_label: ai.true_label[0],
        target_label: Some(ai.target_label[0]),
        pixels: ai.images.to_vec()?,
    };
    Ok([("real", real), ("adv", advi)])
}

fn run_e8(env: &Env, st: &Stage, inp: &Inputs, dir: &Path) -> Result<Value> {
    let ck = ckpt_in(st, inp)?;
    let e3_dir = env
        .cfg
        .out
        .join(st.inputs.last().map(String::as_str).unwrap_or_default());
    let nf = NeuronsFile::load(&super::neurons::json_path(&e3_dir))?;
    let c = env.hier.c_matrix();
    let mut items = Vec::new();
    for i in 0..env.cfg.profile.explain_images.min(env.adv()?.len()) {
        for (tagi, img) in explain_pair(env, i)? {
            let sub = dir.join(format!("{tagi}-{i}"));
            let cf = ExplainConfig::default();
            let nd = Some((&nf, &env.test_ds));
            let r = explain(
                env.be,
                &ck,
                &img,
                &env.classes,
                Some(&c),
                nd,
                &cf,
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
}

// ---- E6: adversarial training ------------------------------------------------------------

/// The fine-tune of model `mi` in the paper's form: the settings every variant shares.
fn advtrain_cfg(env: &Env, mi: usize) -> AdvTrainConfig {
    let p = &env.cfg.profile;
    AdvTrainConfig {
        steps: p.advtrain_steps,
        eps: p.advtrain_eps,
        epochs: p.advtrain_epochs,
        batch: 64,
        optim: OptimConfig::adam(p.advtrain_lr, 5e-5),
        seed: env.cfg.seed.wrapping_add(100 + mi as u64),
        limit: p.advtrain_limit,
        val_limit: None,
        precision: env.be.precision(),
        ..AdvTrainConfig::default()
    }
}

/// The fine-tune of an E6 stage: the paper's settings with the stage's variant of the term. The
/// same seed for every variant, so they see the same batches and targets and differ only there.
fn variant_cfg(env: &Env, st: &Stage, inp: &Inputs) -> Result<AdvTrainConfig> {
    let mi = model_of(st)?;
    let mut cfg = advtrain_cfg(env, mi);
    match st.variant {
        E6Variant::Paper => {}
        E6Variant::Relative => cfg.consistency = Consistency::Relative,
        E6Variant::Matched => {
            let name = format!("scale-{}", model_name(env, st)?);
            let r: ScaleReport = serde_json::from_value(inp.get(&name)?.clone())
                .map_err(|e| Error::InvalidArg(format!("internal: {name} is unreadable: {e}")))?;
            cfg.beta = r.beta_match.ok_or_else(|| {
                Error::InvalidArg(format!(
                    "{name}: the attack left phi unchanged on every probed image, so no beta \
                     balances the consistency term; the matched E6 variant cannot run"
                ))
            })? as f32;
        }
    }
    Ok(cfg)
}

fn key_e6(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    let acfg = variant_cfg(env, st, inp)?;
    let e1 = inp.get(&st.inputs[0])?;
    Ok(json!({ "base": e1["valid"], "cfg": acfg, "data": env.data_key }))
}

// ---- the consistency scale probe (issue 14, item 5) --------------------------------------

/// Images the scale probe looks at: the first batches of the fine-tune's first epoch.
const SCALE_IMAGES: usize = 512;

fn key_scale(env: &Env, st: &Stage, inp: &Inputs) -> Result<Value> {
    let acfg = advtrain_cfg(env, model_of(st)?);
    let e1 = inp.get(&st.inputs[0])?;
    Ok(json!({ "base": e1["valid"], "cfg": acfg, "images": SCALE_IMAGES, "data": env.data_key }))
}

fn run_scale(env: &Env, st: &Stage, inp: &Inputs, _: &Path) -> Result<Value> {
    let acfg = advtrain_cfg(env, model_of(st)?);
    let ck = ckpt_in(st, inp)?;
    let r = probe_checkpoint(env.be, &ck, &env.train_ds, SCALE_IMAGES, &acfg)?;
    eprintln!("  {}", r.line());
    to_value(&r)
}

fn run_e6(env: &Env, st: &Stage, inp: &Inputs, dir: &Path) -> Result<Value> {
    let name = model_name(env, st)?;
    let acfg = variant_cfg(env, st, inp)?;
    let ck = ckpt_in(st, inp)?;
    let last = dir.join("last.safetensors");
    let resume = last.exists().then(|| last.clone());
    let res = advtrain(
        env.be,
        &ck,
        &acfg,
        &env.train_ds,
        None,
        dir,
        resume.as_deref(),
        &mut |r| eprintln!("  {name}: {}", r.line(acfg.epochs)),
    )?;
    let ckp = dir.join("model-adv.safetensors");
    std::fs::copy(&res.last_checkpoint, &ckp).map_err(|e| Error::io(&ckp, e))?;
    let mut m = Model::load(&ckp)?;
    let ev = evaluate(
        env.be,
        &mut m,
        &env.test_ds,
        256,
        env.cfg.profile.eval_limit,
    )?;
    Ok(
        json!({ "model": st.variant.adv_model(name), "variant": st.variant, "ckpt": ckp,
        "config": acfg,
        "history": res.history, "valid": ev,
        "units": { "valid_top1": bits_to_string(&ev.top1_hits) } }),
    )
}
