//! Dataset-level evaluation of the single-model attacks: accuracy under FGS for a list of eps
//! (paper Table 2, experiment E7) and the targeted iterative FGS (Eq. 9-11).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::ensemble::{check_data, images_to_use};
use super::methods::{
    argmax_rows, check_target_count, ensemble_mean_probs, fgs, ifgs, least_likely_targets,
    random_targets,
};
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::train::{check_logits, top1_flags, topk_hits};
use crate::nn::Model;
use crate::tensor::Tensor;

#[derive(Clone, Debug, Serialize)]
pub struct FgsRow {
    /// eps on the 0..255 scale; 0 is the clean accuracy.
    pub eps: f32,
    pub top1: f64,
    pub top5: f64,
    /// Per image: top-1 hit (the units of the confidence intervals; not in the JSON).
    #[serde(skip)]
    pub top1_hits: Vec<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FgsReport {
    pub model: String,
    pub checkpoint: String,
    pub data: String,
    pub images: usize,
    pub clean: FgsRow,
    pub rows: Vec<FgsRow>,
    pub seconds: f64,
}

impl FgsReport {
    pub fn line(&self) -> String {
        let rows: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                format!(
                    "eps {}: top1 {:.2}% top5 {:.2}%",
                    r.eps,
                    100.0 * r.top1,
                    100.0 * r.top5
                )
            })
            .collect();
        format!(
            "FGS {} on {} images: clean top1 {:.2}% top5 {:.2}%; {}",
            self.checkpoint,
            self.images,
            100.0 * self.clean.top1,
            100.0 * self.clean.top5,
            rows.join("; ")
        )
    }
}

fn batch_ranges(n: usize, batch: usize) -> impl Iterator<Item = Vec<usize>> {
    let b = batch.max(1);
    (0..n)
        .step_by(b)
        .map(move |s| (s..(s + b).min(n)).collect())
}

/// Top-1/top-5 accuracy of `model` under FGS (Eq. 13) at each eps on the first `limit` images.
pub fn fgs_table(
    be: &dyn Backend,
    model: &mut Model,
    ckpt: &Path,
    ds: &Dataset,
    eps: &[f32],
    batch: usize,
    limit: Option<usize>,
) -> Result<FgsReport> {
    check_data(model, ckpt, ds)?;
    if eps.is_empty() {
        return Err(Error::InvalidArg("--eps: give at least one value".into()));
    }
    let n = images_to_use(ds, limit)?;
    model.to_backend(be)?;
    let k = model.num_classes();
    let t0 = Instant::now();
    let pb = crate::progress::bar(n as u64, "fgs", "img");
    let mut clean = (0usize, 0usize);
    let mut hits = vec![(0usize, 0usize); eps.len()];
    let mut flags: Vec<Vec<bool>> = vec![Vec::with_capacity(n); eps.len() + 1];
    for idx in batch_ranges(n, batch) {
        let (x, labels) = ds.batch_f32(&idx)?;
        for (j, &e) in eps.iter().enumerate() {
            let (adv, logits) = fgs(be, model, &x, &labels, e)?;
            if j == 0 {
                let clean_logits = logits.to_vec()?;
                check_logits(&clean_logits, k, &format_args!("FGS on {}", ckpt.display()))?;
                let (a, b) = topk_hits(&clean_logits, k, &labels);
                flags[0].extend(top1_flags(&clean_logits, k, &labels));
                clean.0 += a;
                clean.1 += b;
            }
            let l = model.predict(be, &adv)?.to_vec()?;
            check_logits(&l, k, &format_args!("FGS (eps {e}) on {}", ckpt.display()))?;
            let (a, b) = topk_hits(&l, k, &labels);
            flags[j + 1].extend(top1_flags(&l, k, &labels));
            hits[j].0 += a;
            hits[j].1 += b;
        }
        pb.inc(idx.len() as u64);
    }
    pb.finish_and_clear();
    let nf = n as f64;
    Ok(FgsReport {
        model: model.name().to_string(),
        checkpoint: ckpt.display().to_string(),
        data: ds.path().display().to_string(),
        images: n,
        clean: FgsRow {
            eps: 0.0,
            top1: clean.0 as f64 / nf,
            top5: clean.1 as f64 / nf,
            top1_hits: std::mem::take(&mut flags[0]),
        },
        rows: eps
            .iter()
            .zip(&hits)
            .zip(flags.into_iter().skip(1))
            .map(|((&e, &(a, b)), f)| FgsRow {
                eps: e,
                top1: a as f64 / nf,
                top5: b as f64 / nf,
                top1_hits: f,
            })
            .collect(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// How iterative FGS picks each image's target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TargetRule {
    /// The class with the lowest softmax probability on the clean image (true label excluded).
    LeastLikely,
    /// Uniform over the wrong classes, seeded per source image.
    Random,
}

impl std::str::FromStr for TargetRule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "least-likely" => Ok(TargetRule::LeastLikely),
            "random" => Ok(TargetRule::Random),
            _ => Err(format!(
                "unknown target rule '{s}': expected least-likely or random"
            )),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct IfgsReport {
    pub checkpoint: String,
    pub data: String,
    pub images: usize,
    pub eps: f32,
    pub steps: usize,
    pub target: TargetRule,
    pub seed: u64,
    /// Fraction classified as the target.
    pub target_success: f64,
    /// Top-1/top-5 accuracy with respect to the true label on the adversarial images.
    pub top1_true: f64,
    pub top5_true: f64,
    pub mean_l2: f64,
    pub mean_linf: f64,
    pub seconds: f64,
    pub images_per_sec: f64,
}

impl IfgsReport {
    pub fn line(&self) -> String {
        format!(
            "iterative FGS ({} steps of eps {}, {:?} targets) on {} images of {}: target success \
             {:.1}%, true-label top1 {:.2}% top5 {:.2}%, mean L2 {:.2}, mean Linf {:.2}, {:.1} img/s",
            self.steps,
            self.eps,
            self.target,
            self.images,
            self.data,
            100.0 * self.target_success,
            100.0 * self.top1_true,
            100.0 * self.top5_true,
            self.mean_l2,
            self.mean_linf,
            self.images_per_sec
        )
    }
}

/// Targeted iterative FGS (Eq. 9-11) over the first `limit` images, one target per image.
#[allow(clippy::too_many_arguments)]
pub fn ifgs_eval(
    be: &dyn Backend,
    model: &mut Model,
    ckpt: &Path,
    ds: &Dataset,
    eps: f32,
    steps: usize,
    rule: TargetRule,
    seed: u64,
    batch: usize,
    limit: Option<usize>,
) -> Result<IfgsReport> {
    check_data(model, ckpt, ds)?;
    let k = model.num_classes();
    check_target_count(1, k)?;
    let n = images_to_use(ds, limit)?;
    model.to_backend(be)?;
    let t0 = Instant::now();
    let pb = crate::progress::bar(n as u64, "ifgs", "img");
    let (mut hit, mut t1, mut t5) = (0usize, 0usize, 0usize);
    let (mut l2, mut linf) = (0f64, 0f64);
    for idx in batch_ranges(n, batch) {
        let (x, labels) = ds.batch_f32(&idx)?;
        let targets: Vec<u32> = match rule {
            TargetRule::Random => random_targets(seed, &idx, &labels, k)?,
            TargetRule::LeastLikely => {
                let p = ensemble_mean_probs(be, std::slice::from_mut(model), &x)?;
                least_likely_targets(&p, k, &labels, 1)?
                    .into_iter()
                    .map(|v| v[0])
                    .collect()
            }
        };
        let adv = ifgs(be, model, &x, &targets, eps, steps)?;
        let logits = model.predict(be, &adv)?.to_vec()?;
        check_logits(
            &logits,
            k,
            &format_args!("iterative FGS on {}", ckpt.display()),
        )?;
        hit += argmax_rows(&logits, k)
            .iter()
            .zip(&targets)
            .filter(|(p, t)| p == t)
            .count();
        let (a, b) = topk_hits(&logits, k, &labels);
        t1 += a;
        t5 += b;
        let (xa, xo) = (adv.to_vec()?, x.to_vec()?);
        let per = xa.len() / idx.len();
        for (a, o) in xa.chunks_exact(per).zip(xo.chunks_exact(per)) {
            let d = perturbation(a, o);
            l2 += d.0;
            linf += d.1;
        }
        pb.inc(idx.len() as u64);
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let nf = n as f64;
    Ok(IfgsReport {
        checkpoint: ckpt.display().to_string(),
        data: ds.path().display().to_string(),
        images: n,
        eps,
        steps,
        target: rule,
        seed,
        target_success: hit as f64 / nf,
        top1_true: t1 as f64 / nf,
        top5_true: t5 as f64 / nf,
        mean_l2: l2 / nf,
        mean_linf: linf / nf,
        seconds: secs,
        images_per_sec: nf / secs.max(1e-9),
    })
}

/// (L2, Linf) norms of a - b, f64.
pub fn perturbation(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut ss, mut mx) = (0f64, 0f64);
    for (&p, &q) in a.iter().zip(b) {
        let d = (p as f64 - q as f64).abs();
        ss += d * d;
        mx = mx.max(d);
    }
    (ss.sqrt(), mx)
}

/// Stored u8 pixels as an f32 tensor on the 0..255 scale.
pub fn u8_to_tensor(px: &[u8], shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(shape, px.iter().map(|&v| v as f32).collect())
}
