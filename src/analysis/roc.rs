//! ROC curve and AUC for detection (E5).
//!
//! AUC is the Mann-Whitney statistic: the fraction of (positive, negative) pairs in which the
//! positive scores higher, ties counted 1/2. It equals the trapezoid area under the ROC curve
//! whose points are taken at every distinct score (what `roc_curve` returns), which is how the
//! tests cross-check the two.

use std::cmp::Ordering;

use serde::Serialize;

/// Checks shared by `roc_auc` and `roc_curve`: equal lengths, labels 0/1, no NaN, both classes
/// present. Returns (positives, negatives).
fn validate(scores: &[f32], labels: &[u8]) -> Option<(u64, u64)> {
    if scores.len() != labels.len() || scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut pos = 0u64;
    for &l in labels {
        match l {
            0 => {}
            1 => pos += 1,
            _ => return None,
        }
    }
    let neg = labels.len() as u64 - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    Some((pos, neg))
}

/// Indices sorted by score descending; equal scores (including -0.0 == 0.0) end up adjacent.
fn order_desc(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_unstable_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(Ordering::Equal));
    idx
}

/// Walk the distinct score values from the highest down, yielding (positives, negatives) in
/// each group of equal scores together with the group's score.
fn groups(scores: &[f32], labels: &[u8]) -> Vec<(f32, u64, u64)> {
    let idx = order_desc(scores);
    let mut out: Vec<(f32, u64, u64)> = Vec::new();
    for i in idx {
        let (s, l) = (scores[i], labels[i]);
        match out.last_mut() {
            Some(g) if g.0 == s => {
                if l == 1 {
                    g.1 += 1
                } else {
                    g.2 += 1
                }
            }
            _ => out.push((s, (l == 1) as u64, (l == 0) as u64)),
        }
    }
    out
}

/// Area under the ROC curve of `scores` (higher = more positive) for binary `labels` (1 positive,
/// 0 negative), equal to the Mann-Whitney U statistic / (n_pos * n_neg) with ties counted 1/2.
/// Returns None when one class is empty, the lengths differ, a label is not 0/1 or a score is
/// NaN.
pub fn roc_auc(scores: &[f32], labels: &[u8]) -> Option<f64> {
    let (pos, neg) = validate(scores, labels)?;
    // Highest scores first: the negatives of a group lose to every positive seen in higher
    // groups and tie with the positives of their own group (1/2 each; counted doubled here so
    // the sum stays an integer).
    let mut twice_u: u128 = 0;
    let mut pos_above = 0u64;
    for (_, p, n) in groups(scores, labels) {
        twice_u += (p as u128) * (n as u128) + 2 * (pos_above as u128) * (n as u128);
        pos_above += p;
    }
    Some(twice_u as f64 / (2.0 * pos as f64 * neg as f64))
}

/// One point of the ROC curve: classifying `score >= threshold` as positive gives these rates.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct RocPoint {
    pub threshold: f64,
    pub fpr: f64,
    pub tpr: f64,
}

/// ROC curve points from (0, 0) (threshold +inf) to (1, 1), one per distinct score, thresholds
/// decreasing. None under the same conditions as `roc_auc`.
pub fn roc_curve(scores: &[f32], labels: &[u8]) -> Option<Vec<RocPoint>> {
    let (pos, neg) = validate(scores, labels)?;
    let mut out = vec![RocPoint {
        threshold: f64::INFINITY,
        fpr: 0.0,
        tpr: 0.0,
    }];
    let (mut tp, mut fp) = (0u64, 0u64);
    for (s, p, n) in groups(scores, labels) {
        tp += p;
        fp += n;
        out.push(RocPoint {
            threshold: s as f64,
            fpr: fp as f64 / neg as f64,
            tpr: tp as f64 / pos as f64,
        });
    }
    Some(out)
}

/// Trapezoid area under curve points (in the order given, fpr non-decreasing).
pub fn trapezoid_area(points: &[RocPoint]) -> f64 {
    points
        .windows(2)
        .map(|w| (w[1].fpr - w[0].fpr) * (w[1].tpr + w[0].tpr) * 0.5)
        .sum()
}
