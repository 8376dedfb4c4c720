//! `advlens reproduce --profile quick` end to end through the binary: every report file exists,
//! results.json holds every experiment E1..E8 with finite numbers, the HTML embeds its figures,
//! and a rerun reuses every cached stage.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

fn finite_numbers(v: &Value, path: &str, bad: &mut Vec<String>, count: &mut usize) {
    match v {
        Value::Number(n) => {
            *count += 1;
            if !n.as_f64().is_some_and(f64::is_finite) {
                bad.push(path.to_string());
            }
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| finite_numbers(x, &format!("{path}[{i}]"), bad, count)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| finite_numbers(x, &format!("{path}.{k}"), bad, count)),
        _ => {}
    }
}

/// Whether Debian's Fashion-MNIST is installed (says so when it is not).
fn fmnist_present() -> bool {
    let here = Path::new(FMNIST).exists();
    if !here {
        eprintln!("skipped: {FMNIST} missing (apt-get install dataset-fashion-mnist)");
    }
    here
}

fn run(out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_advlens"))
        .args([
            "--device",
            "cpu",
            "--seed",
            "3",
            "reproduce",
            "--profile",
            "quick",
            "--out",
        ])
        .arg(out)
        .output()
        .expect("the advlens binary runs")
}

/// Every finding has one of the four verdicts, a part per model (two for the two-part
/// findings), and an interval around its estimate for every part it could measure.
fn findings_carry_intervals(r: &Value) {
    let verdicts = ["reproduced", "contradicted", "inconclusive", "not measured"];
    let mut measured = 0;
    for f in r["findings"].as_array().unwrap() {
        let v = f["verdict"].as_str().unwrap_or("?");
        assert!(verdicts.contains(&v), "{}: verdict {v}", f["id"]);
        let parts = f["parts"].as_array().unwrap();
        assert!(
            parts.len() == 3 || parts.len() == 6,
            "{}: {} parts",
            f["id"],
            parts.len()
        );
        for p in parts {
            if p["ci"].is_null() {
                continue;
            }
            let (e, lo, hi) = (
                p["ci"]["est"].as_f64(),
                p["ci"]["lo"].as_f64(),
                p["ci"]["hi"].as_f64(),
            );
            let (e, lo, hi) = (e.unwrap(), lo.unwrap(), hi.unwrap());
            assert!(
                lo <= e + 1e-12 && e <= hi + 1e-12,
                "{}: {lo} {e} {hi}",
                f["id"]
            );
            measured += 1;
        }
    }
    // Every statistic of the quick profile is defined: 3 models x (8 one-part + 2 two-part).
    assert_eq!(measured, 36, "parts with an interval");
}

/// The per-image and per-neuron units live in units.json, not in results.json.
fn units_moved_out(r: &Value, out: &Path) {
    assert!(!serde_json::to_string(r).unwrap().contains("\"units\""));
    let u: Value = serde_json::from_slice(&std::fs::read(out.join("units.json")).unwrap()).unwrap();
    let units = u["units"].as_object().unwrap();
    let r1 = &units["/E4/before/0/result"]["r1"];
    assert!(
        r1.as_array().is_some_and(|a| !a.is_empty()),
        "per-image r1 kept"
    );
    let hits = units["/E1/models/0"]["valid_top1"].as_str().unwrap();
    let images = r["E1"]["models"][0]["valid"]["images"].as_u64().unwrap();
    assert_eq!(
        hits.len() as u64,
        images,
        "one hit flag per evaluated image"
    );
}

/// The three forms of the fine-tune are decided side by side, the matched one at the beta the
/// scale probe measured, and the report says which findings turn on the choice.
/// The checkpoint an analysis stage read: its stage key's `ckpt` (folder stages) or the
/// `checkpoint` its command reported (E7).
fn checkpoint_read(analysis: &Value) -> String {
    if let Some(c) = analysis["checkpoint"].as_str() {
        return c.to_string();
    }
    let dir = analysis["dir"]
        .as_str()
        .expect("an analysis names its folder");
    let key: Value =
        serde_json::from_slice(&std::fs::read(Path::new(dir).join("stage-key.json")).unwrap())
            .unwrap();
    key["b"]["ckpt"]
        .as_str()
        .unwrap_or_else(|| panic!("{dir}/stage-key.json names no ckpt"))
        .to_string()
}

/// Every after-analysis of every E6 form read the checkpoint of that form's own fine-tune of
/// that model: the paper's from E6, the others from their `e6` (so the variants cannot have
/// analysed each other's, or the paper's, models). The nine checkpoints are distinct.
fn analyses_read_their_own_checkpoints(r: &Value) {
    let vs = r["E6_variants"].as_array().expect("E6_variants");
    let mut all = std::collections::BTreeSet::new();
    for (mi, e6) in r["E6"].as_array().expect("E6").iter().enumerate() {
        let ckpt = e6["ckpt"].as_str().expect("E6 ckpt").to_string();
        for e in ["E3", "E4", "E7"] {
            let a = &r[e]["after"][mi]["result"];
            assert_eq!(checkpoint_read(a), ckpt, "paper {e} after, model {mi}");
        }
        all.insert(ckpt);
    }
    for v in &vs[1..] {
        let name = v["variant"].as_str().unwrap();
        for (mi, (after, e6)) in v["after"]
            .as_array()
            .unwrap()
            .iter()
            .zip(v["e6"].as_array().unwrap())
            .enumerate()
        {
            let ckpt = e6["ckpt"].as_str().expect("variant ckpt").to_string();
            assert_eq!(
                after["ckpt"].as_str(),
                Some(ckpt.as_str()),
                "{name} model {mi}"
            );
            for e in ["e3", "e4", "e7"] {
                assert_eq!(checkpoint_read(&after[e]), ckpt, "{name} {e} model {mi}");
            }
            all.insert(ckpt);
        }
    }
    assert_eq!(all.len(), 9, "three forms x three models: {all:?}");
}

fn variants_side_by_side(r: &Value, md: &str) {
    let vs = r["E6_variants"].as_array().expect("E6_variants");
    let names: Vec<&str> = vs.iter().map(|v| v["variant"].as_str().unwrap()).collect();
    assert_eq!(names, ["paper", "relative", "matched"]);
    for v in vs {
        assert_eq!(
            v["findings"].as_array().map(Vec::len),
            Some(6),
            "{}",
            v["variant"]
        );
    }
    // The paper's fine-tunes are named, not copied; the other forms carry theirs.
    assert_eq!(vs[0]["e6_in"], "E6");
    assert!(
        vs[0].get("e6").is_none(),
        "the paper's E6 is not duplicated"
    );
    for v in &vs[1..] {
        assert_eq!(v["e6"].as_array().map(Vec::len), Some(3));
    }
    let scale = r["consistency_scale"]
        .as_array()
        .expect("consistency_scale");
    assert_eq!(scale.len(), 3);
    for (i, s) in scale.iter().enumerate() {
        let matched = vs[2]["e6"][i]["config"]["beta"].as_f64().unwrap();
        let probe = s["beta_match"].as_f64().expect("a matched beta");
        assert!(
            probe > 0.0 && ((matched - probe) / probe).abs() < 1e-6,
            "{matched} vs {probe}"
        );
        assert_eq!(vs[1]["e6"][i]["config"]["consistency"], "relative");
        assert!(s["term"].as_f64().unwrap() > 0.0 && s["phi_values"].as_u64().unwrap() > 0);
    }
    analyses_read_their_own_checkpoints(r);
    assert_eq!(scale[2]["batchnorm"], true, "small-resnet18 has BatchNorm");
    assert_eq!(scale[1]["batchnorm"], false, "small-vgg16 has none");
    assert!(md.contains("## The consistency term and its weight (E6 variants)"));
    assert!(md.contains("**Depends on how the consistency term is weighed:**"));
}

#[test]
fn quick_profile_end_to_end() {
    if !fmnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let t0 = std::time::Instant::now();
    let o = run(&out);
    let first = t0.elapsed().as_secs_f64();
    assert!(
        o.status.success(),
        "reproduce failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for f in ["results.json", "report.md", "index.html", "hierarchy.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    for e in ["E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"] {
        assert!(
            r.get(e).is_some_and(|v| !v.is_null()),
            "results.json has no {e}"
        );
        let (mut bad, mut count) = (Vec::new(), 0);
        finite_numbers(&r[e], e, &mut bad, &mut count);
        assert!(bad.is_empty(), "non-finite numbers: {bad:?}");
        assert!(count > 0, "{e} holds no numbers");
    }
    // Every model has its before/after analyses.
    for e in ["E3", "E4", "E5", "E7", "E8"] {
        for tag in ["before", "after"] {
            assert_eq!(r[e][tag].as_array().map(Vec::len), Some(3), "{e}.{tag}");
        }
    }
    assert_eq!(r["E1"]["table1"].as_array().map(Vec::len), Some(12));
    assert_eq!(r["findings"].as_array().map(Vec::len), Some(10));
    findings_carry_intervals(&r);
    units_moved_out(&r, &out);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let board = md
        .find("## Scoreboard")
        .expect("report.md has a scoreboard");
    let table1 = md.find("## Table 1").expect("report.md has Table 1");
    let stages = md
        .find("## Stages")
        .expect("report.md has the stage timings");
    assert!(
        board < table1 && table1 < stages,
        "scoreboard first, timings last"
    );
    assert!(
        !md.contains("commit `unknown`"),
        "the report names its commit"
    );
    variants_side_by_side(&r, &md);
    let auc = r["E5"]["before"][0]["result"]["auc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auc));
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(
        html.contains("data:image/svg+xml;base64,"),
        "no inline SVG figure"
    );
    assert!(
        html.contains("data:image/png;base64,"),
        "no inline PNG grid"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external resource in the report"
    );

    // A rerun finds every stage cached.
    let t1 = std::time::Instant::now();
    let o = run(&out);
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains(" ..."), "a stage ran again: {stderr}");
    eprintln!(
        "quick profile: {first:.1}s, cached rerun {:.1}s",
        t1.elapsed().as_secs_f64()
    );
}

#[test]
fn unknown_profile_is_an_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_advlens"))
        .args(["reproduce", "--profile", "huge", "--out", "/nonexistent/x"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown profile 'huge'"));
}

/// `--seeds 1,2` on the quick profile: one complete run per seed sharing the imported data, and
/// a combined report whose every part holds both seeds' intervals and a combined one.
#[test]
fn seeds_run_once_per_seed_and_combine() {
    if !fmnist_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seeds");
    let o = Command::new(env!("CARGO_BIN_EXE_advlens"))
        .args([
            "--device",
            "cpu",
            "reproduce",
            "--profile",
            "quick",
            "--seeds",
            "1,2",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for s in ["seed-1", "seed-2"] {
        assert!(
            out.join(s).join("results.json").is_file(),
            "{s} has its own run"
        );
        assert!(
            !out.join(s).join("data").exists(),
            "{s} re-imported the data"
        );
    }
    assert!(out.join("data").join("train.safetensors").is_file());
    let r: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["seeds"], serde_json::json!([1, 2]));
    let findings = r["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 10);
    let one: Value =
        serde_json::from_slice(&std::fs::read(out.join("seed-1/results.json")).unwrap()).unwrap();
    for (f, f1) in findings.iter().zip(one["findings"].as_array().unwrap()) {
        assert_eq!(f["per_seed_verdicts"].as_array().map(Vec::len), Some(2));
        assert_eq!(f["per_seed_verdicts"][0], f1["verdict"], "{}", f["id"]);
        for (p, p1) in f["parts"]
            .as_array()
            .unwrap()
            .iter()
            .zip(f1["parts"].as_array().unwrap())
        {
            assert_eq!(
                p["per_seed"][0], p1["ci"],
                "{}: seed 1's interval kept",
                f["id"]
            );
            if let (Some(lo), Some(hi), Some(e)) = (
                p["ci"]["lo"].as_f64(),
                p["ci"]["hi"].as_f64(),
                p["ci"]["est"].as_f64(),
            ) {
                assert!(lo <= e && e <= hi, "{}: combined {lo} {e} {hi}", f["id"]);
            }
        }
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("seed-1") && md.contains("seed-2"), "{md}");
}
