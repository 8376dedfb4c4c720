//! Uncertainty for the statistics behind the paper's findings: seeded percentile-bootstrap
//! confidence intervals over the unit that varies (images or neurons), and the three-way verdict
//! a finding gets from where its interval lies against the paper's threshold.
//!
//! Every resample draws with replacement from the units by a counter-based generator keyed by
//! (seed, statistic label), so an interval is a pure function of its data, seed and label: the
//! same run gives the same bits, and two statistics never share a resample stream by accident.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// How the intervals are drawn (reported beside every interval).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct BootConfig {
    pub resamples: usize,
    /// Two-sided coverage, e.g. 0.95.
    pub level: f64,
    pub seed: u64,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            resamples: 1000,
            level: 0.95,
            seed: 0,
        }
    }
}

/// A point estimate with its percentile-bootstrap interval.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ci {
    pub est: f64,
    pub lo: f64,
    pub hi: f64,
    /// Units resampled (for two-sample statistics, the smaller sample).
    pub n: usize,
}

impl Ci {
    pub fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} [{:.d$}, {:.d$}]",
            self.est,
            self.lo,
            self.hi,
            d = digits
        )
    }
    /// The interval scaled (e.g. by 100 for percentages).
    pub fn scaled(&self, s: f64) -> Ci {
        Ci {
            est: self.est * s,
            lo: self.lo * s,
            hi: self.hi * s,
            n: self.n,
        }
    }
}

/// Which side of the threshold the paper's finding lies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side {
    Above,
    Below,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The whole interval lies on the paper's side of the threshold.
    Reproduced,
    /// The whole interval lies on the other side.
    Contradicted,
    /// The interval contains the threshold.
    Inconclusive,
    /// A statistic behind the finding was not measured (or undefined) on this run.
    NotMeasured,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Contradicted => "contradicted",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// The verdict of one interval against `threshold`. Touching the threshold is inconclusive:
/// an interval that reaches it does not exclude it.
pub fn decide(ci: Option<&Ci>, threshold: f64, side: Side) -> Verdict {
    let Some(c) = ci else {
        return Verdict::NotMeasured;
    };
    if !(c.lo.is_finite() && c.hi.is_finite()) {
        return Verdict::NotMeasured;
    }
    let (paper, other) = match side {
        Side::Above => (c.lo > threshold, c.hi < threshold),
        Side::Below => (c.hi < threshold, c.lo > threshold),
    };
    if paper {
        Verdict::Reproduced
    } else if other {
        Verdict::Contradicted
    } else {
        Verdict::Inconclusive
    }
}

/// Several verdicts that must all hold (one per model, or the parts of a two-part finding):
/// any unmeasured part leaves the whole unmeasured, any contradicted part contradicts the
/// whole, and the whole is reproduced only when every part is.
pub fn all_of(parts: &[Verdict]) -> Verdict {
    if parts.is_empty() || parts.contains(&Verdict::NotMeasured) {
        Verdict::NotMeasured
    } else if parts.contains(&Verdict::Contradicted) {
        Verdict::Contradicted
    } else if parts.iter().all(|v| *v == Verdict::Reproduced) {
        Verdict::Reproduced
    } else {
        Verdict::Inconclusive
    }
}

/// Multiplicities of one resample of `n` units (how often each unit was drawn).
fn draw_counts(rng: &mut Rng, n: usize, counts: &mut Vec<u32>) {
    counts.clear();
    counts.resize(n, 0);
    for _ in 0..n {
        counts[rng.below(n)] += 1;
    }
}

/// The `q` quantile (0..=1) of sorted values, linear between order statistics.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(&next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

fn interval(est: f64, mut reps: Vec<f64>, n: usize, cfg: &BootConfig) -> Option<Ci> {
    reps.retain(|x| x.is_finite());
    // A statistic undefined in most resamples has no trustworthy interval.
    if !est.is_finite() || reps.len() * 2 < cfg.resamples.max(1) {
        return None;
    }
    reps.sort_by(f64::total_cmp);
    let a = (1.0 - cfg.level) / 2.0;
    Some(Ci {
        est,
        lo: quantile(&reps, a),
        hi: quantile(&reps, 1.0 - a),
        n,
    })
}

/// Percentile bootstrap of a statistic of `groups` independent samples (sizes `sizes`), each
/// resampled on its own (stratified): `stat` sees one multiplicity vector per group. `label`
/// keys the resample stream.
pub fn bootstrap(
    sizes: &[usize],
    cfg: &BootConfig,
    label: &str,
    stat: &dyn Fn(&[&[u32]]) -> Option<f64>,
) -> Option<Ci> {
    if sizes.is_empty() || sizes.contains(&0) || cfg.resamples == 0 {
        return None;
    }
    let ones: Vec<Vec<u32>> = sizes.iter().map(|&n| vec![1; n]).collect();
    let est = stat(&ones.iter().map(Vec::as_slice).collect::<Vec<_>>())?;
    let mut rng = Rng::derive(cfg.seed, label_hash(label));
    let mut counts: Vec<Vec<u32>> = vec![Vec::new(); sizes.len()];
    let mut reps = Vec::with_capacity(cfg.resamples);
    for _ in 0..cfg.resamples {
        for (c, &n) in counts.iter_mut().zip(sizes) {
            draw_counts(&mut rng, n, c);
        }
        let views: Vec<&[u32]> = counts.iter().map(Vec::as_slice).collect();
        reps.push(stat(&views).unwrap_or(f64::NAN));
    }
    let n = sizes.iter().copied().min().unwrap_or(0);
    interval(est, reps, n, cfg)
}

fn label_hash(label: &str) -> u64 {
    label.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Weighted mean; None when the weights sum to zero.
pub fn wmean(x: &[f64], w: &[u32]) -> Option<f64> {
    let (mut s, mut n) = (0.0, 0u64);
    for (&v, &c) in x.iter().zip(w) {
        s += v * c as f64;
        n += c as u64;
    }
    (n > 0).then(|| s / n as f64)
}

/// Weighted Pearson correlation of pairs; None when either side has no spread.
pub fn wpearson(x: &[f64], y: &[f64], w: &[u32]) -> Option<f64> {
    let mx = wmean(x, w)?;
    let my = wmean(y, w)?;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for ((&a, &b), &c) in x.iter().zip(y).zip(w) {
        let (da, db, c) = (a - mx, b - my, c as f64);
        sxy += c * da * db;
        sxx += c * da * da;
        syy += c * db * db;
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// CI of the mean of `x` (the units' values; non-finite values must be removed by the caller).
pub fn mean_ci(x: &[f64], cfg: &BootConfig, label: &str) -> Option<Ci> {
    bootstrap(&[x.len()], cfg, label, &|w| wmean(x, w[0]))
}

/// CI of mean(after) - mean(before) over paired units (the same image in both).
pub fn paired_diff_ci(before: &[f64], after: &[f64], cfg: &BootConfig, label: &str) -> Option<Ci> {
    if before.len() != after.len() {
        return None;
    }
    bootstrap(&[before.len()], cfg, label, &|w| {
        Some(wmean(after, w[0])? - wmean(before, w[0])?)
    })
}

/// CI of mean(after) - mean(before) over independent samples (e.g. the neurons of two models).
pub fn unpaired_diff_ci(
    before: &[f64],
    after: &[f64],
    cfg: &BootConfig,
    label: &str,
) -> Option<Ci> {
    bootstrap(&[before.len(), after.len()], cfg, label, &|w| {
        Some(wmean(after, w[1])? - wmean(before, w[0])?)
    })
}

/// CI of the Pearson correlation over paired units (neurons).
pub fn pearson_ci(x: &[f64], y: &[f64], cfg: &BootConfig, label: &str) -> Option<Ci> {
    if x.len() != y.len() || x.len() < 3 {
        return None;
    }
    bootstrap(&[x.len()], cfg, label, &|w| wpearson(x, y, w[0]))
}

/// The pooled scores sorted once (highest first), so each resample's AUC is one weighted pass.
struct Ranked {
    /// (score, is_positive, index within its own sample), highest score first.
    items: Vec<(f32, bool, usize)>,
}

impl Ranked {
    fn new(pos: &[f32], neg: &[f32]) -> Ranked {
        let mut items: Vec<(f32, bool, usize)> = pos
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, true, i))
            .chain(neg.iter().enumerate().map(|(i, &s)| (s, false, i)))
            .collect();
        items.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ranked { items }
    }

    /// Mann-Whitney AUC with multiplicities: P(pos > neg) + P(tie) / 2.
    fn auc(&self, wp: &[u32], wn: &[u32]) -> Option<f64> {
        let (mut above, mut twice_u, mut np, mut nn) = (0f64, 0f64, 0f64, 0f64);
        let mut i = 0;
        while i < self.items.len() {
            let s = self.items[i].0;
            let (mut gp, mut gn) = (0f64, 0f64);
            while i < self.items.len() && self.items[i].0 == s {
                let (_, p, k) = self.items[i];
                if p {
                    gp += wp[k] as f64;
                } else {
                    gn += wn[k] as f64;
                }
                i += 1;
            }
            twice_u += gp * gn + 2.0 * above * gn;
            above += gp;
            np += gp;
            nn += gn;
        }
        (np > 0.0 && nn > 0.0).then(|| twice_u / (2.0 * np * nn))
    }
}

/// CI of the ROC AUC (positives = real images), resampling positives and negatives separately.
pub fn auc_ci(pos: &[f32], neg: &[f32], cfg: &BootConfig, label: &str) -> Option<Ci> {
    if pos.iter().chain(neg).any(|s| s.is_nan()) {
        return None;
    }
    let r = Ranked::new(pos, neg);
    bootstrap(&[pos.len(), neg.len()], cfg, label, &|w| r.auc(w[0], w[1]))
}

/// Hit flags as 0/1 values, for the mean (accuracy) and difference intervals.
pub fn flags(bits: &[bool]) -> Vec<f64> {
    bits.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect()
}

/// Bits as a compact "0101" string (the units file), and back.
pub fn bits_to_string(bits: &[bool]) -> String {
    bits.iter().map(|&b| if b { '1' } else { '0' }).collect()
}

pub fn bits_from_str(s: &str) -> Option<Vec<bool>> {
    s.chars()
        .map(|c| match c {
            '1' => Some(true),
            '0' => Some(false),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> BootConfig {
        BootConfig {
            resamples: 400,
            level: 0.95,
            seed,
        }
    }

    #[test]
    fn mean_interval_covers_a_known_mean_at_about_its_level() {
        // 200 samples of 60 draws from N(3, 2^2): a 95% interval should cover 3 in roughly 95%
        // of them. The percentile bootstrap under-covers a little at n = 60 (about 93-94%);
        // 0.88..=0.99 holds with probability > 0.999 for a true coverage in 0.92..0.96.
        let mut g = Rng::new(7);
        let trials = 200;
        let mut covered = 0;
        for t in 0..trials {
            let x: Vec<f64> = (0..60).map(|_| 3.0 + 2.0 * g.normal()).collect();
            let c = mean_ci(&x, &cfg(t), "m").unwrap();
            assert!(c.lo <= c.est && c.est <= c.hi);
            if c.lo <= 3.0 && 3.0 <= c.hi {
                covered += 1;
            }
        }
        let cov = covered as f64 / trials as f64;
        assert!((0.88..=0.99).contains(&cov), "coverage {cov}");
    }

    #[test]
    fn interval_width_shrinks_like_one_over_root_n() {
        let mut g = Rng::new(1);
        let w = |n: usize, g: &mut Rng| {
            let x: Vec<f64> = (0..n).map(|_| g.normal()).collect();
            let c = mean_ci(&x, &cfg(3), "w").unwrap();
            c.hi - c.lo
        };
        let (a, b) = (w(100, &mut g), w(1600, &mut g));
        // sqrt(16) = 4; 95% half-width ~ 1.96/sqrt(n).
        assert!((3.0..5.5).contains(&(a / b)), "{a} / {b}");
        assert!((a - 2.0 * 1.96 / 10.0).abs() < 0.1, "width at n=100: {a}");
    }

    #[test]
    fn same_seed_same_bits_and_labels_separate_streams() {
        let x: Vec<f64> = (0..50).map(|i| (i as f64 * 0.37).sin()).collect();
        let a = mean_ci(&x, &cfg(5), "a").unwrap();
        assert_eq!(a, mean_ci(&x, &cfg(5), "a").unwrap());
        assert_ne!(a, mean_ci(&x, &cfg(5), "b").unwrap());
        assert_ne!(a, mean_ci(&x, &cfg(6), "a").unwrap());
    }

    #[test]
    fn weighted_auc_matches_the_plain_auc_on_expanded_samples() {
        let pos = [0.9f32, 0.4, 0.4, 0.7, 0.1];
        let neg = [0.3f32, 0.4, 0.8, 0.05];
        let (wp, wn) = ([2u32, 0, 1, 3, 1], [1u32, 2, 0, 4]);
        let expand = |s: &[f32], w: &[u32]| -> Vec<f32> {
            s.iter()
                .zip(w)
                .flat_map(|(&v, &c)| std::iter::repeat_n(v, c as usize))
                .collect()
        };
        let (ep, en) = (expand(&pos, &wp), expand(&neg, &wn));
        let scores: Vec<f32> = ep.iter().chain(&en).copied().collect();
        let labels: Vec<u8> = ep.iter().map(|_| 1).chain(en.iter().map(|_| 0)).collect();
        let want = crate::analysis::roc::roc_auc(&scores, &labels).unwrap();
        let got = Ranked::new(&pos, &neg).auc(&wp, &wn).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // A resample that drew no positives, or no negatives, has no AUC.
        let r = Ranked::new(&pos, &neg);
        assert_eq!(r.auc(&[0; 5], &wn), None);
        assert_eq!(r.auc(&wp, &[0; 4]), None);
    }

    #[test]
    fn auc_interval_separates_separable_and_overlapping_scores() {
        let mut g = Rng::new(11);
        let pos: Vec<f32> = (0..300).map(|_| (g.normal() + 2.0) as f32).collect();
        let neg: Vec<f32> = (0..300).map(|_| g.normal() as f32).collect();
        let c = auc_ci(&pos, &neg, &cfg(1), "auc").unwrap();
        // AUC of N(2,1) vs N(0,1) is Phi(2/sqrt 2) = 0.921.
        assert!(c.lo < 0.921 && 0.921 < c.hi, "{c:?}");
        assert_eq!(decide(Some(&c), 0.6, Side::Above), Verdict::Reproduced);
        let same: Vec<f32> = (0..300).map(|_| g.normal() as f32).collect();
        let c = auc_ci(&same, &neg, &cfg(1), "auc").unwrap();
        assert_eq!(
            decide(Some(&c), 0.5, Side::Above),
            Verdict::Inconclusive,
            "{c:?}"
        );
    }

    #[test]
    fn pearson_interval_covers_the_population_correlation() {
        let mut g = Rng::new(4);
        let x: Vec<f64> = (0..400).map(|_| g.normal()).collect();
        // y = -0.6 x + 0.8 e: corr = -0.6.
        let y: Vec<f64> = x.iter().map(|&a| -0.6 * a + 0.8 * g.normal()).collect();
        let c = pearson_ci(&x, &y, &cfg(2), "r").unwrap();
        assert!(c.lo < -0.6 && -0.6 < c.hi, "{c:?}");
        assert!(c.hi < -0.45 && c.lo > -0.75, "{c:?}");
    }

    #[test]
    fn paired_difference_is_tighter_than_unpaired_on_correlated_units() {
        let mut g = Rng::new(9);
        let b: Vec<f64> = (0..200).map(|_| 5.0 * g.normal()).collect();
        let a: Vec<f64> = b.iter().map(|&v| v + 0.3 + 0.1 * g.normal()).collect();
        let p = paired_diff_ci(&b, &a, &cfg(1), "d").unwrap();
        let u = unpaired_diff_ci(&b, &a, &cfg(1), "d").unwrap();
        assert!((p.est - u.est).abs() < 1e-12);
        assert!(p.lo > 0.25 && p.hi < 0.35, "{p:?}");
        assert!(u.hi - u.lo > 10.0 * (p.hi - p.lo), "{u:?} vs {p:?}");
        assert_eq!(decide(Some(&p), 0.0, Side::Above), Verdict::Reproduced);
        assert_eq!(decide(Some(&u), 0.0, Side::Above), Verdict::Inconclusive);
    }

    /// An interval [lo, hi] around its midpoint, for the verdict tests.
    fn ci(lo: f64, hi: f64) -> Ci {
        Ci {
            est: (lo + hi) / 2.0,
            lo,
            hi,
            n: 10,
        }
    }

    #[test]
    fn verdicts_on_constructed_intervals() {
        assert_eq!(
            decide(Some(&ci(1.1, 1.3)), 1.0, Side::Above),
            Verdict::Reproduced
        );
        assert_eq!(
            decide(Some(&ci(0.7, 0.9)), 1.0, Side::Above),
            Verdict::Contradicted
        );
        assert_eq!(
            decide(Some(&ci(0.9, 1.1)), 1.0, Side::Above),
            Verdict::Inconclusive
        );
        assert_eq!(
            decide(Some(&ci(1.0, 1.2)), 1.0, Side::Above),
            Verdict::Inconclusive
        );
        assert_eq!(
            decide(Some(&ci(0.7, 0.9)), 1.0, Side::Below),
            Verdict::Reproduced
        );
        assert_eq!(
            decide(Some(&ci(1.1, 1.3)), 1.0, Side::Below),
            Verdict::Contradicted
        );
        assert_eq!(
            decide(Some(&ci(0.8, 1.0)), 1.0, Side::Below),
            Verdict::Inconclusive
        );
        assert_eq!(decide(None, 1.0, Side::Below), Verdict::NotMeasured);
        assert_eq!(
            decide(Some(&ci(f64::NAN, 1.0)), 1.0, Side::Below),
            Verdict::NotMeasured
        );
        use Verdict::*;
        assert_eq!(all_of(&[Reproduced, Reproduced]), Reproduced);
        assert_eq!(all_of(&[Reproduced, Inconclusive]), Inconclusive);
        assert_eq!(
            all_of(&[Inconclusive, Contradicted, Reproduced]),
            Contradicted
        );
        assert_eq!(all_of(&[Contradicted, NotMeasured]), NotMeasured);
        assert_eq!(all_of(&[]), NotMeasured);
    }

    #[test]
    fn an_interval_touching_the_threshold_from_either_side_is_inconclusive() {
        // The other side's bound touching the threshold does not exclude it either.
        assert_eq!(
            decide(Some(&ci(0.8, 1.0)), 1.0, Side::Above),
            Verdict::Inconclusive
        );
        assert_eq!(
            decide(Some(&ci(1.0, 1.2)), 1.0, Side::Below),
            Verdict::Inconclusive
        );
        assert_eq!(
            decide(Some(&ci(f64::NEG_INFINITY, 0.5)), 1.0, Side::Above),
            Verdict::NotMeasured
        );
        assert_eq!(
            decide(Some(&ci(0.5, f64::INFINITY)), 1.0, Side::Above),
            Verdict::NotMeasured
        );
    }

    #[test]
    fn scaled_intervals_and_verdict_labels() {
        let c = Ci {
            est: 0.25,
            lo: 0.125,
            hi: 0.5,
            n: 7,
        };
        let p = c.scaled(100.0);
        assert_eq!((p.est, p.lo, p.hi, p.n), (25.0, 12.5, 50.0, 7));
        assert_eq!(c.show(3), "0.250 [0.125, 0.500]");
        let labels: Vec<&str> = [
            Verdict::Reproduced,
            Verdict::Contradicted,
            Verdict::Inconclusive,
            Verdict::NotMeasured,
        ]
        .iter()
        .map(|v| v.label())
        .collect();
        assert_eq!(
            labels,
            ["reproduced", "contradicted", "inconclusive", "not measured"]
        );
    }

    /// A statistic whose full-sample value is `est` and whose first `bad` resamples are NaN.
    fn counted(r: usize, est: f64, bad: usize) -> Option<Ci> {
        let calls = std::cell::Cell::new(0usize);
        let c = BootConfig {
            resamples: r,
            level: 0.9,
            seed: 1,
        };
        bootstrap(&[5], &c, "counted", &|w| {
            let i = calls.get();
            calls.set(i + 1);
            Some(match i {
                0 => est,
                i if i <= bad => f64::NAN,
                _ => wmean(&[1.0, 2.0, 3.0, 4.0, 5.0], w[0])?,
            })
        })
    }

    #[test]
    fn an_interval_needs_a_finite_estimate_and_half_the_resamples_finite() {
        assert!(counted(100, 3.0, 0).is_some());
        assert!(
            counted(100, 3.0, 50).is_some(),
            "exactly half finite is enough"
        );
        assert!(counted(100, 3.0, 51).is_none(), "49 of 100 finite");
        assert!(counted(100, 3.0, 60).is_none());
        assert!(counted(100, f64::INFINITY, 0).is_none());
        assert!(counted(100, f64::NAN, 0).is_none());
        let c = counted(100, 3.0, 50).unwrap();
        assert!(c.lo >= 1.0 && c.hi <= 5.0 && c.lo < c.hi, "{c:?}");
    }

    #[test]
    fn bootstrap_refuses_no_groups_an_empty_group_and_no_resamples() {
        let one = |_: &[&[u32]]| Some(1.0);
        assert!(bootstrap(&[4], &cfg(0), "b", &one).is_some());
        assert!(bootstrap(&[], &cfg(0), "b", &one).is_none());
        assert!(bootstrap(&[3, 0], &cfg(0), "b", &one).is_none());
        assert!(bootstrap(&[0, 3], &cfg(0), "b", &one).is_none());
        let none = BootConfig {
            resamples: 0,
            ..cfg(0)
        };
        assert!(bootstrap(&[4], &none, "b", &one).is_none());
    }

    #[test]
    fn resample_streams_are_keyed_by_the_fnv1a_hash_of_the_label() {
        // FNV-1a 64: the published offset basis and prime; "a" is the reference test vector.
        assert_eq!(label_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(label_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(label_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    /// Pearson of the expanded sample (each pair repeated by its weight), two-pass.
    fn pearson_expanded(x: &[f64], y: &[f64], w: &[u32]) -> f64 {
        let (mut ex, mut ey) = (Vec::new(), Vec::new());
        for ((&a, &b), &c) in x.iter().zip(y).zip(w) {
            for _ in 0..c {
                ex.push(a);
                ey.push(b);
            }
        }
        let n = ex.len() as f64;
        let (mx, my) = (ex.iter().sum::<f64>() / n, ey.iter().sum::<f64>() / n);
        let sxy: f64 = ex.iter().zip(&ey).map(|(a, b)| (a - mx) * (b - my)).sum();
        let sxx: f64 = ex.iter().map(|a| (a - mx) * (a - mx)).sum();
        let syy: f64 = ey.iter().map(|b| (b - my) * (b - my)).sum();
        sxy / (sxx * syy).sqrt()
    }

    #[test]
    fn weighted_moments_match_the_expanded_sample_far_from_the_origin() {
        let mut g = Rng::new(21);
        let x: Vec<f64> = (0..37).map(|_| 50.0 + 3.0 * g.normal()).collect();
        let y: Vec<f64> = x.iter().map(|&a| -20.0 + 0.5 * a + g.normal()).collect();
        let w: Vec<u32> = (0..37).map(|i| [0u32, 1, 2, 5][i % 4]).collect();
        let want = pearson_expanded(&x, &y, &w);
        let got = wpearson(&x, &y, &w).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!(want > 0.5 && want < 0.95, "{want}");
        let n: u32 = w.iter().sum();
        let mean = x.iter().zip(&w).map(|(a, &c)| a * c as f64).sum::<f64>() / n as f64;
        assert!((wmean(&x, &w).unwrap() - mean).abs() < 1e-12);
        // No weight, or no spread on either side: undefined.
        assert_eq!(wmean(&[1.0, 2.0], &[0, 0]), None);
        assert_eq!(wpearson(&[1.0, 2.0], &[3.0, 4.0], &[0, 0]), None);
        assert_eq!(
            wpearson(&[1.0, 1.0, 1.0], &[3.0, 4.0, 6.0], &[1, 1, 1]),
            None
        );
        assert_eq!(
            wpearson(&[1.0, 2.0, 3.0], &[5.0, 5.0, 5.0], &[1, 1, 1]),
            None
        );
        assert_eq!(
            wpearson(&[1.0, 2.0, 3.0], &[3.0, 4.0, 6.0], &[0, 2, 0]),
            None
        );
    }

    #[test]
    fn pearson_interval_needs_three_pairs_of_equal_length() {
        let x = [1.0, 2.0, 3.0, 5.0, 4.0];
        let y = [2.0, 1.0, 4.0, 6.0, 5.0];
        assert!(pearson_ci(&x, &y, &cfg(0), "r").is_some());
        assert!(pearson_ci(&x[..3], &y[..3], &cfg(0), "r").is_some());
        assert!(pearson_ci(&x[..2], &y[..2], &cfg(0), "r").is_none());
        assert!(pearson_ci(&x, &y[..4], &cfg(0), "r").is_none());
        assert!(pearson_ci(&x[..4], &y, &cfg(0), "r").is_none());
    }

    #[test]
    fn quantiles_and_bits_round_trip() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&s, 0.0), 1.0);
        assert_eq!(quantile(&s, 1.0), 5.0);
        assert_eq!(quantile(&s, 0.5), 3.0);
        assert!((quantile(&s, 0.1) - 1.4).abs() < 1e-12);
        let b = vec![true, false, false, true];
        assert_eq!(bits_to_string(&b), "1001");
        assert_eq!(bits_from_str("1001"), Some(b));
        assert_eq!(bits_from_str("10x1"), None);
        assert_eq!(flags(&[true, false, false, true]), [1.0, 0.0, 0.0, 1.0]);
        assert_eq!(flags(&[]), Vec::<f64>::new());
    }
}
