//! Neuron semantics of paper section 2.2: the categorical distributions p (classes of a neuron's
//! top real images), q (original classes of its top adversarial images) and q~ (their target
//! classes), LC = p^T C p (Eq. 3), CS1 and CS2 (Eq. 4-5), and the Fig. 4 curve (CS1/CS2 averaged
//! over neurons in LC bins).
//!
//! All on host f64, batched over neurons: the quadratic forms of N neurons are one [N,K]x[K,K]
//! matrix product (`matrixmultiply::dgemm`) followed by row dot products.

use serde::Serialize;

use crate::error::{Error, Result};

/// The categorical distribution of `labels` over `k` classes (fractions summing to 1).
/// Errors on an empty list or a label >= k.
pub fn distribution(labels: &[u32], k: usize) -> Result<Vec<f64>> {
    if labels.is_empty() {
        return Err(Error::InvalidArg(
            "distribution: no labels (empty top-k set)".into(),
        ));
    }
    let mut p = vec![0.0f64; k];
    for (i, &l) in labels.iter().enumerate() {
        let slot = p.get_mut(l as usize).ok_or_else(|| {
            Error::InvalidArg(format!(
                "distribution: label {l} at position {i} is out of range for {k} classes"
            ))
        })?;
        *slot += 1.0;
    }
    let n = labels.len() as f64;
    p.iter_mut().for_each(|v| *v /= n);
    Ok(p)
}

/// Quadratic forms of row pairs: for rows p_n, q_n of `p`, `q` ([N,K] row-major) and `c` ([K,K]):
/// `pcq[n] = p_n^T C q_n`, `pcp[n] = p_n^T C p_n`, `qcq[n] = q_n^T C q_n` and
/// `cos[n] = pcq / sqrt(pcp * qcq)` (NaN when a norm is 0). This is the f64 reference of
/// `op quadform`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QuadForms {
    pub pcq: Vec<f64>,
    pub pcp: Vec<f64>,
    pub qcq: Vec<f64>,
    pub cos: Vec<f64>,
}

fn check_matrix(name: &str, v: &[f64], rows: usize, cols: usize) -> Result<()> {
    if v.len() != rows * cols {
        return Err(Error::shape(
            "quadform",
            format!(
                "{name} has {} values, expected {rows} x {cols} = {}",
                v.len(),
                rows * cols
            ),
        ));
    }
    Ok(())
}

/// `a [n,k] * c [k,k]` row-major, f64.
fn times_c(a: &[f64], c: &[f64], n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; n * k];
    if n == 0 || k == 0 {
        return out;
    }
    // SAFETY: a is n x k, c is k x k and out is n x k, all row-major with the strides given; the
    // slices' lengths were checked by the callers (check_matrix) and out was allocated here.
    unsafe {
        matrixmultiply::dgemm(
            n,
            k,
            k,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            c.as_ptr(),
            k as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            k as isize,
            1,
        );
    }
    out
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Batched quadratic forms (see `QuadForms`). `n` rows of `k` classes each.
pub fn quadforms(p: &[f64], c: &[f64], q: &[f64], n: usize, k: usize) -> Result<QuadForms> {
    check_matrix("p", p, n, k)?;
    check_matrix("q", q, n, k)?;
    check_matrix("c", c, k, k)?;
    let pc = times_c(p, c, n, k);
    let qc = times_c(q, c, n, k);
    let mut out = QuadForms {
        pcq: Vec::with_capacity(n),
        pcp: Vec::with_capacity(n),
        qcq: Vec::with_capacity(n),
        cos: Vec::with_capacity(n),
    };
    for r in 0..n {
        let row = r * k..(r + 1) * k;
        let pcq = dot(&pc[row.clone()], &q[row.clone()]);
        let pcp = dot(&pc[row.clone()], &p[row.clone()]);
        let qcq = dot(&qc[row.clone()], &q[row]);
        let den = (pcp * qcq).sqrt();
        out.pcq.push(pcq);
        out.pcp.push(pcp);
        out.qcq.push(qcq);
        out.cos.push(if den > 0.0 { pcq / den } else { f64::NAN });
    }
    Ok(out)
}

/// LC, CS1 and CS2 of one neuron.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct NeuronSemantics {
    /// p^T C p (Eq. 3).
    pub lc: f64,
    /// <p, q>_C / (|p|_C |q|_C) (Eq. 4): real vs adversarial original classes.
    pub cs1: f64,
    /// <p, q~>_C / (|p|_C |q~|_C) (Eq. 5): real vs adversarial target classes.
    pub cs2: f64,
}

/// LC, CS1, CS2 for N neurons at once: `p`, `q`, `q_tilde` are [N,K] row-major distributions.
pub fn neuron_semantics(
    p: &[f64],
    q: &[f64],
    q_tilde: &[f64],
    c: &[f64],
    n: usize,
    k: usize,
) -> Result<Vec<NeuronSemantics>> {
    let a = quadforms(p, c, q, n, k)?;
    let b = quadforms(p, c, q_tilde, n, k)?;
    Ok((0..n)
        .map(|i| NeuronSemantics {
            lc: a.pcp[i],
            cs1: a.cos[i],
            cs2: b.cos[i],
        })
        .collect())
}

/// Same, from label lists per neuron: `real[i]` true labels of neuron i's top real images,
/// `adv_orig[i]` / `adv_target[i]` original / target labels of its top adversarial images.
pub fn neuron_semantics_from_labels(
    real: &[Vec<u32>],
    adv_orig: &[Vec<u32>],
    adv_target: &[Vec<u32>],
    c: &[f64],
    k: usize,
) -> Result<Vec<NeuronSemantics>> {
    let n = real.len();
    if adv_orig.len() != n || adv_target.len() != n {
        return Err(Error::shape(
            "neuron_semantics",
            format!(
                "{} real, {} adversarial-original, {} adversarial-target label lists: must be equal",
                n,
                adv_orig.len(),
                adv_target.len()
            ),
        ));
    }
    let flat = |lists: &[Vec<u32>], what: &str| -> Result<Vec<f64>> {
        let mut v = Vec::with_capacity(n * k);
        for (i, l) in lists.iter().enumerate() {
            v.extend(
                distribution(l, k)
                    .map_err(|e| Error::InvalidArg(format!("neuron {i}, {what}: {e}")))?,
            );
        }
        Ok(v)
    };
    let p = flat(real, "real labels")?;
    let q = flat(adv_orig, "adversarial original labels")?;
    let qt = flat(adv_target, "adversarial target labels")?;
    neuron_semantics(&p, &q, &qt, c, n, k)
}

/// One bin of the Fig. 4 curve.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LcBin {
    pub lo: f64,
    pub hi: f64,
    /// Neurons whose LC fell into [lo, hi) (the last bin also takes LC == hi).
    pub count: usize,
    /// Mean CS1 / CS2 over those neurons with a finite value; None when there is none.
    pub cs1_mean: Option<f64>,
    pub cs2_mean: Option<f64>,
}

/// `bins` equal-width edges from `lo` to `hi` (bins + 1 values).
pub fn uniform_edges(lo: f64, hi: f64, bins: usize) -> Vec<f64> {
    (0..=bins)
        .map(|i| lo + (hi - lo) * i as f64 / bins.max(1) as f64)
        .collect()
}

/// Index of the bin of `x` for increasing `edges`: [e_i, e_{i+1}), last bin closed. None outside
/// or for NaN.
pub fn bin_index(edges: &[f64], x: f64) -> Option<usize> {
    let nb = edges.len().checked_sub(1)?;
    if nb == 0 || x.is_nan() || x < edges[0] || x > edges[nb] {
        return None;
    }
    // First edge strictly greater than x, minus one; x == last edge goes to the last bin.
    let i = edges.partition_point(|&e| e <= x);
    Some(i.saturating_sub(1).min(nb - 1))
}

fn check_edges(edges: &[f64]) -> Result<()> {
    if edges.len() < 2
        || edges.iter().any(|e| !e.is_finite())
        || edges.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(Error::InvalidArg(format!(
            "bin edges must be at least 2 finite, strictly increasing values, got {edges:?}"
        )));
    }
    Ok(())
}

/// Fig. 4: CS1 and CS2 averaged over the neurons whose LC falls in each bin of `edges`. Neurons
/// with LC outside the edges are not counted; NaN CS values (a zero-norm distribution) are left
/// out of the mean but the neuron still counts in `count`.
pub fn lc_curve(neurons: &[NeuronSemantics], edges: &[f64]) -> Result<Vec<LcBin>> {
    check_edges(edges)?;
    let nb = edges.len() - 1;
    let mut cnt = vec![0usize; nb];
    let mut s1 = vec![(0.0f64, 0usize); nb];
    let mut s2 = vec![(0.0f64, 0usize); nb];
    for n in neurons {
        if let Some(b) = bin_index(edges, n.lc) {
            cnt[b] += 1;
            if n.cs1.is_finite() {
                s1[b].0 += n.cs1;
                s1[b].1 += 1;
            }
            if n.cs2.is_finite() {
                s2[b].0 += n.cs2;
                s2[b].1 += 1;
            }
        }
    }
    let mean = |(s, c): (f64, usize)| if c > 0 { Some(s / c as f64) } else { None };
    Ok((0..nb)
        .map(|b| LcBin {
            lo: edges[b],
            hi: edges[b + 1],
            count: cnt[b],
            cs1_mean: mean(s1[b]),
            cs2_mean: mean(s2[b]),
        })
        .collect())
}
