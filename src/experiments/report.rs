//! The report of `advlens reproduce`: `results.json` (one key per experiment E1..E8 with every
//! number behind each table and figure), `report.md`, and a self-contained `index.html` (figures
//! inline, no network resources). Beside each of our figures stands the paper's, and the paper's
//! qualitative findings are checked one by one against this run's numbers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::analysis::stats::BootConfig;
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

/// What the report reads besides the paper variant's pipeline: the other E6 variants (each
/// `{variant, e6, after}`) and the consistency-scale probe of each model.
pub struct Extra {
    pub variants: Vec<Value>,
    pub scale: Vec<Value>,
}

/// Build the results document from the stage results.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    env: &Value,
    e1: &[Value],
    e2: &Value,
    before: &Value,
    e6: &[Value],
    after: &Value,
    extra: &Extra,
    boot: BootConfig,
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

    let paper = paper_numbers();
    let findings = super::findings::findings(&super::findings::Inputs {
        names: &names,
        e1,
        e6,
        before: &b,
        after: &a,
        paper: &paper,
        boot,
    });
    let variants = super::variants::assemble(&names, e1, &b, e6, &findings, &extra.variants, boot);

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
        "paper": paper,
        "bootstrap": boot,
        "findings": findings,
        "E6_variants": variants,
        "consistency_scale": extra.scale,
    }))
}

/// Moves every `units` object out of the results document into one `units.json` document
/// (keyed by the JSON path it came from), so results.json stays readable while the units behind
/// every interval are kept for anyone who wants to recompute them.
pub fn split_units(results: &mut Value) -> Value {
    fn walk(v: &mut Value, path: &str, out: &mut serde_json::Map<String, Value>) {
        match v {
            Value::Object(m) => {
                if let Some(u) = m.remove("units") {
                    out.insert(path.to_string(), u);
                }
                for (k, c) in m.iter_mut() {
                    walk(c, &format!("{path}/{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter_mut().enumerate() {
                    walk(c, &format!("{path}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = serde_json::Map::new();
    walk(results, "", &mut out);
    json!({ "format": "advlens.units.v1", "units": out })
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
    let mut md = String::new();
    header_md(&mut md, r);
    scoreboard_md(&mut md, r);
    tables_md(&mut md, r);
    findings_md(&mut md, r);
    super::variants::variants_md(&mut md, r);
    crate::io::write_atomic(&out.join("report.md"), |w| {
        let mut all = md.clone();
        stages_md(&mut all, r);
        std::io::Write::write_all(w, all.as_bytes())
    })?;

    // HTML: the same tables (rendered from the Markdown's structure), every figure inline beside
    // the paper figure it reproduces, and the stage timings folded at the end.
    let mut html = String::from("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>advlens report</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td{white-space:nowrap}td:first-child{text-align:left;white-space:normal}th{background:#eee}figure{display:inline-block;margin:6px;vertical-align:top}figure img{max-width:520px}figcaption{font-size:small;color:#555}.missing{color:#b00}</style></head><body>\n");
    html.push_str(&md_to_html(&md));
    figures_html(&mut html, r);
    let mut st = String::new();
    stages_md(&mut st, r);
    let _ = writeln!(
        html,
        "<details><summary>Stage timings</summary>{}</details>",
        md_to_html(&st)
    );
    html.push_str("</body></html>\n");
    crate::io::write_atomic(&out.join("index.html"), |w| {
        std::io::Write::write_all(w, html.as_bytes())
    })
}

fn header_md(md: &mut String, r: &Value) {
    let env = &r["environment"];
    let boot = &r["bootstrap"];
    let _ = writeln!(md, "# advlens reproduce report\n");
    let _ = writeln!(
        md,
        "Profile `{}`, device `{}`, seed {}, commit `{}`, total {:.0} s. Paper numbers are on ImageNet (AlexNet, VGG-16, ResNet-18); ours on the data of this run, so compare trends, not values. Intervals are {}% percentile-bootstrap intervals ({} resamples, seed {}) over the images or neurons each statistic is computed from.\n",
        env["profile"]["name"].as_str().unwrap_or("?"),
        env["device"].as_str().unwrap_or("?"),
        env["seed"],
        env["commit"].as_str().unwrap_or("?"),
        env["seconds_total"].as_f64().unwrap_or(0.0),
        boot["level"].as_f64().map_or("?".into(), |l| format!("{:.0}", 100.0 * l)),
        boot["resamples"],
        boot["seed"],
    );
}

fn verdict_of(fnd: &Value) -> &str {
    fnd["verdict"].as_str().unwrap_or("not measured")
}

/// One line per finding: the statement, each model's estimate with its interval and the paper's
/// number, and the verdict.
fn scoreboard_md(md: &mut String, r: &Value) {
    let _ = writeln!(
        md,
        "## Scoreboard\n\n| finding | verdict | model (paper's) | statistic | paper | ours: estimate [95% CI] | this model |\n|---|---|---|---|---|---|---|"
    );
    // The paper's models by position (AlexNet, VGG-16, ResNet-18), whatever ours are called.
    let paper_models = paper_numbers()["models"].clone();
    for fnd in r["findings"].as_array().cloned().unwrap_or_default() {
        let parts = fnd["parts"].as_array().cloned().unwrap_or_default();
        let per_model = (parts.len() / 3).max(1);
        for (j, p) in parts.iter().enumerate() {
            let (finding, verdict) = if j == 0 {
                (
                    fnd["statement"].as_str().unwrap_or("").to_string(),
                    format!("**{}**", verdict_of(&fnd)),
                )
            } else {
                (String::new(), String::new())
            };
            let _ = writeln!(
                md,
                "| {finding} | {verdict} | {} ({}) | {} | {} | {} | {} |",
                p["model"].as_str().unwrap_or("?"),
                paper_models[j / per_model].as_str().unwrap_or("?"),
                p["statistic"].as_str().unwrap_or("?"),
                p["paper"].as_f64().map_or("-".into(), |x| x.to_string()),
                part_cell(p),
                p["verdict"].as_str().unwrap_or("?")
            );
        }
    }
    let _ = writeln!(
        md,
        "\nA finding is **reproduced** when every model's interval lies on the paper's side of its threshold, **contradicted** when some model's interval lies wholly on the other side, and **inconclusive** otherwise.\n"
    );
}

fn part_cell(p: &Value) -> String {
    let ci = serde_json::from_value::<crate::analysis::stats::Ci>(p["ci"].clone()).ok();
    let (scale, digits) = super::findings::display_of(p);
    super::findings::show_ci(ci.as_ref(), scale, digits)
}

fn findings_md(md: &mut String, r: &Value) {
    let _ = writeln!(md, "## The paper's findings on this run\n");
    for fnd in r["findings"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(
            md,
            "- **{}**: {} — {}",
            verdict_of(&fnd),
            fnd["statement"].as_str().unwrap_or(""),
            fnd["evidence"].as_str().unwrap_or("")
        );
    }
}

fn stages_md(md: &mut String, r: &Value) {
    let _ = writeln!(
        md,
        "\n## Stages\n\n| stage | seconds | cached |\n|---|---|---|"
    );
    for s in r["environment"]["stages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} |",
            s["stage"].as_str().unwrap_or("?"),
            s["seconds"].as_f64().unwrap_or(0.0),
            s["cached"]
        );
    }
}

fn tables_md(md: &mut String, r: &Value) {
    let paper = paper_numbers();
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
}

/// The paper figure a stage's figure reproduces (before / after adversarial training).
fn paper_fig(key: &str, tag: &str) -> &'static str {
    match (key, tag) {
        ("grids", "before") => "Fig. 2",
        ("grids", _) => "Fig. 7",
        ("E3", "before") => "Fig. 4",
        ("E3", _) => "Fig. 8",
        ("E4", "before") => "Fig. 5",
        ("E4", _) => "Fig. 9",
        ("E5", _) => "Fig. 6",
        _ => "Fig. 10",
    }
}

/// Every figure once, under the paper figure it reproduces.
fn figures_html(html: &mut String, r: &Value) {
    let mut seen = std::collections::BTreeSet::new();
    let mut show = |html: &mut String, p: &Path| {
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if seen.insert(key) {
            html.push_str(&img_tag(p));
        }
    };
    for tag in ["before", "after"] {
        let _ = writeln!(html, "<h2>Figures ({tag} adversarial training)</h2>");
        for key in ["E3", "E4", "E5"] {
            for m in r[key][tag].as_array().cloned().unwrap_or_default() {
                let name = esc(m["model"].as_str().unwrap_or("?"));
                let _ = writeln!(html, "<h3>{} ({key}) {name}</h3>", paper_fig(key, tag));
                for p in figures(&m["result"]) {
                    show(html, &p);
                }
                if key == "E3" {
                    if let Some(d) = m["result"]["dir"].as_str() {
                        let _ = writeln!(
                            html,
                            "<h3>{} (E3 grids) {name}</h3>",
                            paper_fig("grids", tag)
                        );
                        for p in pngs_under(Path::new(d), 4) {
                            show(html, &p);
                        }
                    }
                }
            }
        }
        for m in r["E8"][tag].as_array().cloned().unwrap_or_default() {
            let _ = writeln!(
                html,
                "<h3>Fig. 10 (E8) {}</h3>",
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
                        show(html, &p);
                    }
                }
            }
        }
    }
}

/// The small subset of Markdown the report uses: headings, pipe tables, bullets, paragraphs,
/// `code` and **bold**.
pub(crate) fn md_to_html(md: &str) -> String {
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
