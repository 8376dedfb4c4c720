//! The cargo-fuzz targets of `fuzz/` (issue 13 item 9) under plain `cargo test`: every file of
//! the committed corpus `fuzz/corpus/NAME/` (seeds, plus any crash input once fixed) goes through
//! the very function libFuzzer calls (`fuzz/src/targets.rs`, included here by path), so CI
//! replays the corpus on stable Rust with no cargo-fuzz. `scripts/fuzz-smoke.sh` adds a short
//! real libFuzzer run of each target where cargo-fuzz is installed.
//!
//! `cargo test --test fuzz_replay -- --ignored write_seed_corpus` regenerates the seeds.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

#[allow(dead_code)]
#[path = "../fuzz/src/targets.rs"]
mod targets;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn replay_corpus_through_every_target() {
    let mut total = 0;
    for (name, f) in targets::TARGETS {
        let bin = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(bin.is_file(), "target {name} has no {}", bin.display());
        let dir = fuzz_dir().join("corpus").join(name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no seed", dir.display());
        for p in &files {
            let bytes = std::fs::read(p).unwrap();
            if catch_unwind(AssertUnwindSafe(|| f(&bytes))).is_err() {
                panic!("fuzz target {name} panicked on {}", p.display());
            }
        }
        println!("{name}: {} corpus files replayed", files.len());
        total += files.len();
    }
    assert!(total >= targets::TARGETS.len());
}

/// The seed corpus: one small valid input per format (and a few variants), made with the
/// binary and the library as a user would make them.
#[test]
#[ignore = "regenerates fuzz/corpus (run by hand)"]
fn write_seed_corpus() {
    advlens::progress::set_quiet(true);
    let tmp = tempfile::tempdir().unwrap();
    let corpus = fuzz_dir().join("corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    let cat = |parts: &[&[u8]]| parts.concat();

    // split: 6 images of 1x12x12, 3 classes.
    let data = tmp.path().join("data.safetensors");
    let spec = advlens::data::SplitSpec {
        channels: 1,
        height: 12,
        width: 12,
        classes: vec!["a".into(), "b".into(), "c".into()],
        source: "synthetic".into(),
        extra: vec![],
    };
    advlens::data::write_split_streaming(&data, &spec, 6, |sink| {
        for i in 0..6 {
            let img: Vec<u8> = (0..144).map(|j| ((j * 7 + i * 13) % 256) as u8).collect();
            sink.push(&img, i % 3)?;
        }
        Ok(())
    })
    .unwrap();
    put("split", "seed-6x12x12", &std::fs::read(&data).unwrap());

    // checkpoint: small-resnet18 of width 1 after one epoch (with Adam state).
    let bin = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_advlens"));
        c.args(["--device", "cpu", "--threads", "1"]);
        c
    };
    let run = tmp.path().join("run");
    let o = bin()
        .args(["train", "--model", "small-resnet18", "--width", "1"])
        .arg("--data")
        .arg(&data)
        .args(["--epochs", "1", "--batch", "2", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = run.join("last.safetensors");
    put(
        "checkpoint",
        "seed-small-resnet18-w1",
        &std::fs::read(&ck).unwrap(),
    );

    // advset: flag byte (1 = fix the checksum), manifest, NUL, shard 0.
    let adv = tmp.path().join("adv");
    let o = bin()
        .args(["attack", "ensemble", "--models"])
        .arg(&ck)
        .arg("--data")
        .arg(&data)
        .args(["--targets", "2", "--steps", "1", "--limit", "2", "--out"])
        .arg(&adv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = std::fs::read(adv.join("manifest.json")).unwrap();
    let shard = std::fs::read(adv.join(advlens::attack::advset::shard_name(0))).unwrap();
    put(
        "advset",
        "seed-fixsum",
        &cat(&[&[1], &manifest, &[0], &shard]),
    );
    put(
        "advset",
        "seed-asis",
        &cat(&[&[0], &manifest, &[0], &shard]),
    );

    // idx: flag byte (bit 0 images / labels, bit 1 limit 3), then the file.
    let (images, labels) = targets::idx_pair();
    put("idx", "seed-images", &cat(&[&[1], &images]));
    put("idx", "seed-images-limit", &cat(&[&[3], &images]));
    put("idx", "seed-labels", &cat(&[&[0], &labels]));

    // wordnet: data.noun [NUL class list].
    let noun = "00001740 03 n 01 entity 0 000 | that which exists\n\
                00002137 03 n 02 abstraction 0 abstract_entity 0 001 @ 00001740 n 0000 | x\n\
                00002684 03 n 01 object 0 002 @ 00001740 n 0000 ~ 00003553 n 0000 | y\n\
                00003553 03 n 01 whole 0 002 @ 00002684 n 0000 @i 00002137 n 0000 | z\n";
    put("wordnet", "seed-noun", noun.as_bytes());
    let classes = "n00003553\twhole\nn00002137\nn00002684\nn00001740\tentity\n";
    put(
        "wordnet",
        "seed-noun-classes",
        &cat(&[noun.as_bytes(), &[0], classes.as_bytes()]),
    );
    let cycle = "00000001 03 n 01 a 0 001 @ 00000002 n 0000 | x\n\
                 00000002 03 n 01 b 0 001 @ 00000001 n 0000 | y\n";
    put(
        "wordnet",
        "seed-cycle",
        &cat(&[cycle.as_bytes(), &[0], b"n00000001\nn00000002\n"]),
    );

    // hierarchy: the JSON `wordnet build` writes for the seed above, and the Fashion-MNIST one.
    let wn = advlens::analysis::wordnet::WordNet::parse(noun, Path::new("data.noun")).unwrap();
    let list = advlens::analysis::wordnet::parse_class_list(classes, Path::new("c")).unwrap();
    let h = advlens::analysis::wordnet::Hierarchy::build(&wn, &list, 1.0, Path::new("c")).unwrap();
    put(
        "hierarchy",
        "seed-4",
        h.to_json_text(64).unwrap().as_bytes(),
    );
    let fm =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/wordnet/fashion_mnist_hierarchy.json");
    put(
        "hierarchy",
        "seed-fashion-mnist",
        &std::fs::read(fm).unwrap(),
    );

    // image: geometry byte (crop 1 + low nibble, resize crop + high nibble), then the file.
    let png = tmp.path().join("s.png");
    image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 99]))
        .save(&png)
        .unwrap();
    put(
        "image",
        "seed-png-9x7",
        &cat(&[&[0x34], &std::fs::read(&png).unwrap()]),
    );
    let gray = tmp.path().join("g.png");
    image::GrayImage::from_fn(5, 11, |x, y| image::Luma([(x * y) as u8]))
        .save(&gray)
        .unwrap();
    put(
        "image",
        "seed-png-gray-5x11",
        &cat(&[&[0x12], &std::fs::read(&gray).unwrap()]),
    );
    let jpg = tmp.path().join("s.jpg");
    image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8 * 15, y as u8 * 20, 60]))
        .save(&jpg)
        .unwrap();
    put(
        "image",
        "seed-jpeg-16x12",
        &cat(&[&[0x57], &std::fs::read(&jpg).unwrap()]),
    );
}
