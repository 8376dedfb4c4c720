//! E5 (paper section 2.4, Fig. 6): detecting adversarial images as outliers of class-conditional
//! Gaussians of the representation.
//!
//! Decisions, written down (also in `detect.json`):
//! - Features: phi channel-pooled, i.e. the spatial mean of each channel of the last conv
//!   representation (`Backend::channel_mean`), C' values per image (the full flattened phi of
//!   ImageNet models has 9216-25088 dimensions, too many for a per-class covariance from ~1300
//!   images per class).
//! - Gaussians: one per class, fitted on the TRAIN split with the true labels, streaming
//!   (`analysis::detect::GaussianAccumulator`), covariance shrunk toward a scaled identity with the
//!   Ledoit-Wolf weight plus a tiny ridge (`GaussianConfig::default`).
//! - Score: the log-density of an image's features under the Gaussian of its PREDICTED class
//!   (argmax of the model's logits). ROC with the REAL images as the positive class and the
//!   log-density as the score (a real image should be more likely); AUC as the Mann-Whitney
//!   statistic with ties counted 1/2 (`analysis::roc`). Swapping the roles (adversarial positive,
//!   score -log p) gives the same AUC.
//! - The ROC curve stored in the JSON and drawn is thinned to at most `max_curve_points` points
//!   (every distinct-score point when there are fewer); the AUC always uses every score.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::analysis::detect::{ClassFitSummary, GaussianAccumulator, GaussianConfig, Shrinkage};
use crate::analysis::roc::{roc_auc, roc_curve, RocPoint};
use crate::attack::advset::AdvSet;
use crate::backend::Backend;
use crate::data::{Batches, Dataset};
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::tensor::Tensor;

use super::ratios::{argmax_rows, logits_and_phi};

/// Options of [`detect`].
#[derive(Clone, Debug)]
pub struct DetectConfig {
    pub batch: usize,
    /// Fit on the first `train_limit` training images only.
    pub train_limit: Option<usize>,
    /// Score the first `limit` real (validation) images only.
    pub limit: Option<usize>,
    /// Score the first `adv_limit` adversarial images only.
    pub adv_limit: Option<usize>,
    pub gaussian: GaussianConfig,
    /// ROC points kept in the JSON and the figure.
    pub max_curve_points: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            batch: 64,
            train_limit: None,
            limit: None,
            adv_limit: None,
            gaussian: GaussianConfig::default(),
            max_curve_points: 2000,
        }
    }
}

/// Everything E5 measured (`detect.json`).
#[derive(Clone, Debug, Serialize)]
pub struct DetectResult {
    pub format: String,
    pub model: String,
    pub ckpt: String,
    pub train_data: String,
    pub real_data: String,
    pub adv_dir: String,
    pub features: String,
    pub dim: usize,
    pub covariance: String,
    pub positive_class: String,
    pub score: String,
    pub train_images: usize,
    /// Per class: training images, shrinkage weight, log-determinant.
    pub class_fit: Vec<ClassFitSummary>,
    pub ridge: f64,
    pub real_images: usize,
    pub adv_images: usize,
    /// Fraction of real images predicted as their true class.
    pub real_accuracy: f64,
    /// Fraction of adversarial images predicted as their target / their original class.
    pub adv_pred_target: f64,
    pub adv_pred_true: f64,
    pub mean_log_density_real: f64,
    pub mean_log_density_adv: f64,
    /// Area under the ROC curve (real positive, score = log-density).
    pub auc: Option<f64>,
    /// Distinct-score points of the full curve, and the (thinned) points kept.
    pub curve_points_total: usize,
    pub curve: Vec<RocPoint>,
    pub figures: Vec<String>,
    pub seconds: f64,
    /// Per image (real set row order, then adversarial set row order): the score the ROC ranks
    /// (the units of the AUC's confidence interval).
    pub scores_real: Vec<f32>,
    pub scores_adv: Vec<f32>,
}

/// Channel-pooled phi [B, C'] (host) and predicted classes of a batch.
pub fn pooled_features(
    be: &dyn Backend,
    model: &mut Model,
    x: &Tensor,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let (logits, phi) = logits_and_phi(be, model, x)?;
    let f = be.channel_mean(&phi)?.to_vec()?;
    Ok((f, argmax_rows(&logits, model.num_classes())))
}

/// At most `max` points of `pts`, evenly spaced in index, always keeping the first and last.
pub fn thin_curve(pts: &[RocPoint], max: usize) -> Vec<RocPoint> {
    let max = max.max(2);
    if pts.len() <= max {
        return pts.to_vec();
    }
    let last = pts.len() - 1;
    let mut out: Vec<RocPoint> = (0..max).map(|i| pts[i * last / (max - 1)]).collect();
    out.dedup_by(|a, b| a.fpr == b.fpr && a.tpr == b.tpr && a.threshold == b.threshold);
    out
}

/// E5 on one model: fit on `train`, score `real` and `adv`, write `detect.json` and
/// `fig6_roc.svg` into `out`.
pub fn detect(
    be: &dyn Backend,
    ckpt: &Path,
    train: &Arc<Dataset>,
    real: &Arc<Dataset>,
    adv: &AdvSet,
    cfg: &DetectConfig,
    out: &Path,
) -> Result<DetectResult> {
    let t0 = Instant::now();
    if cfg.batch == 0 {
        return Err(Error::InvalidArg("--batch must be at least 1".into()));
    }
    let mut model = Model::load(ckpt)?;
    super::neurons::check_inputs(&model, ckpt, real, Some(adv))?;
    super::neurons::check_inputs(&model, ckpt, train, None)?;
    if train.classes() != real.classes() {
        return Err(Error::InvalidArg(format!(
            "the training set {} and the real set {} have different class lists",
            train.path().display(),
            real.path().display()
        )));
    }
    model.to_backend(be)?;
    let k = model.num_classes();
    let (dim, _, _) = model.phi_shape()?;
    let n_train = cfg.train_limit.map_or(train.len(), |l| l.min(train.len()));
    let n_real = cfg.limit.map_or(real.len(), |l| l.min(real.len()));
    let n_adv = cfg.adv_limit.map_or(adv.len(), |l| l.min(adv.len()));
    if n_train == 0 || n_real == 0 || n_adv == 0 {
        return Err(Error::InvalidArg(format!(
            "nothing to detect: {n_train} training, {n_real} real and {n_adv} adversarial images"
        )));
    }

    let mut acc = GaussianAccumulator::new(k, dim)?;
    let pb = crate::progress::bar(n_train as u64, "detect: fit", "img");
    for b in Batches::new(train, cfg.batch, None, 0)?.limit(n_train) {
        let b = b?;
        let (f, _) = pooled_features(be, &mut model, &b.images)?;
        acc.add_batch(&f, &b.labels)?;
        pb.inc(b.labels.len() as u64);
    }
    pb.finish_and_clear();
    let gauss = acc.fit(&cfg.gaussian)?;

    let mut logp_real = Vec::with_capacity(n_real);
    let mut real_hits = 0usize;
    let pb = crate::progress::bar(n_real as u64, "detect: real", "img");
    for b in Batches::new(real, cfg.batch, None, 0)?.limit(n_real) {
        let b = b?;
        let (f, pred) = pooled_features(be, &mut model, &b.images)?;
        real_hits += pred.iter().zip(&b.labels).filter(|(p, l)| p == l).count();
        logp_real.extend(gauss.log_density_batch(&f, &pred)?);
        pb.inc(b.labels.len() as u64);
    }
    pb.finish_and_clear();

    let mut logp_adv = Vec::with_capacity(n_adv);
    let (mut to_target, mut to_true) = (0usize, 0usize);
    let pb = crate::progress::bar(n_adv as u64, "detect: adversarial", "img");
    for s in (0..n_adv).step_by(cfg.batch) {
        let idx: Vec<usize> = (s..(s + cfg.batch).min(n_adv)).collect();
        let b = adv.batch(&idx)?;
        let (f, pred) = pooled_features(be, &mut model, &b.images)?;
        for (i, p) in pred.iter().enumerate() {
            to_target += (*p == b.target_label[i]) as usize;
            to_true += (*p == b.true_label[i]) as usize;
        }
        logp_adv.extend(gauss.log_density_batch(&f, &pred)?);
        pb.inc(idx.len() as u64);
    }
    pb.finish_and_clear();

    // Real = positive (label 1), score = log-density.
    let scores: Vec<f32> = logp_real
        .iter()
        .chain(&logp_adv)
        .map(|&l| l as f32)
        .collect();
    let labels: Vec<u8> = std::iter::repeat_n(1u8, logp_real.len())
        .chain(std::iter::repeat_n(0u8, logp_adv.len()))
        .collect();
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(Error::Numeric(format!(
            "detect: the log-density of {} image {} is NaN",
            if i < n_real { "real" } else { "adversarial" },
            if i < n_real { i } else { i - n_real }
        )));
    }
    let auc = roc_auc(&scores, &labels);
    let full = roc_curve(&scores, &labels).unwrap_or_default();
    let curve = thin_curve(&full, cfg.max_curve_points);

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let fig = "fig6_roc.svg";
    crate::viz::plots::roc_svg(
        &out.join(fig),
        &format!("{}: real vs adversarial detection", model.name()),
        &[crate::viz::plots::RocSeries {
            label: model.name(),
            points: &curve,
            auc,
        }],
    )?;
    let meanf = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let result = DetectResult {
        format: "advlens-detect-v1".into(),
        model: model.name().to_string(),
        ckpt: ckpt.display().to_string(),
        train_data: train.path().display().to_string(),
        real_data: real.path().display().to_string(),
        adv_dir: adv.dir().display().to_string(),
        features: "phi channel-pooled: spatial mean of each channel of the last conv \
                   representation (Backend::channel_mean)"
            .into(),
        dim,
        covariance: match cfg.gaussian.shrinkage {
            Shrinkage::LedoitWolf => format!(
                "per class: ML covariance shrunk toward (tr S / D) I with the Ledoit-Wolf weight, \
                 plus ridge {} x mean per-dimension variance",
                cfg.gaussian.ridge
            ),
            Shrinkage::Fixed(l) => format!(
                "per class: (1 - {l}) S + {l} (tr S / D) I, plus ridge {} x mean per-dimension \
                 variance",
                cfg.gaussian.ridge
            ),
        },
        positive_class: "real".into(),
        score: "log-density of the features under the Gaussian of the predicted class".into(),
        train_images: n_train,
        class_fit: gauss.summary(),
        ridge: gauss.ridge(),
        real_images: n_real,
        adv_images: n_adv,
        real_accuracy: real_hits as f64 / n_real as f64,
        adv_pred_target: to_target as f64 / n_adv as f64,
        adv_pred_true: to_true as f64 / n_adv as f64,
        mean_log_density_real: meanf(&logp_real),
        mean_log_density_adv: meanf(&logp_adv),
        auc,
        curve_points_total: full.len(),
        curve,
        figures: vec![fig.to_string()],
        seconds: t0.elapsed().as_secs_f64(),
        scores_real: scores[..n_real].to_vec(),
        scores_adv: scores[n_real..].to_vec(),
    };
    crate::io::write_json(&out.join("detect.json"), &result)?;
    Ok(result)
}
