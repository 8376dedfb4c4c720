//! `advlens attack ensemble` as a library function: the ensemble-optimisation attack (paper
//! Eq. 1, experiment E2) over a dataset, streamed to shards with resume, `--shard K/N` parts and
//! their merge, and the report (targeted success per model and for the ensemble, mean L2/Linf,
//! images/s, Table 1 "Valid-Adv" top-1/top-5 with respect to the true label).
//!
//! Work unit: shard `s` holds the source images `[s*S, min((s+1)*S, total))` (S = `shard_size`),
//! each attacked once per target, in batches of `batch` source images starting at the shard's
//! first image. Shard boundaries do not depend on `--shard`, so a part's shards are the very
//! files an unsharded run writes, and batch composition (hence every float) is the same too.
//! Part K of N takes the contiguous shards `[floor((K-1)*ns/N), floor(K*ns/N))`.
//!
//! Resume: a shard is written atomically once complete; a rerun with the same parameters keeps
//! every shard already present (checked by its `params` metadata) and attacks the missing ones.
//! A directory holding shards or manifests of a run with other parameters is refused before
//! anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::advset::{
    self, checksum64, checksum_file, manifest_name, parse_shard_name, read_shard_info, shard_bytes,
    shard_name, write_bytes_atomic, Manifest, ShardData, ShardEntry, ShardStats,
    CHECKSUM_ALGORITHM, FORMAT,
};
use super::methods::{
    argmax_rows, check_ensemble, check_target_count, ensemble_attack, ensemble_mean_probs,
    least_likely_targets, to_u8, EnsembleAttack,
};
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::train::topk_hits;
use crate::nn::Model;
use crate::tensor::Tensor;

/// Everything `advlens attack ensemble` is given.
#[derive(Clone, Debug)]
pub struct EnsembleRun {
    pub models: Vec<PathBuf>,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Targets per image (the least likely classes; paper: 10, at most classes - 1).
    pub targets: usize,
    pub attack: EnsembleAttack,
    /// Source images per batch (each is replicated `targets` times in the batch).
    pub batch: usize,
    /// Source images per shard.
    pub shard_size: usize,
    /// Attack the first `limit` images of the data only.
    pub limit: Option<usize>,
    /// Part K of N (1-based K).
    pub part: Option<(usize, usize)>,
    pub seed: u64,
}

pub const DEFAULT_BATCH: usize = 16;
pub const DEFAULT_SHARD_SIZE: usize = 100;

#[derive(Clone, Debug, Serialize)]
pub struct ModelReport {
    pub file: String,
    pub model: String,
    /// Fraction of adversarial images this model classifies as the target.
    pub target_success: f64,
    /// Top-1 / top-5 accuracy with respect to the TRUE label on the adversarial images (Table 1
    /// "Valid-Adv").
    pub valid_adv_top1: f64,
    pub valid_adv_top5: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct EnsembleReport {
    pub out: PathBuf,
    pub manifest: PathBuf,
    pub params: serde_json::Value,
    pub part: Option<[usize; 2]>,
    /// `[start, end)` of the source images covered.
    pub sources: [usize; 2],
    pub source_images: usize,
    pub adversarial_images: usize,
    pub models: Vec<ModelReport>,
    /// Fraction of adversarial images every model classifies as the target.
    pub ensemble_success: f64,
    /// Mean over images of ||stored u8 image - source||_2 and ||.||_inf, 0..255 scale.
    pub mean_l2: f64,
    pub mean_linf: f64,
    pub shards_written: usize,
    pub shards_reused: usize,
    /// Adversarial images attacked by this invocation, its wall time and throughput (None when
    /// it attacked nothing: a completed run rerun, or a merge).
    pub attacked_now: usize,
    pub seconds: Option<f64>,
    pub images_per_sec: Option<f64>,
    pub device: Option<String>,
}

impl EnsembleReport {
    pub fn line(&self) -> String {
        let per: Vec<String> = self
            .models
            .iter()
            .map(|m| {
                format!(
                    "{} success {:.1}% valid-adv top1 {:.2}% top5 {:.2}%",
                    m.file,
                    100.0 * m.target_success,
                    100.0 * m.valid_adv_top1,
                    100.0 * m.valid_adv_top5
                )
            })
            .collect();
        let speed = match (self.images_per_sec, self.seconds) {
            (Some(r), Some(s)) => {
                format!(", {:.1} img/s ({} images in {s:.1}s)", r, self.attacked_now)
            }
            _ => String::new(),
        };
        format!(
            "ensemble attack: {} adversarial images from {} sources -> {}: ensemble success \
             {:.1}%, mean L2 {:.2}, mean Linf {:.2}; {}; {} shards written, {} reused{speed}",
            self.adversarial_images,
            self.source_images,
            self.manifest.display(),
            100.0 * self.ensemble_success,
            self.mean_l2,
            self.mean_linf,
            per.join("; "),
            self.shards_written,
            self.shards_reused
        )
    }
}

fn base_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Load the ensemble's models (each error names its file) and check they agree.
pub fn load_models(paths: &[PathBuf]) -> Result<Vec<Model>> {
    if paths.is_empty() {
        return Err(Error::InvalidArg(
            "--models: give at least one model checkpoint".into(),
        ));
    }
    let models = paths
        .iter()
        .map(|p| Model::load(p))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    check_ensemble(&models, &names)?;
    Ok(models)
}

/// The data must fit the models: class count and image shape.
pub fn check_data(model: &Model, model_path: &Path, ds: &Dataset) -> Result<()> {
    if ds.num_classes() != model.num_classes() {
        return Err(Error::InvalidArg(format!(
            "{} has {} classes but model {} has {}",
            ds.path().display(),
            ds.num_classes(),
            model_path.display(),
            model.num_classes()
        )));
    }
    if ds.shape() != model.in_shape() {
        return Err(Error::InvalidArg(format!(
            "{} holds {:?} images but model {} takes {:?}",
            ds.path().display(),
            ds.shape(),
            model_path.display(),
            model.in_shape()
        )));
    }
    Ok(())
}

/// Number of images to use: the first `limit` (all when None); zero is an error.
pub fn images_to_use(ds: &Dataset, limit: Option<usize>) -> Result<usize> {
    let n = limit.map_or(ds.len(), |l| l.min(ds.len()));
    if n == 0 {
        return Err(Error::InvalidArg(format!(
            "no images to attack: {} holds {} images{}",
            ds.path().display(),
            ds.len(),
            if limit == Some(0) {
                " and --limit is 0"
            } else {
                ""
            }
        )));
    }
    Ok(n)
}

/// The identity of a run (stored in every shard and manifest, compared on resume and merge).
fn identity(
    cfg: &EnsembleRun,
    models: &[Model],
    ds: &Dataset,
    total: usize,
) -> Result<serde_json::Value> {
    let mut ms = Vec::new();
    for (m, p) in models.iter().zip(&cfg.models) {
        ms.push(json!({
            "file": base_name(p),
            "model": m.name(),
            "width": m.spec().width,
            "classes": m.num_classes(),
            "weights_checksum": advset::weights_checksum(p)?,
        }));
    }
    let labels: Vec<u8> = ds.labels().iter().flat_map(|l| l.to_le_bytes()).collect();
    let size = std::fs::metadata(ds.path())
        .map_err(|e| Error::io(ds.path(), e))?
        .len();
    let (c, h, w) = ds.shape();
    let a = &cfg.attack;
    // f32 hyper-parameters go to JSON through their shortest decimal form ("0.999", not
    // 0.9990000128746033): serde_json reads such short numbers back exactly, so a params block
    // read from a part's manifest compares equal to the one a run computes.
    let f = |x: f32| -> serde_json::Value {
        x.to_string()
            .parse::<f64>()
            .map_or(serde_json::Value::Null, |v| json!(v))
    };
    Ok(json!({
        "format": FORMAT,
        "attack": "ensemble-optimisation (paper Eq. 1): Adam on x*, lambda*||x*-x||_2 + sum_i CE(y*, f_i(x*)), clip [0,255] after each step",
        "distance": "l2 (unsquared Euclidean norm on the 0..255 scale)",
        "target_rule": "least likely by mean ensemble softmax on the clean image, true label excluded, least likely first",
        "steps": a.steps,
        "lr": f(a.lr),
        "lambda": f(a.lambda),
        "beta1": f(a.beta1),
        "beta2": f(a.beta2),
        "adam_eps": f(a.adam_eps),
        "targets": cfg.targets,
        "batch": cfg.batch,
        "shard_size": cfg.shard_size,
        "sources": [0, total],
        "seed": cfg.seed,
        "models": ms,
        "data": {
            "file": base_name(ds.path()),
            "bytes": size,
            "images": ds.len(),
            "shape": [c, h, w],
            "classes": ds.classes(),
            "labels_checksum": checksum64(&labels),
            // The whole file's content: shards made from replaced data are never reused.
            "checksum": checksum_file(ds.path())?,
        },
    }))
}

/// Shards `[lo, hi)` of part K of N among `ns` shards.
pub fn part_shards(ns: usize, part: Option<(usize, usize)>) -> Result<(usize, usize)> {
    match part {
        None => Ok((0, ns)),
        Some((k, n)) => {
            if n == 0 || k == 0 || k > n {
                return Err(Error::InvalidArg(format!(
                    "--shard {k}/{n}: expected K/N with 1 <= K <= N"
                )));
            }
            Ok(((k - 1) * ns / n, k * ns / n))
        }
    }
}

/// Parse `K/N`.
pub fn parse_part(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::InvalidArg(format!("--shard '{s}': expected K/N, e.g. 2/8"));
    let (a, b) = s.split_once('/').ok_or_else(bad)?;
    let k: usize = a.trim().parse().map_err(|_| bad())?;
    let n: usize = b.trim().parse().map_err(|_| bad())?;
    part_shards(1, Some((k, n)))?;
    Ok((k, n))
}

/// Shards already in `dir` that belong to a run with `params`: index -> (info, path). Any shard
/// or manifest of a run with other parameters is an error (nothing is touched).
fn scan_dir(dir: &Path, params: &str) -> Result<BTreeMap<usize, advset::ShardInfo>> {
    let mut found = BTreeMap::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let want: serde_json::Value = serde_json::from_str(params)
        .map_err(|e| Error::InvalidArg(format!("internal: params are not JSON: {e}")))?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let other_run = |file: &str, diff: String| {
        Error::InvalidArg(format!(
            "{} holds {file} from another attack run (different parameters: {diff}); choose \
             another --out or remove that run's files. Nothing was written.",
            dir.display()
        ))
    };
    for name in names {
        let path = dir.join(&name);
        if let Some(idx) = parse_shard_name(&name) {
            let info = read_shard_info(&path).map_err(|e| {
                Error::InvalidArg(format!(
                    "{} is not a readable adversarial shard ({e}); remove it or choose another \
                     --out. Nothing was written.",
                    path.display()
                ))
            })?;
            let got: serde_json::Value =
                serde_json::from_str(&info.params).unwrap_or(serde_json::Value::Null);
            if got != want {
                return Err(other_run(&name, advset::params_diff(&info.params, params)));
            }
            if info.shard != idx {
                return Err(Error::format(
                    &path,
                    format!(
                        "metadata says shard {}, the file name says {idx}",
                        info.shard
                    ),
                ));
            }
            found.insert(idx, info);
        } else if name.starts_with("manifest") && name.ends_with(".json") {
            let m: Manifest = crate::io::read_json(&path)?;
            if m.params != want {
                return Err(other_run(
                    &name,
                    advset::params_diff(&m.params.to_string(), params),
                ));
            }
        }
    }
    Ok(found)
}

fn report_json_name(part: Option<(usize, usize)>) -> String {
    match part {
        None => "report.json".into(),
        Some((k, n)) => format!("report-{k}-of-{n}.json"),
    }
}

/// Build the report of a manifest (plus this invocation's timing when it attacked something).
pub fn report_of(
    out: &Path,
    manifest_path: &Path,
    m: &Manifest,
    written: usize,
    reused: usize,
    timing: Option<(usize, f64, String)>,
) -> Result<EnsembleReport> {
    let models: Vec<serde_json::Value> = m
        .params
        .get("models")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let s = m.total_stats(models.len())?;
    let n = s.images.max(1) as f64;
    let reports = models
        .iter()
        .enumerate()
        .map(|(i, mv)| ModelReport {
            file: mv["file"].as_str().unwrap_or("?").to_string(),
            model: mv["model"].as_str().unwrap_or("?").to_string(),
            target_success: s.target_hits[i] as f64 / n,
            valid_adv_top1: s.top1_true[i] as f64 / n,
            valid_adv_top5: s.top5_true[i] as f64 / n,
        })
        .collect();
    let (attacked_now, seconds, ips, device) = match timing {
        Some((k, secs, dev)) if k > 0 => {
            (k, Some(secs), Some(k as f64 / secs.max(1e-9)), Some(dev))
        }
        Some((k, _, dev)) => (k, None, None, Some(dev)),
        None => (0, None, None, None),
    };
    Ok(EnsembleReport {
        out: out.to_path_buf(),
        manifest: manifest_path.to_path_buf(),
        params: m.params.clone(),
        part: m.part,
        sources: m.sources,
        source_images: s.sources,
        adversarial_images: s.images,
        models: reports,
        ensemble_success: s.ensemble_hits as f64 / n,
        mean_l2: s.mean_l2_linf().0,
        mean_linf: s.mean_l2_linf().1,
        shards_written: written,
        shards_reused: reused,
        attacked_now,
        seconds,
        images_per_sec: ips,
        device,
    })
}

/// Attack the source images `indices` (one batch) and return the rows and their statistics.
fn attack_batch(
    be: &dyn Backend,
    models: &mut [Model],
    ds: &Dataset,
    indices: &[usize],
    cfg: &EnsembleRun,
    rows: &mut ShardData,
    stats: &mut ShardStats,
) -> Result<()> {
    let (x, labels) = ds.batch_f32(indices)?;
    let k = models[0].num_classes();
    let probs = ensemble_mean_probs(be, models, &x)?;
    let targets = least_likely_targets(&probs, k, &labels, cfg.targets)?;
    let (c, h, w) = ds.shape();
    let per = c * h * w;
    let xs = x.to_vec()?;
    let reps = cfg.targets;
    let m = indices.len() * reps;
    let mut xr = Vec::with_capacity(m * per);
    let (mut tgt, mut tru, mut src) = (
        Vec::with_capacity(m),
        Vec::with_capacity(m),
        Vec::with_capacity(m),
    );
    for (j, img) in xs.chunks_exact(per).enumerate() {
        for &t in &targets[j] {
            xr.extend_from_slice(img);
            tgt.push(t);
            tru.push(labels[j]);
            src.push(indices[j]);
        }
    }
    let xr = Tensor::from_vec(&[m, c, h, w], xr)?;
    let adv = ensemble_attack(be, models, &xr, &tgt, &cfg.attack)?;
    let adv_u8 = to_u8(&adv.to_vec()?);
    drop(adv);
    // Success and accuracy are measured on the stored u8 images, not on the float optimum.
    let stored = Tensor::from_vec(&[m, c, h, w], adv_u8.iter().map(|&v| v as f32).collect())?;
    let mut all_hit = vec![true; m];
    for (i, model) in models.iter_mut().enumerate() {
        let logits = model.predict(be, &stored)?.to_vec()?;
        crate::nn::train::check_logits(
            &logits,
            k,
            &format_args!("{} on the adversarial images", model.name()),
        )?;
        let pred = argmax_rows(&logits, k);
        for (r, (&p, &t)) in pred.iter().zip(&tgt).enumerate() {
            if p == t {
                stats.target_hits[i] += 1;
            } else {
                all_hit[r] = false;
            }
        }
        let (t1, t5) = topk_hits(&logits, k, &tru);
        stats.top1_true[i] += t1;
        stats.top5_true[i] += t5;
    }
    stats.ensemble_hits += all_hit.iter().filter(|&&b| b).count();
    let xsr = xr.to_vec()?;
    for (a, o) in adv_u8.chunks_exact(per).zip(xsr.chunks_exact(per)) {
        let (mut ss, mut mx) = (0u64, 0u64);
        for (&p, &q) in a.iter().zip(o) {
            let d = (p as i64 - q as i64).unsigned_abs();
            ss += d * d;
            mx = mx.max(d);
        }
        stats.add_perturbation(ss, mx);
    }
    stats.images += m;
    stats.sources += indices.len();
    rows.images.extend_from_slice(&adv_u8);
    rows.source_index.extend(src.iter().map(|&s| s as i64));
    rows.true_label.extend(tru.iter().map(|&s| s as i64));
    rows.target_label.extend(tgt.iter().map(|&s| s as i64));
    Ok(())
}

/// Run (or resume) the ensemble attack; writes shards, the manifest and the report.
pub fn run_ensemble(be: &dyn Backend, cfg: &EnsembleRun) -> Result<EnsembleReport> {
    cfg.attack.validate()?;
    if cfg.batch == 0 || cfg.shard_size == 0 {
        return Err(Error::InvalidArg(
            "--batch and --shard-size must be at least 1".into(),
        ));
    }
    let mut models = load_models(&cfg.models)?;
    let ds = Dataset::open(&cfg.data)?;
    check_data(&models[0], &cfg.models[0], &ds)?;
    check_target_count(cfg.targets, models[0].num_classes())?;
    let total = images_to_use(&ds, cfg.limit)?;
    let ns = total.div_ceil(cfg.shard_size);
    let (lo, hi) = part_shards(ns, cfg.part)?;
    let params = identity(cfg, &models, &ds, total)?;
    let params_json = params.to_string();
    let existing = scan_dir(&cfg.out, &params_json)?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    for m in models.iter_mut() {
        m.to_backend(be)?;
    }
    let (c, h, w) = ds.shape();
    let sources_of = |s: usize| (s * cfg.shard_size, ((s + 1) * cfg.shard_size).min(total));
    let todo_images: usize = (lo..hi)
        .filter(|s| !existing.contains_key(s))
        .map(|s| {
            let (a, b) = sources_of(s);
            (b - a) * cfg.targets
        })
        .sum();
    let pb = crate::progress::bar(todo_images as u64, "attack", "img");
    let t0 = Instant::now();
    let (mut written, mut reused, mut attacked) = (0usize, 0usize, 0usize);
    let mut entries = Vec::with_capacity(hi - lo);
    for s in lo..hi {
        let (a, b) = sources_of(s);
        let file = shard_name(s);
        let path = cfg.out.join(&file);
        if let Some(info) = existing.get(&s) {
            if info.sources != [a, b] {
                return Err(Error::format(
                    &path,
                    format!("covers sources {:?}, expected [{a}, {b})", info.sources),
                ));
            }
            entries.push(ShardEntry {
                file,
                index: s,
                count: info.count,
                sources: [a, b],
                checksum: checksum_file(&path)?,
                stats: info.stats.clone(),
            });
            reused += 1;
            continue;
        }
        let mut rows = ShardData {
            images: Vec::with_capacity((b - a) * cfg.targets * c * h * w),
            shape: (c, h, w),
            source_index: Vec::new(),
            true_label: Vec::new(),
            target_label: Vec::new(),
        };
        let mut stats = ShardStats::zeros(models.len());
        let mut start = a;
        while start < b {
            let end = (start + cfg.batch).min(b);
            let idx: Vec<usize> = (start..end).collect();
            attack_batch(be, &mut models, &ds, &idx, cfg, &mut rows, &mut stats)?;
            pb.inc(((end - start) * cfg.targets) as u64);
            attacked += (end - start) * cfg.targets;
            start = end;
        }
        let bytes = shard_bytes(&rows, ds.classes(), &params_json, s, (a, b), &stats)?;
        write_bytes_atomic(&path, &bytes)?;
        entries.push(ShardEntry {
            file,
            index: s,
            count: rows.source_index.len(),
            sources: [a, b],
            checksum: checksum64(&bytes),
            stats,
        });
        written += 1;
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    // An empty part (more parts than shards) covers an empty range at its position.
    let part_range = if hi > lo {
        [sources_of(lo).0, sources_of(hi - 1).1]
    } else {
        let a = (lo * cfg.shard_size).min(total);
        [a, a]
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        params,
        inputs: json!({
            "models": cfg.models.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "data": cfg.data.display().to_string(),
        }),
        part: cfg.part.map(|(k, n)| [k, n]),
        sources: part_range,
        classes: ds.classes().to_vec(),
        shape: [c, h, w],
        images: entries.iter().map(|e| e.count).sum(),
        checksum_algorithm: CHECKSUM_ALGORITHM.into(),
        shards: entries,
    };
    let mpath = cfg.out.join(manifest_name(cfg.part));
    crate::io::write_json(&mpath, &manifest)?;
    let report = report_of(
        &cfg.out,
        &mpath,
        &manifest,
        written,
        reused,
        Some((attacked, secs, be.name())),
    )?;
    crate::io::write_json(&cfg.out.join(report_json_name(cfg.part)), &report)?;
    Ok(report)
}

/// Manifests named by `parts`: a manifest file, or a directory's `manifest.json` and
/// `manifest-K-of-N.json` files.
fn part_manifests(parts: &[PathBuf]) -> Result<Vec<(PathBuf, Manifest)>> {
    let mut out = Vec::new();
    for p in parts {
        let files: Vec<PathBuf> = if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| Error::io(p, e))?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|f| {
                    let n = base_name(f);
                    n == "manifest.json" || (n.starts_with("manifest-") && n.ends_with(".json"))
                })
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(Error::InvalidArg(format!(
                    "{} holds no manifest.json or manifest-K-of-N.json: not an attack output",
                    p.display()
                )));
            }
            v
        } else {
            vec![p.clone()]
        };
        for f in files {
            let m = Manifest::read(&f)?;
            out.push((f, m));
        }
    }
    Ok(out)
}

/// `advlens attack merge`: check that the parts come from one run (identical parameters) and
/// cover its source range without gap or overlap, copy their shards into `out` (checksums
/// verified) and write one manifest and report.
pub fn merge(out: &Path, parts: &[PathBuf]) -> Result<EnsembleReport> {
    let mut ms = part_manifests(parts)?;
    let Some((first_path, first)) = ms.first().cloned() else {
        return Err(Error::InvalidArg(
            "attack merge: give at least one part".into(),
        ));
    };
    for (p, m) in &ms[1..] {
        if m.params != first.params {
            return Err(Error::InvalidArg(format!(
                "{} and {} come from different runs (parameters differ: {})",
                first_path.display(),
                p.display(),
                advset::params_diff(&first.params.to_string(), &m.params.to_string())
            )));
        }
    }
    ms.sort_by_key(|(_, m)| (m.sources[0], m.sources[1]));
    let total = first
        .params
        .get("sources")
        .and_then(|v| v.get(1))
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::format(&first_path, "params lack 'sources'"))?
        as usize;
    let mut at = 0usize;
    for (p, m) in &ms {
        if m.sources[0] > at {
            return Err(Error::InvalidArg(format!(
                "the parts leave source images [{at}, {}) uncovered (next part: {})",
                m.sources[0],
                p.display()
            )));
        }
        if m.sources[0] < at {
            return Err(Error::InvalidArg(format!(
                "{} covers [{}, {}), overlapping source images already covered up to {at}",
                p.display(),
                m.sources[0],
                m.sources[1]
            )));
        }
        at = m.sources[1];
    }
    if at != total {
        return Err(Error::InvalidArg(format!(
            "the parts cover source images [0, {at}) but the run has {total}: missing [{at}, {total})"
        )));
    }
    let params_json = first.params.to_string();
    scan_dir(out, &params_json)?;
    // Verify every part's shards before copying anything, so a bad part leaves `out` untouched.
    let mut plan = Vec::new();
    for (p, m) in &ms {
        let dir = p.parent().unwrap_or(Path::new("."));
        for e in &m.shards {
            let src = dir.join(&e.file);
            let got = checksum_file(&src)?;
            if got != e.checksum {
                return Err(Error::format(
                    &src,
                    format!(
                        "checksum {got} does not match its manifest's {} ({})",
                        e.checksum,
                        p.display()
                    ),
                ));
            }
            plan.push((src, e.clone()));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    for (src, e) in &plan {
        let dst = out.join(&e.file);
        let same = match (src.canonicalize(), dst.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same || (dst.exists() && checksum_file(&dst)? == e.checksum) {
            continue;
        }
        let bytes = std::fs::read(src).map_err(|er| Error::io(src, er))?;
        write_bytes_atomic(&dst, &bytes)?;
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        params: first.params.clone(),
        inputs: first.inputs.clone(),
        part: None,
        sources: [0, total],
        classes: first.classes.clone(),
        shape: first.shape,
        images: plan.iter().map(|(_, e)| e.count).sum(),
        checksum_algorithm: CHECKSUM_ALGORITHM.into(),
        shards: plan.into_iter().map(|(_, e)| e).collect(),
    };
    let mpath = out.join(manifest_name(None));
    crate::io::write_json(&mpath, &manifest)?;
    let report = report_of(out, &mpath, &manifest, 0, manifest.shards.len(), None)?;
    crate::io::write_json(&out.join(report_json_name(None)), &report)?;
    Ok(report)
}
