//! Representation distance ratios of paper section 2.3 (Eq. 6-7, Fig. 5):
//!
//! `r1 = dbar(phi(x*), S_y) / d(S_y, S_y)` and `r2 = dbar(phi(x*), S_y*) / d(S_y, S_y*)`,
//! where `S_c` are the representations of the real images of class c, y the original class and
//! y* the target class of the adversarial image x*.
//!
//! Definitions used (the paper leaves them implicit):
//! - `dbar(x, S)` = mean Euclidean distance from x to the points of S.
//! - `d(S, S)` = mean over the |S|(|S|-1)/2 unordered pairs of *distinct* points of S (the zero
//!   self-distances are not averaged in); needs |S| >= 2.
//! - `d(S, T)` for two different classes = mean over all |S||T| pairs.
//!
//! With these, a point distributed like the real points of class y has E[r1] = 1 and E[r2] = 1
//! (each numerator then averages the same distance distribution as its denominator): the paper's
//! "a consistent representation has mean 1" normalisation.
//!
//! Computation is exact (no reduction to class means, which would change the quantity: the mean
//! pairwise distance is not a function of the means). Distances come from Gram blocks in f64,
//! `|a-b| = sqrt(max(0, |a|^2 + |b|^2 - 2 a.b))`, after subtracting the class's centroid from
//! both operands to keep the cancellation small. Per-class statistics (within-class means, the
//! between-class means needed) are computed once and shared by every adversarial point.
//! Optionally each class is subsampled to at most `max_per_class` real points (seeded), the same
//! subsample for numerators and denominators.

use std::collections::{BTreeSet, HashMap};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Options of `distance_ratios`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RatioConfig {
    /// Cap on real points per class (None = all). Subsampled with `seed`.
    pub max_per_class: Option<usize>,
    pub seed: u64,
}

/// r1, r2 of every adversarial point (None where undefined: a class with too few real points,
/// or a zero denominator).
#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    pub r1: Vec<Option<f64>>,
    pub r2: Vec<Option<f64>>,
    /// Real points used per class (after the cap).
    pub real_per_class: Vec<usize>,
}

const BLOCK: usize = 256;

/// For each row of `a` ([na, d]), the sum of Euclidean distances to all rows of `b` ([nb, d]),
/// both f64 row-major. Exact up to f64 rounding of the Gram form (see module doc).
pub fn row_distance_sums(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    dist_sums(a, b, d, false)
}

/// `skip_diagonal`: a and b are the same set and the pairs (i, i) are left out (their Gram-form
/// value is rounding noise, not an exact 0).
fn dist_sums(a: &[f64], b: &[f64], d: usize, skip_diagonal: bool) -> Vec<f64> {
    if d == 0 {
        return Vec::new();
    }
    let na = a.len() / d;
    let nb = b.len() / d;
    if na == 0 || nb == 0 {
        return vec![0.0; na];
    }
    // Centre both on b's centroid: translation-invariant, and shrinks |a|^2 + |b|^2 - 2a.b
    // cancellation when the cloud is far from the origin (ReLU features are).
    let mut centre = vec![0.0f64; d];
    for row in b.chunks_exact(d) {
        for (c, v) in centre.iter_mut().zip(row) {
            *c += v;
        }
    }
    centre.iter_mut().for_each(|c| *c /= nb as f64);
    let sub = |m: &[f64]| -> Vec<f64> {
        let mut o = m.to_vec();
        for row in o.chunks_exact_mut(d) {
            for (v, c) in row.iter_mut().zip(&centre) {
                *v -= c;
            }
        }
        o
    };
    let a = sub(a);
    let b = sub(b);
    let norms = |m: &[f64]| -> Vec<f64> {
        m.chunks_exact(d)
            .map(|r| r.iter().map(|x| x * x).sum())
            .collect()
    };
    let an = norms(&a);
    let bn = norms(&b);
    a.par_chunks(BLOCK * d)
        .zip(an.par_chunks(BLOCK))
        .enumerate()
        .flat_map_iter(|(ai, (ablk, anb))| {
            let m = anb.len();
            let mut sums = vec![0.0f64; m];
            let mut g = vec![0.0f64; m * BLOCK];
            for (bi, (bblk, bnb)) in b.chunks(BLOCK * d).zip(bn.chunks(BLOCK)).enumerate() {
                let n = bnb.len();
                // SAFETY: ablk is m x d, bblk is n x d (read transposed through its strides), g
                // holds at least m x n; all row-major, lengths from chunking above.
                unsafe {
                    matrixmultiply::dgemm(
                        m,
                        d,
                        n,
                        1.0,
                        ablk.as_ptr(),
                        d as isize,
                        1,
                        bblk.as_ptr(),
                        1,
                        d as isize,
                        0.0,
                        g.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                }
                for i in 0..m {
                    let gi = &g[i * n..(i + 1) * n];
                    let mut s: f64 = gi
                        .iter()
                        .zip(bnb)
                        .map(|(gij, bj)| (anb[i] + bj - 2.0 * gij).max(0.0).sqrt())
                        .sum();
                    if skip_diagonal && ai == bi {
                        s -= (anb[i] + bnb[i] - 2.0 * gi[i]).max(0.0).sqrt();
                    }
                    sums[i] += s;
                }
            }
            sums
        })
        .collect()
}

/// Mean over distinct unordered pairs of the rows of `s` ([n, d]); None when n < 2.
pub fn mean_within_distance(s: &[f64], d: usize) -> Option<f64> {
    let n = s.len().checked_div(d).unwrap_or(0);
    if n < 2 {
        return None;
    }
    let total: f64 = dist_sums(s, s, d, true).iter().sum();
    Some(total / (n * (n - 1)) as f64)
}

/// Mean over all pairs of rows of `s` and `t`; None if either is empty.
pub fn mean_between_distance(s: &[f64], t: &[f64], d: usize) -> Option<f64> {
    let ns = s.len().checked_div(d).unwrap_or(0);
    let nt = t.len().checked_div(d).unwrap_or(0);
    if ns == 0 || nt == 0 {
        return None;
    }
    Some(row_distance_sums(s, t, d).iter().sum::<f64>() / (ns * nt) as f64)
}

fn gather(x: &[f32], d: usize, idx: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(idx.len() * d);
    for &i in idx {
        out.extend(x[i * d..(i + 1) * d].iter().map(|&v| v as f64));
    }
    out
}

/// r1 and r2 (Eq. 6-7) for every adversarial point.
///
/// `real` is [N, dim] with `real_labels[N]`; `adv` is [M, dim] with original classes `adv_orig`
/// and target classes `adv_target`; labels < `num_classes`.
#[allow(clippy::too_many_arguments)]
pub fn distance_ratios(
    real: &[f32],
    real_labels: &[u32],
    adv: &[f32],
    adv_orig: &[u32],
    adv_target: &[u32],
    dim: usize,
    num_classes: usize,
    cfg: &RatioConfig,
) -> Result<Ratios> {
    let op = "distance_ratios";
    if dim == 0 {
        return Err(Error::shape(op, "feature dimension is 0"));
    }
    if real.len() != real_labels.len() * dim {
        return Err(Error::shape(
            op,
            format!(
                "real features have {} values, expected {} x {dim}",
                real.len(),
                real_labels.len()
            ),
        ));
    }
    if adv.len() != adv_orig.len() * dim || adv_target.len() != adv_orig.len() {
        return Err(Error::shape(
            op,
            format!(
                "adversarial features have {} values for {} original and {} target labels (dim {dim})",
                adv.len(),
                adv_orig.len(),
                adv_target.len()
            ),
        ));
    }
    let check = |labels: &[u32], what: &str| -> Result<()> {
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(Error::InvalidArg(format!(
                "{op}: {what} label {l} at {i} is out of range for {num_classes} classes"
            )));
        }
        Ok(())
    };
    check(real_labels, "real")?;
    check(adv_orig, "adversarial original")?;
    check(adv_target, "adversarial target")?;
    if matches!(cfg.max_per_class, Some(0)) {
        return Err(Error::InvalidArg(format!(
            "{op}: max_per_class must be at least 1"
        )));
    }

    // Real points per class, subsampled (seeded per class) to the cap.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in real_labels.iter().enumerate() {
        members[l as usize].push(i);
    }
    if let Some(cap) = cfg.max_per_class {
        for (c, m) in members.iter_mut().enumerate() {
            if m.len() > cap {
                Rng::derive(cfg.seed, c as u64).shuffle(m);
                m.truncate(cap);
                m.sort_unstable();
            }
        }
    }
    let needed: BTreeSet<u32> = adv_orig.iter().chain(adv_target).copied().collect();
    let class_rows: HashMap<u32, Vec<f64>> = needed
        .iter()
        .map(|&c| (c, gather(real, dim, &members[c as usize])))
        .collect();

    // Denominators: within-class means for original classes, between-class means for pairs.
    let origs: BTreeSet<u32> = adv_orig.iter().copied().collect();
    let within: HashMap<u32, Option<f64>> = origs
        .par_iter()
        .map(|&c| (c, mean_within_distance(&class_rows[&c], dim)))
        .collect();
    let pairs: BTreeSet<(u32, u32)> = adv_orig
        .iter()
        .zip(adv_target)
        .filter(|(a, b)| a != b)
        .map(|(&a, &b)| (a.min(b), a.max(b)))
        .collect();
    let between: HashMap<(u32, u32), Option<f64>> = pairs
        .par_iter()
        .map(|&(a, b)| {
            (
                (a, b),
                mean_between_distance(&class_rows[&a], &class_rows[&b], dim),
            )
        })
        .collect();

    // Numerators: group adversarial points by class so each group is one blocked Gram pass.
    let mean_dist_to = |labels: &[u32]| -> Vec<Option<f64>> {
        let mut groups: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, &c) in labels.iter().enumerate() {
            groups.entry(c).or_default().push(i);
        }
        let results: Vec<(Vec<usize>, Vec<Option<f64>>)> = groups
            .into_par_iter()
            .map(|(c, idx)| {
                let s = &class_rows[&c];
                let n = s.len() / dim;
                if n == 0 {
                    let none = vec![None; idx.len()];
                    return (idx, none);
                }
                let x = gather(adv, dim, &idx);
                let sums = row_distance_sums(&x, s, dim);
                (idx, sums.into_iter().map(|v| Some(v / n as f64)).collect())
            })
            .collect();
        let mut out = vec![None; labels.len()];
        for (idx, vals) in results {
            for (i, v) in idx.into_iter().zip(vals) {
                out[i] = v;
            }
        }
        out
    };
    let num1 = mean_dist_to(adv_orig);
    let num2 = mean_dist_to(adv_target);
    let ratio = |n: Option<f64>, d: Option<f64>| match (n, d) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    };
    let mut r1 = Vec::with_capacity(adv_orig.len());
    let mut r2 = Vec::with_capacity(adv_orig.len());
    for i in 0..adv_orig.len() {
        let (y, t) = (adv_orig[i], adv_target[i]);
        r1.push(ratio(num1[i], within[&y]));
        let den2 = if y == t {
            within[&y]
        } else {
            between[&(y.min(t), y.max(t))]
        };
        r2.push(ratio(num2[i], den2));
    }
    Ok(Ratios {
        r1,
        r2,
        real_per_class: members.iter().map(|m| m.len()).collect(),
    })
}

/// A histogram over fixed edges ([e_i, e_{i+1}), last bin closed), with what fell outside.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<usize>,
    pub below: usize,
    pub above: usize,
    /// Values that were None or NaN.
    pub missing: usize,
    /// Mean of the finite values (all of them, in range or not); None if there is none.
    pub mean: Option<f64>,
    pub n: usize,
}

/// Histogram of `values` (None / NaN counted as missing) over strictly increasing `edges`.
pub fn histogram(values: &[Option<f64>], edges: &[f64]) -> Result<Histogram> {
    if edges.len() < 2
        || edges.iter().any(|e| !e.is_finite())
        || edges.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(Error::InvalidArg(format!(
            "histogram edges must be at least 2 finite, strictly increasing values, got {edges:?}"
        )));
    }
    let nb = edges.len() - 1;
    let mut h = Histogram {
        edges: edges.to_vec(),
        counts: vec![0; nb],
        below: 0,
        above: 0,
        missing: 0,
        mean: None,
        n: 0,
    };
    let mut sum = 0.0;
    for v in values {
        match v {
            Some(x) if x.is_finite() => {
                h.n += 1;
                sum += x;
                if *x < edges[0] {
                    h.below += 1;
                } else if *x > edges[nb] {
                    h.above += 1;
                } else if let Some(b) = super::semantics::bin_index(edges, *x) {
                    h.counts[b] += 1;
                }
            }
            _ => h.missing += 1,
        }
    }
    if h.n > 0 {
        h.mean = Some(sum / h.n as f64);
    }
    Ok(h)
}
