//! The report's section on the consistency term (issue 14, item 5): how large the paper's term is
//! on each model (`scale-<model>` stages, `super::scale`), and the findings that read the
//! fine-tuned models decided once per E6 variant, so a reader sees which of them hold whatever the
//! term's weight and which turn on it.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::analysis::stats::BootConfig;

/// The findings that read the fine-tuned models: the ones a variant can change.
pub const E6_FINDINGS: [&str; 6] = [
    "r1~1",
    "r2-rises",
    "cs1-high",
    "validadv-rises",
    "fgs-rises",
    "small-cost",
];

/// The E6 findings of one variant, decided as the main findings are.
fn variant_findings(
    names: &[String],
    e1: &[Value],
    before: &[Value],
    e6: &[Value],
    after: &[Value],
    boot: BootConfig,
) -> Vec<Value> {
    let paper = super::report::paper_numbers();
    super::findings::e6_findings(&super::findings::Inputs {
        names,
        e1,
        e6,
        before,
        after,
        paper: &paper,
        boot,
    })
}

/// The `E6_variants` entry of results.json: per variant its betas, clean top-1 after, and E6
/// findings. `main_findings` are the paper variant's (already decided for the scoreboard).
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    names: &[String],
    e1: &[Value],
    before: &[Value],
    paper_e6: &[Value],
    main_findings: &[Value],
    variants: &[Value],
    boot: BootConfig,
) -> Value {
    let summary = |variant: &str, e6: &[Value], findings: Vec<Value>| {
        json!({ "variant": variant,
            "models": e6.iter().map(|r| json!({ "model": r["model"], "beta": r["config"]["beta"],
                "consistency": r["config"]["consistency"].as_str().unwrap_or("sum"),
                "valid_top1": r["valid"]["top1"] })).collect::<Vec<_>>(),
            "findings": findings })
    };
    let paper_findings: Vec<Value> = main_findings
        .iter()
        .filter(|f| E6_FINDINGS.contains(&f["id"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    // The paper's fine-tunes are results.json's "E6" (and their analyses its "after"): named,
    // not copied, so results.json and units.json hold them once.
    let mut paper = summary("paper", paper_e6, paper_findings);
    paper["e6_in"] = json!("E6");
    let mut out = vec![paper];
    for v in variants {
        let arr = |k: &str| v[k].as_array().cloned().unwrap_or_default();
        let (e6, after) = (arr("e6"), arr("after"));
        let f = variant_findings(names, e1, before, &e6, &after, boot);
        let mut entry = summary(v["variant"].as_str().unwrap_or("?"), &e6, f);
        entry["e6"] = Value::Array(e6);
        // The analyses behind the variant's findings (their units go to units.json).
        entry["after"] = Value::Array(after);
        out.push(entry);
    }
    Value::Array(out)
}

fn num(v: &Value, digits: usize) -> String {
    v.as_f64().map_or("n/a".into(), |x| format!("{x:.digits$}"))
}

/// The scale table: what the paper's beta means on each model.
fn scale_md(md: &mut String, r: &Value) {
    let rows = r["consistency_scale"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "Measured at the start of each fine-tune (`advlens consistency-scale`; the model before E6, \
         its first {} training images, x* from the same targeted I-FGS):\n\n\
         | model | BatchNorm | D = size of phi | mean phi^2 per value | term per image | term per value | relative term | CE part | 0.1 x term / CE part | matched beta |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        rows[0]["images"]
    );
    for s in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s["model"].as_str().unwrap_or("?"),
            if s["batchnorm"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            s["phi_values"],
            num(&s["phi_sq_per_value"], 4),
            num(&s["term"], 3),
            num(&s["term_per_value"], 5),
            num(&s["term_relative"], 4),
            num(&s["ce_part"], 4),
            num(&s["ratio_at_paper_beta"], 2),
            s["beta_match"]
                .as_f64()
                .map_or("undefined".into(), |b| format!("{b:.3e}")),
        );
    }
    let _ = writeln!(
        md,
        "\nThe term is a sum over the D values of phi, so it grows with D and with the square of \
         phi's scale; \"matched beta\" is the beta at which beta x term equals the cross-entropy \
         part alpha CE(x) + (1-alpha) CE(x*).\n"
    );
}

/// One model's part of a finding as a table cell: estimate [CI] (verdict).
fn cell(f: Option<&Value>, model: &str) -> String {
    let Some(f) = f else {
        return "-".into();
    };
    let parts: Vec<String> = f["parts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["model"].as_str() == Some(model))
        .map(|p| {
            let ci = serde_json::from_value::<crate::analysis::stats::Ci>(p["ci"].clone()).ok();
            let (scale, digits) = super::findings::display_of(p);
            format!(
                "{} ({})",
                super::findings::show_ci(ci.as_ref(), scale, digits),
                p["verdict"].as_str().unwrap_or("?")
            )
        })
        .collect();
    parts.join("; ")
}

fn find<'a>(v: &'a Value, id: &str) -> Option<&'a Value> {
    v["findings"]
        .as_array()?
        .iter()
        .find(|f| f["id"].as_str() == Some(id))
}

/// The variants table and the sentence that says which findings turn on the choice.
pub fn variants_md(md: &mut String, r: &Value) {
    let vs = r["E6_variants"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(md, "## The consistency term and its weight (E6 variants)\n");
    scale_md(md, r);
    if vs.len() < 2 {
        return;
    }
    let describe = |v: &Value| {
        let betas: Vec<String> = v["models"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                m["beta"]
                    .as_f64()
                    .map_or("n/a".into(), |b| format!("{b:.3e}"))
            })
            .collect();
        format!(
            "{} ({}, beta {})",
            v["variant"].as_str().unwrap_or("?"),
            v["models"][0]["consistency"].as_str().unwrap_or("sum"),
            betas.join(" / ")
        )
    };
    let head: Vec<String> = vs.iter().map(describe).collect();
    let _ = writeln!(
        md,
        "Each finding that reads the fine-tuned models, decided once per form of the fine-tune \
         (same base models, batches, targets and seed; only the consistency term differs). The \
         scoreboard uses the paper's.\n\n| finding | model | {} |\n|---|---|{}",
        head.join(" | "),
        "---|".repeat(vs.len())
    );
    let models: Vec<String> = vs[0]["models"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            m["model"]
                .as_str()
                .unwrap_or("?")
                .trim_end_matches("-adv")
                .to_string()
        })
        .collect();
    let (mut same, mut differ) = (Vec::new(), Vec::new());
    for id in E6_FINDINGS {
        let verdicts: Vec<String> = vs
            .iter()
            .map(|v| {
                find(v, id).map_or("not measured".into(), |f| {
                    f["verdict"].as_str().unwrap_or("?").to_string()
                })
            })
            .collect();
        let _ = writeln!(
            md,
            "| **{id}** | all | {} |",
            verdicts
                .iter()
                .map(|v| format!("**{v}**"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        for m in &models {
            let cells: Vec<String> = vs.iter().map(|v| cell(find(v, id), m)).collect();
            let _ = writeln!(md, "| | {m} | {} |", cells.join(" | "));
        }
        if verdicts.iter().all(|v| *v == verdicts[0]) {
            same.push(format!("{id} ({})", verdicts[0]));
        } else {
            differ.push(id.to_string());
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let _ = writeln!(
        md,
        "\n**Depends on how the consistency term is weighed:** {}. **The same under every form:** {}.\n",
        list(&differ),
        list(&same)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(id: &str, verdict: &str) -> Value {
        json!({ "id": id, "verdict": verdict, "parts": [
            { "model": "m", "statistic": "s", "verdict": verdict, "ci": { "est": 0.5, "lo": 0.1, "hi": 0.9, "n": 10 } }
        ] })
    }

    #[test]
    fn the_variants_decide_exactly_the_six_e6_findings() {
        let paper = crate::experiments::report::paper_numbers();
        let none: [Value; 0] = [];
        let inp = crate::experiments::findings::Inputs {
            names: &[],
            e1: &none,
            e6: &none,
            before: &none,
            after: &none,
            paper: &paper,
            boot: BootConfig::default(),
        };
        let ids: Vec<String> = crate::experiments::findings::e6_findings(&inp)
            .iter()
            .map(|f| f["id"].as_str().unwrap_or("?").to_string())
            .collect();
        assert_eq!(ids, E6_FINDINGS);
        let all = crate::experiments::findings::findings(&inp);
        assert_eq!(all.len(), 10);
        let tail: Vec<&str> = all[4..]
            .iter()
            .map(|f| f["id"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            tail, E6_FINDINGS,
            "the scoreboard's E6 findings are the same six"
        );
    }

    #[test]
    fn the_sentence_names_the_findings_whose_verdicts_differ() {
        let v = |name: &str, cost: &str| {
            json!({ "variant": name, "models": [{ "model": "m-adv", "beta": 0.1 }],
                "findings": [finding("small-cost", cost), finding("r2-rises", "reproduced")] })
        };
        let r = json!({ "E6_variants": [v("paper", "contradicted"), v("relative", "reproduced")] });
        let mut md = String::new();
        variants_md(&mut md, &r);
        assert!(md.contains("weighed:** small-cost."), "{md}");
        assert!(
            md.contains("every form:** r1~1 (not measured), r2-rises (reproduced)"),
            "{md}"
        );
        assert!(md.contains("0.500 [0.100, 0.900] (contradicted)"), "{md}");
    }
}
