//! `reproduce --seeds 0,1,2`: the whole pipeline once per seed (OUT/seed-N, each a complete run
//! with its own report), sharing what does not depend on the seed (the imported data in
//! OUT/data), then one report over the seeds.
//!
//! How seeds combine. A seed changes everything downstream of it (initialisation, batch order,
//! the adversarial set, the mined neurons), so the spread of one statistic's estimates across
//! seeds already holds both the training variance and the within-run sampling noise. The
//! combined interval is therefore mean ± t(0.975, S-1) · sd / sqrt(S) over the S seeds' estimates,
//! never narrower than the within-run intervals pooled (mean ± z · sqrt(mean(se²) / S), with
//! each run's se read off its bootstrap interval as (hi - lo) / (2 z)). The verdict of a finding
//! comes from these combined intervals with the same rules as a single run (stats::decide,
//! stats::all_of). With one seed the within-run interval is all there is.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::analysis::stats::{all_of, decide, Ci, Side, Verdict};
use crate::backend::Backend;
use crate::error::{Error, Result};

use super::findings::{display_of, show_ci};
use super::reproduce::{reproduce, ReproduceConfig};

/// Parse `--seeds 0,1,2`: distinct non-negative integers, at most 32.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let v: u64 = part.parse().map_err(|_| {
            Error::InvalidArg(format!("--seeds: '{part}' is not a non-negative integer"))
        })?;
        if out.contains(&v) {
            return Err(Error::InvalidArg(format!("--seeds: seed {v} given twice")));
        }
        out.push(v);
    }
    if out.is_empty() || out.len() > 32 {
        return Err(Error::InvalidArg(format!(
            "--seeds: give 1 to 32 seeds, got {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Two-sided 95% Student t quantile for `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T.get(df.wrapping_sub(1)).copied().unwrap_or(1.96)
}

const Z975: f64 = 1.959_964;

/// The combined interval of one statistic from its per-seed intervals (module doc).
pub fn combine(per_seed: &[Ci]) -> Option<Ci> {
    let s = per_seed.len();
    if s == 0 {
        return None;
    }
    if s == 1 {
        return Some(per_seed[0]);
    }
    let sf = s as f64;
    let mean = per_seed.iter().map(|c| c.est).sum::<f64>() / sf;
    let var = per_seed.iter().map(|c| (c.est - mean).powi(2)).sum::<f64>() / (sf - 1.0);
    let between = t975(s - 1) * (var / sf).sqrt();
    let ms2 = per_seed
        .iter()
        .map(|c| ((c.hi - c.lo) / (2.0 * Z975)).powi(2))
        .sum::<f64>()
        / sf;
    let within = Z975 * (ms2 / sf).sqrt();
    let half = between.max(within);
    Some(Ci {
        est: mean,
        lo: mean - half,
        hi: mean + half,
        n: per_seed.iter().map(|c| c.n).sum(),
    })
}

fn side_of(p: &Value) -> Side {
    if p["paper_side"].as_str() == Some("below") {
        Side::Below
    } else {
        Side::Above
    }
}

fn ci_of(v: &Value) -> Option<Ci> {
    serde_json::from_value(v.clone()).ok()
}

/// One combined part: the same model and statistic across the seeds' findings.
fn combine_part(parts: &[&Value]) -> Value {
    let first = parts[0];
    let cis: Vec<Option<Ci>> = parts.iter().map(|p| ci_of(&p["ci"])).collect();
    let all: Option<Vec<Ci>> = cis.iter().copied().collect();
    let combined = all.as_deref().and_then(combine);
    let ests: Vec<f64> = cis.iter().flatten().map(|c| c.est).collect();
    let sd = (ests.len() > 1).then(|| {
        let m = ests.iter().sum::<f64>() / ests.len() as f64;
        (ests.iter().map(|e| (e - m).powi(2)).sum::<f64>() / (ests.len() - 1) as f64).sqrt()
    });
    let thr = first["threshold"].as_f64().unwrap_or(0.0);
    let v = decide(combined.as_ref(), thr, side_of(first));
    json!({ "model": first["model"], "statistic": first["statistic"], "threshold": thr,
        "paper_side": first["paper_side"], "paper": first["paper"], "per_seed": cis,
        "seed_sd": sd, "ci": combined, "verdict": v,
        "scale": first["scale"], "digits": first["digits"] })
}

/// The findings of several runs (same profile, different seeds) combined part by part.
pub fn combine_findings(runs: &[Value]) -> Result<Vec<Value>> {
    let lists: Vec<&Vec<Value>> = runs
        .iter()
        .map(|r| r["findings"].as_array())
        .collect::<Option<_>>()
        .ok_or_else(|| Error::InvalidArg("internal: a seed's results have no findings".into()))?;
    let mut out = Vec::new();
    for (fi, f) in lists[0].iter().enumerate() {
        let nparts = f["parts"].as_array().map_or(0, Vec::len);
        let mut parts = Vec::new();
        for pi in 0..nparts {
            let same: Vec<&Value> = lists.iter().map(|l| &l[fi]["parts"][pi]).collect();
            parts.push(combine_part(&same));
        }
        let verdicts: Vec<Verdict> = parts
            .iter()
            .map(|p| serde_json::from_value(p["verdict"].clone()).unwrap_or(Verdict::NotMeasured))
            .collect();
        let per_seed: Vec<&Value> = lists.iter().map(|l| &l[fi]["verdict"]).collect();
        out.push(json!({ "id": f["id"], "statement": f["statement"],
            "verdict": all_of(&verdicts), "per_seed_verdicts": per_seed, "parts": parts }));
    }
    Ok(out)
}

fn report_md(seeds: &[u64], findings: &[Value], dirs: &[PathBuf], secs: f64) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# advlens reproduce report over seeds {seeds:?}\n\nEach seed's full report is in its folder ({}). Combined intervals: mean over seeds ± t · sd / sqrt(S), never narrower than the pooled within-run bootstrap intervals; total {secs:.0} s.\n",
        dirs.iter().map(|d| format!("`{}`", d.display())).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(
        md,
        "## Scoreboard\n\n| finding | per-seed verdicts | ours over seeds (mean [95% CI], seed sd) | verdict |\n|---|---|---|---|"
    );
    for f in findings {
        let per: Vec<&str> = f["per_seed_verdicts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let parts: Vec<String> = f["parts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let (scale, digits) = display_of(p);
                let sd = p["seed_sd"]
                    .as_f64()
                    .map_or("n/a".into(), |s| format!("{:.3}", scale * s));
                format!(
                    "{} {}: {} (sd {sd})",
                    p["model"].as_str().unwrap_or("?"),
                    p["statistic"].as_str().unwrap_or("?"),
                    show_ci(ci_of(&p["ci"]).as_ref(), scale, digits)
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | **{}** |",
            f["statement"].as_str().unwrap_or(""),
            per.join(", "),
            parts.join("; "),
            f["verdict"].as_str().unwrap_or("?")
        );
    }
    md
}

/// Run the pipeline for every seed and write the combined report into `cfg.out`.
pub fn reproduce_seeds(be: &dyn Backend, cfg: &ReproduceConfig, seeds: &[u64]) -> Result<Value> {
    let t0 = std::time::Instant::now();
    let data = match &cfg.data {
        Some(d) => d.clone(),
        None => {
            super::reproduce::import_default_data(cfg)?;
            cfg.out.join("data")
        }
    };
    let (mut runs, mut dirs) = (Vec::new(), Vec::new());
    for &s in seeds {
        let dir = cfg.out.join(format!("seed-{s}"));
        eprintln!("reproduce: seed {s} -> {}", dir.display());
        let one = ReproduceConfig {
            seed: s,
            out: dir.clone(),
            data: Some(data.clone()),
            ..cfg.clone()
        };
        runs.push(reproduce(be, &one)?);
        dirs.push(dir);
    }
    let findings = combine_findings(&runs)?;
    let secs = t0.elapsed().as_secs_f64();
    let doc = json!({ "format": "advlens.results-seeds.v1", "seeds": seeds,
        "runs": dirs, "seconds_total": secs, "findings": findings,
        "combination": "mean over seeds ± t(0.975, S-1) sd/sqrt(S), at least the pooled within-run bootstrap interval" });
    crate::io::write_json(&cfg.out.join("results.json"), &doc)?;
    let md = report_md(seeds, &findings, &dirs, secs);
    crate::io::write_atomic(&cfg.out.join("report.md"), |w| {
        std::io::Write::write_all(w, md.as_bytes())
    })?;
    let html = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>advlens report over seeds</title><style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:3px 8px}}th{{background:#eee}}</style></head><body>\n{}</body></html>\n",
        super::report::md_to_html(&md)
    );
    crate::io::write_atomic(&cfg.out.join("index.html"), |w| {
        std::io::Write::write_all(w, html.as_bytes())
    })?;
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ci(est: f64, half: f64) -> Ci {
        Ci {
            est,
            lo: est - half,
            hi: est + half,
            n: 100,
        }
    }

    #[test]
    fn seeds_parse_and_refuse_bad_lists() {
        assert_eq!(parse_seeds("0,1, 2").unwrap(), vec![0, 1, 2]);
        assert!(parse_seeds("0,0").is_err());
        assert!(parse_seeds("a").is_err());
        assert!(parse_seeds("-1").is_err());
        assert!(parse_seeds("").is_err());
    }

    #[test]
    fn combined_interval_uses_the_seed_spread_or_the_pooled_runs() {
        // Seeds that disagree: the spread dominates (t with 2 df = 4.303).
        let c = combine(&[ci(1.0, 0.01), ci(1.2, 0.01), ci(1.4, 0.01)]).unwrap();
        assert!((c.est - 1.2).abs() < 1e-12);
        let half = 4.303 * 0.2 / 3f64.sqrt();
        assert!((c.hi - c.est - half).abs() < 1e-9, "{c:?}");
        // Seeds that agree exactly: the pooled within-run intervals remain.
        let c = combine(&[ci(2.0, 0.3), ci(2.0, 0.3), ci(2.0, 0.3), ci(2.0, 0.3)]).unwrap();
        assert!((c.hi - c.est - 0.3 / 2.0).abs() < 1e-9, "{c:?}");
        assert_eq!(combine(&[ci(5.0, 1.0)]), Some(ci(5.0, 1.0)));
        assert_eq!(combine(&[]), None);
    }

    #[test]
    fn findings_combine_part_by_part() {
        let run = |est: f64| {
            json!({ "findings": [{ "id": "r1>1", "statement": "s", "verdict": "reproduced",
                "parts": [{ "model": "m", "statistic": "mean r1", "threshold": 1.0,
                    "paper_side": "above", "paper": 1.07, "ci": ci(est, 0.05) }] }] })
        };
        let f = combine_findings(&[run(1.3), run(1.35), run(1.4)]).unwrap();
        assert_eq!(f[0]["verdict"], "reproduced");
        let f = combine_findings(&[run(0.9), run(1.3), run(1.7)]).unwrap();
        assert_eq!(f[0]["verdict"], "inconclusive", "{}", f[0]);
        let sd = f[0]["parts"][0]["seed_sd"].as_f64().unwrap();
        assert!((sd - 0.4).abs() < 1e-9);
    }
}
