//! Mutation smoke tests of every parser of outside files (DESIGN section 7, issue 13 item 9):
//! checkpoints, dataset splits, IDX files, data.noun + class lists, image files, and the
//! adversarial-set manifest and shards. Each seed file is mutated (bit flips, extreme bytes and
//! 64-bit words, truncation, duplicated chunks) with a fixed seed, and the reader must return
//! `Ok` or an `Err`, never panic, hang or abort. This is a stable-Rust stand-in for cargo-fuzz
//! (which needs nightly and is not installed here), run by `cargo test`; more iterations with
//! `ADVLENS_FUZZ_ITERS=N`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use advlens::analysis::wordnet::{parse_class_list, Hierarchy, WordNet};
use advlens::attack::advset::{checksum64, AdvSet};
use advlens::data::{write_split_streaming, Dataset, SplitSpec};

fn iters() -> usize {
    std::env::var("ADVLENS_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// xorshift64*: a fixed stream of mutations.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(3) {
            if v.is_empty() {
                v.push(self.next() as u8);
                continue;
            }
            let at = self.below(v.len());
            match self.below(7) {
                0 => v[at] ^= 1 << self.below(8),
                1 => v[at] = [0x00, 0xFF, 0x7F, 0x80][self.below(4)],
                2 => v[at] = self.next() as u8,
                3 => v.truncate(at),
                4 => {
                    let w = [u64::MAX, 1 << 40, 0, i64::MAX as u64, 1 << 31][self.below(5)];
                    for (k, b) in w.to_le_bytes().iter().enumerate() {
                        if at + k < v.len() {
                            v[at + k] = *b;
                        }
                    }
                }
                5 => {
                    let len = self.below(64).min(v.len() - at);
                    let chunk = v[at..at + len].to_vec();
                    let to = self.below(v.len());
                    v.splice(to..to, chunk);
                }
                _ => {
                    // A digit run replaced by a huge number (text formats: JSON, data.noun).
                    if v[at].is_ascii_digit() {
                        let end = (at..v.len())
                            .find(|&i| !v[i].is_ascii_digit())
                            .unwrap_or(v.len());
                        v.splice(at..end, b"99999999999999999999".iter().copied());
                    } else {
                        v[at] = b'9';
                    }
                }
            }
        }
        v
    }
}

/// Mutate `seed` `iters()` times; `check` reads each variant (written to `path`) and must not
/// panic.
fn fuzz(name: &str, seed: &[u8], path: &Path, mut check: impl FnMut(&Path, &[u8])) {
    let mut m = Mutator(u64::from_str_radix(&checksum64(name.as_bytes()), 16).unwrap_or(7) | 1);
    let mut ok = 0usize;
    for i in 0..iters() {
        let bytes = m.mutate(seed);
        std::fs::write(path, &bytes).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| check(path, &bytes)));
        if r.is_err() {
            let keep = path.with_extension(format!("crash-{i}"));
            std::fs::write(&keep, &bytes).unwrap();
            panic!(
                "{name}: iteration {i} panicked; input kept at {}",
                keep.display()
            );
        }
        ok += 1;
    }
    println!("{name}: {ok} mutated inputs, no panic");
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_advlens"));
    c.args(["--device", "cpu", "--threads", "1"]);
    c
}

fn dataset(path: &Path, n: usize) {
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
            let img: Vec<u8> = (0..144).map(|j| ((j * 7 + i * 13) % 256) as u8).collect();
            sink.push(&img, i % 3)?;
        }
        Ok(())
    })
    .unwrap();
}

struct Seeds {
    dir: PathBuf,
    data: PathBuf,
    ckpt: PathBuf,
    adv: PathBuf,
}

fn seeds() -> &'static Seeds {
    static S: OnceLock<Seeds> = OnceLock::new();
    S.get_or_init(|| {
        advlens::progress::set_quiet(true);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fuzz-smoke-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data.safetensors");
        dataset(&data, 24);
        let run = dir.join("run");
        let o = bin()
            .args([
                "train",
                "--model",
                "small-resnet18",
                "--width",
                "2",
                "--data",
            ])
            .arg(&data)
            .args(["--epochs", "1", "--batch", "8", "--out"])
            .arg(&run)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let adv = dir.join("adv");
        let o = bin()
            .args(["attack", "ensemble", "--models"])
            .arg(run.join("last.safetensors"))
            .arg("--data")
            .arg(&data)
            .args(["--targets", "2", "--steps", "1", "--limit", "4", "--out"])
            .arg(&adv)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Seeds {
            ckpt: run.join("last.safetensors"),
            dir,
            data,
            adv,
        }
    })
}

#[test]
fn fuzz_checkpoint_loading() {
    let s = seeds();
    let seed = std::fs::read(&s.ckpt).unwrap();
    fuzz(
        "checkpoint",
        &seed,
        &s.dir.join("ck.safetensors"),
        |p, _| {
            if let Ok(ck) = advlens::nn::checkpoint::load(p) {
                assert!(advlens::nn::checkpoint::first_non_finite(&ck.model)
                    .unwrap()
                    .is_none());
            }
        },
    );
}

#[test]
fn fuzz_dataset_split_loading() {
    let s = seeds();
    let seed = std::fs::read(&s.data).unwrap();
    fuzz("split", &seed, &s.dir.join("split.safetensors"), |p, _| {
        if let Ok(d) = Dataset::open(p) {
            let all: Vec<usize> = (0..d.len().min(64)).collect();
            let _ = d.batch_f32(&all);
            let _ = d.class_counts();
        }
    });
}

#[test]
fn fuzz_idx_import() {
    let s = seeds();
    let dir = s.dir.join("idx");
    std::fs::create_dir_all(&dir).unwrap();
    let (n, side) = (5u32, 4u32);
    let mut images = vec![0, 0, 8, 3];
    for d in [n, side, side] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    images.extend((0..n * side * side).map(|i| i as u8));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&n.to_be_bytes());
    labels.extend((0..n).map(|i| (i % 3) as u8));
    let good_labels = dir.join("good-labels");
    std::fs::write(&good_labels, &labels).unwrap();
    let good_images = dir.join("good-images");
    std::fs::write(&good_images, &images).unwrap();
    let out = dir.join("out.safetensors");
    fuzz("idx images", &images, &dir.join("images"), |p, _| {
        let _ = advlens::data::idx::import_split(p, &good_labels, &out, "train", None);
    });
    fuzz("idx labels", &labels, &dir.join("labels"), |p, _| {
        let _ = advlens::data::idx::import_split(&good_images, p, &out, "train", Some(3));
    });
}

#[test]
fn fuzz_data_noun_and_wordnet_build() {
    let s = seeds();
    let noun = "00001740 03 n 01 entity 0 000 | that which exists\n\
                00002137 03 n 02 abstraction 0 abstract_entity 0 001 @ 00001740 n 0000 | x\n\
                00002684 03 n 01 object 0 002 @ 00001740 n 0000 ~ 00003553 n 0000 | y\n\
                00003553 03 n 01 whole 0 002 @ 00002684 n 0000 @i 00002137 n 0000 | z\n";
    let classes = "n00003553\twhole\nn00002137\nn00002684\n";
    let list_path = s.dir.join("classes.txt");
    std::fs::write(&list_path, classes).unwrap();
    fuzz(
        "data.noun",
        noun.as_bytes(),
        &s.dir.join("data.noun"),
        |p, b| {
            let text = String::from_utf8_lossy(b);
            if let Ok(wn) = WordNet::parse(&text, p) {
                if let Ok(list) = parse_class_list(classes, &list_path) {
                    let _ = Hierarchy::build(&wn, &list, 1.0, &list_path);
                }
            }
        },
    );
    let wn = WordNet::parse(noun, Path::new("data.noun")).unwrap();
    fuzz("class list", classes.as_bytes(), &list_path, |p, b| {
        if let Ok(list) = parse_class_list(&String::from_utf8_lossy(b), p) {
            let _ = Hierarchy::build(&wn, &list, 1.0, p);
        }
    });
}

#[test]
fn fuzz_image_file_import() {
    let s = seeds();
    let png = s.dir.join("seed.png");
    image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([x as u8 * 20, y as u8 * 30, 99]))
        .save(&png)
        .unwrap();
    let seed = std::fs::read(&png).unwrap();
    fuzz("png", &seed, &s.dir.join("m.png"), |p, _| {
        let _ = advlens::data::folder::load_crop(p, 8, 4);
    });
    let jpg =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/photos/n04008634/rocket.jpg");
    let seed = std::fs::read(jpg).unwrap();
    fuzz("jpeg", &seed, &s.dir.join("m.jpg"), |p, _| {
        let _ = advlens::data::folder::load_crop(p, 16, 8);
    });
}

#[test]
fn fuzz_adversarial_set_manifest_and_shards() {
    let s = seeds();
    let dir = s.dir.join("advfuzz");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(&s.adv).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let manifest = std::fs::read(dir.join("manifest.json")).unwrap();
    let read_all = |set: &AdvSet| {
        let all: Vec<usize> = (0..set.len()).collect();
        let _ = set.batch(&all);
        let _ = set.verify();
    };
    fuzz("manifest", &manifest, &dir.join("manifest.json"), |p, _| {
        if let Ok(set) = AdvSet::open_manifest(p) {
            read_all(&set);
        }
    });
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();
    // Shards: the manifest's checksum is updated to the mutated shard's, so the parser behind
    // the checksum is exercised too.
    let v: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let shard = v["shards"][0]["file"].as_str().unwrap().to_string();
    let seed = std::fs::read(dir.join(&shard)).unwrap();
    let mpath = dir.join("manifest.json");
    fuzz("shard", &seed, &dir.join(&shard), |_, b| {
        let mut m = v.clone();
        m["shards"][0]["checksum"] = serde_json::json!(checksum64(b));
        std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
        if let Ok(set) = AdvSet::open_manifest(&mpath) {
            read_all(&set);
        }
    });
}

/// Found by `fuzz_data_noun_and_wordnet_build` (10,000 iterations): a w_cnt of 2^40 sized a
/// vector and aborted the process ("memory allocation of 103079419176 bytes failed").
#[test]
fn regression_data_noun_huge_word_count() {
    for line in [
        "00001740 03 n 10000000000 entity 0 000 | x",
        "00001740 03 n 01 entity 0 99999999999999999999 | x",
        "00001740 03 n 01 entity 0 1000000 @ 00001740 n 0000 | x",
    ] {
        let e = WordNet::parse(line, Path::new("data.noun"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
