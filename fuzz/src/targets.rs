//! The bodies of the fuzz targets (issue 13 item 9), one function per parser of outside files.
//! Each takes the fuzzer's bytes, writes them where the reader expects a file (the readers take
//! paths: they memory-map or stream), runs the reader and what a later stage does with its
//! result, and must return: an `Err` is a correct answer to a bad file, a panic, an abort, a hang
//! or an allocation past the limit is a bug.
//!
//! Shared by `fuzz/fuzz_targets/*.rs` (libFuzzer, `cargo fuzz run NAME`) and the main crate's
//! `tests/fuzz_replay.rs` (`#[path]` include), which replays the committed corpus
//! `fuzz/corpus/NAME/` through the same functions under plain `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use advlens::analysis::wordnet::{parse_class_list, Hierarchy, WordNet};
use advlens::attack::advset::{checksum64, shard_name, AdvSet};
use advlens::data::Dataset;

/// A target body: the fuzzer's bytes in, nothing out (it must return, never panic).
pub type Target = fn(&[u8]);

/// Every target, by name (the corpus folder and the `fuzz_targets/NAME.rs` file).
pub const TARGETS: &[(&str, Target)] = &[
    ("checkpoint", checkpoint),
    ("split", split),
    ("idx", idx),
    ("wordnet", wordnet),
    ("image", image),
    ("advset", advset),
    ("hierarchy", hierarchy),
];

/// A scratch folder of this process (on tmpfs where there is one: the targets write a file per
/// input).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        advlens::progress::set_quiet(true);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("advlens-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch folder");
        dir
    })
}

fn put(name: &str, bytes: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, bytes).expect("write a fuzz input");
    p
}

/// Checkpoint loading: our validation on top of safetensors (names, shapes, the model spec in
/// the metadata, finite weights, the optimiser state).
pub fn checkpoint(data: &[u8]) {
    let p = put("ck.safetensors", data);
    if let Ok(ck) = advlens::nn::checkpoint::load(&p) {
        let bad = advlens::nn::checkpoint::first_non_finite(&ck.model).expect("read weights");
        assert!(bad.is_none(), "load accepted a non-finite weight: {bad:?}");
    }
}

/// Dataset split loading, then what training reads of it: a batch, the labels, class counts.
pub fn split(data: &[u8]) {
    let p = put("split.safetensors", data);
    if let Ok(d) = Dataset::open(&p) {
        let n = d.len().min(64);
        let all: Vec<usize> = (0..n).collect();
        let _ = d.batch_f32(&all);
        let _ = d.class_counts();
        for i in 0..n {
            let _ = d.label(i);
            let _ = d.image(i);
        }
    }
}

/// A valid IDX pair: 5 images of 4x4, labels 0..3.
pub fn idx_pair() -> (Vec<u8>, Vec<u8>) {
    let (n, side) = (5u32, 4u32);
    let mut images = vec![0, 0, 8, 3];
    for d in [n, side, side] {
        images.extend_from_slice(&d.to_be_bytes());
    }
    images.extend((0..n * side * side).map(|i| i as u8));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend_from_slice(&n.to_be_bytes());
    labels.extend((0..n).map(|i| (i % 3) as u8));
    (images, labels)
}

/// IDX import. Byte 0 says which file the rest is (bit 0: images, else labels; the other file is
/// a valid one) and whether a `--limit` of 3 applies (bit 1).
pub fn idx(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (good_images, good_labels) = idx_pair();
    let (images, labels) = if flags & 1 == 1 {
        (put("idx-images", rest), put("idx-labels", &good_labels))
    } else {
        (put("idx-images", &good_images), put("idx-labels", rest))
    };
    let limit = (flags & 2 == 2).then_some(3);
    let out = scratch().join("idx-out.safetensors");
    if advlens::data::idx::import_split(&images, &labels, &out, "train", limit).is_ok() {
        let d = Dataset::open(&out).expect("an imported split opens");
        assert!(limit.is_none_or(|l| d.len() <= l));
    }
}

const CLASSES: &str = "n00003553\twhole\nn00002137\nn00002684\n";

/// data.noun parsing and `wordnet build`. The input is `data.noun` text, then optionally a NUL
/// byte and a class list (else a fixed one). A hierarchy that builds is written and read back as
/// `wordnet build` and `neurons` do.
pub fn wordnet(data: &[u8]) {
    let (noun, list) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], String::from_utf8_lossy(&data[i + 1..])),
        None => (data, CLASSES.into()),
    };
    let noun_path = put("data.noun", noun);
    let list_path = put("classes.txt", list.as_bytes());
    let Ok(wn) = WordNet::parse(&String::from_utf8_lossy(noun), &noun_path) else {
        return;
    };
    let Ok(classes) = parse_class_list(&list, &list_path) else {
        return;
    };
    if let Ok(h) = Hierarchy::build(&wn, &classes, 1.0, &list_path) {
        let out = scratch().join("hierarchy.json");
        h.write_json(&out, 64).expect("write the hierarchy");
        let back = Hierarchy::load(&out).expect("a written hierarchy reads back");
        assert_eq!(back.num_classes(), h.num_classes());
        assert_eq!(back.distance, h.distance);
    }
}

/// The class-hierarchy JSON reader (`neurons --hierarchy`, the reproduce stages).
pub fn hierarchy(data: &[u8]) {
    let p = put("hier.json", data);
    if let Ok(h) = Hierarchy::load(&p) {
        let _ = h.c_matrix();
        let _ = h.max_distance();
    }
}

/// Image-folder import of one file: decode (PNG, JPEG), resize, center crop. Byte 0 picks the
/// resize and crop sizes, so the geometry is fuzzed too.
pub fn image(data: &[u8]) {
    let Some((&g, rest)) = data.split_first() else {
        return;
    };
    let size = 1 + u32::from(g & 15);
    let resize = size + u32::from(g >> 4);
    let p = put("img", rest);
    if let Ok(crop) = advlens::data::folder::load_crop(&p, resize, size) {
        assert_eq!(crop.len(), 3 * (size * size) as usize);
    }
}

/// The adversarial-set manifest and shard reader. Input: byte 0 (bit 0: write the shard's real
/// checksum into the manifest, so that the shard parser behind the checksum is reached), then
/// `manifest.json`, a NUL byte, and the bytes of shard 0 (`adv-00000.safetensors`).
pub fn advset(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (manifest, shard) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let dir = scratch().join("adv");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the advset folder");
    std::fs::write(dir.join(shard_name(0)), shard).expect("write the shard");
    let mut manifest = manifest.to_vec();
    if flags & 1 == 1 {
        if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&manifest) {
            if let Some(e) = v.pointer_mut("/shards/0/checksum") {
                *e = serde_json::Value::String(checksum64(shard));
                manifest = serde_json::to_vec(&v).expect("serialise a JSON value");
            }
        }
    }
    let mpath = dir.join("manifest.json");
    std::fs::write(&mpath, &manifest).expect("write the manifest");
    if let Ok(set) = AdvSet::open_manifest(&mpath) {
        let all: Vec<usize> = (0..set.len().min(64)).collect();
        let _ = set.batch(&all);
        for b in set.batches(7) {
            let _ = b;
        }
        let _ = set.verify();
        let m = set.manifest();
        let models = m.shards.first().map_or(0, |e| e.stats.target_hits.len());
        let _ = m.total_stats(models);
    }
}
