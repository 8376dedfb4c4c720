//! `advlens weights import`: a state_dict named as torchvision names ResNet-18's (written here,
//! from torchvision's layout, not from advlens's model) becomes a checkpoint that `eval` and
//! `explain` accept; `num_batches_tracked` may be absent; bad files get one clear error.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use advlens::data::{write_split_streaming, SplitSpec};
use advlens::io::{save_safetensors, OwnedTensor};

const CLASSES: [&str; 4] = ["n01440764", "n01443537", "n01484850", "n01491361"];

/// torchvision's resnet18().state_dict() layout: (name, shape), BatchNorm buffers included.
fn resnet18_names(classes: usize, with_nbt: bool) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = vec![("conv1.weight".into(), vec![64, 3, 7, 7])];
    let bn = |v: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            v.push((format!("{p}.{s}"), vec![c]));
        }
        if with_nbt {
            v.push((format!("{p}.num_batches_tracked"), vec![]));
        }
    };
    bn(&mut v, "bn1", 64);
    let mut cin = 64;
    for (l, cout) in [(1, 64), (2, 128), (3, 256), (4, 512)] {
        for b in 0..2 {
            let p = format!("layer{l}.{b}");
            let ci = if b == 0 { cin } else { cout };
            v.push((format!("{p}.conv1.weight"), vec![cout, ci, 3, 3]));
            bn(&mut v, &format!("{p}.bn1"), cout);
            v.push((format!("{p}.conv2.weight"), vec![cout, cout, 3, 3]));
            bn(&mut v, &format!("{p}.bn2"), cout);
            if b == 0 && l > 1 {
                v.push((format!("{p}.downsample.0.weight"), vec![cout, ci, 1, 1]));
                bn(&mut v, &format!("{p}.downsample.1"), cout);
            }
        }
        cin = cout;
    }
    v.push(("fc.weight".into(), vec![classes, 512]));
    v.push(("fc.bias".into(), vec![classes]));
    v
}

fn write_state_dict(path: &Path, names: &[(String, Vec<usize>)]) {
    let mut seed = 1u32;
    let tensors: Vec<(String, OwnedTensor)> = names
        .iter()
        .map(|(n, shape)| {
            if n.ends_with("num_batches_tracked") {
                return (n.clone(), OwnedTensor::i64(&[], &[7]));
            }
            let len: usize = shape.iter().product();
            let fan = (len / shape[0].max(1)).max(1) as f32;
            let vals: Vec<f32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let u = (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                    if n.ends_with("running_var") || n.ends_with("bn1.weight") {
                        1.0 + 0.1 * u
                    } else {
                        u / fan.sqrt()
                    }
                })
                .collect();
            (n.clone(), OwnedTensor::f32(shape, &vals))
        })
        .collect();
    save_safetensors(path, &tensors, Some(HashMap::new())).unwrap();
}

fn tiny_split(path: &Path) {
    let spec = SplitSpec {
        channels: 3,
        height: 224,
        width: 224,
        classes: CLASSES.iter().map(|s| s.to_string()).collect(),
        source: "test".into(),
        extra: vec![],
    };
    write_split_streaming(path, &spec, 2, |s| {
        s.push(&vec![100u8; 3 * 224 * 224], 0)?;
        s.push(&vec![200u8; 3 * 224 * 224], 3)
    })
    .unwrap();
}

fn advlens(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_advlens"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .expect("the advlens binary runs")
}

fn import(sd: &Path, classes: &Path, out: &Path) -> std::process::Output {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (sd, classes, out) = (s(sd), s(classes), s(out));
    advlens(&[
        "weights",
        "import",
        "--model",
        "resnet18",
        "--from",
        &sd,
        "--classes",
        &classes,
        "--out",
        &out,
    ])
}

fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn torchvision_state_dict_imports_and_every_command_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let classes = d.join("classes.txt");
    std::fs::write(&classes, CLASSES.join("\n") + "\n").unwrap();
    let data = d.join("val.safetensors");
    tiny_split(&data);
    let (sd, ck) = (d.join("sd.safetensors"), d.join("ckpt.safetensors"));
    // torch's load_state_dict accepts a file without num_batches_tracked: so do we.
    write_state_dict(&sd, &resnet18_names(CLASSES.len(), false));
    let (sds, datas, cks) = (
        sd.to_str().unwrap(),
        data.to_str().unwrap(),
        ck.to_str().unwrap(),
    );
    // A bare state_dict is not a checkpoint: eval refuses it, naming what to do.
    let o = advlens(&["eval", "--ckpt", sds, "--data", datas]);
    assert!(!o.status.success());
    ok(&import(&sd, &classes, &ck), "weights import");
    let o = advlens(&["--json", "eval", "--ckpt", cks, "--data", datas]);
    ok(&o, "eval of the imported checkpoint");
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["images"].as_u64(), Some(2), "{r}");
    if Path::new("/usr/share/wordnet/data.noun").exists() {
        let out = d.join("explain");
        let o = advlens(&[
            "explain",
            "--ckpt",
            cks,
            "--data",
            datas,
            "--index",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]);
        ok(&o, "explain of the imported checkpoint");
    }
    // With num_batches_tracked (as torch saves it) the import works too.
    write_state_dict(&sd, &resnet18_names(CLASSES.len(), true));
    let ck2 = d.join("ckpt2.safetensors");
    ok(
        &import(&sd, &classes, &ck2),
        "import with num_batches_tracked",
    );
}

#[test]
fn bad_state_dicts_get_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let classes = d.join("classes.txt");
    std::fs::write(&classes, CLASSES.join("\n")).unwrap();
    let sd = d.join("sd.safetensors");
    let out = d.join("out.safetensors");
    // 1000-class fc against a 4-class list.
    write_state_dict(&sd, &resnet18_names(1000, true));
    let o = import(&sd, &classes, &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tensor 'fc.") && err.contains("4 classes"),
        "{err}"
    );
    // A missing parameter is named.
    let mut names = resnet18_names(4, true);
    names.retain(|(n, _)| n != "layer3.1.conv2.weight");
    write_state_dict(&sd, &names);
    let err = String::from_utf8_lossy(&import(&sd, &classes, &out).stderr).to_string();
    assert!(err.contains("layer3.1.conv2.weight"), "{err}");
    assert!(!out.exists(), "a failed import left an output");
    // The output never overwrites the input.
    write_state_dict(&sd, &resnet18_names(4, true));
    let o = import(&sd, &classes, &sd);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("never overwrites"));
}
