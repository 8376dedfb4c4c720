//! Issue 13: nothing clobbered, nothing lost, nothing silently mixed. Each test drives the built
//! binary (or the library function every command shares) the way a careless or hostile user
//! would, and checks that the input survives, the run refuses with a clear message and a non-zero
//! exit, and no partial or poisoned output appears.
//!
//! Fixture: a synthetic 3-class set of 1x12x12 images and a small-resnet18 of width 2 trained
//! on it for one epoch through the CLI (a few seconds on two cores).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use advlens::data::{write_split_streaming, SplitSpec};
use advlens::io::{save_safetensors, Dtype, OwnedTensor, SafeFile};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_advlens"));
    c.args(["--device", "cpu", "--threads", "1"]);
    c
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = bin();
    for a in args {
        c.arg(a);
    }
    c.output().expect("advlens runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit 1 with an advlens error (not a panic, 101, or an abort, 134) whose text holds `needles`.
fn assert_refused(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a clean error, got {:?}: {e}",
        o.status
    );
    assert!(e.contains("advlens: error:"), "{e}");
    for n in needles {
        assert!(e.contains(n), "'{n}' missing from: {e}");
    }
}

/// A split of `n` 1x12x12 images of 3 classes; `invert` flips every pixel (same size, same
/// labels, other content).
fn dataset(path: &Path, n: usize, invert: bool) {
    let spec = SplitSpec {
        channels: 1,
        height: 12,
        width: 12,
        classes: vec!["a".into(), "b".into(), "c".into()],
        source: "synthetic".into(),
        extra: vec![],
    };
    write_split_streaming(path, &spec, n, |sink| {
        for i in 0..n {
            let label = i % 3;
            let img: Vec<u8> = (0..144)
                .map(|j| {
                    let v = ((j * (label + 1) * 7 + i * 13) % 256) as u8;
                    if invert {
                        255 - v
                    } else {
                        v
                    }
                })
                .collect();
            sink.push(&img, label)?;
        }
        Ok(())
    })
    .unwrap();
}

struct Fixture {
    dir: PathBuf,
    data: PathBuf,
    ckpt: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("reliability-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data.safetensors");
        dataset(&data, 48, false);
        let run_dir = dir.join("base");
        let o = run(&[
            &"train",
            &"--model",
            &"small-resnet18",
            &"--width",
            &"2",
            &"--data",
            &data,
            &"--epochs",
            &"1",
            &"--batch",
            &"8",
            &"--out",
            &run_dir,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        Fixture {
            ckpt: run_dir.join("last.safetensors"),
            dir,
            data,
        }
    })
}

fn scratch(name: &str) -> PathBuf {
    let d = fixture().dir.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Rewrite a safetensors file, letting `edit` change tensors (name, dtype, f32 values) and
/// metadata.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit_tensor: impl Fn(&str, &mut Vec<f32>),
    edit_meta: impl Fn(&mut HashMap<String, String>),
) {
    let f = SafeFile::open(src).unwrap();
    let mut meta = f.metadata();
    edit_meta(&mut meta);
    let mut tensors = Vec::new();
    for name in f.names() {
        let (dt, shape, bytes) = f.bytes(&name).unwrap();
        let t = if dt == Dtype::F32 {
            let mut v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            edit_tensor(&name, &mut v);
            OwnedTensor::f32(shape, &v)
        } else {
            OwnedTensor {
                dtype: dt,
                shape: shape.to_vec(),
                data: bytes.to_vec(),
            }
        };
        tensors.push((name, t));
    }
    save_safetensors(dst, &tensors, Some(meta)).unwrap();
}

// ---- 1. no output overwrites an input ---------------------------------------------------------

#[test]
fn an_output_over_an_input_is_refused_before_any_work() {
    let f = fixture();
    let dir = scratch("clobber");
    let data = dir.join("data.safetensors");
    std::fs::copy(&f.data, &data).unwrap();
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    let ckpt = base.join("last.safetensors");
    std::fs::copy(&f.ckpt, &ckpt).unwrap();
    let data_bytes = std::fs::read(&data).unwrap();
    let ckpt_bytes = std::fs::read(&ckpt).unwrap();

    // attack fgs --out = the dataset.
    let o = run(&[
        &"attack", &"fgs", &"--ckpt", &ckpt, &"--data", &data, &"--eps", &"1", &"--out", &data,
    ]);
    assert_refused(&o, &["--out", "is the input --data"]);
    // attack ifgs --out = the checkpoint.
    let o = run(&[
        &"attack", &"ifgs", &"--ckpt", &ckpt, &"--data", &data, &"--steps", &"1", &"--out", &ckpt,
    ]);
    assert_refused(&o, &["is the input --ckpt"]);
    // Through a symlink and a `..` detour, still the same file.
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(&data, &link).unwrap();
    let o = run(&[
        &"attack", &"fgs", &"--ckpt", &ckpt, &"--data", &data, &"--eps", &"1", &"--out", &link,
    ]);
    assert_refused(&o, &["is the input --data"]);
    let detour = base.join("..").join("data.safetensors");
    let o = run(&[
        &"attack", &"fgs", &"--ckpt", &ckpt, &"--data", &data, &"--eps", &"1", &"--out", &detour,
    ]);
    assert_refused(&o, &["is the input --data"]);
    // advtrain --out = the base checkpoint's own directory (it contains the input).
    let o = run(&[
        &"advtrain",
        &"--ckpt",
        &ckpt,
        &"--data",
        &data,
        &"--epochs",
        &"1",
        &"--steps",
        &"1",
        &"--batch",
        &"8",
        &"--out",
        &base,
    ]);
    assert_refused(&o, &["contains the input --ckpt"]);
    // train --out = the dataset's directory.
    let o = run(&[
        &"train",
        &"--model",
        &"small-resnet18",
        &"--width",
        &"2",
        &"--data",
        &data,
        &"--epochs",
        &"1",
        &"--out",
        &dir,
    ]);
    assert_refused(&o, &["contains the input --data"]);
    // op --out = op --in.
    let o = run(&[&"op", &"linear", &"--in", &ckpt, &"--out", &ckpt]);
    assert_refused(&o, &["is the input --in"]);
    // An output directory inside the adversarial set it reads.
    let adv = dir.join("adv");
    std::fs::create_dir_all(&adv).unwrap();
    let o = run(&[
        &"ratios",
        &"--ckpt",
        &ckpt,
        &"--data",
        &data,
        &"--adv",
        &adv,
        &"--out",
        &adv.join("r"),
    ]);
    assert_refused(&o, &["lies inside the input --adv"]);
    // wordnet build --out = the class list.
    let classes = dir.join("classes.txt");
    std::fs::write(&classes, "n02783161\tball pen\n").unwrap();
    let class_bytes = std::fs::read(&classes).unwrap();
    let o = run(&[
        &"wordnet",
        &"build",
        &"--classes",
        &classes,
        &"--out",
        &classes,
    ]);
    assert_refused(&o, &["is the input --classes"]);

    assert_eq!(
        std::fs::read(&data).unwrap(),
        data_bytes,
        "the dataset was changed"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        ckpt_bytes,
        "the checkpoint was changed"
    );
    assert_eq!(
        std::fs::read(&classes).unwrap(),
        class_bytes,
        "the class list was changed"
    );
    assert_eq!(
        std::fs::read_dir(&base).unwrap().count(),
        1,
        "advtrain wrote into the base model's directory"
    );
}

#[test]
fn resolve_path_handles_missing_components_and_links() {
    let dir = scratch("resolve");
    let real = dir.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.join("alias")).unwrap();
    let canon = real.canonicalize().unwrap();
    let got = advlens::io::resolve_path(&dir.join("alias").join("new").join("x.json")).unwrap();
    assert_eq!(got, canon.join("new").join("x.json"));
    let got =
        advlens::io::resolve_path(&dir.join("alias").join("new").join("..").join("y")).unwrap();
    assert_eq!(got, canon.join("y"));
    // Unrelated paths pass.
    advlens::io::refuse_overwrite(("--out", &dir.join("out")), &[("--data", &real)]).unwrap();
}

// ---- 2. numeric guards ------------------------------------------------------------------------

#[test]
fn a_diverged_model_is_never_written_and_the_run_fails() {
    let f = fixture();
    let dir = scratch("diverge");
    let out = dir.join("run");
    let o = run(&[
        &"train",
        &"--model",
        &"small-resnet18",
        &"--width",
        &"2",
        &"--data",
        &f.data,
        &"--epochs",
        &"2",
        &"--batch",
        &"8",
        &"--optim",
        &"sgd",
        &"--lr",
        &"1e30",
        &"--out",
        &out,
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a diverged run must fail: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("diverged"), "{}", stderr(&o));
    // Whatever checkpoint exists loads: it holds finite weights only.
    for e in std::fs::read_dir(&out).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            advlens::nn::Model::load(&p)
                .unwrap_or_else(|e| panic!("{} is poisoned: {e}", p.display()));
        }
    }
    // The library guard itself: a model with a NaN parameter is never saved.
    let mut m = advlens::nn::Model::load(&f.ckpt).unwrap();
    if let Some(p) = m.params_mut().into_iter().next() {
        p.value =
            advlens::Tensor::from_vec(p.value.shape(), vec![f32::NAN; p.value.numel()]).unwrap();
    }
    let bad = dir.join("nan.safetensors");
    let e = m.save(&bad, 1).unwrap_err().to_string();
    assert!(e.contains("refusing to write"), "{e}");
    assert!(!bad.exists());
}

/// The step number in "diverged at epoch E step S" of a divergence error.
fn diverged_step(e: &str, epoch: usize) -> usize {
    let tag = format!("diverged at epoch {epoch} step ");
    let at = e.find(&tag).unwrap_or_else(|| panic!("no '{tag}' in: {e}"));
    let digits: String = e[at + tag.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().unwrap()
}

/// Weights that go NaN while the loss stays finite (SGD at lr 1e30: the loss reads 0 behind dead
/// ReLUs) are caught within `PARAM_CHECK_EVERY` steps, not at the end of the epoch (24 steps
/// here); when an earlier epoch was good, its checkpoint is kept and named.
#[test]
fn divergence_stops_training_within_a_few_steps_and_keeps_the_last_good_checkpoint() {
    let f = fixture();
    let dir = scratch("diverge-steps");
    let every = advlens::nn::diverge::PARAM_CHECK_EVERY;
    let train = |out: &Path, extra: &[&str]| {
        let mut c = bin();
        c.args([
            "train",
            "--model",
            "small-resnet18",
            "--width",
            "2",
            "--data",
        ])
        .arg(&f.data)
        .args(["--epochs", "2", "--batch", "2", "--optim", "sgd", "--out"])
        .arg(out)
        .args(extra);
        c.output().unwrap()
    };
    let out = dir.join("first-epoch");
    let o = train(&out, &["--lr", "1e30"]);
    assert_refused(&o, &["diverged", "no checkpoint of this run was written"]);
    let step = diverged_step(&stderr(&o), 1);
    assert!(
        step <= every,
        "caught at step {step}, after {every}: {}",
        stderr(&o)
    );
    assert!(!out.join("last.safetensors").exists());

    // Epoch 1 trains at lr 0.01, epoch 2 at 0.01 * 1e32.
    let out = dir.join("second-epoch");
    let o = train(
        &out,
        &["--lr", "0.01", "--lr-milestones", "1", "--lr-gamma", "1e32"],
    );
    assert_refused(&o, &["diverged", "is the last good checkpoint, unchanged"]);
    let step = diverged_step(&stderr(&o), 2);
    assert!(
        step <= every,
        "caught at step {step}, after {every}: {}",
        stderr(&o)
    );
    assert!(!out.join("epoch-002.safetensors").exists());
    let last = advlens::nn::checkpoint::load(&out.join("last.safetensors")).unwrap();
    assert_eq!(last.epoch, 1);
}

/// `advtrain` has the same guard: a diverging fine-tune stops at the step, saves nothing, fails.
#[test]
fn divergence_stops_advtrain_at_the_step() {
    let f = fixture();
    let out = scratch("diverge-adv").join("run");
    let o = run(&[
        &"advtrain",
        &"--ckpt",
        &f.ckpt,
        &"--data",
        &f.data,
        &"--batch",
        &"2",
        &"--steps",
        &"1",
        &"--optim",
        &"sgd",
        &"--lr",
        &"1e30",
        &"--out",
        &out,
    ]);
    assert_refused(
        &o,
        &["adversarial training diverged at epoch 1 step", "not saved"],
    );
    let step = diverged_step(&stderr(&o), 1);
    assert!(
        step <= advlens::nn::diverge::PARAM_CHECK_EVERY,
        "{}",
        stderr(&o)
    );
    assert!(!out.join("last.safetensors").exists());
}

#[test]
fn resume_refuses_a_corrupt_optimiser_state() {
    let f = fixture();
    let dir = scratch("optstate");
    for (case, value) in [("nan", f32::NAN), ("negative", -1.0f32)] {
        let bad = dir.join(format!("{case}.safetensors"));
        rewrite(
            &f.ckpt,
            &bad,
            |name, v| {
                if name.ends_with(".exp_avg_sq") {
                    v[0] = value;
                }
            },
            |_| {},
        );
        let out = dir.join(format!("run-{case}"));
        let o = run(&[
            &"train",
            &"--model",
            &"small-resnet18",
            &"--data",
            &f.data,
            &"--epochs",
            &"2",
            &"--out",
            &out,
            &"--resume",
            &bad,
        ]);
        assert_refused(&o, &["exp_avg_sq", "cannot resume"]);
        assert!(!out.join("epoch-002.safetensors").exists());
    }
}

#[test]
fn eval_and_attacks_stop_on_non_finite_logits() {
    let f = fixture();
    let dir = scratch("overflow");
    let big = dir.join("big.safetensors");
    // Finite weights whose products overflow f32.
    rewrite(
        &f.ckpt,
        &big,
        |name, v| {
            if name.ends_with("weight") && !name.contains("bn") && !name.starts_with("optim.") {
                v.iter_mut().for_each(|x| *x = 3e38);
            }
        },
        |_| {},
    );
    let o = run(&[&"eval", &"--ckpt", &big, &"--data", &f.data]);
    assert_refused(&o, &["non-finite"]);
    let out = dir.join("fgs.json");
    let o = run(&[
        &"attack", &"fgs", &"--ckpt", &big, &"--data", &f.data, &"--eps", &"1", &"--out", &out,
    ]);
    assert_refused(&o, &["non-finite"]);
    assert!(!out.exists());
    let o = run(&[
        &"attack", &"ifgs", &"--ckpt", &big, &"--data", &f.data, &"--steps", &"1",
    ]);
    assert_refused(&o, &["non-finite"]);
}

// ---- 3. a closed stdout is not a crash --------------------------------------------------------

#[test]
fn a_closed_stdout_does_not_kill_the_run() {
    let f = fixture();
    let dir = scratch("epipe");
    let out = dir.join("run");
    let mut child = bin()
        .args([
            "train",
            "--model",
            "small-resnet18",
            "--width",
            "2",
            "--data",
        ])
        .arg(&f.data)
        .args(["--epochs", "2", "--batch", "8", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `| head -0`: the reader goes away before the first line.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    assert!(
        out.join("epoch-002.safetensors").exists(),
        "training was abandoned"
    );

    let json = dir.join("fgs.json");
    let mut child = bin()
        .args(["attack", "fgs", "--ckpt"])
        .arg(&f.ckpt)
        .arg("--data")
        .arg(&f.data)
        .args(["--eps", "1", "--out"])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v[0]["images"], 48);
}

// ---- 4. no allocation sized by untrusted input ------------------------------------------------

#[test]
fn checkpoint_metadata_cannot_size_an_allocation() {
    let f = fixture();
    let dir = scratch("bigmeta");
    for (key, value, needle) in [
        ("width", "100000", "width"),
        ("num_classes", "10000000000", "classes"),
        ("width", "3", "conv1.weight"),
        ("num_classes", "7", "fc.weight"),
    ] {
        let bad = dir.join(format!("{key}-{value}.safetensors"));
        rewrite(
            &f.ckpt,
            &bad,
            |_, _| {},
            |m| {
                m.insert(key.into(), value.into());
            },
        );
        let o = run(&[&"eval", &"--ckpt", &bad, &"--data", &f.data]);
        assert_refused(&o, &[needle]);
    }
    let o = run(&[
        &"train",
        &"--model",
        &"small-resnet18",
        &"--width",
        &"100000",
        &"--data",
        &f.data,
        &"--out",
        &dir.join("wide"),
    ]);
    assert_refused(&o, &["width 100000", "limit of 512"]);
}

#[test]
fn conv_geometry_uses_checked_arithmetic() {
    let dir = scratch("geom");
    let case = dir.join("case.safetensors");
    save_safetensors(
        &case,
        &[
            ("x".into(), OwnedTensor::f32(&[1, 1, 4, 4], &[1.0; 16])),
            ("w".into(), OwnedTensor::f32(&[1, 1, 3, 3], &[1.0; 9])),
            ("b".into(), OwnedTensor::f32(&[1], &[0.0])),
        ],
        None,
    )
    .unwrap();
    let out = dir.join("y.safetensors");
    for pad in ["4611686018427387904", "9223372036854775808", "100000"] {
        let o = run(&[
            &"op", &"conv2d", &"--in", &case, &"--out", &out, &"--pad", &pad,
        ]);
        assert_refused(&o, &["conv2d"]);
        assert!(!out.exists());
    }
    for (kernel, pad) in [("4611686018427387904", "2305843009213693952"), ("2", "1")] {
        let o = run(&[
            &"op",
            &"maxpool2d",
            &"--in",
            &case,
            &"--out",
            &out,
            &"--kernel",
            &kernel,
            &"--pad",
            &pad,
        ]);
        if kernel == "2" {
            assert!(o.status.success(), "{}", stderr(&o));
        } else {
            assert_refused(&o, &["limit"]);
        }
    }
}

#[test]
fn a_huge_png_is_refused_or_skipped_and_leaves_no_temp_file() {
    let dir = scratch("png");
    let src = dir.join("src");
    for class in ["a", "b"] {
        std::fs::create_dir_all(src.join(class)).unwrap();
        image::RgbImage::from_pixel(8, 8, image::Rgb([10, 20, 30]))
            .save(src.join(class).join("ok.png"))
            .unwrap();
    }
    // 1 x 20,000,000 pixels: a small file that would resize to 256 x 5,120,000,000.
    image::GrayImage::new(1, 20_000_000)
        .save(src.join("a").join("tall.png"))
        .unwrap();
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("split.safetensors");
    let o = run(&[
        &"data",
        &"import-folder",
        &"--src",
        &src,
        &"--out",
        &out,
        &"--size",
        &"4",
        &"--resize",
        &"4",
    ]);
    assert_refused(&o, &["tall.png", "limit"]);
    assert!(!out.exists());
    let o = run(&[
        &"data",
        &"import-folder",
        &"--src",
        &src,
        &"--out",
        &out,
        &"--size",
        &"4",
        &"--resize",
        &"4",
        &"--skip-bad",
        &"--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"], 2);
    assert_eq!(v["skipped"].as_array().map(Vec::len), Some(1));
    let names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["split.safetensors".to_string()],
        "litter: {names:?}"
    );
}

// ---- 5. one run per output directory ----------------------------------------------------------

#[test]
fn a_second_run_into_a_locked_directory_is_refused_with_the_holder_pid() {
    let f = fixture();
    let dir = scratch("lock");
    let out = dir.join("run");
    let lock = advlens::io::RunLock::acquire(&out).unwrap();
    let o = run(&[
        &"train",
        &"--model",
        &"small-resnet18",
        &"--width",
        &"2",
        &"--data",
        &f.data,
        &"--epochs",
        &"1",
        &"--batch",
        &"8",
        &"--out",
        &out,
    ]);
    assert_refused(
        &o,
        &["in use", format!("PID {}", std::process::id()).as_str()],
    );
    assert!(!out.join("last.safetensors").exists());
    drop(lock);
    let o = run(&[
        &"train",
        &"--model",
        &"small-resnet18",
        &"--width",
        &"2",
        &"--data",
        &f.data,
        &"--epochs",
        &"1",
        &"--batch",
        &"8",
        &"--out",
        &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn train_refuses_a_directory_of_another_run() {
    let f = fixture();
    let dir = scratch("mix");
    let out = dir.join("run");
    let train = |lr: &str, data: &Path| {
        run(&[
            &"train",
            &"--model",
            &"small-resnet18",
            &"--width",
            &"2",
            &"--data",
            &data,
            &"--epochs",
            &"1",
            &"--batch",
            &"8",
            &"--lr",
            &lr,
            &"--out",
            &out,
        ])
    };
    let o = train("0.001", &f.data);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(out.join("last.safetensors")).unwrap();
    let o = train("0.002", &f.data);
    assert_refused(&o, &["of another run", "lr"]);
    // Same settings, other pixels (same size and labels).
    let inverted = dir.join("inverted.safetensors");
    dataset(&inverted, 48, true);
    let o = train("0.001", &inverted);
    assert_refused(&o, &["other data"]);
    assert_eq!(std::fs::read(out.join("last.safetensors")).unwrap(), before);
    // Resuming on other data is refused as well.
    let o = run(&[
        &"train",
        &"--model",
        &"small-resnet18",
        &"--data",
        &inverted,
        &"--epochs",
        &"2",
        &"--out",
        &dir.join("other"),
        &"--resume",
        &out.join("last.safetensors"),
    ]);
    assert_refused(&o, &["other data"]);
    // A file as --out fails before epoch 1, saying what is wrong.
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = run(&[
        &"train",
        &"--model",
        &"small-resnet18",
        &"--width",
        &"2",
        &"--data",
        &f.data,
        &"--out",
        &file,
    ]);
    assert_refused(&o, &["is a file"]);
    // A read-only directory fails before epoch 1 too.
    let ro = dir.join("read-only");
    std::fs::create_dir_all(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    perm.set_readonly(true);
    std::fs::set_permissions(&ro, perm).unwrap();
    let o = run(&[
        &"train",
        &"--model",
        &"small-resnet18",
        &"--width",
        &"2",
        &"--data",
        &f.data,
        &"--out",
        &ro,
    ]);
    assert_refused(&o, &["read-only"]);
}

#[test]
fn ensemble_shards_of_replaced_data_are_never_reused_and_readers_verify_checksums() {
    let f = fixture();
    let dir = scratch("stale");
    let data = dir.join("data.safetensors");
    std::fs::copy(&f.data, &data).unwrap();
    let out = dir.join("adv");
    let attack = || {
        run(&[
            &"--json",
            &"attack",
            &"ensemble",
            &"--models",
            &f.ckpt,
            &"--data",
            &data,
            &"--targets",
            &"2",
            &"--steps",
            &"2",
            &"--limit",
            &"4",
            &"--shard-size",
            &"2",
            &"--out",
            &out,
        ])
    };
    let o = attack();
    assert!(o.status.success(), "{}", stderr(&o));
    dataset(&data, 48, true);
    let o = attack();
    assert_refused(&o, &["another attack run"]);

    // A bit flipped in a shard: every reader refuses the set.
    advlens::attack::advset::AdvSet::open(&out).unwrap();
    let shard = out.join(advlens::attack::advset::shard_name(0));
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    let e = advlens::attack::advset::AdvSet::open(&out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("checksum"), "{e}");
    let o = run(&[
        &"ratios",
        &"--ckpt",
        &f.ckpt,
        &"--data",
        &f.data,
        &"--adv",
        &out,
        &"--out",
        &dir.join("ratios"),
    ]);
    assert_refused(&o, &["checksum"]);
}

/// A manifest names its shards by plain file name only: one naming `../x` (whose bytes and
/// checksum match) makes neither a reader open nor `attack merge` write outside the set's folder.
#[test]
fn a_manifest_naming_a_path_outside_its_folder_is_refused() {
    let f = fixture();
    let dir = scratch("traversal");
    let part = dir.join("part");
    let o = run(&[
        &"attack",
        &"ensemble",
        &"--models",
        &f.ckpt,
        &"--data",
        &f.data,
        &"--targets",
        &"2",
        &"--steps",
        &"1",
        &"--limit",
        &"2",
        &"--out",
        &part,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shard = advlens::attack::advset::shard_name(0);
    // The shard moved next to the folder, the manifest pointing at it through `..`.
    std::fs::rename(part.join(&shard), dir.join(&shard)).unwrap();
    let mpath = part.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["shards"][0]["file"] = serde_json::json!(format!("../{shard}"));
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let e = advlens::attack::advset::AdvSet::open(&part)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a shard name"), "{e}");
    // merge --out merged/sub: the entry would be written to merged/<shard>, outside --out.
    let merged = dir.join("merged");
    let o = run(&[&"attack", &"merge", &"--out", &merged.join("sub"), &part]);
    assert_refused(&o, &["is not a shard name"]);
    assert!(!merged.join(&shard).exists(), "merge wrote outside --out");
}

// ---- 8. WordNet in polynomial time ------------------------------------------------------------

#[test]
fn a_hypernym_cycle_is_reported_quickly() {
    let dir = scratch("wordnet");
    // entity, plus 13 synsets that are all hypernyms of one another: 12! upward paths.
    let mut text = String::from("00001740 03 n 01 entity 0 000 | that which exists\n");
    let ids: Vec<u32> = (1..=13).map(|i| 100_000 + i).collect();
    for &a in &ids {
        let ptrs: Vec<String> = ids
            .iter()
            .filter(|&&b| b != a)
            .map(|b| format!("@ {b:08} n 0000"))
            .collect();
        text += &format!(
            "{a:08} 03 n 01 thing_{a} 0 {:03} {} | a synset\n",
            ptrs.len(),
            ptrs.join(" ")
        );
    }
    let noun = dir.join("data.noun");
    std::fs::write(&noun, text).unwrap();
    let classes = dir.join("classes.txt");
    std::fs::write(&classes, "n00100001\nn00100002\n").unwrap();
    let out = dir.join("h.json");
    let t0 = Instant::now();
    let mut child = bin()
        .args(["wordnet", "build", "--classes"])
        .arg(&classes)
        .arg("--wordnet")
        .arg(&noun)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("wordnet build still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_refused(&o, &["cycle", "n00100001"]);
    assert!(!out.exists());
}

// ---- 6. no litter -----------------------------------------------------------------------------

#[test]
fn dead_runs_temporaries_are_removed_and_long_names_fit() {
    let f = fixture();
    let dir = scratch("litter");
    // PIDs above the kernel's pid_max (at most 2^22) belong to no process.
    let stale = dir.join(".fgs.json.tmp-999999999");
    std::fs::write(&stale, b"half a report").unwrap();
    let out = dir.join("fgs.json");
    let o = run(&[
        &"attack", &"fgs", &"--ckpt", &f.ckpt, &"--data", &f.data, &"--eps", &"1", &"--out", &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.exists());
    assert!(!stale.exists(), "the dead run's temporary is still there");
    // A file name of 250 bytes: its temporary must still fit the 255-byte limit.
    let long = dir.join(format!("{}.json", "x".repeat(245)));
    let o = run(&[
        &"attack", &"fgs", &"--ckpt", &f.ckpt, &"--data", &f.data, &"--eps", &"1", &"--out", &long,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(long.exists());
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for n in ["a", &"é".repeat(126), &"y".repeat(255)] {
        let stem = advlens::io::temp_stem(n);
        assert!(stem.len() + 10 <= 255, "{} bytes", stem.len());
    }
}

// ---- 7. no silent no-op -----------------------------------------------------------------------

#[test]
fn runs_that_would_do_nothing_are_errors() {
    let f = fixture();
    let dir = scratch("noop");
    for (limit, needle) in [("0", "0 image(s)"), ("1", "1 image(s)")] {
        let out = dir.join(format!("limit-{limit}"));
        let o = run(&[
            &"train",
            &"--model",
            &"small-resnet18",
            &"--width",
            &"2",
            &"--data",
            &f.data,
            &"--epochs",
            &"1",
            &"--limit",
            &limit,
            &"--out",
            &out,
        ]);
        assert_refused(&o, &[needle]);
        assert!(!out.join("last.safetensors").exists());
    }
    for gamma in ["0", "NaN", "-1"] {
        let o = run(&[
            &"train",
            &"--model",
            &"small-resnet18",
            &"--width",
            &"2",
            &"--data",
            &f.data,
            &"--epochs",
            &"1",
            &format!("--lr-gamma={gamma}"),
            &"--out",
            &dir.join("gamma"),
        ]);
        assert_refused(&o, &["--lr-gamma"]);
    }
    let o = run(&[
        &"eval", &"--ckpt", &f.ckpt, &"--data", &f.data, &"--limit", &"0",
    ]);
    assert_refused(&o, &["--limit 0"]);
    let o = run(&[
        &"reproduce",
        &"--profile",
        &"quick",
        &"--fmnist",
        &dir.join("nowhere"),
        &"--out",
        &dir.join("repro"),
    ]);
    assert_refused(&o, &["--fmnist", "does not exist"]);
    assert!(!stderr(&o).contains("device unavailable"), "{}", stderr(&o));
}

#[test]
fn a_truncated_jpeg_is_an_error_or_a_skip() {
    let dir = scratch("jpeg");
    let src = dir.join("src");
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/photos");
    let jpg = std::fs::read(photos.join("n04008634/rocket.jpg")).unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(src.join(class)).unwrap();
        std::fs::write(src.join(class).join("whole.jpg"), &jpg).unwrap();
    }
    std::fs::write(src.join("a").join("cut.jpg"), &jpg[..jpg.len() / 2]).unwrap();
    let out = dir.join("split.safetensors");
    let o = run(&[
        &"data",
        &"import-folder",
        &"--src",
        &src,
        &"--out",
        &out,
        &"--size",
        &"8",
        &"--resize",
        &"8",
    ]);
    assert_refused(&o, &["cut.jpg", "truncated JPEG"]);
    assert!(!out.exists());
    let o = run(&[
        &"--json",
        &"data",
        &"import-folder",
        &"--src",
        &src,
        &"--out",
        &out,
        &"--size",
        &"8",
        &"--resize",
        &"8",
        &"--skip-bad",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["images"], 2);
}

#[test]
fn advtrain_refuses_a_directory_of_another_run_and_other_data() {
    let f = fixture();
    let dir = scratch("advmix");
    let out = dir.join("adv");
    let adv = |beta: &str, data: &Path, out: &Path, resume: Option<&Path>| {
        let mut c = bin();
        c.args(["advtrain", "--ckpt"])
            .arg(&f.ckpt)
            .arg("--data")
            .arg(data)
            .args([
                "--epochs", "1", "--steps", "1", "--batch", "8", "--beta", beta,
            ])
            .arg("--out")
            .arg(out);
        if let Some(r) = resume {
            c.arg("--resume").arg(r);
        }
        c.output().unwrap()
    };
    let o = adv("0.1", &f.data, &out, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = adv("0.2", &f.data, &out, None);
    assert_refused(&o, &["of another run"]);
    let inverted = dir.join("inverted.safetensors");
    dataset(&inverted, 48, true);
    let o = adv("0.1", &inverted, &out, None);
    assert_refused(&o, &["other data"]);
    let o = adv(
        "0.1",
        &inverted,
        &dir.join("elsewhere"),
        Some(&out.join("last.safetensors")),
    );
    assert_refused(&o, &["other data"]);
}

#[test]
fn neurons_checks_its_grid_and_occlusion_options_before_mining() {
    let f = fixture();
    let dir = scratch("neurons");
    let adv = dir.join("adv");
    let o = run(&[
        &"attack",
        &"ensemble",
        &"--models",
        &f.ckpt,
        &"--data",
        &f.data,
        &"--targets",
        &"2",
        &"--steps",
        &"1",
        &"--limit",
        &"6",
        &"--out",
        &adv,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let classes = dir.join("classes.txt");
    std::fs::write(&classes, "n02783161\ta\nn03063599\tb\nn04008634\tc\n").unwrap();
    for (flag, value, needle) in [
        ("--occlusion", "100:1", "--occlusion 100:1"),
        ("--grid-images", "0", "--grid-images"),
    ] {
        let out = dir.join(format!("out{}", flag.len()));
        let o = run(&[
            &"neurons",
            &"--ckpt",
            &f.ckpt,
            &"--data",
            &f.data,
            &"--adv",
            &adv,
            &"--classes",
            &classes,
            &"--out",
            &out,
            &flag,
            &value,
        ]);
        assert_refused(&o, &[needle]);
        assert!(
            !out.join("fig4_lc_cs.svg").exists(),
            "mined before checking {flag}"
        );
        assert!(!out.join("neurons.json").exists());
    }
}
