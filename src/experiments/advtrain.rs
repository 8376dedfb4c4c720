//! E6: adversarial training with the consistency (feature-matching) loss, paper Eq. 8:
//!
//! L = alpha * CE(y, f(x)) + (1 - alpha) * CE(y, f(G(x, y*))) + beta * ||phi(x) - phi(G(x, y*))||^2
//!
//! Decisions the paper leaves open, written down here and in the run's `advtrain.json`:
//! - G is the targeted iterative FGS of Eq. 9-11 ([`crate::attack::methods::ifgs`]), T steps of
//!   size `eps` on the 0..255 scale, computed with the model being trained, in eval mode (running
//!   BatchNorm statistics, no dropout), with no parameter gradients.
//! - y* is drawn uniformly among the K-1 wrong classes of each image, from (seed, epoch, image
//!   index) only, so a resumed run draws the same targets.
//! - The clean and adversarial halves go through the network as one batch [x; x*] in training
//!   mode, so BatchNorm normalises with statistics of both halves together (as in most adversarial
//!   training code) and one backward pass carries all three terms.
//! - Each CE term is the batch mean; the consistency term is the batch mean over images of the
//!   squared L2 distance between the two phi (summed over all of phi's C*H*W values).
//! - The gradient of the consistency term flows through BOTH branches:
//!   d/dphi(x) = 2*beta/N*(phi(x) minus phi(x*)) and d/dphi(x*) = -2*beta/N*(phi(x) minus phi(x*));
//!   x* itself is treated as a constant input (it is produced by sign steps, which have no useful
//!   gradient).
//! - [`Consistency::Relative`] (not in the paper, off by default) divides each image's term by
//!   ||phi(x)||^2 + ||phi(x*)||^2, which makes it scale-free (in [0, 2]): the paper's form can be
//!   lowered by shrinking phi as a whole, and on a small BN-free model that is what the fine-tune
//!   does at beta = 0.1 (README, "Why the small-vgg16 fine-tune collapses").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::attack::methods::{ifgs, random_targets};
use crate::backend::{Backend, Precision};
use crate::data::{Batches, Dataset};
use crate::error::{Error, Result};
use crate::nn::checkpoint;
use crate::nn::diverge::DivergenceGuard;
use crate::nn::optim::{OptimConfig, Optimizer};
use crate::nn::train::{epoch_batches, evaluate, save_epoch, topk_hits, EvalReport};
use crate::nn::Model;
use crate::tensor::Tensor;

/// Form of the consistency term of Eq. 8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// The paper's ||phi(x) - phi(x*)||^2.
    #[default]
    Sum,
    /// ||phi(x) - phi(x*)||^2 / (||phi(x)||^2 + ||phi(x*)||^2): unchanged when phi is scaled.
    Relative,
}

impl Consistency {
    fn is_sum(&self) -> bool {
        *self == Consistency::Sum
    }
}

/// Hyper-parameters of an adversarial fine-tuning run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdvTrainConfig {
    /// Weight of the clean cross-entropy (paper: 0.5).
    pub alpha: f32,
    /// Weight of the consistency loss (paper: 0.1).
    pub beta: f32,
    /// Form of the consistency term. Left out of the JSON when it is the paper's, so configs,
    /// checkpoints and `reproduce` stage keys written before it existed still match.
    #[serde(default, skip_serializing_if = "Consistency::is_sum")]
    pub consistency: Consistency,
    /// Iterative-FGS steps T of G (paper: 10).
    pub steps: usize,
    /// Iterative-FGS step size on the 0..255 scale (the paper does not give it).
    pub eps: f32,
    pub epochs: usize,
    pub batch: usize,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Fine-tune on the first `limit` training images only.
    pub limit: Option<usize>,
    /// Validation: clean and iterative-FGS accuracy on the first `val_limit` images.
    pub val_limit: Option<usize>,
    /// Convolution precision the run computes with (the backend's; f32 left out of the JSON).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Default for AdvTrainConfig {
    fn default() -> Self {
        AdvTrainConfig {
            alpha: 0.5,
            beta: 0.1,
            consistency: Consistency::Sum,
            steps: 10,
            eps: 2.0,
            epochs: 1,
            batch: 64,
            optim: OptimConfig::adam(5e-4, 5e-5),
            seed: 0,
            limit: None,
            val_limit: None,
            precision: Precision::F32,
        }
    }
}

impl AdvTrainConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::InvalidArg(format!(
                "--alpha must be in [0, 1], got {}",
                self.alpha
            )));
        }
        if !self.beta.is_finite() || self.beta < 0.0 {
            return Err(Error::InvalidArg(format!(
                "--beta must be >= 0, got {}",
                self.beta
            )));
        }
        if self.batch == 0 || self.epochs == 0 {
            return Err(Error::InvalidArg(
                "advtrain: --batch and --epochs must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Value and gradients of the consistency term for phi of the clean half `a` and of the
/// adversarial half `b` (host values, same length, `n` images): returns
/// (mean over images of ||a_i - b_i||^2, d/da, d/db).
pub fn consistency_loss(a: &[f32], b: &[f32], n: usize) -> Result<(f64, Vec<f32>, Vec<f32>)> {
    consistency_loss_as(Consistency::Sum, a, b, n)
}

/// [`consistency_loss`] in the given form. For `Relative`, with D = a_i - b_i and
/// S = ||a_i||^2 + ||b_i||^2: c = ||D||^2 / S, dc/da = 2 D / S - 2 c a / S and
/// dc/db = -2 D / S - 2 c b / S (an image with S = 0 has D = 0 and contributes nothing).
pub fn consistency_loss_as(
    form: Consistency,
    a: &[f32],
    b: &[f32],
    n: usize,
) -> Result<(f64, Vec<f32>, Vec<f32>)> {
    if a.len() != b.len() || n == 0 || !a.len().is_multiple_of(n) {
        return Err(Error::shape(
            "consistency_loss",
            format!(
                "phi halves of {} and {} values for {n} images",
                a.len(),
                b.len()
            ),
        ));
    }
    if form == Consistency::Relative {
        return Ok(relative_consistency(a, b, n));
    }
    let scale = 2.0 / n as f32;
    let mut value = 0.0f64;
    let mut da = Vec::with_capacity(a.len());
    let mut db = Vec::with_capacity(a.len());
    for (&x, &y) in a.iter().zip(b) {
        let d = x - y;
        value += (d as f64) * (d as f64);
        da.push(scale * d);
        db.push(-scale * d);
    }
    Ok((value / n as f64, da, db))
}

fn relative_consistency(a: &[f32], b: &[f32], n: usize) -> (f64, Vec<f32>, Vec<f32>) {
    let dim = a.len() / n;
    let (mut da, mut db) = (vec![0.0f32; a.len()], vec![0.0f32; a.len()]);
    let mut value = 0.0f64;
    for i in 0..n {
        let r = i * dim..(i + 1) * dim;
        let (ai, bi) = (&a[r.clone()], &b[r.clone()]);
        let sq = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
        let s = sq(ai) + sq(bi);
        if s == 0.0 {
            continue;
        }
        let dd: f64 = ai
            .iter()
            .zip(bi)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        let c = dd / s;
        value += c;
        let w = 2.0 / (s * n as f64);
        for (j, (&x, &y)) in ai.iter().zip(bi).enumerate() {
            let (x, y) = (x as f64, y as f64);
            da[r.start + j] = (w * ((x - y) - c * x)) as f32;
            db[r.start + j] = (w * (-(x - y) - c * y)) as f32;
        }
    }
    (value / n as f64, da, db)
}

/// Per-epoch figures of adversarial training.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdvEpochReport {
    /// 1-based.
    pub epoch: usize,
    pub loss: f64,
    pub ce_clean: f64,
    pub ce_adv: f64,
    pub consistency: f64,
    pub train_top1_clean: f64,
    pub train_top1_adv: f64,
    pub val: Option<RobustReport>,
    pub seconds: f64,
    pub images_per_sec: f64,
}

impl AdvEpochReport {
    pub fn line(&self, epochs: usize) -> String {
        let val = self.val.as_ref().map_or(String::new(), |v| {
            format!(
                " | val clean top1 {:.2}% ifgs top1 {:.2}%",
                100.0 * v.clean.top1,
                100.0 * v.adv_top1
            )
        });
        format!(
            "advtrain epoch {}/{epochs}: loss {:.4} (ce {:.4} / adv ce {:.4} / cons {:.4}) train top1 {:.2}% adv {:.2}%{val} {:.1}s ({:.0} img/s)",
            self.epoch,
            self.loss,
            self.ce_clean,
            self.ce_adv,
            self.consistency,
            100.0 * self.train_top1_clean,
            100.0 * self.train_top1_adv,
            self.seconds,
            self.images_per_sec
        )
    }
}

/// Clean accuracy and accuracy (w.r.t. the true label) on targeted iterative-FGS images with
/// random wrong targets, the held-out measure of what adversarial training buys.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RobustReport {
    pub clean: EvalReport,
    pub images: usize,
    pub adv_top1: f64,
    /// Fraction of adversarial images classified as their target.
    pub target_hit: f64,
    pub eps: f32,
    pub steps: usize,
}

/// Clean and iterative-FGS accuracy of `model` on the first `limit` images of `data`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_robust(
    be: &dyn Backend,
    model: &mut Model,
    data: &Arc<Dataset>,
    batch: usize,
    limit: Option<usize>,
    eps: f32,
    steps: usize,
    seed: u64,
) -> Result<RobustReport> {
    let clean = evaluate(be, model, data, batch, limit)?;
    let mut batches = Batches::new(data, batch, None, 0)?;
    if let Some(l) = limit {
        batches = batches.limit(l);
    }
    let total = batches.order().len();
    let pb = crate::progress::bar(total as u64, "ifgs eval", "img");
    let k = model.num_classes();
    let (mut hits, mut tgt, mut n) = (0usize, 0usize, 0usize);
    for b in batches {
        let b = b?;
        let targets = random_targets(seed, &b.indices, &b.labels, k)?;
        let adv = ifgs(be, model, &b.images, &targets, eps, steps)?;
        let logits = model.predict(be, &adv)?.to_vec()?;
        hits += topk_hits(&logits, k, &b.labels).0;
        tgt += topk_hits(&logits, k, &targets).0;
        n += b.labels.len();
        pb.inc(b.labels.len() as u64);
    }
    pb.finish_and_clear();
    let nf = n.max(1) as f64;
    Ok(RobustReport {
        clean,
        images: n,
        adv_top1: hits as f64 / nf,
        target_hit: tgt as f64 / nf,
        eps,
        steps,
    })
}

/// Figures of one optimisation step.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    pub ce_clean: f64,
    pub ce_adv: f64,
    pub consistency: f64,
    pub hits_clean: usize,
    pub hits_adv: usize,
}

/// Stack two host-readable batches [N, ...] into one [2N, ...] on `be`.
fn stack(be: &dyn Backend, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() || a.rank() == 0 {
        return Err(Error::shape(
            "advtrain.stack",
            format!("cannot stack {:?} and {:?}", a.shape(), b.shape()),
        ));
    }
    let mut v = a.to_vec()?;
    v.extend(b.to_vec()?);
    let mut shape = a.shape().to_vec();
    shape[0] *= 2;
    be.upload(&Tensor::from_vec(&shape, v)?)
}

/// The fine-tune's forward pass: [x; x*] as one training-mode batch (BatchNorm sees both halves)
/// and the per-row cross-entropy against the labels twice. Returns (logits, loss, dlogits); phi
/// stays cached in the model for the consistency term.
pub(crate) fn stacked_forward(
    be: &dyn Backend,
    model: &mut Model,
    x: &Tensor,
    x_adv: &Tensor,
    labels: &[u32],
) -> Result<(Tensor, Tensor, Tensor)> {
    let xx = stack(be, x, x_adv)?;
    let mut yy = labels.to_vec();
    yy.extend_from_slice(labels);
    let logits = model.forward(be, &xx, true)?;
    let (loss, dlogits) = be.softmax_xent(&logits, &yy)?;
    Ok((logits, loss, dlogits))
}

/// The objective of Eq. 8 on a clean batch `x` and its adversarial counterpart `x_adv` (both on
/// the 0..255 scale), with gradients accumulated into the model's parameters. The caller zeroes
/// gradients and steps the optimiser. Returns the loss terms.
#[allow(clippy::too_many_arguments)]
pub fn objective_and_grads(
    be: &dyn Backend,
    model: &mut Model,
    x: &Tensor,
    x_adv: &Tensor,
    labels: &[u32],
    alpha: f32,
    beta: f32,
    form: Consistency,
) -> Result<StepStats> {
    let n = labels.len();
    let (logits, loss, dlogits) = stacked_forward(be, model, x, x_adv, labels)?;
    let k = model.num_classes();
    let loss = loss.to_vec()?;
    let mut dl = dlogits.to_vec()?;
    let (wa, wb) = (alpha / n as f32, (1.0 - alpha) / n as f32);
    for (i, row) in dl.chunks_exact_mut(k).enumerate() {
        let w = if i < n { wa } else { wb };
        row.iter_mut().for_each(|v| *v *= w);
    }
    let dl = be.upload(&Tensor::from_vec(&[2 * n, k], dl)?)?;
    let phi = model.phi()?;
    let phi_shape = phi.shape().to_vec();
    let phi_v = phi.to_vec()?;
    let half = phi_v.len() / 2;
    let (cons, da, db) = consistency_loss_as(form, &phi_v[..half], &phi_v[half..], n)?;
    let mut dphi: Vec<f32> = da.into_iter().map(|v| beta * v).collect();
    dphi.extend(db.into_iter().map(|v| beta * v));
    let dphi = be.upload(&Tensor::from_vec(&phi_shape, dphi)?)?;
    model.backward(be, &dl, Some(&dphi), false)?;
    let ce_clean = loss[..n].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let ce_adv = loss[n..].iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    let lv = logits.to_vec()?;
    let hits_clean = topk_hits(&lv[..n * k], k, labels).0;
    let hits_adv = topk_hits(&lv[n * k..], k, labels).0;
    model.clear_cache();
    Ok(StepStats {
        loss: alpha as f64 * ce_clean + (1.0 - alpha as f64) * ce_adv + beta as f64 * cons,
        ce_clean,
        ce_adv,
        consistency: cons,
        hits_clean,
        hits_adv,
    })
}

pub struct AdvTrainOutcome {
    pub model: Model,
    pub history: Vec<AdvEpochReport>,
    pub last_checkpoint: PathBuf,
}

fn meta(
    cfg: &AdvTrainConfig,
    base: &Path,
    history: &[AdvEpochReport],
    data_checksum: &str,
) -> Result<BTreeMap<String, String>> {
    let js = |v: serde_json::Value| {
        serde_json::to_string(&v)
            .map_err(|e| Error::InvalidArg(format!("cannot serialise run metadata: {e}")))
    };
    let mut m = BTreeMap::new();
    m.insert("advtrain_config".into(), js(serde_json::json!(cfg))?);
    m.insert("advtrain_base".into(), base.display().to_string());
    m.insert("advtrain_history".into(), js(serde_json::json!(history))?);
    m.insert("advtrain_data_checksum".into(), data_checksum.to_string());
    Ok(m)
}

/// One run per directory: checkpoints already in `out` must come from an `advtrain` run with the
/// same configuration (the epoch count aside) on the same data, else nothing is written.
fn check_run_dir(out: &Path, cfg: &AdvTrainConfig, data_checksum: &str) -> Result<()> {
    let names: Vec<String> = crate::io::sorted_entry_names(out)?
        .into_iter()
        .filter(|n| {
            n == "last.safetensors" || (n.starts_with("epoch-") && n.ends_with(".safetensors"))
        })
        .collect();
    for name in names {
        let f = crate::io::SafeFile::open(&out.join(&name))?;
        let meta = f.metadata();
        let stored = meta
            .get("advtrain_config")
            .and_then(|s| serde_json::from_str::<AdvTrainConfig>(s).ok());
        let why = match stored {
            None => Some("not written by `advlens advtrain`".to_string()),
            Some(s)
                if (AdvTrainConfig {
                    epochs: cfg.epochs,
                    ..s.clone()
                }) != *cfg =>
            {
                Some(format!("its configuration is {s:?}"))
            }
            Some(_) => match meta.get("advtrain_data_checksum") {
                Some(d) if d != data_checksum => Some(format!(
                    "trained on other data: checksum {d}, --data has {data_checksum}"
                )),
                _ => None,
            },
        };
        if let Some(why) = why {
            return Err(Error::InvalidArg(format!(
                "{} holds {name} of another run ({why}); one directory holds one run: choose \
                 another --out or --resume its last.safetensors. Nothing was written.",
                out.display()
            )));
        }
    }
    Ok(())
}

/// Fine-tune the model of checkpoint `base` with Eq. 8 on `train_data`, writing
/// `out/epoch-XXX.safetensors`, `out/last.safetensors` and `out/advtrain.json` after each epoch.
/// With `resume`, the run continues from that checkpoint (written by an earlier `advtrain` with the
/// same config) and reproduces the uninterrupted run.
#[allow(clippy::too_many_arguments)]
pub fn advtrain(
    be: &dyn Backend,
    base: &Path,
    cfg: &AdvTrainConfig,
    train_data: &Arc<Dataset>,
    val: Option<&Arc<Dataset>>,
    out: &Path,
    resume: Option<&Path>,
    on_epoch: &mut dyn FnMut(&AdvEpochReport),
) -> Result<AdvTrainOutcome> {
    cfg.validate()?;
    if cfg.precision != be.precision() {
        return Err(Error::InvalidArg(format!(
            "the run is configured for {} convolutions but the backend {} computes {}",
            cfg.precision,
            be.name(),
            be.precision()
        )));
    }

    let data_checksum = crate::attack::advset::checksum_file(train_data.path())?;
    check_run_dir(out, cfg, &data_checksum)?;
    let (mut model, mut opt, mut history, start) = match resume {
        None => (
            Model::load(base)?,
            Optimizer::new(cfg.optim)?,
            Vec::new(),
            0,
        ),
        Some(p) => {
            let ck = checkpoint::load(p)?;
            let stored: AdvTrainConfig = match ck.metadata.get("advtrain_config") {
                Some(s) => serde_json::from_str(s).map_err(|e| {
                    Error::format(p, format!("metadata 'advtrain_config' is unreadable: {e}"))
                })?,
                None => {
                    return Err(Error::format(
                        p,
                        "not an advtrain checkpoint (no 'advtrain_config' metadata)",
                    ))
                }
            };
            let same = AdvTrainConfig {
                epochs: cfg.epochs,
                ..stored.clone()
            };
            if &same != cfg {
                return Err(Error::InvalidArg(format!(
                    "--resume {}: the checkpoint was made with a different configuration ({stored:?})",
                    p.display()
                )));
            }
            if let Some(d) = ck.metadata.get("advtrain_data_checksum") {
                if d != &data_checksum {
                    return Err(Error::InvalidArg(format!(
                        "--resume {}: the checkpoint was fine-tuned on other data (checksum {d}; \
                         --data has {data_checksum}): a run never mixes two datasets",
                        p.display()
                    )));
                }
            }
            let history: Vec<AdvEpochReport> = match ck.metadata.get("advtrain_history") {
                Some(s) => serde_json::from_str(s).map_err(|e| {
                    Error::format(p, format!("metadata 'advtrain_history' is unreadable: {e}"))
                })?,
                None => Vec::new(),
            };
            let opt = ck.optimizer.ok_or_else(|| {
                Error::format(p, "no optimiser state in this checkpoint: it cannot resume")
            })?;
            (ck.model, opt, history, ck.epoch)
        }
    };
    check_fits(train_data, &model)?;
    if train_data.is_empty() {
        return Err(Error::InvalidArg(format!(
            "{} holds no images",
            train_data.path().display()
        )));
    }
    model.to_backend(be)?;
    opt.set_lr(cfg.optim.lr());
    let mut last = out.join("last.safetensors");
    let mut guard = DivergenceGuard::new("adversarial training", resume.map(Path::to_path_buf));
    for epoch in start..cfg.epochs {
        let t0 = Instant::now();
        let (batches, n_train) = epoch_batches(train_data, cfg.batch, cfg.seed, epoch, cfg.limit)?;
        let pb = crate::progress::bar(
            n_train as u64,
            &format!("advtrain {}/{}", epoch + 1, cfg.epochs),
            "img",
        );
        let target_seed = crate::rng::hash64(cfg.seed, 0xAD7_0000 + epoch as u64);
        let mut acc = StepStats::default();
        let mut seen = 0usize;
        for (step, b) in batches.enumerate() {
            let b = b?;
            let targets = random_targets(target_seed, &b.indices, &b.labels, model.num_classes())?;
            let x_adv = ifgs(be, &mut model, &b.images, &targets, cfg.eps, cfg.steps)?;
            model.zero_grad();
            let s = objective_and_grads(
                be,
                &mut model,
                &b.images,
                &x_adv,
                &b.labels,
                cfg.alpha,
                cfg.beta,
                cfg.consistency,
            )?;
            guard.loss(s.loss, epoch, step, opt.lr())?;
            opt.step(be, &mut model)?;
            guard.params(be, &model, epoch, step, false)?;
            let m = b.labels.len() as f64;
            acc.loss += s.loss * m;
            acc.ce_clean += s.ce_clean * m;
            acc.ce_adv += s.ce_adv * m;
            acc.consistency += s.consistency * m;
            acc.hits_clean += s.hits_clean;
            acc.hits_adv += s.hits_adv;
            seen += b.labels.len();
            pb.inc(b.labels.len() as u64);
            pb.set_message(format!("loss {:.4}", acc.loss / seen as f64));
        }
        pb.finish_and_clear();
        // Before validation (whose logits a diverged model would poison) and the checkpoint.
        guard.before_save(&model, epoch)?;
        let secs = t0.elapsed().as_secs_f64();
        let val_report = match val {
            Some(v) => Some(evaluate_robust(
                be,
                &mut model,
                v,
                cfg.batch.max(128),
                cfg.val_limit,
                cfg.eps,
                cfg.steps,
                cfg.seed ^ 0x5EED_7E57,
            )?),
            None => None,
        };
        let sf = seen.max(1) as f64;
        let rep = AdvEpochReport {
            epoch: epoch + 1,
            loss: acc.loss / sf,
            ce_clean: acc.ce_clean / sf,
            ce_adv: acc.ce_adv / sf,
            consistency: acc.consistency / sf,
            train_top1_clean: acc.hits_clean as f64 / sf,
            train_top1_adv: acc.hits_adv as f64 / sf,
            val: val_report,
            seconds: secs,
            images_per_sec: seen as f64 / secs.max(1e-9),
        };
        history.push(rep.clone());
        last = save_epoch(
            out,
            &model,
            epoch + 1,
            &opt,
            &meta(cfg, base, &history, &data_checksum)?,
            "advtrain.json",
            &serde_json::json!({ "base": base, "config": cfg, "history": &history }),
        )?;
        guard.saved(last.clone());
        on_epoch(&rep);
    }
    Ok(AdvTrainOutcome {
        model,
        history,
        last_checkpoint: last,
    })
}

/// An error unless `data`'s images and classes are the ones `model` takes (the fine-tune and the
/// consistency-scale probe both read one with the other).
pub(crate) fn check_fits(data: &Dataset, model: &Model) -> Result<()> {
    if data.num_classes() != model.num_classes() || data.shape() != model.in_shape() {
        return Err(Error::InvalidArg(format!(
            "{} ({} classes, {:?}) does not fit model {} ({} classes, {:?})",
            data.path().display(),
            data.num_classes(),
            data.shape(),
            model.name(),
            model.num_classes(),
            model.in_shape()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences of the consistency value along a few coordinates of each half,
    /// against the analytic gradients; allowance 1e-3 * (floor + |numeric|).
    fn check_fd(form: Consistency, a: &[f32], b: &[f32], n: usize, idx: &[usize], floor: f64) {
        let (_, da, db) = consistency_loss_as(form, a, b, n).unwrap();
        let f = |a: &[f32], b: &[f32]| consistency_loss_as(form, a, b, n).unwrap().0;
        let h = 1e-2f32;
        for &i in idx {
            for (half, grad) in [(0, &da), (1, &db)] {
                let (mut p, mut m) = ([a.to_vec(), b.to_vec()], [a.to_vec(), b.to_vec()]);
                p[half][i] += h;
                m[half][i] -= h;
                let num = (f(&p[0], &p[1]) - f(&m[0], &m[1])) / (2.0 * h as f64);
                assert!(
                    (num - grad[i] as f64).abs() < 1e-3 * (floor + num.abs()),
                    "{form:?} half {half} [{i}]: numeric {num} vs analytic {}",
                    grad[i]
                );
            }
        }
    }

    #[test]
    fn consistency_gradient_matches_finite_differences() {
        let mut r = crate::rng::Rng::new(11);
        let n = 3;
        let a: Vec<f32> = (0..n * 7).map(|_| r.normal() as f32).collect();
        let b: Vec<f32> = (0..n * 7).map(|_| r.normal() as f32).collect();
        let v = consistency_loss(&a, &b, n).unwrap().0;
        check_fd(Consistency::Sum, &a, &b, n, &[0, 5, 13, 20], 1.0);
        let direct: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!((v - direct).abs() < 1e-9 * direct.max(1.0));
        assert!(consistency_loss(&a, &b[1..], n).is_err());
    }

    #[test]
    fn paper_form_keeps_the_old_config_json() {
        let paper = AdvTrainConfig::default();
        let js = serde_json::to_value(&paper).unwrap();
        assert!(js.get("consistency").is_none(), "{js}");
        let back: AdvTrainConfig = serde_json::from_value(js).unwrap();
        assert_eq!(back, paper);
        let rel = AdvTrainConfig {
            consistency: Consistency::Relative,
            ..paper
        };
        let js = serde_json::to_value(&rel).unwrap();
        assert_eq!(js["consistency"], "relative");
        assert_eq!(serde_json::from_value::<AdvTrainConfig>(js).unwrap(), rel);
    }

    #[test]
    fn relative_consistency_is_scale_free_and_its_gradient_matches_finite_differences() {
        let mut r = crate::rng::Rng::new(23);
        let (n, d) = (3, 7);
        let a: Vec<f32> = (0..n * d).map(|_| r.normal() as f32).collect();
        let b: Vec<f32> = (0..n * d).map(|_| r.normal() as f32).collect();
        let rel = Consistency::Relative;
        let v = consistency_loss_as(rel, &a, &b, n).unwrap().0;
        assert!(v > 0.0 && v <= 2.0, "{v}");
        // Scaling both halves changes the paper's form by 25x and this one not at all.
        let a5: Vec<f32> = a.iter().map(|x| 5.0 * x).collect();
        let b5: Vec<f32> = b.iter().map(|x| 5.0 * x).collect();
        let v5 = consistency_loss_as(rel, &a5, &b5, n).unwrap().0;
        assert!((v5 - v).abs() < 1e-6 * v, "{v5} vs {v}");
        check_fd(rel, &a, &b, n, &[0, 6, 9, 20], 1e-2);
        // An all-zero image pair contributes neither value nor gradient (no division by zero).
        let z = vec![0.0f32; d];
        let (v0, da0, db0) = consistency_loss_as(rel, &z, &z, 1).unwrap();
        assert_eq!(v0, 0.0);
        assert!(da0.iter().chain(&db0).all(|&g| g == 0.0));
    }
}
