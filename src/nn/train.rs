//! Training and evaluation loops, as library functions (`advlens train`/`eval` and `reproduce`
//! call them).
//!
//! Training: mean softmax cross-entropy, the optimiser of the config, a step learning-rate
//! schedule (lr * gamma^(number of milestones <= epoch)), epoch `e` shuffled by
//! `Rng::derive(seed, e)` (the data module's `Batches`), a checkpoint `epoch-XXX.safetensors` and
//! `last.safetensors` after every epoch plus `train.json` (config and per-epoch history).
//! A resumed run restores model, optimiser state, step count (dropout masks) and config from the
//! checkpoint and continues with the same shuffles, so it ends with the same weights as an
//! uninterrupted run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Backend, Precision};
use crate::data::{Batches, Dataset};
use crate::error::{Error, Result};

use super::checkpoint;
use super::diverge::DivergenceGuard;
use super::model::{Model, ModelSpec};
use super::optim::{OptimConfig, Optimizer};

/// Everything that defines a training run (saved in every checkpoint as `train_config`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub model: String,
    /// None: the model's default width.
    pub width: Option<usize>,
    /// Total epochs (a resumed run continues up to this count).
    pub epochs: usize,
    pub batch: usize,
    pub optim: OptimConfig,
    /// Epochs (0-based) at which the learning rate is multiplied by `lr_gamma`.
    pub lr_milestones: Vec<usize>,
    pub lr_gamma: f32,
    pub seed: u64,
    /// Train on the first `limit` images only.
    pub limit: Option<usize>,
    /// Evaluate on the first `val_limit` validation images only.
    pub val_limit: Option<usize>,
    /// Convolution precision the run computes with (the backend's; f32 left out of the JSON).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl TrainConfig {
    /// The learning rate of epoch `e` (0-based).
    pub fn lr_at(&self, e: usize) -> f32 {
        let k = self.lr_milestones.iter().filter(|&&m| m <= e).count();
        self.optim.lr() * self.lr_gamma.powi(k as i32)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    pub loss: f64,
    pub seconds: f64,
    /// Per image, in evaluation order: was it a top-1 hit (the units of the accuracy's
    /// confidence interval; kept out of the JSON, where it would swamp every history).
    #[serde(skip)]
    pub top1_hits: Vec<bool>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    pub lr: f32,
    pub loss: f64,
    pub train_top1: f64,
    pub val: Option<EvalReport>,
    pub seconds: f64,
    pub images_per_sec: f64,
}

impl EpochReport {
    pub fn line(&self, epochs: usize) -> String {
        let val = self.val.as_ref().map_or(String::new(), |v| {
            format!(
                " val top1 {:.2}% top5 {:.2}%",
                100.0 * v.top1,
                100.0 * v.top5
            )
        });
        format!(
            "epoch {}/{epochs}: loss {:.4} train top1 {:.2}%{val} lr {:.3e} {:.1}s ({:.0} img/s)",
            self.epoch,
            self.loss,
            100.0 * self.train_top1,
            self.lr,
            self.seconds,
            self.images_per_sec
        )
    }
}

/// Where a run's files go, and whether to resume.
#[derive(Clone, Debug)]
pub struct RunDirs {
    pub out: PathBuf,
    pub resume: Option<PathBuf>,
}

pub struct TrainOutcome {
    pub model: Model,
    pub config: TrainConfig,
    pub history: Vec<EpochReport>,
    pub last_checkpoint: PathBuf,
}

/// Top-1 and top-5 hits of logits [N, K] (row-major host values) against labels.
pub fn topk_hits(logits: &[f32], k: usize, labels: &[u32]) -> (usize, usize) {
    let (mut t1, mut t5) = (0, 0);
    for (row, &y) in logits.chunks_exact(k).zip(labels) {
        match label_rank(row, y) {
            Some(0) => (t1, t5) = (t1 + 1, t5 + 1),
            Some(r) if r < 5 => t5 += 1,
            _ => {}
        }
    }
    (t1, t5)
}

/// Rank of the label's score in its row: the number of classes scoring strictly higher (ties
/// count in the label's favour), or None when the label's score is NaN (never a hit).
fn label_rank(row: &[f32], y: u32) -> Option<usize> {
    let v = row[y as usize];
    (!v.is_nan()).then(|| row.iter().filter(|&&x| x > v).count())
}

/// Per row: a top-1 hit under the rule of `topk_hits` (one flag a row).
pub fn top1_flags(logits: &[f32], k: usize, labels: &[u32]) -> Vec<bool> {
    logits
        .chunks_exact(k)
        .zip(labels)
        .map(|(row, &y)| label_rank(row, y) == Some(0))
        .collect()
}

/// An error when logits hold a NaN or an infinity: every accuracy, loss or attack computed from
/// them would be meaningless (finite weights can still overflow, e.g. weights of 3e38).
/// `what` says where they came from ("eval of runs/x/last.safetensors on test.safetensors").
pub fn check_logits(logits: &[f32], k: usize, what: &dyn std::fmt::Display) -> Result<()> {
    if let Some(i) = logits.iter().position(|x| !x.is_finite()) {
        return Err(Error::Numeric(format!(
            "{what}: the model's logits are non-finite ({} for image {} of the batch, class {}):              the weights overflow on this input; no result was written",
            logits[i],
            i / k.max(1),
            i % k.max(1)
        )));
    }
    Ok(())
}

fn check_data(model: &Model, ds: &Dataset) -> Result<()> {
    if ds.num_classes() != model.num_classes() {
        return Err(Error::InvalidArg(format!(
            "{} has {} classes but model {} has {}",
            ds.path().display(),
            ds.num_classes(),
            model.name(),
            model.num_classes()
        )));
    }
    if ds.shape() != model.in_shape() {
        let (c, h, w) = ds.shape();
        let (mc, mh, mw) = model.in_shape();
        return Err(Error::InvalidArg(format!(
            "{} holds {c}x{h}x{w} images but model {} takes {mc}x{mh}x{mw}",
            ds.path().display(),
            model.name()
        )));
    }
    if ds.is_empty() {
        return Err(Error::InvalidArg(format!(
            "{} holds no images",
            ds.path().display()
        )));
    }
    Ok(())
}

/// Top-1/top-5 accuracy and mean loss of `model` (eval mode) on the first `limit` images of
/// `data` (all when None), in file order.
pub fn evaluate(
    be: &dyn Backend,
    model: &mut Model,
    data: &Arc<Dataset>,
    batch: usize,
    limit: Option<usize>,
) -> Result<EvalReport> {
    check_data(model, data)?;
    if limit == Some(0) {
        return Err(Error::InvalidArg(
            "--limit 0 evaluates nothing: give at least 1 (or leave it out for all images)".into(),
        ));
    }
    let t0 = Instant::now();
    let mut batches = Batches::new(data, batch, None, 0)?;
    if let Some(l) = limit {
        batches = batches.limit(l);
    }
    let total = batches.order().len();
    let pb = crate::progress::bar(total as u64, "eval", "img");
    let k = model.num_classes();
    let (mut t1, mut t5, mut n) = (0usize, 0usize, 0usize);
    let mut loss = 0.0f64;
    let mut hits = Vec::with_capacity(total);
    for b in batches {
        let b = b?;
        let logits = model.predict(be, &b.images)?;
        let host = logits.to_vec()?;
        check_logits(
            &host,
            k,
            &format_args!("evaluating {} on {}", model.name(), data.path().display()),
        )?;
        let (l, _) = be.softmax_xent(&logits, &b.labels)?;
        loss += l.to_vec()?.iter().map(|&x| x as f64).sum::<f64>();
        let (a, c) = topk_hits(&host, k, &b.labels);
        hits.extend(top1_flags(&host, k, &b.labels));
        t1 += a;
        t5 += c;
        n += b.labels.len();
        pb.inc(b.labels.len() as u64);
    }
    pb.finish_and_clear();
    let nf = n.max(1) as f64;
    Ok(EvalReport {
        images: n,
        top1: t1 as f64 / nf,
        top5: t5 as f64 / nf,
        loss: loss / nf,
        seconds: t0.elapsed().as_secs_f64(),
        top1_hits: hits,
    })
}

/// One optimisation step on a batch: returns (sum of per-sample losses, top-1 hits).
pub fn train_step(
    be: &dyn Backend,
    model: &mut Model,
    opt: &mut Optimizer,
    images: &crate::tensor::Tensor,
    labels: &[u32],
) -> Result<(f64, usize)> {
    model.zero_grad();
    let logits = model.forward(be, images, true)?;
    let (loss, dlogits) = be.softmax_xent(&logits, labels)?;
    let n = labels.len();
    let dl = be.scale(&dlogits, 1.0 / n as f32)?;
    drop(dlogits);
    model.backward(be, &dl, None, false)?;
    opt.step(be, model)?;
    model.clear_cache();
    let loss_sum: f64 = loss.to_vec()?.iter().map(|&x| x as f64).sum();
    let (hits, _) = topk_hits(&logits.to_vec()?, model.num_classes(), labels);
    Ok((loss_sum, hits))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map_err(|e| Error::InvalidArg(format!("cannot serialise run metadata: {e}")))
}

fn extra_meta(
    cfg: &TrainConfig,
    history: &[EpochReport],
    data_checksum: &str,
) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    m.insert("train_config".to_string(), to_json(cfg)?);
    m.insert("data_checksum".to_string(), data_checksum.to_string());
    m.insert("history".to_string(), to_json(&history)?);
    Ok(m)
}

/// The batches of one training epoch and how many images they hold: shuffled by (`seed`,
/// `epoch`), cut to the first `limit` images when given. A final batch of one image is dropped:
/// it would give BatchNorm a single value per channel in the deepest layers (torch's DataLoader
/// users drop it the same way).
pub fn epoch_batches(
    data: &Arc<Dataset>,
    batch: usize,
    seed: u64,
    epoch: usize,
    limit: Option<usize>,
) -> Result<(Batches, usize)> {
    let n = limit.map_or(data.len(), |l| l.min(data.len()));
    let mut batches = Batches::new(data, batch, Some(seed), epoch as u64)?;
    if let Some(l) = limit {
        batches = batches.limit(l);
    }
    Ok((batches.drop_last(n % batch == 1), n))
}

/// End-of-epoch outputs of a run in `out`: `epoch-XXX.safetensors` and `last.safetensors` (model,
/// optimiser state, `meta`), then the run summary `json_name`. Each file is written atomically, so
/// a crash leaves the previous epoch's files whole. Returns the path of `last.safetensors`.
pub fn save_epoch(
    out: &Path,
    model: &Model,
    epoch: usize,
    opt: &Optimizer,
    meta: &BTreeMap<String, String>,
    json_name: &str,
    summary: &serde_json::Value,
) -> Result<PathBuf> {
    let ep = out.join(format!("epoch-{epoch:03}.safetensors"));
    checkpoint::save(&ep, model, epoch, Some(opt), meta)?;
    let last = out.join("last.safetensors");
    checkpoint::save(&last, model, epoch, Some(opt), meta)?;
    crate::io::write_json(&out.join(json_name), summary)?;
    Ok(last)
}

/// Train `cfg.model` on `train_data` (validating on `val` after each epoch when given), writing
/// checkpoints to `dirs.out`. With `dirs.resume`, the run continues from that checkpoint with its
/// stored config (only `cfg.epochs` is taken from the argument). `on_epoch` sees each epoch's
/// report (the CLI prints it).
pub fn train(
    be: &dyn Backend,
    cfg: &TrainConfig,
    train_data: &Arc<Dataset>,
    val: Option<&Arc<Dataset>>,
    dirs: &RunDirs,
    on_epoch: &mut dyn FnMut(&EpochReport),
) -> Result<TrainOutcome> {
    if cfg.batch == 0 || cfg.epochs == 0 {
        return Err(Error::InvalidArg(
            "train: --batch and --epochs must be at least 1".into(),
        ));
    }
    if cfg.precision != be.precision() {
        return Err(Error::InvalidArg(format!(
            "the run is configured for {} convolutions but the backend {} computes {}",
            cfg.precision,
            be.name(),
            be.precision()
        )));
    }

    let data_checksum = crate::attack::advset::checksum_file(train_data.path())?;
    let (mut model, mut opt, cfg, mut history, start) = match &dirs.resume {
        None => {
            let (c, h, w) = train_data.shape();
            let mut spec = ModelSpec::new(&cfg.model, train_data.num_classes(), (c, h, w));
            if let Some(wd) = cfg.width {
                spec.width = wd;
            }
            let model = Model::from_spec(&spec, cfg.seed)?;
            let opt = Optimizer::new(cfg.optim)?;
            (model, opt, cfg.clone(), Vec::new(), 0usize)
        }
        Some(path) => resume_state(path, cfg, &data_checksum)?,
    };
    check_run_dir(&dirs.out, &cfg, &data_checksum)?;
    if !(cfg.lr_gamma.is_finite() && cfg.lr_gamma > 0.0) {
        return Err(Error::InvalidArg(format!(
            "train: --lr-gamma must be a finite number > 0, got {}",
            cfg.lr_gamma
        )));
    }
    // An epoch without a single optimiser step would write an untrained model as if trained.
    // A final batch of one image is dropped (see `epoch_batches`), so fewer than 2 images
    // give no step.
    let n_train = cfg
        .limit
        .map_or(train_data.len(), |l| l.min(train_data.len()));
    if n_train < 2 {
        return Err(Error::InvalidArg(format!(
            "train: {} image(s) to train on ({} holds {}{}): an epoch needs at least 2 (one batch \
             of two or more) to take an optimiser step",
            n_train,
            train_data.path().display(),
            train_data.len(),
            cfg.limit
                .map_or(String::new(), |l| format!(", --limit {l}"))
        )));
    }
    check_data(&model, train_data)?;
    if let Some(v) = val {
        check_data(&model, v)?;
    }
    model.to_backend(be)?;
    let mut last = dirs.out.join("last.safetensors");
    if start >= cfg.epochs {
        return Ok(TrainOutcome {
            model,
            config: cfg,
            history,
            last_checkpoint: dirs.resume.clone().unwrap_or(last),
        });
    }
    let mut guard = DivergenceGuard::new("training", dirs.resume.clone());
    for epoch in start..cfg.epochs {
        let lr = cfg.lr_at(epoch);
        opt.set_lr(lr);
        let t0 = Instant::now();
        let (batches, n_train) = epoch_batches(train_data, cfg.batch, cfg.seed, epoch, cfg.limit)?;
        let pb = crate::progress::bar(
            n_train as u64,
            &format!("train {}/{}", epoch + 1, cfg.epochs),
            "img",
        );
        let (mut loss_sum, mut hits, mut seen) = (0.0f64, 0usize, 0usize);
        for (step, b) in batches.enumerate() {
            let b = b?;
            let (l, h) = train_step(be, &mut model, &mut opt, &b.images, &b.labels)?;
            guard.loss(l, epoch, step, lr)?;
            guard.params(be, &model, epoch, step, false)?;
            loss_sum += l;
            hits += h;
            seen += b.labels.len();
            pb.inc(b.labels.len() as u64);
            pb.set_message(format!("loss {:.4}", loss_sum / seen as f64));
        }
        pb.finish_and_clear();
        // Before validation (whose logits a diverged model would poison) and the checkpoint.
        guard.before_save(&model, epoch)?;
        let train_secs = t0.elapsed().as_secs_f64();
        let val_report = match val {
            Some(v) => Some(evaluate(
                be,
                &mut model,
                v,
                cfg.batch.max(256),
                cfg.val_limit,
            )?),
            None => None,
        };
        let rep = EpochReport {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / seen.max(1) as f64,
            train_top1: hits as f64 / seen.max(1) as f64,
            val: val_report,
            seconds: train_secs,
            images_per_sec: seen as f64 / train_secs.max(1e-9),
        };
        history.push(rep.clone());
        last = save_epoch(
            &dirs.out,
            &model,
            epoch + 1,
            &opt,
            &extra_meta(&cfg, &history, &data_checksum)?,
            "train.json",
            &serde_json::json!({ "config": &cfg, "spec": model.spec(), "history": &history,
                "data": { "file": train_data.path(), "checksum": &data_checksum } }),
        )?;
        guard.saved(last.clone());
        on_epoch(&rep);
    }
    Ok(TrainOutcome {
        model,
        config: cfg,
        history,
        last_checkpoint: last,
    })
}

type Resumed = (Model, Optimizer, TrainConfig, Vec<EpochReport>, usize);

/// One run per directory: `out` must not hold checkpoints or a `train.json` of a run with another
/// configuration (the epoch count aside: a resumed run may extend it) or other training data, and
/// no checkpoints of another kind of run. Nothing is written before this check.
fn check_run_dir(out: &Path, cfg: &TrainConfig, data_checksum: &str) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::InvalidArg(format!(
            "--out {} is a file, not a directory",
            out.display()
        )));
    }
    let names = crate::io::sorted_entry_names(out)?;
    let norm = |c: &TrainConfig| TrainConfig {
        epochs: 0,
        ..c.clone()
    };
    let refuse = |file: &str, why: String| {
        Error::InvalidArg(format!(
            "{} holds {file} of another run ({why}); one directory holds one run: choose another \
             --out, or --resume its last.safetensors to continue that run. Nothing was written.",
            out.display()
        ))
    };
    let compare = |file: &str, stored: Option<TrainConfig>, sum: Option<&str>| -> Result<()> {
        let Some(stored) = stored else {
            return Err(refuse(file, "not written by `advlens train`".into()));
        };
        if norm(&stored) != norm(cfg) {
            return Err(refuse(
                file,
                format!(
                    "its configuration is {}, this run's is {}",
                    to_json(&norm(&stored))?,
                    to_json(&norm(cfg))?
                ),
            ));
        }
        if let Some(s) = sum {
            if s != data_checksum {
                return Err(refuse(
                    file,
                    format!("trained on other data: checksum {s}, --data has {data_checksum}"),
                ));
            }
        }
        Ok(())
    };
    for name in names {
        let path = out.join(&name);
        if name == "train.json" {
            let v: serde_json::Value = crate::io::read_json(&path)?;
            let stored = v
                .get("config")
                .and_then(|c| serde_json::from_value::<TrainConfig>(c.clone()).ok());
            let sum = v
                .get("data")
                .and_then(|d| d.get("checksum"))
                .and_then(|s| s.as_str());
            compare(&name, stored, sum)?;
        } else if name.ends_with(".safetensors")
            && (name == "last.safetensors" || name.starts_with("epoch-"))
        {
            let f = crate::io::SafeFile::open(&path)?;
            let meta = f.metadata();
            let stored = meta
                .get("train_config")
                .and_then(|s| serde_json::from_str::<TrainConfig>(s).ok());
            compare(&name, stored, meta.get("data_checksum").map(String::as_str))?;
        }
    }
    Ok(())
}

fn resume_state(path: &Path, cfg: &TrainConfig, data_checksum: &str) -> Result<Resumed> {
    let ck = checkpoint::load(path)?;
    if let Some(s) = ck.metadata.get("data_checksum") {
        if s != data_checksum {
            return Err(Error::InvalidArg(format!(
                "--resume {}: the checkpoint was trained on other data (checksum {s}; --data has \
                 {data_checksum}): a run never mixes two datasets",
                path.display()
            )));
        }
    }
    let stored: TrainConfig =
        match ck.metadata.get("train_config") {
            Some(s) => serde_json::from_str(s).map_err(|e| {
                Error::format(path, format!("metadata 'train_config' is unreadable: {e}"))
            })?,
            None => return Err(Error::format(
                path,
                "no 'train_config' metadata: only checkpoints written by `advlens train` resume",
            )),
        };
    if stored.model != cfg.model {
        return Err(Error::InvalidArg(format!(
            "--resume {}: the checkpoint is a {} but --model is {}",
            path.display(),
            stored.model,
            cfg.model
        )));
    }
    let history: Vec<EpochReport> = match ck.metadata.get("history") {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Error::format(path, format!("metadata 'history' is unreadable: {e}")))?,
        None => Vec::new(),
    };
    let opt = match ck.optimizer {
        Some(o) => o,
        None => {
            return Err(Error::format(
                path,
                "no optimiser state in this checkpoint: it cannot resume a run",
            ))
        }
    };
    let mut run = stored;
    run.epochs = cfg.epochs;
    Ok((ck.model, opt, run, history, ck.epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_counts_and_flags_follow_one_rank_rule() {
        // Rows of K = 6: a clear hit, a tie (the label's favour), third place, sixth place (no top-5 hit),
        // a NaN label score (never a hit) and a NaN elsewhere (not higher than the label).
        let k = 6;
        let logits = [
            [9.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            [5.0, 5.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 4.0, 3.0, 2.0, 1.0, 5.0],
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            [f32::NAN, 1.0, 2.0, 3.0, 4.0, 5.0],
            [7.0, f32::NAN, 2.0, 3.0, 4.0, 5.0],
        ]
        .concat();
        let labels = [0u32, 1, 2, 0, 0, 0];
        assert_eq!(topk_hits(&logits, k, &labels), (3, 4));
        let flags = top1_flags(&logits, k, &labels);
        assert_eq!(flags, [true, true, false, false, false, true]);
        assert_eq!(
            flags.iter().filter(|&&f| f).count(),
            3,
            "flags agree with the count"
        );
    }
}
