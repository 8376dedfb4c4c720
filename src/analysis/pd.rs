//! Prediction difference of paper section 4 (Eq. 12): for an image with head output g(phi)
//! (class probabilities [K]) and the outputs g(phi without i) for every channel i of phi zeroed
//! ("phi without i" = channel i set to 0, DESIGN section 4), `PD_i = v^T C v` with
//! `v = g(phi) - g(phi without i)`. Larger PD = more influential neuron.

use std::cmp::Ordering;

use crate::error::{Error, Result};

/// PD of each of the M channels of one image: `g` is [K], `g_removed` is [M, K] row-major,
/// `c` is [K, K]. f64 throughout.
pub fn prediction_difference(g: &[f32], g_removed: &[f32], c: &[f64]) -> Result<Vec<f64>> {
    let k = g.len();
    let op = "prediction_difference";
    if k == 0 {
        return Err(Error::shape(op, "g has no classes"));
    }
    if c.len() != k * k {
        return Err(Error::shape(
            op,
            format!("C has {} values, expected {k} x {k}", c.len()),
        ));
    }
    if !g_removed.len().is_multiple_of(k) {
        return Err(Error::shape(
            op,
            format!(
                "g_removed has {} values, not a multiple of K = {k}",
                g_removed.len()
            ),
        ));
    }
    let mut v = vec![0.0f64; k];
    Ok(g_removed
        .chunks_exact(k)
        .map(|gi| {
            for ((vj, &a), &b) in v.iter_mut().zip(g).zip(gi) {
                *vj = a as f64 - b as f64;
            }
            // v^T C v, skipping zero entries of v (a removed channel often leaves most of the
            // K probabilities unchanged).
            let mut s = 0.0f64;
            for (r, &vr) in v.iter().enumerate() {
                if vr != 0.0 {
                    let row = &c[r * k..(r + 1) * k];
                    s += vr * row.iter().zip(&v).map(|(cr, vc)| cr * vc).sum::<f64>();
                }
            }
            s
        })
        .collect())
}

/// Batched over B images: `g` is [B, K], `g_removed` is [B, M, K]; returns [B, M] row-major.
pub fn prediction_difference_batch(
    g: &[f32],
    g_removed: &[f32],
    c: &[f64],
    k: usize,
) -> Result<Vec<f64>> {
    let op = "prediction_difference";
    if k == 0 || !g.len().is_multiple_of(k) {
        return Err(Error::shape(
            op,
            format!("g has {} values, not a multiple of K = {k}", g.len()),
        ));
    }
    let b = g.len() / k;
    if b == 0 || !g_removed.len().is_multiple_of(b * k) {
        return Err(Error::shape(
            op,
            format!(
                "g_removed has {} values, not B x M x K with B = {b}, K = {k}",
                g_removed.len()
            ),
        ));
    }
    let per = g_removed.len() / b;
    let mut out = Vec::with_capacity(g_removed.len() / k);
    for (gi, gr) in g.chunks_exact(k).zip(g_removed.chunks_exact(per)) {
        out.extend(prediction_difference(gi, gr, c)?);
    }
    Ok(out)
}

/// The `n` largest PD values as (channel, PD), largest first; equal values keep the smaller
/// channel first; NaN values rank last.
pub fn top_n(pd: &[f64], n: usize) -> Vec<(usize, f64)> {
    let mut idx: Vec<usize> = (0..pd.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (pd[a], pd[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            _ => y.partial_cmp(&x).unwrap_or(Ordering::Equal).then(a.cmp(&b)),
        }
    });
    idx.into_iter().take(n).map(|i| (i, pd[i])).collect()
}

/// Channels whose PD exceeds `threshold` (the paper's retrieval rule), largest first.
pub fn above_threshold(pd: &[f64], threshold: f64) -> Vec<(usize, f64)> {
    let mut v = top_n(pd, pd.len());
    v.retain(|&(_, p)| p > threshold);
    v
}
