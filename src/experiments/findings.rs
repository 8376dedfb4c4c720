//! The paper's ten findings decided on this run's units with confidence intervals
//! (analysis::stats): each model's statistic gets a seeded bootstrap interval over the images or
//! neurons it was computed from, a verdict from where that interval lies against the finding's
//! threshold, and the finding's verdict is the conjunction over models (and over the two parts
//! of a two-part finding), as `stats::all_of` defines it.
//!
//! The units come from the stages' `units` objects: top-1 hit strings per evaluation, per-image
//! r1/r2, per-neuron LC/CS1/CS2 and the detector's per-image scores.

use serde_json::{json, Value};

use crate::analysis::stats::{
    all_of, auc_ci, bits_from_str, decide, flags, mean_ci, paired_diff_ci, pearson_ci,
    unpaired_diff_ci, BootConfig, Ci, Side, Verdict,
};

/// One model's part of a finding.
struct Part {
    model: String,
    /// What the interval is of ("mean r1", "after - before top-1 (points)").
    what: String,
    ci: Option<Ci>,
    threshold: f64,
    side: Side,
    /// Shown scale (100 for accuracies) and digits.
    scale: f64,
    digits: usize,
    /// The paper's number for this model, where it has one.
    paper: Option<f64>,
}

impl Part {
    fn verdict(&self) -> Verdict {
        decide(self.ci.as_ref(), self.threshold, self.side)
    }

    fn to_json(&self) -> Value {
        json!({ "model": self.model, "statistic": self.what, "ci": self.ci,
            "threshold": self.threshold,
            "paper_side": match self.side { Side::Above => "above", Side::Below => "below" },
            "paper": self.paper, "verdict": self.verdict(),
            "scale": self.scale, "digits": self.digits })
    }

    fn show(&self) -> String {
        let ci = show_ci(self.ci.as_ref(), self.scale, self.digits);
        let paper = self.paper.map_or(String::new(), |p| format!(", paper {p}"));
        format!("{} {} {ci}{paper}", self.model, self.what)
    }
}

/// An interval as the reports show it: scaled (100 for accuracies, shown in points) and rounded.
pub fn show_ci(ci: Option<&Ci>, scale: f64, digits: usize) -> String {
    ci.map_or("n/a".into(), |c| c.scaled(scale).show(digits))
}

/// The display rule a part's JSON carries (`scale`, `digits`; 1 and 3 when absent).
pub fn display_of(part: &Value) -> (f64, usize) {
    let scale = part["scale"].as_f64().unwrap_or(1.0);
    let digits = part["digits"].as_u64().map_or(3, |d| d as usize);
    (scale, digits)
}

/// Everything the findings read, by model position.
pub struct Inputs<'a> {
    pub names: &'a [String],
    pub e1: &'a [Value],
    pub e6: &'a [Value],
    pub before: &'a [Value],
    pub after: &'a [Value],
    pub paper: &'a Value,
    pub boot: BootConfig,
}

fn f64s(v: &Value) -> Option<Vec<Option<f64>>> {
    v.as_array().map(|a| {
        a.iter()
            .map(|x| x.as_f64().filter(|f| f.is_finite()))
            .collect()
    })
}

fn f32s(v: &Value) -> Option<Vec<f32>> {
    v.as_array().map(|a| {
        a.iter()
            .map(|x| x.as_f64().map_or(f32::NAN, |f| f as f32))
            .collect()
    })
}

fn hits(v: &Value) -> Option<Vec<f64>> {
    v.as_str().and_then(bits_from_str).map(|b| flags(&b))
}

fn defined(v: &[Option<f64>]) -> Vec<f64> {
    v.iter().flatten().copied().collect()
}

/// Pairs defined on both sides (the same adversarial image before and after).
fn both(a: &[Option<f64>], b: &[Option<f64>]) -> Option<(Vec<f64>, Vec<f64>)> {
    if a.len() != b.len() {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
            .unzip(),
    )
}

/// Per-neuron (LC, CS) pairs where the CS is defined.
fn lc_cs(e3: &Value, cs: &str) -> Option<(Vec<f64>, Vec<f64>)> {
    let u = &e3["units"];
    let lc = f64s(&u["lc"])?;
    let c = f64s(&u[cs])?;
    both(&lc, &c)
}

/// Difference of two accuracies over the same images when their hit strings line up, otherwise
/// over independent samples.
fn acc_diff(b: Option<Vec<f64>>, a: Option<Vec<f64>>, cfg: &BootConfig, label: &str) -> Option<Ci> {
    let (b, a) = (b?, a?);
    if a.len() == b.len() {
        paired_diff_ci(&b, &a, cfg, label)
    } else {
        unpaired_diff_ci(&b, &a, cfg, label)
    }
}

/// FGS top-1 hits at `eps` of a stage's E7 result.
fn fgs_hits(e7: &Value, eps: f64) -> Option<Vec<f64>> {
    let u = &e7["units"];
    let i = u["eps"]
        .as_array()?
        .iter()
        .position(|e| e.as_f64().is_some_and(|x| (x - eps).abs() < 1e-6))?;
    hits(&u["top1"][i])
}

impl Inputs<'_> {
    fn part(&self, i: usize, what: &str, ci: Option<Ci>, thr: f64, side: Side) -> Part {
        Part {
            model: self.names[i].clone(),
            what: what.into(),
            ci,
            threshold: thr,
            side,
            scale: 1.0,
            digits: 3,
            paper: None,
        }
    }

    fn label(&self, id: &str, i: usize) -> String {
        format!("{id}/{}", self.names[i])
    }

    fn paper_at(&self, key: &[&str], i: usize) -> Option<f64> {
        let mut v = self.paper;
        for k in key {
            v = &v[*k];
        }
        v[i].as_f64()
    }

    fn ratio(&self, list: &[Value], i: usize, r: &str) -> Option<Vec<Option<f64>>> {
        f64s(&list.get(i)?["e4"]["units"][r])
    }

    /// Model `i`'s ratio `r` before and after, over the adversarial images defined in both.
    fn ratio_pairs(&self, i: usize, r: &str) -> Option<(Vec<f64>, Vec<f64>)> {
        let (b, a) = (
            self.ratio(self.before, i, r)?,
            self.ratio(self.after, i, r)?,
        );
        both(&b, &a)
    }

    fn mean_ratio(&self, id: &str, r: &str, thr_side: Side) -> Vec<Part> {
        (0..self.names.len())
            .map(|i| {
                let ci = self
                    .ratio(self.before, i, r)
                    .and_then(|v| mean_ci(&defined(&v), &self.boot, &self.label(id, i)));
                let mut p = self.part(i, &format!("mean {r}"), ci, 1.0, thr_side);
                p.paper = self.paper_at(&[&format!("mean_{r}"), "before"], i);
                p
            })
            .collect()
    }

    fn corr_parts(&self) -> Vec<Part> {
        let mut parts = Vec::new();
        for i in 0..self.names.len() {
            let e3 = self.before.get(i).map(|m| &m["e3"]);
            for (cs, side) in [("cs1", Side::Below), ("cs2", Side::Above)] {
                let ci = e3.and_then(|e| lc_cs(e, cs)).and_then(|(x, y)| {
                    pearson_ci(&x, &y, &self.boot, &self.label(&format!("corr-{cs}"), i))
                });
                let what = format!("corr(LC, {}) over neurons", cs.to_uppercase());
                parts.push(self.part(i, &what, ci, 0.0, side));
            }
        }
        parts
    }

    fn auc_parts(&self) -> Vec<Part> {
        (0..self.names.len())
            .map(|i| {
                let u = self.before.get(i).map(|m| &m["e5"]["units"]);
                let ci = u.and_then(|u| {
                    let (p, n) = (f32s(&u["real"])?, f32s(&u["adv"])?);
                    auc_ci(&p, &n, &self.boot, &self.label("auc", i))
                });
                let mut p = self.part(i, "AUC", ci, 0.6, Side::Above);
                p.paper = self.paper_at(&["auc"], i);
                p
            })
            .collect()
    }

    /// |mean r1 before - 1| - |mean r1 after - 1| over the images defined in both.
    fn r1_toward_one(&self) -> Vec<Part> {
        (0..self.names.len())
            .map(|i| {
                let pairs = self.ratio_pairs(i, "r1");
                let ci = pairs.and_then(|(b, a)| {
                    crate::analysis::stats::bootstrap(
                        &[b.len()],
                        &self.boot,
                        &self.label("r1~1", i),
                        &|w| {
                            let mb = crate::analysis::stats::wmean(&b, w[0])?;
                            let ma = crate::analysis::stats::wmean(&a, w[0])?;
                            Some((mb - 1.0).abs() - (ma - 1.0).abs())
                        },
                    )
                });
                let what = "distance of mean r1 from 1, before minus after";
                self.part(i, what, ci, 0.0, Side::Above)
            })
            .collect()
    }

    fn r2_rises(&self) -> Vec<Part> {
        (0..self.names.len())
            .map(|i| {
                let pairs = self.ratio_pairs(i, "r2");
                let ci = pairs
                    .and_then(|(b, a)| paired_diff_ci(&b, &a, &self.boot, &self.label("r2", i)));
                self.part(i, "mean r2 after - before", ci, 0.0, Side::Above)
            })
            .collect()
    }

    fn cs1_rises(&self) -> Vec<Part> {
        let cs1 = |list: &[Value], i: usize| -> Option<Vec<f64>> {
            Some(defined(&f64s(&list.get(i)?["e3"]["units"]["cs1"])?))
        };
        (0..self.names.len())
            .map(|i| {
                let ci = cs1(self.before, i)
                    .zip(cs1(self.after, i))
                    .and_then(|(b, a)| unpaired_diff_ci(&b, &a, &self.boot, &self.label("cs1", i)));
                self.part(i, "mean CS1 after - before", ci, 0.0, Side::Above)
            })
            .collect()
    }

    fn pct_part(&self, i: usize, what: &str, ci: Option<Ci>, thr: f64, side: Side) -> Part {
        let mut p = self.part(i, what, ci, thr, side);
        p.scale = 100.0;
        p.digits = 2;
        p
    }

    fn validadv_rises(&self) -> Vec<Part> {
        let h = |list: &[Value], i: usize| hits(&list.get(i)?["valid_adv"]["units"]["top1"]);
        (0..self.names.len())
            .map(|i| {
                let ci = acc_diff(
                    h(self.before, i),
                    h(self.after, i),
                    &self.boot,
                    &self.label("va", i),
                );
                self.pct_part(
                    i,
                    "Valid-Adv top-1 after - before (points)",
                    ci,
                    0.0,
                    Side::Above,
                )
            })
            .collect()
    }

    fn fgs_rises(&self) -> Vec<Part> {
        let mut parts = Vec::new();
        for i in 0..self.names.len() {
            for eps in [1.0, 5.0] {
                let h = |list: &[Value]| fgs_hits(&list.get(i)?["e7"], eps);
                let ci = acc_diff(
                    h(self.before),
                    h(self.after),
                    &self.boot,
                    &self.label(&format!("fgs{eps}"), i),
                );
                let what = format!("FGS eps {eps} top-1 after - before (points)");
                parts.push(self.pct_part(i, &what, ci, 0.0, Side::Above));
            }
        }
        parts
    }

    fn small_cost(&self) -> Vec<Part> {
        let h = |r: Option<&Value>| hits(&r?["units"]["valid_top1"]);
        (0..self.names.len())
            .map(|i| {
                // Cost = before - after; the paper's side is a cost below 5 points.
                let ci = acc_diff(
                    h(self.e6.get(i)),
                    h(self.e1.get(i)),
                    &self.boot,
                    &self.label("cost", i),
                );
                self.pct_part(
                    i,
                    "clean top-1 cost, before - after (points)",
                    ci,
                    0.05,
                    Side::Below,
                )
            })
            .collect()
    }
}

fn finding(id: &str, statement: &str, parts: Vec<Part>) -> Value {
    let verdicts: Vec<Verdict> = parts.iter().map(Part::verdict).collect();
    let v = all_of(&verdicts);
    let evidence = parts.iter().map(Part::show).collect::<Vec<_>>().join("; ");
    json!({ "id": id, "statement": statement, "verdict": v,
        "reproduced": match v { Verdict::Reproduced => Some(true), Verdict::Contradicted => Some(false), _ => None },
        "parts": parts.iter().map(Part::to_json).collect::<Vec<_>>(), "evidence": evidence })
}

/// The ten findings (DESIGN.md section 4, last paragraph), each with its parts' intervals.
pub fn findings(inp: &Inputs) -> Vec<Value> {
    let mut all = vec![
        finding("r1>1", "before adversarial training, mean r1 > 1 (adversarial representations are far from their original class)", inp.mean_ratio("r1", "r1", Side::Above)),
        finding("r2<1", "before adversarial training, mean r2 < 1 (adversarial representations are close to the target class)", inp.mean_ratio("r2", "r2", Side::Below)),
        finding("cs-vs-lc", "before adversarial training, CS1 falls and CS2 rises with LC (Fig. 4): corr(LC, CS1) < 0 and corr(LC, CS2) > 0", inp.corr_parts()),
        finding("auc", "detection AUC is well above 0.5 (taken here as > 0.6)", inp.auc_parts()),
    ];
    all.extend(e6_findings(inp));
    all
}

/// The six findings that read the fine-tuned models (`variants::E6_FINDINGS`, in that order):
/// the only ones an E6 variant can change, so the variants decide only these.
pub fn e6_findings(inp: &Inputs) -> Vec<Value> {
    vec![
        finding("r1~1", "after adversarial training, mean r1 moves toward 1", inp.r1_toward_one()),
        finding("r2-rises", "after adversarial training, mean r2 rises toward 1", inp.r2_rises()),
        finding("cs1-high", "after adversarial training, CS1 stays high (mean CS1 above its value before)", inp.cs1_rises()),
        finding("validadv-rises", "accuracy on the adversarial set rises after adversarial training (Table 1)", inp.validadv_rises()),
        finding("fgs-rises", "FGS robustness rises after adversarial training at eps 1 and 5 (Table 2)", inp.fgs_rises()),
        finding("small-cost", "the clean-accuracy cost of adversarial training is small (taken here as under 5 points of top-1; paper: 1-4 points top-5)", inp.small_cost()),
    ]
}
