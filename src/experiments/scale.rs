//! How big the consistency term of Eq. 8 is on a given model, next to the two cross-entropies it
//! is weighed against (issue 14, item 5).
//!
//! The paper's term ||phi(x) - phi(x*)||^2 is a sum over every value of phi, so it grows with the
//! size D = C*H*W of phi and with the scale of phi's values; neither is fixed by the paper, whose
//! beta = 0.1 was chosen for ImageNet models. This probe measures, at the start of a fine-tune
//! (the model as given, the first batches of its first epoch, x* from the same targeted I-FGS),
//! the pieces that decide the balance:
//! - D and whether the model has BatchNorm (which pins the scale of the values feeding phi);
//! - the mean of ||phi(x)||^2 / D (the scale of one value of phi);
//! - the term per image, per value (term / D) and in the relative form (term over
//!   ||phi(x)||^2 + ||phi(x*)||^2);
//! - the cross-entropy part alpha*CE(x) + (1-alpha)*CE(x*) and the matched beta: the beta at
//!   which beta * term equals it, i.e. the weight that gives the term the cross-entropies'
//!   magnitude. `ratio_at_paper_beta` is how many times 0.1 * term outweighs them.
//!
//! Everything is computed exactly as the fine-tune's first step sees it: [x; x*] as one batch in
//! training mode, so BatchNorm uses the batch statistics of both halves. Nothing is written back:
//! the model is a fresh copy loaded from its checkpoint.

use std::path::Path;
use std::sync::Arc;

use crate::attack::methods::{ifgs, random_targets};
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::train::epoch_batches;
use crate::nn::Model;
use crate::tensor::Tensor;

use super::advtrain::{consistency_loss_as, stacked_forward, AdvTrainConfig, Consistency};

/// The paper's consistency weight.
pub const PAPER_BETA: f64 = 0.1;

/// What the probe measured on one model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScaleReport {
    pub model: String,
    pub width: usize,
    pub batchnorm: bool,
    /// phi of one image, (C, H, W), and D = C*H*W.
    pub phi_shape: (usize, usize, usize),
    pub phi_values: usize,
    pub images: usize,
    /// Mean over clean images of ||phi(x)||^2 / D.
    pub phi_sq_per_value: f64,
    /// Mean over images of ||phi(x) - phi(x*)||^2 (the paper's term).
    pub term: f64,
    /// `term` / D.
    pub term_per_value: f64,
    /// Mean over images of the relative form (in [0, 2]).
    pub term_relative: f64,
    pub ce_clean: f64,
    pub ce_adv: f64,
    /// alpha * ce_clean + (1 - alpha) * ce_adv.
    pub ce_part: f64,
    /// 0.1 * term / ce_part.
    pub ratio_at_paper_beta: f64,
    /// ce_part / term: the beta at which the term matches the cross-entropies in magnitude
    /// (None when the attack left phi unchanged, so no beta balances anything).
    pub beta_match: Option<f64>,
}

/// Sums of the probe over batches.
#[derive(Default)]
struct Acc {
    n: usize,
    phi_sq: f64,
    term: f64,
    rel: f64,
    ce_clean: f64,
    ce_adv: f64,
}

/// Probe `model` (already on `be`) on the first `images` images of `data` in the order the
/// fine-tune `cfg` would see them (its seed, epoch 0), x* from its I-FGS (steps, eps).
pub fn probe(
    be: &dyn Backend,
    model: &mut Model,
    data: &Arc<Dataset>,
    images: usize,
    cfg: &AdvTrainConfig,
) -> Result<ScaleReport> {
    if images == 0 || data.is_empty() {
        return Err(Error::InvalidArg(
            "consistency scale: needs at least one image".into(),
        ));
    }
    super::advtrain::check_fits(data, model)?;
    let (batches, _) = epoch_batches(data, cfg.batch, cfg.seed, 0, Some(images))?;
    let target_seed = crate::rng::hash64(cfg.seed, 0xAD7_0000);
    let (c, h, w) = model.phi_shape()?;
    let d = c * h * w;
    let mut acc = Acc::default();
    for b in batches {
        let b = b?;
        let targets = random_targets(target_seed, &b.indices, &b.labels, model.num_classes())?;
        let x_adv = ifgs(be, model, &b.images, &targets, cfg.eps, cfg.steps)?;
        probe_batch(be, model, &b.images, &x_adv, &b.labels, d, &mut acc)?;
    }
    if acc.n == 0 {
        return Err(Error::InvalidArg(format!(
            "consistency scale: {images} image(s) at batch {} leave no full batch to probe; give more images",
            cfg.batch
        )));
    }
    let n = acc.n as f64;
    let (ce_clean, ce_adv, term) = (acc.ce_clean / n, acc.ce_adv / n, acc.term / n);
    let alpha = cfg.alpha as f64;
    let ce_part = alpha * ce_clean + (1.0 - alpha) * ce_adv;
    Ok(ScaleReport {
        model: model.name().to_string(),
        width: model.spec().width,
        batchnorm: !model.batchnorms().is_empty(),
        phi_shape: (c, h, w),
        phi_values: d,
        images: acc.n,
        phi_sq_per_value: acc.phi_sq / n / d as f64,
        term,
        term_per_value: term / d as f64,
        term_relative: acc.rel / n,
        ce_clean,
        ce_adv,
        ce_part,
        ratio_at_paper_beta: PAPER_BETA * term / ce_part,
        beta_match: Some(ce_part / term).filter(|b| b.is_finite() && *b > 0.0),
    })
}

/// One batch of [`probe`]: the fine-tune's training-mode forward of [x; x*].
fn probe_batch(
    be: &dyn Backend,
    model: &mut Model,
    x: &Tensor,
    x_adv: &Tensor,
    labels: &[u32],
    d: usize,
    acc: &mut Acc,
) -> Result<()> {
    let n = labels.len();
    let (_, loss, _) = stacked_forward(be, model, x, x_adv, labels)?;
    let loss = loss.to_vec()?;
    let phi = model.phi()?.to_vec()?;
    model.clear_cache();
    if phi.len() != 2 * n * d {
        return Err(Error::shape(
            "consistency scale",
            format!("phi has {} values, expected 2 x {n} x {d}", phi.len()),
        ));
    }
    let (a, b) = phi.split_at(n * d);
    let (sum, _, _) = consistency_loss_as(Consistency::Sum, a, b, n)?;
    let (rel, _, _) = consistency_loss_as(Consistency::Relative, a, b, n)?;
    let nf = n as f64;
    acc.term += sum * nf;
    acc.rel += rel * nf;
    acc.phi_sq += a.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
    acc.ce_clean += loss[..n].iter().map(|&v| v as f64).sum::<f64>();
    acc.ce_adv += loss[n..].iter().map(|&v| v as f64).sum::<f64>();
    acc.n += n;
    Ok(())
}

/// [`probe`] on the model of checkpoint `ckpt`.
pub fn probe_checkpoint(
    be: &dyn Backend,
    ckpt: &Path,
    data: &Arc<Dataset>,
    images: usize,
    cfg: &AdvTrainConfig,
) -> Result<ScaleReport> {
    let mut m = Model::load(ckpt)?;
    m.to_backend(be)?;
    probe(be, &mut m, data, images, cfg)
}

impl ScaleReport {
    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "{} w{} (BN {}): D {}, ||phi||^2/D {:.4}, term {:.4} ({:.5} per value, relative \
             {:.4}), CE part {:.4}, 0.1 x term / CE part {:.2}, matched beta {}",
            self.model,
            self.width,
            if self.batchnorm { "yes" } else { "no" },
            self.phi_values,
            self.phi_sq_per_value,
            self.term,
            self.term_per_value,
            self.term_relative,
            self.ce_part,
            self.ratio_at_paper_beta,
            self.beta_match
                .map_or("undefined".to_string(), |b| format!("{b:.3e}"))
        )
    }
}
