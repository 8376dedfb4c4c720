//! Datasets: IDX import on Debian's real Fashion-MNIST files, image-folder import on real
//! photographs, `data info`, the batch iterator, and one clear error per kind of bad input.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use advlens::data::folder::{import_folder, FolderOptions};
use advlens::data::idx::{import_fashion_mnist, read_header, FASHION_MNIST_CLASSES};
use advlens::data::{write_split_streaming, Batches, Dataset, SplitSpec};
use advlens::io::{save_safetensors, OwnedTensor};
use advlens::rng::Rng;

const FMNIST: &str = "/usr/share/datasets/fashion-mnist";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_advlens"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/photos")
}

fn gunzip_prefix(path: &Path, n: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut d = flate2::read::GzDecoder::new(f).take(n as u64);
    let mut v = Vec::new();
    d.read_to_end(&mut v).unwrap();
    assert_eq!(v.len(), n);
    v
}

/// Entries of a directory (names), sorted, hidden ones included.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn assert_err_mentions(e: &advlens::Error, needles: &[&str]) {
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
    }
}

// ---------------------------------------------------------------- IDX import (real files)

#[test]
fn import_idx_real_fashion_mnist_with_limits() {
    let src = Path::new(FMNIST);
    let h = read_header(&src.join("train-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(h.dims, vec![60000, 28, 28]);
    assert_eq!(h.magic, 0x803);
    let h = read_header(&src.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!(h.dims, vec![10000]);
    assert_eq!(h.magic, 0x801);

    let out = tempfile::tempdir().unwrap();
    let s = import_fashion_mnist(src, out.path(), Some(97), Some(31)).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0].split.as_str(), s[0].total_in_file, s[0].written),
        ("train", 60000, 97)
    );
    assert_eq!(
        (s[1].split.as_str(), s[1].total_in_file, s[1].written),
        ("test", 10000, 31)
    );
    assert_eq!(
        listing(out.path()),
        vec!["test.safetensors", "train.safetensors"],
        "no staging or temporary files left"
    );

    for (file, stem, n) in [("train", "train", 97usize), ("test", "t10k", 31)] {
        let d = Dataset::open(&out.path().join(format!("{file}.safetensors"))).unwrap();
        assert_eq!(d.len(), n);
        assert_eq!(d.shape(), (1, 28, 28));
        assert_eq!(d.num_classes(), 10);
        assert_eq!(d.classes(), FASHION_MNIST_CLASSES);
        assert_eq!(d.classes()[9], "Ankle boot");
        assert_eq!(d.metadata()["layout"], "NCHW");
        assert!(d.source().unwrap().contains(stem));
        // Independent decode of the same bytes straight from the .gz files.
        let px = gunzip_prefix(
            &src.join(format!("{stem}-images-idx3-ubyte.gz")),
            16 + n * 784,
        );
        let lb = gunzip_prefix(&src.join(format!("{stem}-labels-idx1-ubyte.gz")), 8 + n);
        for i in [0, 1, n / 2, n - 1] {
            let img = d.image(i).unwrap();
            assert_eq!(
                img,
                &px[16 + i * 784..16 + (i + 1) * 784],
                "{file} image {i}"
            );
            assert!(img.iter().any(|&p| p > 0), "{file} image {i} is blank");
            assert_eq!(d.label(i).unwrap(), lb[8 + i] as u32, "{file} label {i}");
        }
        let counts = d.class_counts();
        assert_eq!(counts.iter().sum::<usize>(), n);
        assert!(counts.iter().filter(|&&c| c > 0).count() >= 8, "{counts:?}");
        let (t, l) = d.batch_f32(&[n - 1, 0]).unwrap();
        assert_eq!(t.shape(), &[2, 1, 28, 28]);
        let v = t.to_vec().unwrap();
        assert_eq!(v[0], px[16 + (n - 1) * 784] as f32);
        assert_eq!(
            v[784 + 400],
            px[16 + 400] as f32,
            "0..255 scale, not normalised"
        );
        assert_eq!(l, vec![lb[8 + n - 1] as u32, lb[8] as u32]);
    }
}

#[test]
fn cli_import_idx_then_info_text_and_json() {
    let out = tempfile::tempdir().unwrap();
    let o = bin()
        .args([
            "data",
            "import-idx",
            "--limit-train",
            "13",
            "--limit-test",
            "7",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("train: wrote 13 of 60000 images (28x28)"),
        "{text}"
    );
    assert!(text.contains("test: wrote 7 of 10000 images"), "{text}");

    let test_file = out.path().join("test.safetensors");
    let o = bin()
        .args(["data", "info"])
        .arg(&test_file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "U8 [7, 1, 28, 28]",
        "layout NCHW",
        "I64 [7]",
        "Ankle boot",
        "classes: 10",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    let o = bin()
        .args(["--json", "data", "info"])
        .arg(&test_file)
        .output()
        .unwrap();
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["images"]["shape"], serde_json::json!([7, 1, 28, 28]));
    assert_eq!(j["images"]["dtype"], "U8");
    assert_eq!(j["labels"]["dtype"], "I64");
    assert_eq!(j["layout"], "NCHW");
    assert_eq!(j["num_classes"], 10);
    let classes = j["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 10);
    assert_eq!(classes[7]["name"], "Sneaker");
    let total: u64 = classes.iter().map(|c| c["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 7);
    // Fashion-MNIST's first test labels are 9, 2, 1, 1, 6, 1, 4.
    let counts: Vec<u64> = classes
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, vec![0, 3, 1, 0, 1, 0, 1, 0, 0, 1]);
}

// ---------------------------------------------------------------- IDX bad input (synthetic)

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A valid little IDX set (5 train / 3 test images of 4x3) in `dir`, returning the files'
/// uncompressed contents so tests can break one.
fn write_small_idx(dir: &Path) -> HashMap<&'static str, Vec<u8>> {
    let mut rng = Rng::new(99);
    let mut files = HashMap::new();
    for (stem, n) in [("train", 5u32), ("t10k", 3)] {
        let px: Vec<u8> = (0..n * 12).map(|_| rng.below(256) as u8).collect();
        let lb: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
        let images = idx_bytes(0x803, &[n, 4, 3], &px);
        let labels = idx_bytes(0x801, &[n], &lb);
        std::fs::write(
            dir.join(format!("{stem}-images-idx3-ubyte.gz")),
            gz(&images),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{stem}-labels-idx1-ubyte.gz")),
            gz(&labels),
        )
        .unwrap();
        files.insert(
            if stem == "train" {
                "train-images"
            } else {
                "t10k-images"
            },
            images,
        );
        files.insert(
            if stem == "train" {
                "train-labels"
            } else {
                "t10k-labels"
            },
            labels,
        );
    }
    files
}

#[test]
fn import_idx_bad_inputs_fail_clearly_and_leave_nothing() {
    let src = tempfile::tempdir().unwrap();
    let files = write_small_idx(src.path());
    let out = tempfile::tempdir().unwrap();
    let outdir = out.path().join("o");
    // The valid set imports.
    let s = import_fashion_mnist(src.path(), &outdir, None, Some(2)).unwrap();
    assert_eq!((s[0].written, s[1].written), (5, 2));
    let d = Dataset::open(&outdir.join("train.safetensors")).unwrap();
    assert_eq!(d.shape(), (1, 4, 3));
    assert_eq!(d.image(4).unwrap(), &files["train-images"][16 + 4 * 12..]);
    std::fs::remove_dir_all(&outdir).unwrap();

    let t10k_img = src.path().join("t10k-images-idx3-ubyte.gz");
    let t10k_lab = src.path().join("t10k-labels-idx1-ubyte.gz");
    let good_img = std::fs::read(&t10k_img).unwrap();
    let good_lab = std::fs::read(&t10k_lab).unwrap();
    let img = &files["t10k-images"];
    let cases: Vec<(&str, PathBuf, Vec<u8>, Vec<&str>)> = vec![
        (
            "gzip stream cut short",
            t10k_img.clone(),
            good_img[..good_img.len() - 12].to_vec(),
            vec!["t10k-images-idx3-ubyte.gz", "truncated"],
        ),
        (
            "IDX data shorter than its header says",
            t10k_img.clone(),
            gz(&img[..img.len() - 5]),
            vec!["t10k-images-idx3-ubyte.gz", "truncated", "item 2"],
        ),
        (
            "trailing bytes",
            t10k_img.clone(),
            gz(&[img.as_slice(), &[1, 2]].concat()),
            vec!["t10k-images-idx3-ubyte.gz", "unexpected bytes after"],
        ),
        (
            "labels magic in the images file",
            t10k_img.clone(),
            gz(&files["t10k-labels"]),
            vec![
                "t10k-images-idx3-ubyte.gz",
                "magic",
                "0x00000801",
                // The expected magic is named for what it is, not only as a number.
                "0x00000803 (unsigned-byte IDX with 3 dimensions: images)",
            ],
        ),
        (
            "corrupt gzip body",
            t10k_img.clone(),
            {
                let mut b = good_img.clone();
                let mid = b.len() / 2;
                for x in &mut b[12..mid] {
                    *x ^= 0x5a;
                }
                b
            },
            vec!["t10k-images-idx3-ubyte.gz"],
        ),
        (
            "not gzip at all",
            t10k_img.clone(),
            img.clone(),
            vec!["t10k-images-idx3-ubyte.gz"],
        ),
        (
            "implausible dimensions",
            t10k_img.clone(),
            gz(&idx_bytes(0x803, &[3, 1 << 20, 1 << 20], &[])),
            vec!["t10k-images-idx3-ubyte.gz", "implausibly large"],
        ),
        (
            "count mismatch",
            t10k_lab.clone(),
            gz(&idx_bytes(0x801, &[2], &[1, 2])),
            vec!["t10k-images-idx3-ubyte.gz", "3 images", "2 labels"],
        ),
        (
            "label out of range",
            t10k_lab.clone(),
            gz(&idx_bytes(0x801, &[3], &[1, 10, 2])),
            vec!["t10k-labels-idx1-ubyte.gz", "label 10", "[0, 10)"],
        ),
    ];
    for (what, path, bytes, needles) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let e = import_fashion_mnist(src.path(), &outdir, Some(1), Some(1)).expect_err(what);
        assert_err_mentions(&e, &needles);
        // The train split succeeded before the test split failed: still no output at all.
        assert_eq!(
            listing(&outdir),
            Vec::<String>::new(),
            "{what}: output left behind"
        );
        std::fs::write(&t10k_img, &good_img).unwrap();
        std::fs::write(&t10k_lab, &good_lab).unwrap();
    }

    // Missing source files name what was looked for.
    let empty = tempfile::tempdir().unwrap();
    let e = import_fashion_mnist(empty.path(), &outdir, None, None).unwrap_err();
    assert_err_mentions(&e, &["train-images-idx3-ubyte"]);

    // The CLI reports one line naming the file, exit code 1, no panic.
    std::fs::write(&t10k_img, &good_img[..good_img.len() / 2]).unwrap();
    let o = bin()
        .args(["data", "import-idx", "--src"])
        .arg(src.path())
        .arg("--out")
        .arg(&outdir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("t10k-images-idx3-ubyte.gz") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(listing(&outdir), Vec::<String>::new());
}

// ---------------------------------------------------------------- split file bad input

fn meta(classes: &str) -> Option<HashMap<String, String>> {
    Some(
        [
            ("classes".to_string(), classes.to_string()),
            ("layout".to_string(), "NCHW".to_string()),
        ]
        .into(),
    )
}

#[test]
fn split_file_bad_inputs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(4);
    let (n, c, h, w) = (3usize, 1usize, 2usize, 5usize);
    let px: Vec<u8> = (0..n * c * h * w).map(|_| rng.below(256) as u8).collect();
    let classes = r#"["a","b","c"]"#;
    let good = || {
        vec![
            (
                "images".to_string(),
                OwnedTensor::u8(&[n, c, h, w], px.clone()),
            ),
            ("labels".to_string(), OwnedTensor::i64(&[n], &[2, 0, 1])),
        ]
    };
    let ok = dir.path().join("ok.safetensors");
    save_safetensors(&ok, &good(), meta(classes)).unwrap();
    let d = Dataset::open(&ok).unwrap();
    assert_eq!((d.len(), d.shape(), d.num_classes()), (3, (1, 2, 5), 3));
    assert_eq!(d.image(1).unwrap(), &px[10..20]);
    assert!(d.image(3).is_err() && d.label(3).is_err());

    type Case = (
        &'static str,
        Vec<(String, OwnedTensor)>,
        Option<HashMap<String, String>>,
        Vec<&'static str>,
    );
    let mut cases: Vec<Case> = Vec::new();
    let mut t = good();
    t[0].1 = OwnedTensor::f32(&[n, c, h, w], &vec![0.5; n * c * h * w]);
    cases.push((
        "f32 images",
        t,
        meta(classes),
        vec!["'images'", "F32", "U8"],
    ));
    let mut t = good();
    t[0].1 = OwnedTensor::u8(&[n, h, w], px.clone());
    cases.push((
        "rank-3 images",
        t,
        meta(classes),
        vec!["'images'", "rank 3"],
    ));
    let mut t = good();
    t[1].1 = OwnedTensor::i64(&[n], &[2, 3, 0]);
    cases.push((
        "label out of range",
        t,
        meta(classes),
        vec!["label 3 of image 1", "[0, 3)"],
    ));
    let mut t = good();
    t[1].1 = OwnedTensor::i64(&[n], &[2, -1, 0]);
    cases.push(("negative label", t, meta(classes), vec!["label -1"]));
    let mut t = good();
    t[1].1 = OwnedTensor::i64(&[2], &[2, 1]);
    cases.push((
        "label count",
        t,
        meta(classes),
        vec!["'labels'", "[2]", "[3]"],
    ));
    let mut t = good();
    t[1].1 = OwnedTensor::f32(&[n], &[0.0, 1.0, 2.0]);
    cases.push(("float labels", t, meta(classes), vec!["'labels'", "F32"]));
    let mut t = good();
    t.remove(1);
    cases.push((
        "no labels",
        t,
        meta(classes),
        vec!["no tensor named 'labels'"],
    ));
    let mut t = good();
    t.remove(0);
    cases.push((
        "no images",
        t,
        meta(classes),
        vec!["no tensor named 'images'"],
    ));
    cases.push(("no classes", good(), None, vec!["'classes'"]));
    cases.push((
        "bad classes",
        good(),
        meta("a,b,c"),
        vec!["'classes'", "JSON array"],
    ));
    let mut m = meta(classes);
    if let Some(m) = m.as_mut() {
        m.insert("layout".into(), "CHWN".into());
    }
    cases.push(("bad layout", good(), m, vec!["'layout'", "CHWN"]));

    for (i, (what, tensors, m, needles)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.safetensors"));
        save_safetensors(&p, &tensors, m).unwrap();
        let e = Dataset::open(&p).expect_err(what);
        assert_err_mentions(&e, &[&format!("bad{i}.safetensors")]);
        assert_err_mentions(&e, &needles);
    }

    // Truncated and corrupt files.
    let bytes = std::fs::read(&ok).unwrap();
    let trunc = dir.path().join("trunc.safetensors");
    std::fs::write(&trunc, &bytes[..bytes.len() - 7]).unwrap();
    assert_err_mentions(&Dataset::open(&trunc).unwrap_err(), &["trunc.safetensors"]);
    let short = dir.path().join("short.safetensors");
    std::fs::write(&short, &bytes[..5]).unwrap();
    assert_err_mentions(&Dataset::open(&short).unwrap_err(), &["short.safetensors"]);
    let corrupt = dir.path().join("corrupt.safetensors");
    let mut b = bytes.clone();
    for x in &mut b[8..40] {
        *x = b'#';
    }
    std::fs::write(&corrupt, &b).unwrap();
    assert_err_mentions(
        &Dataset::open(&corrupt).unwrap_err(),
        &["corrupt.safetensors"],
    );
    let missing = dir.path().join("missing.safetensors");
    assert_err_mentions(
        &Dataset::open(&missing).unwrap_err(),
        &["missing.safetensors"],
    );

    // Through the CLI: exit code 1, the file named, no panic.
    let o = bin().args(["data", "info"]).arg(&trunc).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("trunc.safetensors") && !err.contains("panicked"),
        "{err}"
    );
}

// ---------------------------------------------------------------- batch iterator

fn random_split(dir: &Path, n: usize, seed: u64) -> (Arc<Dataset>, Vec<Vec<u8>>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let (c, h, w) = (2usize, 3usize, 5usize);
    let imgs: Vec<Vec<u8>> = (0..n)
        .map(|_| (0..c * h * w).map(|_| rng.below(256) as u8).collect())
        .collect();
    let labels: Vec<usize> = (0..n).map(|_| rng.below(7)).collect();
    let spec = SplitSpec {
        channels: c,
        height: h,
        width: w,
        classes: (0..7).map(|k| format!("class{k}")).collect(),
        source: "random".into(),
        extra: vec![],
    };
    let p = dir.join("r.safetensors");
    write_split_streaming(&p, &spec, n, |s| {
        for (im, &l) in imgs.iter().zip(&labels) {
            s.push(im, l)?;
        }
        Ok(())
    })
    .unwrap();
    (Arc::new(Dataset::open(&p).unwrap()), imgs, labels)
}

fn collect(b: Batches) -> Vec<(Vec<usize>, Vec<f32>, Vec<u32>)> {
    b.map(|r| {
        let b = r.unwrap();
        (b.indices, b.images.to_vec().unwrap(), b.labels)
    })
    .collect()
}

#[test]
fn batches_are_deterministic_complete_and_prefetch_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let n = 103; // prime: the last batch is partial
    let (ds, imgs, labels) = random_split(dir.path(), n, 17);
    let bs = 10;

    let a = collect(Batches::new(&ds, bs, Some(7), 0).unwrap());
    let again = collect(Batches::new(&ds, bs, Some(7), 0).unwrap());
    assert_eq!(a, again, "same seed and epoch, same batches");
    let next_epoch = Batches::new(&ds, bs, Some(7), 1).unwrap();
    assert_ne!(
        next_epoch.order(),
        Batches::new(&ds, bs, Some(7), 0).unwrap().order()
    );
    let other_seed = Batches::new(&ds, bs, Some(8), 0).unwrap();
    assert_ne!(
        other_seed.order(),
        Batches::new(&ds, bs, Some(7), 0).unwrap().order()
    );

    assert_eq!(a.len(), 11);
    assert_eq!(a.last().unwrap().0.len(), 3, "last partial batch included");
    let mut seen: Vec<usize> = a.iter().flat_map(|b| b.0.clone()).collect();
    assert_ne!(seen, (0..n).collect::<Vec<_>>(), "shuffled");
    seen.sort();
    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "every index exactly once");

    // Batch content is the images as f32 (0..255) in NCHW, with their labels.
    for (idx, px, lb) in &a {
        assert_eq!(px.len(), idx.len() * 30);
        for (k, &i) in idx.iter().enumerate() {
            let want: Vec<f32> = imgs[i].iter().map(|&p| p as f32).collect();
            assert_eq!(&px[k * 30..(k + 1) * 30], &want[..], "image {i}");
            assert_eq!(lb[k] as usize, labels[i]);
        }
    }

    // Prefetch depth changes nothing but timing.
    for depth in [0, 1, 5] {
        let b = collect(Batches::new(&ds, bs, Some(7), 0).unwrap().prefetch(depth));
        assert_eq!(a, b, "prefetch depth {depth}");
    }

    // No seed: file order. drop_last and limit.
    let plain = Batches::new(&ds, bs, None, 3).unwrap();
    assert_eq!(plain.order(), (0..n).collect::<Vec<_>>().as_slice());
    let dl = collect(Batches::new(&ds, bs, Some(7), 0).unwrap().drop_last(true));
    assert_eq!(dl.len(), 10);
    assert_eq!(&dl[..], &a[..10]);
    let lim = Batches::new(&ds, 4, Some(7), 2).unwrap().limit(29);
    assert_eq!(lim.len(), 8);
    let lim = collect(lim);
    let mut idx: Vec<usize> = lim.iter().flat_map(|b| b.0.clone()).collect();
    idx.sort();
    assert_eq!(idx, (0..29).collect::<Vec<_>>());
    assert_eq!(lim.last().unwrap().0.len(), 1);
    assert_eq!(collect(Batches::new(&ds, 1000, None, 0).unwrap()).len(), 1);
    assert!(Batches::new(&ds, 0, None, 0).is_err());

    // Stopping early does not hang on the blocked prefetch thread.
    let mut it = Batches::new(&ds, 1, Some(1), 0).unwrap().prefetch(1);
    assert!(it.next().unwrap().is_ok());
    drop(it);
}

// ---------------------------------------------------------------- image folder (real photos)

/// PIL-style antialiased bilinear resampling of one output pixel, written independently of the
/// `image` crate: triangle kernel widened by the downscale ratio, pixel centres at +0.5.
fn weights(src_len: u32, dst_len: u32, o: u32) -> (usize, Vec<f64>) {
    let ratio = src_len as f64 / dst_len as f64;
    let support = ratio.max(1.0);
    let centre = (o as f64 + 0.5) * ratio;
    let lo = ((centre - support).floor().max(0.0)) as usize;
    let hi = ((centre + support).ceil() as usize).min(src_len as usize);
    let mut w: Vec<f64> = (lo..hi)
        .map(|i| (1.0 - ((i as f64 + 0.5 - centre) / support).abs()).max(0.0))
        .collect();
    let s: f64 = w.iter().sum();
    w.iter_mut().for_each(|x| *x /= s);
    (lo, w)
}

/// The reference crop `3 x size x size` at offset (top, left) of the image resized to (nw, nh).
fn reference_crop(
    rgb: &image::RgbImage,
    nw: u32,
    nh: u32,
    top: u32,
    left: u32,
    size: u32,
) -> Vec<f64> {
    let (w, h) = rgb.dimensions();
    let s = size as usize;
    let mut out = vec![0f64; 3 * s * s];
    let cols: Vec<(usize, Vec<f64>)> = (0..size).map(|x| weights(w, nw, left + x)).collect();
    for y in 0..size {
        let (r0, wy) = weights(h, nh, top + y);
        for (x, (c0, wx)) in cols.iter().enumerate() {
            let mut acc = [0f64; 3];
            for (i, a) in wy.iter().enumerate() {
                for (j, b) in wx.iter().enumerate() {
                    let p = rgb.get_pixel((c0 + j) as u32, (r0 + i) as u32);
                    for (acc, &v) in acc.iter_mut().zip(&p.0) {
                        *acc += a * b * v as f64;
                    }
                }
            }
            for (c, &v) in acc.iter().enumerate() {
                out[c * s * s + y as usize * s + x] = v;
            }
        }
    }
    out
}

fn mean_abs(a: &[u8], b: &[f64]) -> (f64, f64) {
    let mut sum = 0.0;
    let mut max = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        let d = (x as f64 - y).abs();
        sum += d;
        max = max.max(d);
    }
    (sum / a.len() as f64, max)
}

/// Check `crop` against the reference at the expected offset, and that every one-pixel shift
/// of the crop window matches worse (the crop is centred exactly as torchvision centres it).
fn check_crop(
    name: &str,
    crop: &[u8],
    rgb: &image::RgbImage,
    dims: (u32, u32),
    off: (u32, u32),
    size: u32,
) {
    let (nw, nh) = dims;
    let (top, left) = off;
    let (mae, max) = mean_abs(crop, &reference_crop(rgb, nw, nh, top, left, size));
    assert!(
        // The image crate rounds to u8 once; the f64 reference does not: 0.5 at most apart.
        mae < 0.35 && max <= 1.0,
        "{name}: mean abs diff {mae}, max {max}"
    );
    for (dy, dx) in [(-1i32, 0i32), (1, 0), (0, -1), (0, 1)] {
        let (t, l) = ((top as i32 + dy) as u32, (left as i32 + dx) as u32);
        let (m, _) = mean_abs(crop, &reference_crop(rgb, nw, nh, t, l, size));
        assert!(
            m > mae + 1.0,
            "{name}: shift ({dy},{dx}) matches as well ({m} vs {mae})"
        );
    }
}

#[test]
fn import_folder_real_photos() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("photos.safetensors");
    let s = import_folder(&fixtures(), &file, &FolderOptions::default()).unwrap();
    let wnids = ["n02123045", "n03063599", "n04008634", "n09999999"];
    assert_eq!(s.classes, wnids);
    assert_eq!(s.images, 5);
    assert_eq!(s.per_class, vec![1, 1, 1, 2]);
    assert_eq!(
        s.ignored_files, 0,
        "README.md sits beside the class folders, not in one"
    );

    let d = Dataset::open(&file).unwrap();
    assert_eq!(d.len(), 5);
    assert_eq!(d.shape(), (3, 224, 224));
    assert_eq!(d.classes(), wnids);
    assert_eq!(d.labels(), &[0, 1, 2, 3, 3]);
    assert!(d.source().unwrap().contains("photos"));

    // (file, source size, resized size by torchvision's rule, crop (top, left)).
    // rocket: int(256*640/427) = 383, (383-224)/2 = 79.5 -> round half to even = 80.
    let expect = [
        ("n02123045/chelsea.png", (451, 300), (384, 256), (16, 80)),
        ("n03063599/coffee.png", (600, 400), (384, 256), (16, 80)),
        ("n04008634/rocket.jpg", (640, 427), (383, 256), (16, 80)),
        ("n09999999/camera.png", (512, 512), (256, 256), (16, 16)),
        ("n09999999/coins.png", (384, 303), (324, 256), (16, 50)),
    ];
    for (i, (name, src_dims, dims, off)) in expect.iter().enumerate() {
        let rgb = image::open(fixtures().join(name)).unwrap().to_rgb8();
        assert_eq!(rgb.dimensions(), *src_dims, "{name}");
        let crop = d.image(i).unwrap();
        check_crop(name, crop, &rgb, *dims, *off, 224);
        let plane = 224 * 224;
        let grey = crop[..plane] == crop[plane..2 * plane] && crop[..plane] == crop[2 * plane..];
        assert_eq!(
            grey,
            name.starts_with("n09999999"),
            "{name}: grey expanded to RGB"
        );
    }
}

#[test]
fn import_folder_portrait_small_crop_bad_files_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // A portrait photo (chelsea turned on its side) and a copy of rocket.jpg.
    let chelsea = image::open(fixtures().join("n02123045/chelsea.png"))
        .unwrap()
        .rotate90();
    std::fs::create_dir_all(src.join("b_cat")).unwrap();
    std::fs::create_dir_all(src.join("a_rocket/nested")).unwrap();
    chelsea.save(src.join("b_cat/portrait.png")).unwrap();
    std::fs::copy(
        fixtures().join("n04008634/rocket.jpg"),
        src.join("a_rocket/nested/rocket.JPG"),
    )
    .unwrap();
    std::fs::write(src.join("b_cat/notes.txt"), "not an image").unwrap();
    std::fs::write(src.join("b_cat/.hidden.png"), "skipped: hidden").unwrap();
    let out = dir.path().join("out.safetensors");
    let opts = FolderOptions {
        size: 37,
        resize: 41,
        skip_bad: false,
    };
    let s = import_folder(&src, &out, &opts).unwrap();
    assert_eq!(s.classes, vec!["a_rocket", "b_cat"]);
    assert_eq!(s.ignored_files, 1);
    let d = Dataset::open(&out).unwrap();
    assert_eq!(d.shape(), (3, 37, 37));
    assert_eq!(d.labels(), &[0, 1]);
    // Portrait 300x451 -> (41, int(41*451/300) = 61); top = (61-37)/2 = 12, left = 2.
    let rgb = chelsea.to_rgb8();
    check_crop("portrait", d.image(1).unwrap(), &rgb, (41, 61), (12, 2), 37);
    // rocket 640x427 -> (int(41*640/427) = 61, 41); left = 12, top = 2.
    let rgb = image::open(fixtures().join("n04008634/rocket.jpg"))
        .unwrap()
        .to_rgb8();
    check_crop(
        "rocket small",
        d.image(0).unwrap(),
        &rgb,
        (61, 41),
        (2, 12),
        37,
    );

    // An undecodable file: an error naming it and no output; with skip_bad a warning and a count.
    std::fs::write(
        src.join("b_cat/broken.jpg"),
        b"\xff\xd8\xff\xe0 this is not a jpeg",
    )
    .unwrap();
    let out2 = dir.path().join("out2.safetensors");
    let e = import_folder(&src, &out2, &opts).unwrap_err();
    assert_err_mentions(&e, &["broken.jpg", "decode"]);
    assert!(
        !listing(dir.path()).iter().any(|f| f.contains("out2")),
        "{:?}",
        listing(dir.path())
    );
    let s = import_folder(
        &src,
        &out2,
        &FolderOptions {
            skip_bad: true,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!((s.images, s.skipped.len()), (2, 1));
    assert!(s.skipped[0].0.ends_with("broken.jpg"));
    assert_eq!(Dataset::open(&out2).unwrap().labels(), &[0, 1]);

    // CLI: the same failure is one line naming the file; --skip-bad succeeds; --json summary.
    let o = bin()
        .args([
            "data",
            "import-folder",
            "--size",
            "37",
            "--resize",
            "41",
            "--src",
        ])
        .arg(&src)
        .arg("--out")
        .arg(dir.path().join("cli.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("broken.jpg") && !err.contains("panicked"),
        "{err}"
    );
    let o = bin()
        .args([
            "--json",
            "data",
            "import-folder",
            "--skip-bad",
            "--size",
            "37",
            "--resize",
            "41",
            "--src",
        ])
        .arg(&src)
        .arg("--out")
        .arg(dir.path().join("cli.safetensors"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["images"], 2);
    assert_eq!(j["skipped"].as_array().unwrap().len(), 1);

    // Empty class folder, no class folders, size > resize.
    std::fs::create_dir_all(src.join("c_empty")).unwrap();
    let e = import_folder(&src, &out2, &opts).unwrap_err();
    assert_err_mentions(&e, &["c_empty", "no image files"]);
    let e = import_folder(&src.join("b_cat"), &out2, &opts).unwrap_err();
    assert_err_mentions(&e, &["no class subfolders"]);
    let e = import_folder(
        &src,
        &out2,
        &FolderOptions {
            size: 50,
            resize: 41,
            skip_bad: false,
        },
    )
    .unwrap_err();
    assert_err_mentions(&e, &["--size 50"]);
}

/// Mutants (cargo-mutants, issue 14): `read_err`'s corrupt-gzip arm deleted (the error would
/// read as a plain I/O error) and the two "too short" checks of the header reversed (the error
/// would come later, as a wrong magic or no error at all, without saying what was cut).
#[test]
fn idx_header_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let put = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let msg = |p: &Path| read_header(p).unwrap_err().to_string();
    let e = msg(&put("a.gz", b"this is not a gzip stream at all"));
    assert!(e.contains("corrupt data") && e.contains("a.gz"), "{e}");
    let e = msg(&put("b", &[0, 0]));
    assert!(e.contains("2 bytes, too short for an IDX header"), "{e}");
    let e = msg(&put("c", &idx_bytes(0x803, &[3], &[])));
    assert!(e.contains("ends before dimension 1 of 3"), "{e}");
    let e = msg(&put("d.gz", &gz(&idx_bytes(0x803, &[3, 28], &[]))));
    assert!(e.contains("ends before dimension 2 of 3"), "{e}");
    // A magic that is neither: both accepted kinds are named (describe_magic's labels arm).
    let e = msg(&put("f", &idx_bytes(0x802, &[2], &[1, 2])));
    assert!(
        e.contains("0x00000801 (unsigned-byte IDX with 1 dimension: labels)")
            && e.contains("0x00000803 (unsigned-byte IDX with 3 dimensions: images)"),
        "{e}"
    );
    let ok = read_header(&put("e", &idx_bytes(0x801, &[2], &[1, 2]))).unwrap();
    assert_eq!(ok.dims, vec![2]);
}
