//! `reproduce --emit slurm` and `reproduce --stage` without a cluster: the job graph's scripts,
//! array and dependency edges, and the errors of a stage whose inputs are not finished. (The
//! graph runs on a real Slurm in scripts/test-slurm.sh.)

use std::path::Path;
use std::process::Command;

use advlens::data::{write_split_streaming, SplitSpec};

fn advlens(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_advlens"))
        .args(args)
        .output()
        .expect("the advlens binary runs")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn emit_slurm_writes_the_stage_graph() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    let out = dir.path().join("run");
    let o = advlens(&[
        "--device",
        "cuda",
        "--seed",
        "3",
        "reproduce",
        "--profile",
        "quick",
        "--out",
        out.to_str().unwrap(),
        "--shards",
        "3",
        "--partition",
        "gpu",
        "--emit",
        "slurm",
        jobs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names = advlens(&["reproduce", "--profile", "quick", "--stage", "list"]);
    let stages: Vec<String> = String::from_utf8_lossy(&names.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(stages.first().map(String::as_str), Some("prepare"));
    assert_eq!(stages.last().map(String::as_str), Some("report"));
    let mut scripts: Vec<String> = std::fs::read_dir(&jobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sbatch"))
        .collect();
    scripts.sort();
    // One script per stage, plus the E2 array.
    assert_eq!(scripts.len(), stages.len() + 1, "{scripts:?}");
    let read = |n: &str| std::fs::read_to_string(jobs.join(n)).unwrap();
    let parts = read("04-e2-parts.sbatch");
    assert!(parts.contains("#SBATCH --array=1-3"), "{parts}");
    assert!(
        parts.contains("--stage e2 --shard \"${SLURM_ARRAY_TASK_ID}/3\""),
        "{parts}"
    );
    assert!(parts.contains("#SBATCH --gres=gpu:1") && parts.contains("--partition=gpu"));
    assert!(read("05-e2.sbatch").contains("--stage e2\n"));
    assert!(
        !read("05-e2.sbatch").contains("--gres"),
        "the join asks for a GPU"
    );
    assert!(
        !read("00-prepare.sbatch").contains("--gres"),
        "prepare asks for a GPU"
    );
    let submit = read("submit.sh");
    assert!(
        submit.contains("j4=$(sub --dependency=afterok:$j1:$j2:$j3 "),
        "{submit}"
    );
    assert!(
        submit.contains("j5=$(sub --dependency=afterok:$j4 "),
        "{submit}"
    );
    // Every edge points at a job submitted earlier.
    for (i, line) in submit.lines().filter(|l| l.starts_with('j')).enumerate() {
        for d in line.split("$j").skip(1) {
            let d: usize = d
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(d < i, "job {i} waits for a later job {d}: {line}");
        }
    }
    for s in scripts.iter().map(String::as_str).chain(["submit.sh"]) {
        let ok = Command::new("bash")
            .arg("-n")
            .arg(jobs.join(s))
            .status()
            .unwrap();
        assert!(ok.success(), "{s} is not valid bash");
    }
    let o = advlens(&["reproduce", "--out", "x", "--emit", "pbs", "y"]);
    assert!(
        stderr(&o).contains("unknown --emit kind 'pbs'"),
        "{}",
        stderr(&o)
    );
}

fn tiny_split(path: &Path, n: usize) {
    let spec = SplitSpec {
        channels: 1,
        height: 28,
        width: 28,
        classes: [
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        source: "test".into(),
        extra: vec![],
    };
    write_split_streaming(path, &spec, n, |s| {
        (0..n).try_for_each(|i| s.push(&vec![(i * 7 % 256) as u8; 784], i % 10))
    })
    .unwrap();
}

#[test]
fn a_stage_refuses_to_run_before_its_inputs() {
    if !Path::new("/usr/share/wordnet/data.noun").exists() {
        eprintln!("skipped: /usr/share/wordnet missing (apt-get install wordnet-base)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    tiny_split(&data.join("train.safetensors"), 20);
    tiny_split(&data.join("test.safetensors"), 20);
    let out = dir.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let base = [
        "--device",
        "cpu",
        "reproduce",
        "--profile",
        "quick",
        "--data",
        d,
        "--out",
        o,
    ];
    let run = |extra: &[&str]| advlens(&[&base[..], extra].concat());
    let r = run(&["--stage", "after-e5-small-vgg16"]);
    assert!(!r.status.success());
    let err = stderr(&r);
    assert!(
        err.contains("needs the result of stage 'e1-small-alexnet', which is not finished"),
        "{err}"
    );
    assert!(
        !out.join("after-e5-small-vgg16").exists(),
        "the stage left output"
    );
    let err = stderr(&run(&["--stage", "e3"]));
    assert!(err.contains("unknown stage 'e3'"), "{err}");
    let err = stderr(&run(&["--stage", "e1-small-vgg16", "--shard", "1/2"]));
    assert!(err.contains("does not split"), "{err}");
    let r = run(&["--stage", "prepare"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(out.join("hierarchy.json").is_file());
}

/// A stage folder left by a run with other settings is cleared before the stage runs again
/// (never resumed, never mixed into the new outputs); one of the same settings is kept, so an
/// interrupted stage resumes. Here: E1 trained with seed 3, then rerun with seed 4 (its train
/// folder holds checkpoints of another configuration, which `train` alone would refuse).
#[test]
fn a_stage_folder_of_other_settings_is_cleared_before_the_stage_reruns() {
    if !Path::new("/usr/share/wordnet/data.noun").exists() {
        eprintln!("skipped: /usr/share/wordnet missing (apt-get install wordnet-base)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    tiny_split(&data.join("train.safetensors"), 20);
    tiny_split(&data.join("test.safetensors"), 20);
    let out = dir.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let stage = |seed: &str, name: &str| {
        advlens(&[
            "--device",
            "cpu",
            "--threads",
            "1",
            "--seed",
            seed,
            "reproduce",
            "--profile",
            "quick",
            "--data",
            d,
            "--out",
            o,
            "--stage",
            name,
        ])
    };
    let r = stage("3", "prepare");
    assert!(r.status.success(), "{}", stderr(&r));
    let e1 = out.join("e1-small-alexnet");
    let r = stage("3", "e1-small-alexnet");
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(e1.join("stage.json").is_file());
    let seed_of = || {
        let ck = advlens::nn::checkpoint::load(&e1.join("last.safetensors")).unwrap();
        ck.metadata.get("seed").cloned()
    };
    let first_seed = seed_of();
    // A file of that run (say a figure the new settings no longer make).
    std::fs::write(e1.join("stale.txt"), b"seed 3").unwrap();
    let r = stage("4", "e1-small-alexnet");
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(
        stderr(&r).contains("holds files of other settings; clearing it"),
        "{}",
        stderr(&r)
    );
    assert!(!e1.join("stale.txt").exists(), "a file of seed 3 survived");
    assert_ne!(seed_of(), first_seed, "the model of seed 3 was kept");
    // The same settings again: cached, nothing cleared.
    std::fs::write(e1.join("mine.txt"), b"seed 4").unwrap();
    let r = stage("4", "e1-small-alexnet");
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(e1.join("mine.txt").exists());
}
