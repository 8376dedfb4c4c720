//! E4 (paper section 2.3, Eq. 6-7, Fig. 5): distance ratios of adversarial representations.
//!
//! phi is the model's last conv representation (`Model::phi`), flattened to C' x H' x W' values.
//! For every adversarial image x* with original class y and target y*:
//! `r1 = dbar(phi(x*), S_y) / d(S_y, S_y)`, `r2 = dbar(phi(x*), S_y*) / d(S_y, S_y*)`, S_c the phi
//! of the real images of class c (true labels), with the definitions of `analysis::ratios`
//! (mean Euclidean distance to a set; mean over distinct pairs within a class; over all pairs
//! between two classes; y == y* uses the within-class mean).
//!
//! Memory: the real phi are kept (f32) grouped by class, optionally capped at `max_per_class`
//! per class by a seeded uniform subsample chosen while streaming (the `max_per_class` images of
//! the class with the smallest `hash64(seed, index)`); the adversarial set is streamed in chunks
//! and only its r1/r2 are kept. The per-class denominators are computed once and the numerators
//! chunk by chunk with `analysis::ratios::{mean_within_distance, mean_between_distance,
//! row_distance_sums}`, which gives the same numbers as `analysis::ratios::distance_ratios` on the
//! whole set (checked in tests/experiments.rs) without holding every adversarial phi.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::analysis::ratios::{
    histogram, mean_between_distance, mean_within_distance, row_distance_sums, Histogram,
};
use crate::analysis::semantics::uniform_edges;
use crate::attack::advset::AdvSet;
use crate::backend::Backend;
use crate::data::{Batches, Dataset};
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::tensor::Tensor;

/// Eval-mode forward of `x`: the logits [B, K] (host) and phi [B, C', H', W'] (on the backend).
/// The model's forward cache is cleared before returning.
pub fn logits_and_phi(
    be: &dyn Backend,
    model: &mut Model,
    x: &Tensor,
) -> Result<(Vec<f32>, Tensor)> {
    let logits = model.forward(be, x, false)?;
    let phi = model.phi()?.clone();
    model.clear_cache();
    Ok((logits.to_vec()?, phi))
}

/// Row-wise argmax of [B, K] logits (first maximum on ties).
pub fn argmax_rows(logits: &[f32], k: usize) -> Vec<u32> {
    logits
        .chunks_exact(k.max(1))
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                    if v > b.1 {
                        (i, v)
                    } else {
                        b
                    }
                })
                .0 as u32
        })
        .collect()
}

/// Options of [`ratios`].
#[derive(Clone, Debug)]
pub struct RatiosConfig {
    pub batch: usize,
    /// First `limit` real images only.
    pub limit: Option<usize>,
    /// First `adv_limit` adversarial images only.
    pub adv_limit: Option<usize>,
    /// Cap on real images per class (seeded subsample while streaming).
    pub max_per_class: Option<usize>,
    pub seed: u64,
    /// Histogram edges of Fig. 5 (default 0 to 3 in steps of 0.05).
    pub edges: Vec<f64>,
    /// Adversarial images per numerator pass.
    pub chunk: usize,
}

impl Default for RatiosConfig {
    fn default() -> Self {
        RatiosConfig {
            batch: 64,
            limit: None,
            adv_limit: None,
            max_per_class: None,
            seed: 0,
            edges: uniform_edges(0.0, 3.0, 60),
            chunk: 2048,
        }
    }
}

/// Summary statistics of one ratio over the adversarial images.
#[derive(Clone, Debug, Serialize)]
pub struct RatioStats {
    pub n: usize,
    /// Images where the ratio is undefined (a class with < 2 real images, a zero denominator).
    pub missing: usize,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    /// Fraction of defined values above 1 (r1: away from its own class) / below 1.
    pub frac_above_1: Option<f64>,
    pub frac_below_1: Option<f64>,
}

fn stats(v: &[Option<f64>]) -> RatioStats {
    let mut f: Vec<f64> = v
        .iter()
        .flatten()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    f.sort_by(f64::total_cmp);
    let n = f.len();
    let frac = |pred: &dyn Fn(f64) -> bool| {
        (n > 0).then(|| f.iter().filter(|&&x| pred(x)).count() as f64 / n as f64)
    };
    RatioStats {
        n,
        missing: v.len() - n,
        mean: (n > 0).then(|| f.iter().sum::<f64>() / n as f64),
        median: (n > 0).then(|| {
            if n % 2 == 1 {
                f[n / 2]
            } else {
                (f[n / 2 - 1] + f[n / 2]) / 2.0
            }
        }),
        frac_above_1: frac(&|x| x > 1.0),
        frac_below_1: frac(&|x| x < 1.0),
    }
}

/// Everything E4 measured (`ratios.json`).
#[derive(Clone, Debug, Serialize)]
pub struct RatiosResult {
    pub format: String,
    pub model: String,
    pub ckpt: String,
    pub real_data: String,
    pub adv_dir: String,
    pub definition: String,
    /// (C', H', W') of phi; the distances use all C' H' W' values.
    pub phi_shape: [usize; 3],
    pub real_images: usize,
    pub real_per_class: Vec<usize>,
    pub adv_images: usize,
    pub r1: RatioStats,
    pub r2: RatioStats,
    pub hist_r1: Histogram,
    pub hist_r2: Histogram,
    pub figures: Vec<String>,
    pub seconds: f64,
    /// Per adversarial image (row order of the set): r1, r2 (null where undefined).
    pub per_image_r1: Vec<Option<f64>>,
    pub per_image_r2: Vec<Option<f64>>,
}

/// Real phi per class, capped by a seeded bottom-k of hash priorities.
struct ClassStore {
    dim: usize,
    cap: Option<usize>,
    seed: u64,
    /// Per class: (priority, row) pairs and rows of phi, same order.
    keys: Vec<Vec<(u64, usize)>>,
    rows: Vec<Vec<f32>>,
}

impl ClassStore {
    fn new(k: usize, dim: usize, cap: Option<usize>, seed: u64) -> ClassStore {
        ClassStore {
            dim,
            cap,
            seed,
            keys: vec![Vec::new(); k],
            rows: vec![Vec::new(); k],
        }
    }

    fn add(&mut self, class: usize, index: usize, phi: &[f32]) {
        let d = self.dim;
        let key = (crate::rng::hash64(self.seed, index as u64), index);
        let keys = &mut self.keys[class];
        let rows = &mut self.rows[class];
        match self.cap {
            Some(cap) if keys.len() >= cap => {
                // Replace the largest priority if the newcomer's is smaller (bottom-k sample).
                if let Some((worst, _)) = keys.iter().enumerate().max_by_key(|(_, k)| **k) {
                    if key < keys[worst] {
                        keys[worst] = key;
                        rows[worst * d..(worst + 1) * d].copy_from_slice(phi);
                    }
                }
            }
            _ => {
                keys.push(key);
                rows.extend_from_slice(phi);
            }
        }
    }

    fn count(&self, c: usize) -> usize {
        self.keys[c].len()
    }

    fn f64_rows(&self, c: usize) -> Vec<f64> {
        self.rows[c].iter().map(|&v| v as f64).collect()
    }
}

/// E4 on one model: write `ratios.json` and `fig5_ratios.svg` into `out`.
pub fn ratios(
    be: &dyn Backend,
    ckpt: &Path,
    real: &Arc<Dataset>,
    adv: &AdvSet,
    cfg: &RatiosConfig,
    out: &Path,
) -> Result<RatiosResult> {
    let t0 = Instant::now();
    if cfg.batch == 0 || cfg.chunk == 0 {
        return Err(Error::InvalidArg(
            "--batch and the chunk must be at least 1".into(),
        ));
    }
    if matches!(cfg.max_per_class, Some(0)) {
        return Err(Error::InvalidArg(
            "--max-per-class must be at least 1".into(),
        ));
    }
    let mut model = Model::load(ckpt)?;
    super::neurons::check_inputs(&model, ckpt, real, Some(adv))?;
    model.to_backend(be)?;
    let (pc, ph, pw) = model.phi_shape()?;
    let dim = pc * ph * pw;
    let k = real.num_classes();
    let n_real = cfg.limit.map_or(real.len(), |l| l.min(real.len()));
    let n_adv = cfg.adv_limit.map_or(adv.len(), |l| l.min(adv.len()));
    if n_real == 0 || n_adv == 0 {
        return Err(Error::InvalidArg(format!(
            "nothing to measure: {n_real} real and {n_adv} adversarial images"
        )));
    }

    let mut store = ClassStore::new(k, dim, cfg.max_per_class, cfg.seed);
    let pb = crate::progress::bar(n_real as u64, "ratios: real phi", "img");
    for b in Batches::new(real, cfg.batch, None, 0)?.limit(n_real) {
        let b = b?;
        let (_, phi) = logits_and_phi(be, &mut model, &b.images)?;
        let v = phi.to_vec()?;
        for ((row, &l), &i) in v.chunks_exact(dim).zip(&b.labels).zip(&b.indices) {
            store.add(l as usize, i, row);
        }
        pb.inc(b.labels.len() as u64);
    }
    pb.finish_and_clear();

    // Denominators: within-class means now, between-class means on first use.
    let within: Vec<Option<f64>> = (0..k)
        .map(|c| mean_within_distance(&store.f64_rows(c), dim))
        .collect();
    let mut between: HashMap<(u32, u32), Option<f64>> = HashMap::new();

    let mut r1 = Vec::with_capacity(n_adv);
    let mut r2 = Vec::with_capacity(n_adv);
    let pb = crate::progress::bar(n_adv as u64, "ratios: adversarial", "img");
    let mut start = 0;
    while start < n_adv {
        let end = (start + cfg.chunk).min(n_adv);
        let mut phis: Vec<f32> = Vec::with_capacity((end - start) * dim);
        let mut orig = Vec::with_capacity(end - start);
        let mut targ = Vec::with_capacity(end - start);
        for s in (start..end).step_by(cfg.batch) {
            let idx: Vec<usize> = (s..(s + cfg.batch).min(end)).collect();
            let b = adv.batch(&idx)?;
            let (_, phi) = logits_and_phi(be, &mut model, &b.images)?;
            phis.extend(phi.to_vec()?);
            orig.extend(b.true_label);
            targ.extend(b.target_label);
            pb.inc(idx.len() as u64);
        }
        let num1 = mean_distances(&phis, &orig, &store, dim);
        let num2 = mean_distances(&phis, &targ, &store, dim);
        for i in 0..orig.len() {
            let (y, t) = (orig[i], targ[i]);
            let d1 = within[y as usize];
            let d2 = if y == t {
                d1
            } else {
                let key = (y.min(t), y.max(t));
                *between.entry(key).or_insert_with(|| {
                    mean_between_distance(
                        &store.f64_rows(key.0 as usize),
                        &store.f64_rows(key.1 as usize),
                        dim,
                    )
                })
            };
            r1.push(ratio(num1[i], d1));
            r2.push(ratio(num2[i], d2));
        }
        start = end;
    }
    pb.finish_and_clear();

    let hist_r1 = histogram(&r1, &cfg.edges)?;
    let hist_r2 = histogram(&r2, &cfg.edges)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let fig = "fig5_ratios.svg";
    viz_hist(&out.join(fig), model.name(), &hist_r1, &hist_r2)?;
    let result = RatiosResult {
        format: "advlens-ratios-v1".into(),
        model: model.name().to_string(),
        ckpt: ckpt.display().to_string(),
        real_data: real.path().display().to_string(),
        adv_dir: adv.dir().display().to_string(),
        definition: "r1 = mean |phi(x*) - phi(x)| over real x of the original class / mean over \
                     distinct pairs within that class; r2 = mean |phi(x*) - phi(x)| over real x \
                     of the target class / mean over all (original, target) pairs; phi = last \
                     conv representation, flattened"
            .into(),
        phi_shape: [pc, ph, pw],
        real_images: n_real,
        real_per_class: (0..k).map(|c| store.count(c)).collect(),
        adv_images: n_adv,
        r1: stats(&r1),
        r2: stats(&r2),
        hist_r1,
        hist_r2,
        figures: vec![fig.to_string()],
        seconds: t0.elapsed().as_secs_f64(),
        per_image_r1: r1,
        per_image_r2: r2,
    };
    super::neurons::write_json_compact(&out.join("ratios.json"), &result)?;
    Ok(result)
}

fn ratio(n: Option<f64>, d: Option<f64>) -> Option<f64> {
    match (n, d) {
        (Some(n), Some(d)) if d > 0.0 && n.is_finite() => Some(n / d),
        _ => None,
    }
}

/// For each row of `phis` ([M, dim]), the mean distance to the real rows of class `labels[i]`
/// (None for a class without real images); grouped by class, one blocked pass per class.
fn mean_distances(
    phis: &[f32],
    labels: &[u32],
    store: &ClassStore,
    dim: usize,
) -> Vec<Option<f64>> {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, &c) in labels.iter().enumerate() {
        groups.entry(c).or_default().push(i);
    }
    let mut out = vec![None; labels.len()];
    for (c, idx) in groups {
        let n = store.count(c as usize);
        if n == 0 {
            continue;
        }
        let mut x = Vec::with_capacity(idx.len() * dim);
        for &i in &idx {
            x.extend(phis[i * dim..(i + 1) * dim].iter().map(|&v| v as f64));
        }
        let sums = row_distance_sums(&x, &store.f64_rows(c as usize), dim);
        for (&i, s) in idx.iter().zip(sums) {
            out[i] = Some(s / n as f64);
        }
    }
    out
}

fn viz_hist(path: &Path, model: &str, h1: &Histogram, h2: &Histogram) -> Result<()> {
    crate::viz::plots::histograms_svg(
        path,
        &format!("{model}: distance ratios of adversarial images"),
        &[
            crate::viz::plots::HistSeries {
                label: "r1",
                hist: h1,
            },
            crate::viz::plots::HistSeries {
                label: "r2",
                hist: h2,
            },
        ],
    )
}
