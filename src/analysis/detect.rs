//! Adversarial detection of paper section 2.4 (E5): class-conditional Gaussians
//! `p(phi | y = i) = N(mu_i, Sigma_i)` of feature vectors (the caller passes [N, D] features, in
//! this project the channel-pooled last-conv vectors), fitted on the training set, and the
//! log-density of an image under its predicted class.
//!
//! Fitting is streaming: per class, sums of x, x x^T (upper triangle, packed), |x|^2 x and |x|^4
//! in f64, so the training set is never held in memory. x is shifted by the first sample seen of
//! its class before accumulating, which keeps the moment sums from cancelling catastrophically
//! for features far from the origin (the shift drops out of every centred quantity).
//! Memory: K x (D(D+1)/2 + 2D + 2) f64 for the sums, K x (D(D+1)/2 + D) f64 for the fit.
//!
//! Covariance: the maximum-likelihood covariance S (divided by n) shrunk toward a scaled
//! identity, `Sigma = (1 - l) S + l (tr S / D) I`, with l from Ledoit-Wolf by default (the same
//! estimator as scikit-learn's `ledoit_wolf_shrinkage`, computed from the streamed moments: it
//! needs sum |x - mu|^4, which expands into the sums above), or a fixed l. A ridge
//! `ridge * (mean over classes of tr S / D)` is added to every class so that a class with a
//! single sample or constant features is still positive definite. Log-density via Cholesky.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};

/// How the covariance is shrunk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shrinkage {
    /// Ledoit-Wolf optimal shrinkage toward (tr S / D) I, per class.
    LedoitWolf,
    /// A fixed weight in [0, 1] on (tr S / D) I.
    Fixed(f64),
}

/// Options of `GaussianAccumulator::fit`.
#[derive(Clone, Copy, Debug)]
pub struct GaussianConfig {
    pub shrinkage: Shrinkage,
    /// Ridge relative to the mean per-dimension variance over all classes (default 1e-6).
    pub ridge: f64,
}

impl Default for GaussianConfig {
    fn default() -> Self {
        GaussianConfig {
            shrinkage: Shrinkage::LedoitWolf,
            ridge: 1e-6,
        }
    }
}

/// A class with at least this many rows in a batch gets its x x^T sum as one matrix product
/// instead of rank-1 updates.
const SYRK_MIN_ROWS: usize = 8;

/// `s2 (packed upper) += A^T A` for A = `a` ([rows, d] row-major), through one f64 GEMM.
fn add_gram_blocked(s2: &mut [f64], a: &[f64], d: usize) {
    let rows = a.len() / d;
    let mut g = vec![0.0f64; d * d];
    // SAFETY: A^T is read from `a` ([rows, d]) with strides (1, d), A with (d, 1); g is d x d.
    unsafe {
        matrixmultiply::dgemm(
            d,
            rows,
            d,
            1.0,
            a.as_ptr(),
            1,
            d as isize,
            a.as_ptr(),
            d as isize,
            1,
            0.0,
            g.as_mut_ptr(),
            d as isize,
            1,
        );
    }
    for i in 0..d {
        let off = up_row(d, i);
        for (s, gv) in s2[off..off + d - i]
            .iter_mut()
            .zip(&g[i * d + i..(i + 1) * d])
        {
            *s += gv;
        }
    }
}

/// Row offset of row i in a packed upper triangle (row i has d - i entries).
#[inline]
fn up_row(d: usize, i: usize) -> usize {
    // sum_{r < i} (d - r) = i d - i (i - 1) / 2
    i * d - (i * i.saturating_sub(1)) / 2
}

/// Row offset of row i in a packed lower triangle (row i has i + 1 entries).
#[inline]
fn lo_row(i: usize) -> usize {
    i * (i + 1) / 2
}

/// A class between the two fitting passes: (mean, shrunk covariance [D, D], shrinkage, tr S / D).
type Staged = (Vec<f64>, Vec<f64>, f64, f64);

#[derive(Clone, Debug)]
struct ClassSums {
    n: u64,
    shift: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
    v: Vec<f64>,
    t4: f64,
}

/// Streaming per-class moment sums.
#[derive(Clone, Debug)]
pub struct GaussianAccumulator {
    dim: usize,
    classes: Vec<ClassSums>,
}

impl GaussianAccumulator {
    pub fn new(num_classes: usize, dim: usize) -> Result<GaussianAccumulator> {
        if dim == 0 || num_classes == 0 {
            return Err(Error::InvalidArg(format!(
                "gaussian: need at least 1 class and 1 feature (got {num_classes} classes, dim {dim})"
            )));
        }
        Ok(GaussianAccumulator {
            dim,
            classes: (0..num_classes)
                .map(|_| ClassSums {
                    n: 0,
                    shift: Vec::new(),
                    s1: vec![0.0; dim],
                    s2: vec![0.0; dim * (dim + 1) / 2],
                    v: vec![0.0; dim],
                    t4: 0.0,
                })
                .collect(),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Samples seen per class.
    pub fn counts(&self) -> Vec<u64> {
        self.classes.iter().map(|c| c.n).collect()
    }

    /// Add a batch: `features` [B, D] row-major, `labels` [B].
    pub fn add_batch(&mut self, features: &[f32], labels: &[u32]) -> Result<()> {
        let d = self.dim;
        let k = self.classes.len();
        if features.len() != labels.len() * d {
            return Err(Error::shape(
                "gaussian fit",
                format!(
                    "features have {} values, expected {} x {d}",
                    features.len(),
                    labels.len()
                ),
            ));
        }
        if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= k) {
            return Err(Error::InvalidArg(format!(
                "gaussian fit: label {l} of row {i} is out of range for {k} classes"
            )));
        }
        if let Some(p) = features.iter().position(|x| !x.is_finite()) {
            return Err(Error::Numeric(format!(
                "gaussian fit: non-finite feature at row {}, dim {}",
                p / d,
                p % d
            )));
        }
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); k];
        for (i, &l) in labels.iter().enumerate() {
            rows[l as usize].push(i);
        }
        self.classes
            .par_iter_mut()
            .zip(rows.par_iter())
            .filter(|(_, r)| !r.is_empty())
            .for_each(|(cs, r)| {
                if cs.shift.is_empty() {
                    let x = &features[r[0] * d..(r[0] + 1) * d];
                    cs.shift = x.iter().map(|&v| v as f64).collect();
                }
                // The class's rows of this batch, shifted, as one [rows, d] f64 block.
                let mut a = vec![0.0f64; r.len() * d];
                for (row, &i) in a.chunks_exact_mut(d).zip(r) {
                    let x = &features[i * d..(i + 1) * d];
                    for ((aj, &xj), sj) in row.iter_mut().zip(x).zip(&cs.shift) {
                        *aj = xj as f64 - sj;
                    }
                    let nrm2: f64 = row.iter().map(|v| v * v).sum();
                    cs.n += 1;
                    cs.t4 += nrm2 * nrm2;
                    for ((s1, v), &aj) in cs.s1.iter_mut().zip(cs.v.iter_mut()).zip(row.iter()) {
                        *s1 += aj;
                        *v += nrm2 * aj;
                    }
                }
                if r.len() >= SYRK_MIN_ROWS {
                    add_gram_blocked(&mut cs.s2, &a, d);
                } else {
                    for row in a.chunks_exact(d) {
                        for (j, &aj) in row.iter().enumerate() {
                            if aj != 0.0 {
                                let off = up_row(d, j);
                                for (s, &am) in cs.s2[off..off + d - j].iter_mut().zip(&row[j..]) {
                                    *s += aj * am;
                                }
                            }
                        }
                    }
                }
            });
        Ok(())
    }

    /// Fit every class with at least one sample; classes with none are left unfitted.
    pub fn fit(&self, cfg: &GaussianConfig) -> Result<ClassGaussians> {
        let d = self.dim;
        if let Shrinkage::Fixed(l) = cfg.shrinkage {
            if !(0.0..=1.0).contains(&l) {
                return Err(Error::InvalidArg(format!(
                    "gaussian: fixed shrinkage must be in [0, 1], got {l}"
                )));
            }
        }
        if !(cfg.ridge.is_finite() && cfg.ridge >= 0.0) {
            return Err(Error::InvalidArg(format!(
                "gaussian: ridge must be >= 0, got {}",
                cfg.ridge
            )));
        }
        // Pass 1 (per class, parallel): mean, MLE covariance (full, temporary), shrinkage.
        let stage: Vec<Option<Staged>> = self
            .classes
            .par_iter()
            .map(|cs| {
                if cs.n == 0 {
                    return None;
                }
                let n = cs.n as f64;
                let m: Vec<f64> = cs.s1.iter().map(|s| s / n).collect();
                let mut s = vec![0.0f64; d * d];
                for i in 0..d {
                    let off = up_row(d, i);
                    for j in i..d {
                        let v = cs.s2[off + j - i] / n - m[i] * m[j];
                        s[i * d + j] = v;
                        s[j * d + i] = v;
                    }
                }
                let tr: f64 = (0..d).map(|i| s[i * d + i]).sum();
                let mu = tr / d as f64;
                let lambda = match cfg.shrinkage {
                    Shrinkage::Fixed(l) => l,
                    Shrinkage::LedoitWolf => {
                        let fro2: f64 = s.iter().map(|v| v * v).sum();
                        let m2: f64 = m.iter().map(|v| v * v).sum();
                        let t2: f64 = (0..d).map(|i| cs.s2[up_row(d, i)]).sum();
                        // m^T S2 m with S2 the raw (shifted) second-moment sum.
                        let mut ms2m = 0.0;
                        for i in 0..d {
                            let off = up_row(d, i);
                            let row = &cs.s2[off..off + d - i];
                            let acc = row[0] * m[i]
                                + 2.0
                                    * row[1..]
                                        .iter()
                                        .zip(&m[i + 1..])
                                        .map(|(s, mj)| s * mj)
                                        .sum::<f64>();
                            ms2m += m[i] * acc;
                        }
                        let mv: f64 = m.iter().zip(&cs.v).map(|(a, b)| a * b).sum();
                        // sum_k |a_k - m|^4 expanded in the streamed sums.
                        let sum4 =
                            cs.t4 + 4.0 * ms2m - 4.0 * mv + 2.0 * m2 * t2 - 3.0 * n * m2 * m2;
                        let beta = (sum4 / n - fro2) / (d as f64 * n);
                        let delta = (fro2 - 2.0 * mu * tr + d as f64 * mu * mu) / d as f64;
                        if delta <= 0.0 {
                            // S is already a multiple of I (e.g. one sample): nothing to shrink
                            // toward; l = 1 keeps the (tr/D) I target.
                            1.0
                        } else {
                            (beta.min(delta) / delta).clamp(0.0, 1.0)
                        }
                    }
                };
                for v in s.iter_mut() {
                    *v *= 1.0 - lambda;
                }
                for i in 0..d {
                    s[i * d + i] += lambda * mu;
                }
                let mean: Vec<f64> = m.iter().zip(&cs.shift).map(|(a, b)| a + b).collect();
                Some((mean, s, lambda, mu))
            })
            .collect();
        let fitted: Vec<&Staged> = stage.iter().flatten().collect();
        if fitted.is_empty() {
            return Err(Error::InvalidArg(
                "gaussian: no class has any training sample".into(),
            ));
        }
        let mean_var = fitted.iter().map(|f| f.3).sum::<f64>() / fitted.len() as f64;
        let eps = cfg.ridge * mean_var;
        if !(eps > 0.0 || cfg.ridge == 0.0) {
            return Err(Error::Numeric(
                "gaussian: every class has zero variance in every feature; cannot fit".into(),
            ));
        }
        // Pass 2: ridge + Cholesky, packed lower.
        let results: Vec<Result<Option<FittedClass>>> = stage
            .into_par_iter()
            .enumerate()
            .map(|(c, st)| {
                let Some((mean, mut s, lambda, _)) = st else {
                    return Ok(None);
                };
                for i in 0..d {
                    s[i * d + i] += eps;
                }
                let chol = cholesky_packed(&s, d).ok_or_else(|| {
                    Error::Numeric(format!(
                        "gaussian: covariance of class {c} is not positive definite (raise the ridge or the shrinkage)"
                    ))
                })?;
                let log_det = 2.0 * (0..d).map(|i| chol[lo_row(i) + i].ln()).sum::<f64>();
                Ok(Some(FittedClass {
                    n: self.classes[c].n,
                    mean,
                    chol,
                    log_det,
                    shrinkage: lambda,
                }))
            })
            .collect();
        let classes = results.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(ClassGaussians {
            dim: d,
            classes,
            ridge_abs: eps,
        })
    }
}

/// Cholesky factor L (packed lower, row by row) of a full symmetric [d, d] matrix; None if it is
/// not positive definite.
pub fn cholesky_packed(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; d * (d + 1) / 2];
    for i in 0..d {
        let ri = lo_row(i);
        for j in 0..=i {
            let rj = lo_row(j);
            let dotp: f64 = l[ri..ri + j]
                .iter()
                .zip(&l[rj..rj + j])
                .map(|(x, y)| x * y)
                .sum();
            let v = a[i * d + j] - dotp;
            if i == j {
                if v.is_nan() || v <= 0.0 || v.is_infinite() {
                    return None;
                }
                l[ri + i] = v.sqrt();
            } else {
                l[ri + j] = v / l[rj + j];
            }
        }
    }
    Some(l)
}

#[derive(Clone, Debug)]
struct FittedClass {
    n: u64,
    mean: Vec<f64>,
    chol: Vec<f64>,
    log_det: f64,
    shrinkage: f64,
}

/// Per-class summary for reports.
#[derive(Clone, Debug, Serialize)]
pub struct ClassFitSummary {
    pub class: usize,
    pub n: u64,
    pub shrinkage: f64,
    pub log_det: f64,
}

/// Fitted class-conditional Gaussians.
#[derive(Clone, Debug)]
pub struct ClassGaussians {
    dim: usize,
    classes: Vec<Option<FittedClass>>,
    ridge_abs: f64,
}

impl ClassGaussians {
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The ridge actually added to every diagonal.
    pub fn ridge(&self) -> f64 {
        self.ridge_abs
    }

    pub fn summary(&self) -> Vec<ClassFitSummary> {
        self.classes
            .iter()
            .enumerate()
            .filter_map(|(c, f)| {
                f.as_ref().map(|f| ClassFitSummary {
                    class: c,
                    n: f.n,
                    shrinkage: f.shrinkage,
                    log_det: f.log_det,
                })
            })
            .collect()
    }

    /// Mean of a fitted class.
    pub fn mean(&self, class: usize) -> Option<&[f64]> {
        self.classes.get(class)?.as_ref().map(|f| f.mean.as_slice())
    }

    /// log N(x; mu_c, Sigma_c) = -(D ln 2pi + ln|Sigma| + |L^-1 (x - mu)|^2) / 2.
    pub fn log_density(&self, x: &[f32], class: usize) -> Result<f64> {
        let d = self.dim;
        if x.len() != d {
            return Err(Error::shape(
                "gaussian log-density",
                format!("feature has {} values, expected {d}", x.len()),
            ));
        }
        let k = self.classes.len();
        let f = self
            .classes
            .get(class)
            .ok_or_else(|| {
                Error::InvalidArg(format!(
                    "gaussian log-density: class {class} of {k} classes"
                ))
            })?
            .as_ref()
            .ok_or_else(|| {
                Error::InvalidArg(format!(
                    "gaussian log-density: class {class} had no training samples"
                ))
            })?;
        let mut z = vec![0.0f64; d];
        let mut maha = 0.0;
        for i in 0..d {
            let r = lo_row(i);
            let acc: f64 = f.chol[r..r + i]
                .iter()
                .zip(&z[..i])
                .map(|(l, zj)| l * zj)
                .sum();
            z[i] = (x[i] as f64 - f.mean[i] - acc) / f.chol[r + i];
            maha += z[i] * z[i];
        }
        Ok(-0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln() + f.log_det + maha))
    }

    /// Log-densities of `features` [N, D] under `classes[N]` (e.g. the predicted classes).
    /// Samples are grouped by class and solved in blocks, so each Cholesky factor is streamed
    /// from memory once per block rather than once per sample; results equal `log_density`.
    pub fn log_density_batch(&self, features: &[f32], classes: &[u32]) -> Result<Vec<f64>> {
        let d = self.dim;
        if features.len() != classes.len() * d {
            return Err(Error::shape(
                "gaussian log-density",
                format!(
                    "features have {} values, expected {} x {d}",
                    features.len(),
                    classes.len()
                ),
            ));
        }
        let k = self.classes.len();
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); k];
        for (i, &c) in classes.iter().enumerate() {
            match self.classes.get(c as usize) {
                Some(Some(_)) => groups[c as usize].push(i),
                Some(None) => {
                    return Err(Error::InvalidArg(format!(
                        "gaussian log-density: class {c} (sample {i}) had no training samples"
                    )))
                }
                None => {
                    return Err(Error::InvalidArg(format!(
                        "gaussian log-density: class {c} (sample {i}) of {k} classes"
                    )))
                }
            }
        }
        const BLK: usize = 64;
        let work: Vec<(usize, &[usize])> = groups
            .iter()
            .enumerate()
            .flat_map(|(c, g)| g.chunks(BLK).map(move |ch| (c, ch)))
            .collect();
        let parts: Vec<(&[usize], Vec<f64>)> = work
            .into_par_iter()
            .map(|(c, idx)| {
                let mut out = Vec::new();
                if let Some(f) = &self.classes[c] {
                    let m = idx.len();
                    let mut z = vec![0.0f64; m * d];
                    let mut maha = vec![0.0f64; m];
                    for i in 0..d {
                        let r = lo_row(i);
                        let li = &f.chol[r..r + i];
                        for (s, &n) in idx.iter().enumerate() {
                            let zs = &mut z[s * d..(s + 1) * d];
                            let acc: f64 = li.iter().zip(&zs[..i]).map(|(l, zj)| l * zj).sum();
                            zs[i] = (features[n * d + i] as f64 - f.mean[i] - acc) / f.chol[r + i];
                            maha[s] += zs[i] * zs[i];
                        }
                    }
                    let cst = d as f64 * (2.0 * std::f64::consts::PI).ln() + f.log_det;
                    out = maha.into_iter().map(|q| -0.5 * (cst + q)).collect();
                }
                (idx, out)
            })
            .collect();
        let mut res = vec![0.0f64; classes.len()];
        for (idx, vals) in parts {
            for (&i, v) in idx.iter().zip(vals) {
                res[i] = v;
            }
        }
        Ok(res)
    }
}

/// Detection scores and labels for `roc_auc`: adversarial images are the positives (label 1) and
/// score `-log p` (less likely under the predicted class = more suspicious).
pub fn detection_scores(log_p_real: &[f64], log_p_adv: &[f64]) -> (Vec<f32>, Vec<u8>) {
    let scores = log_p_real
        .iter()
        .chain(log_p_adv)
        .map(|&l| (-l) as f32)
        .collect();
    let labels = std::iter::repeat_n(0u8, log_p_real.len())
        .chain(std::iter::repeat_n(1u8, log_p_adv.len()))
        .collect();
    (scores, labels)
}
