//! The report of `advlens reproduce`: `results.json` (one key per experiment E1..E8 with every
//! number behind each table and figure), `report.md`, and a self-contained `index.html` (figures
//! inline, no network resources). Beside each of our figures stands the paper's, and the paper's
//! qualitative findings are checked one by one against this run's numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::Result;

/// The paper's numbers (ImageNet), by model position: AlexNet, VGG-16, ResNet-18.
pub fn paper_numbers() -> Value {
    json!({
        "models": ["AlexNet", "VGG-16", "ResNet-18"],
        "table1_valid": [[54.53, 78.17], [68.20, 88.33], [66.38, 87.13]],
        "table1_valid_adv_models": [[49.89, 74.28], [62.81, 84.61], [64.24, 85.75]],
        "table1_validadv": [[0.32, 3.41], [0.32, 10.72], [0.02, 20.35]],
        "table1_validadv_adv_models": [[41.37, 65.42], [45.74, 71.20], [46.42, 71.48]],
        "table2_fgs": {
            "before": [[9.04, 32.77, 0.41, 5.86], [15.13, 39.82, 1.95, 14.96], [4.38, 31.66, 0.59, 9.37]],
            "after": [[21.16, 49.34, 3.84, 20.43], [47.67, 71.23, 10.17, 39.18], [20.67, 51.00, 3.63, 22.41]],
            "columns": ["eps1 top1", "eps1 top5", "eps5 top1", "eps5 top5"]
        },
        "mean_r1": { "before": [1.07, 1.26, 1.34], "after": [0.98, 0.99, 0.98] },
        "mean_r2": { "before": [0.80, 0.73, 0.76], "after": [0.90, 0.92, 0.87] },
        "auc": [0.817, 0.847, 0.926],
    })
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{:.2}", 100.0 * x))
}

fn num(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.3}"))
}

/// FGS row (top1, top5) at `eps` of an E7 report.
fn fgs_at(e7: &Value, eps: f64) -> (Option<f64>, Option<f64>) {
    e7["rows"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["eps"].as_f64().is_some_and(|e| (e - eps).abs() < 1e-6))
        })
        .map_or((None, None), |r| (f(&r["top1"]), f(&r["top5"])))
}

/// One finding of the paper checked on this run.
fn finding(id: &str, statement: &str, ok: Option<bool>, evidence: String) -> Value {
    json!({ "id": id, "statement": statement, "reproduced": ok, "evidence": evidence })
}

fn all(v: &[Option<bool>]) -> Option<bool> {
    if v.iter().any(Option::is_none) || v.is_empty() {
        None
    } else {
        Some(v.iter().all(|b| *b == Some(true)))
    }
}

/// Build the results document from the stage results.
pub fn assemble(
    env: &Value,
    e1: &[Value],
    e2: &Value,
    before: &Value,
    e6: &[Value],
    after: &Value,
) -> Result<Value> {
    let b = before.as_array().cloned().unwrap_or_default();
    let a = after.as_array().cloned().unwrap_or_default();
    let names: Vec<String> = e1
        .iter()
        .map(|r| r["model"].as_str().unwrap_or("?").to_string())
        .collect();
    let per = |list: &[Value], key: &str| -> Vec<Value> {
        list.iter()
            .map(|m| json!({ "model": m["model"], "result": m[key] }))
            .collect()
    };
    let mut table1 = Vec::new();
    for (i, n) in names.iter().enumerate() {
        table1.push(json!({ "model": n, "dataset": "Valid", "top1": e1[i]["valid"]["top1"], "top5": e1[i]["valid"]["top5"] }));
    }
    for (i, n) in names.iter().enumerate() {
        table1.push(json!({ "model": format!("{n}-adv"), "dataset": "Valid", "top1": e6.get(i).map(|r| r["valid"]["top1"].clone()), "top5": e6.get(i).map(|r| r["valid"]["top5"].clone()) }));
    }
    for (i, n) in names.iter().enumerate() {
        table1.push(json!({ "model": n, "dataset": "Valid-Adv", "top1": b.get(i).map(|m| m["valid_adv"]["top1"].clone()), "top5": b.get(i).map(|m| m["valid_adv"]["top5"].clone()) }));
    }
    for (i, n) in names.iter().enumerate() {
        table1.push(json!({ "model": format!("{n}-adv"), "dataset": "Valid-Adv", "top1": a.get(i).map(|m| m["valid_adv"]["top1"].clone()), "top5": a.get(i).map(|m| m["valid_adv"]["top5"].clone()) }));
    }

    // Findings (DESIGN.md section 4, last paragraph).
    let mut findings = Vec::new();
    let r_mean =
        |list: &[Value], i: usize, r: &str| list.get(i).and_then(|m| f(&m["e4"][r]["mean"]));
    let ev = |list: &[Value], r: &str| -> String {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} {}", num(r_mean(list, i, r))))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| r_mean(&b, i, "r1").map(|x| x > 1.0))
        .collect();
    findings.push(finding("r1>1", "before adversarial training, mean r1 > 1 (adversarial representations are far from their original class)", all(&chk), format!("mean r1: {}", ev(&b, "r1"))));
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| r_mean(&b, i, "r2").map(|x| x < 1.0))
        .collect();
    findings.push(finding("r2<1", "before adversarial training, mean r2 < 1 (adversarial representations are close to the target class)", all(&chk), format!("mean r2: {}", ev(&b, "r2"))));
    let corr =
        |list: &[Value], i: usize, k: &str| list.get(i).and_then(|m| f(&m["e3"]["summary"][k]));
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(
            |i| match (corr(&b, i, "corr_lc_cs1"), corr(&b, i, "corr_lc_cs2")) {
                (Some(c1), Some(c2)) => Some(c1 < 0.0 && c2 > 0.0),
                _ => None,
            },
        )
        .collect();
    let evc = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{n} corr(LC,CS1) {} corr(LC,CS2) {}",
                num(corr(&b, i, "corr_lc_cs1")),
                num(corr(&b, i, "corr_lc_cs2"))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    findings.push(finding(
        "cs-vs-lc",
        "before adversarial training, CS1 falls and CS2 rises with LC (Fig. 4)",
        all(&chk),
        evc,
    ));
    let auc = |list: &[Value], i: usize| list.get(i).and_then(|m| f(&m["e5"]["auc"]));
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| auc(&b, i).map(|x| x > 0.6))
        .collect();
    let eva = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {}", num(auc(&b, i))))
        .collect::<Vec<_>>()
        .join(", ");
    findings.push(finding(
        "auc",
        "detection AUC is well above 0.5 (taken here as > 0.6)",
        all(&chk),
        format!("AUC: {eva}"),
    ));
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| match (r_mean(&b, i, "r1"), r_mean(&a, i, "r1")) {
            (Some(x), Some(y)) => Some((y - 1.0).abs() < (x - 1.0).abs()),
            _ => None,
        })
        .collect();
    findings.push(finding(
        "r1~1",
        "after adversarial training, mean r1 moves toward 1",
        all(&chk),
        format!("before: {}; after: {}", ev(&b, "r1"), ev(&a, "r1")),
    ));
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| match (r_mean(&b, i, "r2"), r_mean(&a, i, "r2")) {
            (Some(x), Some(y)) => Some(y > x),
            _ => None,
        })
        .collect();
    findings.push(finding(
        "r2-rises",
        "after adversarial training, mean r2 rises toward 1",
        all(&chk),
        format!("before: {}; after: {}", ev(&b, "r2"), ev(&a, "r2")),
    ));
    let cs1 =
        |list: &[Value], i: usize| list.get(i).and_then(|m| f(&m["e3"]["summary"]["mean_cs1"]));
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| match (cs1(&b, i), cs1(&a, i)) {
            (Some(x), Some(y)) => Some(y > x),
            _ => None,
        })
        .collect();
    let evs = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {} -> {}", num(cs1(&b, i)), num(cs1(&a, i))))
        .collect::<Vec<_>>()
        .join(", ");
    findings.push(finding(
        "cs1-high",
        "after adversarial training, CS1 stays high (mean CS1 above its value before)",
        all(&chk),
        format!("mean CS1: {evs}"),
    ));
    let va = |list: &[Value], i: usize| list.get(i).and_then(|m| f(&m["valid_adv"]["top1"]));
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| match (va(&b, i), va(&a, i)) {
            (Some(x), Some(y)) => Some(y > x),
            _ => None,
        })
        .collect();
    let evv = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {} -> {}", pct(va(&b, i)), pct(va(&a, i))))
        .collect::<Vec<_>>()
        .join(", ");
    findings.push(finding(
        "validadv-rises",
        "accuracy on the adversarial set rises after adversarial training (Table 1)",
        all(&chk),
        format!("Valid-Adv top-1 %: {evv}"),
    ));
    let fg = |list: &[Value], i: usize, eps: f64| list.get(i).and_then(|m| fgs_at(&m["e7"], eps).0);
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| {
            match (
                fg(&b, i, 1.0),
                fg(&a, i, 1.0),
                fg(&b, i, 5.0),
                fg(&a, i, 5.0),
            ) {
                (Some(x1), Some(y1), Some(x5), Some(y5)) => Some(y1 > x1 && y5 >= x5),
                _ => None,
            }
        })
        .collect();
    let evf = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "{n} eps1 {} -> {}, eps5 {} -> {}",
                pct(fg(&b, i, 1.0)),
                pct(fg(&a, i, 1.0)),
                pct(fg(&b, i, 5.0)),
                pct(fg(&a, i, 5.0))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    findings.push(finding(
        "fgs-rises",
        "FGS robustness rises after adversarial training (Table 2)",
        all(&chk),
        format!("FGS top-1 %: {evf}"),
    ));
    let clean = |i: usize| {
        (
            f(&e1[i]["valid"]["top1"]),
            e6.get(i).and_then(|r| f(&r["valid"]["top1"])),
        )
    };
    let chk: Vec<Option<bool>> = (0..names.len())
        .map(|i| match clean(i) {
            (Some(x), Some(y)) => Some(x - y <= 0.05),
            _ => None,
        })
        .collect();
    let evl = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{n} {} -> {}", pct(clean(i).0), pct(clean(i).1)))
        .collect::<Vec<_>>()
        .join(", ");
    findings.push(finding("small-cost", "the clean-accuracy cost of adversarial training is small (taken here as at most 5 points of top-1; paper: 1-4 points top-5)", all(&chk), format!("clean top-1 %: {evl}")));

    Ok(json!({
        "format": "advlens.results.v1",
        "environment": env,
        "E1": { "models": e1, "adv_models": e6.iter().map(|r| json!({ "model": r["model"], "valid": r["valid"] })).collect::<Vec<_>>(), "table1": table1 },
        "E2": e2,
        "E3": { "before": per(&b, "e3"), "after": per(&a, "e3") },
        "E4": { "before": per(&b, "e4"), "after": per(&a, "e4") },
        "E5": { "before": per(&b, "e5"), "after": per(&a, "e5") },
        "E6": e6,
        "E7": { "before": per(&b, "e7"), "after": per(&a, "e7") },
        "E8": { "before": per(&b, "e8"), "after": per(&a, "e8") },
        "paper": paper_numbers(),
        "findings": findings,
    }))
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for ch in bytes.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        for k in 0..4 {
            if k <= ch.len() {
                s.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Figure files of a stage result (paths absolute, or relative to the stage's `dir`).
fn figures(stage: &Value) -> Vec<PathBuf> {
    let dir = stage["dir"].as_str().map(PathBuf::from).unwrap_or_default();
    stage["figures"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .map(|s| {
                    let p = PathBuf::from(s);
                    if p.is_absolute() || p.exists() {
                        p
                    } else {
                        dir.join(p)
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An inline <img> of an SVG or PNG file (data URI), or a note when it is missing.
fn img_tag(p: &Path) -> String {
    let mime = match p.extension().and_then(|e| e.to_str()) {
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => return String::new(),
    };
    match std::fs::read(p) {
        Ok(b) => format!(
            "<figure><img alt=\"{0}\" src=\"data:{mime};base64,{1}\"><figcaption>{0}</figcaption></figure>",
            esc(&p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()),
            base64(&b)
        ),
        Err(_) => format!("<p class=\"missing\">missing figure {}</p>", esc(&p.display().to_string())),
    }
}

/// PNG grid files (Fig. 2/7) under a stage directory.
fn pngs_under(dir: &Path, max: usize) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            for p in entries {
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "png") {
                    v.push(p);
                }
            }
        }
    }
    v.sort();
    v.truncate(max);
    v
}

/// Write `report.md` and `index.html` into `out`.
pub fn write_report(out: &Path, r: &Value) -> Result<()> {
    let paper = paper_numbers();
    let env = &r["environment"];
    let mut md = String::new();
    let _ = writeln!(md, "# advlens reproduce report\n");
    let _ = writeln!(
        md,
        "Profile `{}`, device `{}`, seed {}, commit `{}`, total {:.0} s. Paper numbers are on ImageNet (AlexNet, VGG-16, ResNet-18); ours on the data of this run, so compare trends, not values.\n",
        env["profile"]["name"].as_str().unwrap_or("?"),
        env["device"].as_str().unwrap_or("?"),
        env["seed"],
        env["commit"].as_str().unwrap_or("?"),
        env["seconds_total"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(md, "## Table 1: accuracy (%)\n\n| model | dataset | top-1 | top-5 | paper top-1 | paper top-5 |\n|---|---|---|---|---|---|");
    let t1 = r["E1"]["table1"].as_array().cloned().unwrap_or_default();
    let n = t1.len() / 4;
    for (j, row) in t1.iter().enumerate() {
        let key = [
            "table1_valid",
            "table1_valid_adv_models",
            "table1_validadv",
            "table1_validadv_adv_models",
        ][(j / n.max(1)).min(3)];
        let pp = &paper[key][j % n.max(1)];
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            row["model"].as_str().unwrap_or("?"),
            row["dataset"].as_str().unwrap_or("?"),
            pct(f(&row["top1"])),
            pct(f(&row["top5"])),
            pp[0],
            pp[1]
        );
    }
    let _ = writeln!(md, "\n## Table 2: accuracy (%) under FGS\n\n| model | eps 1 top-1 | eps 1 top-5 | eps 5 top-1 | eps 5 top-5 | paper (same columns) |\n|---|---|---|---|---|---|");
    for tag in ["before", "after"] {
        for (i, m) in r["E7"][tag]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let (a1, a5) = fgs_at(&m["result"], 1.0);
            let (b1, b5) = fgs_at(&m["result"], 5.0);
            let name = m["model"].as_str().unwrap_or("?");
            let name = if tag == "after" {
                format!("{name}-adv")
            } else {
                name.to_string()
            };
            let pp: Vec<String> = paper["table2_fgs"][tag][i]
                .as_array()
                .map(|v| v.iter().map(|x| x.to_string()).collect())
                .unwrap_or_default();
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} |",
                pct(a1),
                pct(a5),
                pct(b1),
                pct(b5),
                pp.join(" / ")
            );
        }
    }
    let _ = writeln!(md, "\n## Representations (E4), detection (E5), neurons (E3)\n\n| model | stage | mean r1 | mean r2 | paper r1 | paper r2 | AUC | paper AUC | corr(LC,CS1) | corr(LC,CS2) | mean CS1 | mean CS2 |\n|---|---|---|---|---|---|---|---|---|---|---|---|");
    for tag in ["before", "after"] {
        let e3 = r["E3"][tag].as_array().cloned().unwrap_or_default();
        let e4 = r["E4"][tag].as_array().cloned().unwrap_or_default();
        let e5 = r["E5"][tag].as_array().cloned().unwrap_or_default();
        for i in 0..e4.len() {
            let s = &e3
                .get(i)
                .map(|m| m["result"]["summary"].clone())
                .unwrap_or(Value::Null);
            let _ = writeln!(
                md,
                "| {} | {tag} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                e4[i]["model"].as_str().unwrap_or("?"),
                num(f(&e4[i]["result"]["r1"]["mean"])),
                num(f(&e4[i]["result"]["r2"]["mean"])),
                paper["mean_r1"][tag][i],
                paper["mean_r2"][tag][i],
                num(e5.get(i).and_then(|m| f(&m["result"]["auc"]))),
                if tag == "before" {
                    paper["auc"][i].to_string()
                } else {
                    "-".into()
                },
                num(f(&s["corr_lc_cs1"])),
                num(f(&s["corr_lc_cs2"])),
                num(f(&s["mean_cs1"])),
                num(f(&s["mean_cs2"])),
            );
        }
    }
    let e2 = &r["E2"];
    let _ = writeln!(
        md,
        "\n## Ensemble attack (E2)\n\n{} adversarial images from {} source images; ensemble targeted success {}%, mean L2 {}, mean Linf {} (0-255 scale).\n",
        e2["adversarial_images"], e2["source_images"], pct(f(&e2["ensemble_success"])), num(f(&e2["mean_l2"])), num(f(&e2["mean_linf"]))
    );
    let _ = writeln!(md, "## The paper's findings on this run\n");
    for fnd in r["findings"].as_array().cloned().unwrap_or_default() {
        let mark = match fnd["reproduced"].as_bool() {
            Some(true) => "reproduced",
            Some(false) => "NOT reproduced",
            None => "not measured",
        };
        let _ = writeln!(
            md,
            "- **{mark}**: {} — {}",
            fnd["statement"].as_str().unwrap_or(""),
            fnd["evidence"].as_str().unwrap_or("")
        );
    }
    let _ = writeln!(
        md,
        "\n## Stages\n\n| stage | seconds | cached |\n|---|---|---|"
    );
    for s in env["stages"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} |",
            s["stage"].as_str().unwrap_or("?"),
            s["seconds"].as_f64().unwrap_or(0.0),
            s["cached"]
        );
    }
    crate::io::write_atomic(&out.join("report.md"), |w| {
        std::io::Write::write_all(w, md.as_bytes())
    })?;

    // HTML: the same tables (rendered from the Markdown's structure) plus every figure inline.
    let mut html = String::from("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>advlens report</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}figure{display:inline-block;margin:6px;vertical-align:top}figure img{max-width:520px}figcaption{font-size:small;color:#555}.missing{color:#b00}</style></head><body>\n");
    html.push_str(&md_to_html(&md));
    for tag in ["before", "after"] {
        let _ = writeln!(html, "<h2>Figures ({tag} adversarial training)</h2>");
        for key in ["E3", "E4", "E5"] {
            for m in r[key][tag].as_array().cloned().unwrap_or_default() {
                let _ = writeln!(
                    html,
                    "<h3>{key} {}</h3>",
                    esc(m["model"].as_str().unwrap_or("?"))
                );
                for p in figures(&m["result"]) {
                    html.push_str(&img_tag(&p));
                }
                if key == "E3" {
                    if let Some(d) = m["result"]["dir"].as_str() {
                        for p in pngs_under(Path::new(d), 4) {
                            html.push_str(&img_tag(&p));
                        }
                    }
                }
            }
        }
        for m in r["E8"][tag].as_array().cloned().unwrap_or_default() {
            let _ = writeln!(
                html,
                "<h3>E8 {}</h3>",
                esc(m["model"].as_str().unwrap_or("?"))
            );
            for item in m["result"].as_array().cloned().unwrap_or_default() {
                let top: Vec<String> = item["top"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|t| {
                        format!(
                            "channel {} (PD {:.4})",
                            t["channel"],
                            t["pd"].as_f64().unwrap_or(0.0)
                        )
                    })
                    .collect();
                let _ = writeln!(
                    html,
                    "<p>{} image {}: true {}, predicted {} ({:.2}); top neurons: {}</p>",
                    esc(item["source"].as_str().unwrap_or("?")),
                    item["index"],
                    esc(item["true"].as_str().unwrap_or("?")),
                    esc(item["predicted"].as_str().unwrap_or("?")),
                    item["prob"].as_f64().unwrap_or(0.0),
                    esc(&top.join(", "))
                );
                if let Some(d) = item["dir"].as_str() {
                    for p in pngs_under(Path::new(d), 2) {
                        html.push_str(&img_tag(&p));
                    }
                }
            }
        }
    }
    html.push_str("</body></html>\n");
    crate::io::write_atomic(&out.join("index.html"), |w| {
        std::io::Write::write_all(w, html.as_bytes())
    })
}

/// The small subset of Markdown the report uses: headings, pipe tables, bullets, paragraphs,
/// `code` and **bold**.
fn md_to_html(md: &str) -> String {
    let inline = |s: &str| {
        let mut o = String::new();
        let s = esc(s);
        let mut bold = false;
        let mut code = false;
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '*' && chars.peek() == Some(&'*') {
                chars.next();
                o.push_str(if bold { "</b>" } else { "<b>" });
                bold = !bold;
            } else if c == '`' {
                o.push_str(if code { "</code>" } else { "<code>" });
                code = !code;
            } else {
                o.push(c);
            }
        }
        o
    };
    let mut h = String::new();
    let mut in_table = false;
    let mut in_list = false;
    for line in md.lines() {
        let t = line.trim();
        if !t.starts_with('|') && in_table {
            h.push_str("</table>\n");
            in_table = false;
        }
        if !t.starts_with("- ") && in_list {
            h.push_str("</ul>\n");
            in_list = false;
        }
        if let Some(x) = t.strip_prefix("## ") {
            let _ = writeln!(h, "<h2>{}</h2>", inline(x));
        } else if let Some(x) = t.strip_prefix("# ") {
            let _ = writeln!(h, "<h1>{}</h1>", inline(x));
        } else if t.starts_with('|') {
            if t.starts_with("|---") {
                continue;
            }
            let cells: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
            let tag = if in_table { "td" } else { "th" };
            if !in_table {
                h.push_str("<table>\n");
                in_table = true;
            }
            h.push_str("<tr>");
            for c in cells {
                let _ = write!(h, "<{tag}>{}</{tag}>", inline(c));
            }
            h.push_str("</tr>\n");
        } else if let Some(x) = t.strip_prefix("- ") {
            if !in_list {
                h.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(h, "<li>{}</li>", inline(x));
        } else if !t.is_empty() {
            let _ = writeln!(h, "<p>{}</p>", inline(t));
        }
    }
    if in_table {
        h.push_str("</table>\n");
    }
    if in_list {
        h.push_str("</ul>\n");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn markdown_tables_and_lists_render() {
        let h = md_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | **2** |\n\n- x `y`\n");
        assert!(h.contains("<h1>T</h1>"));
        assert!(h.contains("<th>a</th><th>b</th>"));
        assert!(h.contains("<td>1</td><td><b>2</b></td>"));
        assert!(h.contains("<li>x <code>y</code></li>"));
    }
}
