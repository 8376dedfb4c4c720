//! The adversarial set on disk (DESIGN section 3): shards `adv-00000.safetensors` ... plus
//! `manifest.json`, and [`AdvSet`], the reader later stages use.
//!
//! # Shard format (`advlens.advset.v1`)
//! Tensors: `images` u8 `[M, C, H, W]` (NCHW, the rounded and clipped adversarial images every
//! later stage sees), `source_index` i64 `[M]` (row of the source image in the attacked split),
//! `true_label` i64 `[M]`, `target_label` i64 `[M]`, and `labels` i64 `[M]` (= `true_label`, so
//! that every shard is also a valid dataset split for `Dataset::open`/`advlens eval`).
//! Rows are ordered by source index, then by target rank (least likely target first).
//! Metadata: `format`, `layout` (NCHW), `classes` (JSON array), `params` (the attack parameters
//! and the identity of models and data, JSON; identical for every shard of one run), `shard`,
//! `sources` (`[start, end)` of source indices), `stats` (per-shard counts the report adds up).
//!
//! Shard files are written by our own serialiser rather than `safetensors::serialize`: that one
//! emits the `__metadata__` map in `HashMap` order, which differs between processes, and a
//! resumed or sharded run must produce byte-identical files. Keys here are sorted, there is no
//! timestamp, and the data is laid out i64 tensors first (8-byte aligned), then the images.
//!
//! # Manifest
//! `manifest.json` (unsharded run or merge) or `manifest-K-of-N.json` (one part of a `--shard`
//! run): format, params, input paths, the part, the covered source range and one entry per shard
//! (file, index, count, sources, checksum, stats). The checksum is [`checksum64`] of the file
//! bytes (a cheap 64-bit mix, enough to catch truncation, a wrong file or a bit flip; it is not
//! cryptographic).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::SafeFile;
use crate::tensor::Tensor;

pub const FORMAT: &str = "advlens.advset.v1";
pub const CHECKSUM_ALGORITHM: &str =
    "advlens-mix64 (splitmix64 finaliser chained over 8-byte LE words, length appended)";

/// File name of shard `i`.
pub fn shard_name(i: usize) -> String {
    format!("adv-{i:05}.safetensors")
}

/// Shard index of a file name `adv-NNNNN.safetensors`, None for any other name.
pub fn parse_shard_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("adv-")?.strip_suffix(".safetensors")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Name of the manifest of a run: `manifest.json`, or `manifest-K-of-N.json` for part K of N.
pub fn manifest_name(part: Option<(usize, usize)>) -> String {
    match part {
        None => "manifest.json".into(),
        Some((k, n)) => format!("manifest-{k}-of-{n}.json"),
    }
}

/// Cheap 64-bit checksum of a byte string (see the module docs): words chained through the
/// splitmix64 finaliser, so a changed, missing or reordered byte changes the value.
pub fn checksum64(bytes: &[u8]) -> String {
    let mut h: u64 = 0x6164_766C_656E_7321;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = crate::rng::hash64(h, w);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = crate::rng::hash64(h, u64::from_le_bytes(tail));
    h = crate::rng::hash64(h, bytes.len() as u64);
    format!("{h:016x}")
}

/// Checksum of a file's bytes.
pub fn checksum_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only mapping of a file advlens does not write while it is mapped.
    let m = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    Ok(checksum64(&m))
}

/// Checksum of a model's weights and buffers: every tensor of a safetensors file except the
/// optimiser state (`optim.*`), by name, dtype, shape and bytes. The file's metadata (training
/// history with its timings) does not count, so two runs that compute the same weights agree.
pub fn weights_checksum(path: &Path) -> Result<String> {
    let f = crate::io::SafeFile::open(path)?;
    let mut names = f.names();
    names.retain(|n| !n.starts_with("optim."));
    names.sort();
    let mut list = String::new();
    for n in &names {
        let (dt, shape, bytes) = f.bytes(n)?;
        list.push_str(&format!("{n}:{dt:?}:{shape:?}:{}\n", checksum64(bytes)));
    }
    Ok(checksum64(list.as_bytes()))
}

/// What one shard (or a whole run) adds to the report: counts and sums, so that parts and
/// resumed runs aggregate exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardStats {
    /// Adversarial images.
    pub images: usize,
    /// Source images attacked.
    pub sources: usize,
    /// Per model (in `--models` order): images it classifies as the target.
    pub target_hits: Vec<usize>,
    /// Per model: top-1 / top-5 hits with respect to the TRUE label (Table 1 "Valid-Adv").
    pub top1_true: Vec<usize>,
    pub top5_true: Vec<usize>,
    /// Images that every model classifies as the target.
    pub ensemble_hits: usize,
    /// Sums over images of the L2 norm (in millionths, rounded per image) and of the Linf norm
    /// of (stored u8 image - source image) on the 0-255 scale. Integers, so that statistics read
    /// back from JSON add up to exactly what an uninterrupted run computes.
    pub l2_sum_micro: u64,
    pub linf_sum: u64,
}

impl ShardStats {
    /// Mean L2 and Linf perturbation per image.
    pub fn mean_l2_linf(&self) -> (f64, f64) {
        let n = self.images.max(1) as f64;
        (
            self.l2_sum_micro as f64 * 1e-6 / n,
            self.linf_sum as f64 / n,
        )
    }

    /// Add one image's perturbation, given the sum of squared and the largest absolute pixel
    /// difference (integers: the stored images and the sources are both u8).
    pub fn add_perturbation(&mut self, sum_sq: u64, max_abs: u64) {
        self.l2_sum_micro += ((sum_sq as f64).sqrt() * 1e6).round() as u64;
        self.linf_sum += max_abs;
    }

    pub fn zeros(models: usize) -> ShardStats {
        ShardStats {
            target_hits: vec![0; models],
            top1_true: vec![0; models],
            top5_true: vec![0; models],
            ..Default::default()
        }
    }

    pub fn add(&mut self, o: &ShardStats) -> Result<()> {
        if o.target_hits.len() != self.target_hits.len() {
            return Err(Error::InvalidArg(format!(
                "cannot add statistics of {} models to statistics of {}",
                o.target_hits.len(),
                self.target_hits.len()
            )));
        }
        self.images += o.images;
        self.sources += o.sources;
        self.ensemble_hits += o.ensemble_hits;
        self.l2_sum_micro += o.l2_sum_micro;
        self.linf_sum += o.linf_sum;
        for i in 0..self.target_hits.len() {
            self.target_hits[i] += o.target_hits[i];
            self.top1_true[i] += o.top1_true[i];
            self.top5_true[i] += o.top5_true[i];
        }
        Ok(())
    }
}

/// One shard's rows, ready to be written.
pub struct ShardData {
    pub images: Vec<u8>,
    /// (C, H, W) of one image.
    pub shape: (usize, usize, usize),
    pub source_index: Vec<i64>,
    pub true_label: Vec<i64>,
    pub target_label: Vec<i64>,
}

#[derive(Serialize)]
struct TensorHeader {
    dtype: &'static str,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Serialise a safetensors file deterministically: sorted metadata keys, tensors laid out in
/// the given order (callers put 8-byte dtypes first), header padded with spaces to 8 bytes.
pub fn serialize_deterministic(
    tensors: &[(&str, &'static str, Vec<usize>, &[u8])],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut header: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    header.insert("__metadata__".into(), to_value(metadata)?);
    let mut off = 0usize;
    for (name, dtype, shape, data) in tensors {
        let h = TensorHeader {
            dtype,
            shape: shape.clone(),
            data_offsets: [off, off + data.len()],
        };
        off += data.len();
        header.insert((*name).to_string(), to_value(&h)?);
    }
    let mut json = serde_json::to_vec(&header)
        .map_err(|e| Error::InvalidArg(format!("cannot serialise a shard header: {e}")))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + off);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    Ok(out)
}

fn to_value<T: Serialize + ?Sized>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v)
        .map_err(|e| Error::InvalidArg(format!("cannot serialise a shard header: {e}")))
}

fn json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    Ok(to_value(v)?.to_string())
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The bytes of one shard file.
pub fn shard_bytes(
    data: &ShardData,
    classes: &[String],
    params_json: &str,
    shard: usize,
    sources: (usize, usize),
    stats: &ShardStats,
) -> Result<Vec<u8>> {
    let m = data.source_index.len();
    let (c, h, w) = data.shape;
    if data.images.len() != m * c * h * w
        || data.true_label.len() != m
        || data.target_label.len() != m
    {
        return Err(Error::shape(
            "adv shard",
            format!(
                "{m} source indices but {} image bytes ({}x{}x{} each), {} true and {} target labels",
                data.images.len(),
                c,
                h,
                w,
                data.true_label.len(),
                data.target_label.len()
            ),
        ));
    }
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    meta.insert("layout".to_string(), "NCHW".to_string());
    meta.insert("classes".to_string(), json(classes)?);
    meta.insert("params".to_string(), params_json.to_string());
    meta.insert("shard".to_string(), shard.to_string());
    meta.insert("sources".to_string(), json(&[sources.0, sources.1])?);
    meta.insert("stats".to_string(), json(stats)?);
    let si = i64_bytes(&data.source_index);
    let tl = i64_bytes(&data.true_label);
    let tg = i64_bytes(&data.target_label);
    serialize_deterministic(
        &[
            ("labels", "I64", vec![m], &tl),
            ("source_index", "I64", vec![m], &si),
            ("target_label", "I64", vec![m], &tg),
            ("true_label", "I64", vec![m], &tl),
            ("images", "U8", vec![m, c, h, w], &data.images),
        ],
        &meta,
    )
}

/// Write bytes to `path` atomically (temporary name + rename).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::io::write_atomic(path, |w| w.write_all(bytes))
}

/// One shard entry of a manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub index: usize,
    /// Adversarial images in the shard.
    pub count: usize,
    /// `[start, end)` of source indices.
    pub sources: [usize; 2],
    pub checksum: String,
    pub stats: ShardStats,
}

/// The manifest of a run, a part of one, or a merge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The identity of the run (attack parameters, models, data): equal for every part.
    pub params: serde_json::Value,
    /// Paths as given on the command line (informational, not compared).
    pub inputs: serde_json::Value,
    /// `[K, N]` for part K of N, None for a whole run.
    pub part: Option<[usize; 2]>,
    /// `[start, end)` of source indices this manifest covers.
    pub sources: [usize; 2],
    pub classes: Vec<String>,
    /// (C, H, W) of one image.
    pub shape: [usize; 3],
    pub images: usize,
    pub checksum_algorithm: String,
    pub shards: Vec<ShardEntry>,
}

impl Manifest {
    /// Read and check a manifest: the format, and every shard named `adv-NNNNN.safetensors`
    /// (a plain file name: a manifest never makes a reader open, or `merge` write, a path
    /// outside its folder, such as `../x` or `/dev/zero`).
    pub fn read(path: &Path) -> Result<Manifest> {
        let m: Manifest = crate::io::read_json(path)?;
        if m.format != FORMAT {
            return Err(Error::format(
                path,
                format!("format is '{}', expected {FORMAT}", m.format),
            ));
        }
        if let Some(e) = m
            .shards
            .iter()
            .find(|e| parse_shard_name(&e.file).is_none())
        {
            return Err(Error::format(
                path,
                format!(
                    "shard file {:?} is not a shard name (adv-NNNNN.safetensors)",
                    e.file
                ),
            ));
        }
        Ok(m)
    }

    pub fn total_stats(&self, models: usize) -> Result<ShardStats> {
        let mut s = ShardStats::zeros(models);
        for e in &self.shards {
            s.add(&e.stats)?;
        }
        Ok(s)
    }
}

/// Read a shard's `params` metadata (the run identity), its shard index and source range, and
/// its stats, checking the format.
pub struct ShardInfo {
    pub params: String,
    pub shard: usize,
    pub sources: [usize; 2],
    pub stats: ShardStats,
    pub count: usize,
}

pub fn read_shard_info(path: &Path) -> Result<ShardInfo> {
    let f = SafeFile::open(path)?;
    let meta = f.metadata();
    let get = |k: &str| {
        meta.get(k).cloned().ok_or_else(|| {
            Error::format(
                path,
                format!("no '{k}' metadata: not an advlens adversarial shard ({FORMAT})"),
            )
        })
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(Error::format(
            path,
            format!("format is '{format}', expected {FORMAT}"),
        ));
    }
    let bad = |k: &str, e: &dyn std::fmt::Display| {
        Error::format(path, format!("metadata '{k}' is unreadable: {e}"))
    };
    let shard: usize = get("shard")?.parse().map_err(|e| bad("shard", &e))?;
    let sources: [usize; 2] =
        serde_json::from_str(&get("sources")?).map_err(|e| bad("sources", &e))?;
    let stats: ShardStats = serde_json::from_str(&get("stats")?).map_err(|e| bad("stats", &e))?;
    let (_, _, _) = f.bytes("images")?;
    let count = f.info("images")?.shape.first().copied().unwrap_or(0);
    Ok(ShardInfo {
        params: get("params")?,
        shard,
        sources,
        stats,
        count,
    })
}

/// Names of the `differing` top-level fields of two params JSON strings (for error messages).
pub fn params_diff(a: &str, b: &str) -> String {
    let pa: serde_json::Value = serde_json::from_str(a).unwrap_or(serde_json::Value::Null);
    let pb: serde_json::Value = serde_json::from_str(b).unwrap_or(serde_json::Value::Null);
    match (pa.as_object(), pb.as_object()) {
        (Some(x), Some(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let diffs: Vec<String> = keys
                .into_iter()
                .filter(|k| x.get(*k) != y.get(*k))
                .map(|k| {
                    format!(
                        "{k}: {} vs {}",
                        x.get(k).map_or("(absent)".into(), |v| v.to_string()),
                        y.get(k).map_or("(absent)".into(), |v| v.to_string())
                    )
                })
                .collect();
            diffs.join("; ")
        }
        _ => "unreadable parameters".into(),
    }
}

// ---- reader ------------------------------------------------------------------------------------

/// A batch of the adversarial set: f32 images `[B, C, H, W]` on the 0..255 scale (like
/// `Dataset::batch_f32`), with labels, targets and source indices.
#[derive(Debug)]
pub struct AdvBatch {
    pub images: Tensor,
    pub true_label: Vec<u32>,
    pub target_label: Vec<u32>,
    pub source_index: Vec<usize>,
    /// Row indices in the whole set.
    pub indices: Vec<usize>,
}

/// The adversarial set of a directory, read through its manifest. Shards stay memory-mapped;
/// the labels, targets and source indices (24 bytes per image) are copied out at open.
pub struct AdvSet {
    dir: PathBuf,
    manifest: Manifest,
    shards: Vec<SafeFile>,
    /// starts[i] = first row of shard i; starts[len] = total.
    starts: Vec<usize>,
    true_label: Vec<u32>,
    target_label: Vec<u32>,
    source_index: Vec<usize>,
}

impl std::fmt::Debug for AdvSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdvSet({}, {} images)", self.dir.display(), self.len())
    }
}

impl AdvSet {
    /// Open `dir/manifest.json` (a whole run or a merge).
    pub fn open(dir: &Path) -> Result<AdvSet> {
        Self::open_manifest(&dir.join(manifest_name(None)))
    }

    /// Open the set described by one manifest file (also a part manifest).
    pub fn open_manifest(path: &Path) -> Result<AdvSet> {
        let manifest = Manifest::read(path)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let [c, h, w] = manifest.shape;
        let k = manifest.classes.len();
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut starts = vec![0usize];
        let (mut tl, mut tg, mut si) = (Vec::new(), Vec::new(), Vec::new());
        for e in &manifest.shards {
            let p = dir.join(&e.file);
            let f = SafeFile::open(&p)?;
            // Every reader checks the shards against the manifest, as `attack merge` does: a
            // corrupt or replaced shard is refused, not analysed.
            let got = checksum_file(&p)?;
            if got != e.checksum {
                return Err(Error::format(
                    &p,
                    format!(
                        "checksum {got} does not match the manifest's {} ({}): the shard is \
                         corrupt or was replaced",
                        e.checksum,
                        path.display()
                    ),
                ));
            }
            let (shape, _) = f.u8("images")?;
            if shape != [e.count, c, h, w] {
                return Err(Error::format(
                    &p,
                    format!(
                        "images have shape {shape:?}, the manifest says [{}, {c}, {h}, {w}]",
                        e.count
                    ),
                ));
            }
            for (name, dst) in [("true_label", &mut tl), ("target_label", &mut tg)] {
                let (s, v) = f.ints(name)?;
                if s != [e.count] {
                    return Err(Error::format(
                        &p,
                        format!("'{name}' has shape {s:?}, expected [{}]", e.count),
                    ));
                }
                for x in v {
                    if x < 0 || x as usize >= k {
                        return Err(Error::format(
                            &p,
                            format!("'{name}' holds {x}, outside [0, {k})"),
                        ));
                    }
                    dst.push(x as u32);
                }
            }
            let (s, v) = f.ints("source_index")?;
            if s != [e.count] || v.iter().any(|&x| x < 0) {
                return Err(Error::format(
                    &p,
                    "'source_index' has the wrong shape or a negative value",
                ));
            }
            si.extend(v.into_iter().map(|x| x as usize));
            starts.push(starts[starts.len() - 1] + e.count);
            shards.push(f);
        }
        Ok(AdvSet {
            dir,
            manifest,
            shards,
            starts,
            true_label: tl,
            target_label: tg,
            source_index: si,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn len(&self) -> usize {
        self.true_label.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn classes(&self) -> &[String] {
        &self.manifest.classes
    }
    pub fn num_classes(&self) -> usize {
        self.manifest.classes.len()
    }
    /// (C, H, W) of one image.
    pub fn shape(&self) -> (usize, usize, usize) {
        let [c, h, w] = self.manifest.shape;
        (c, h, w)
    }
    pub fn true_labels(&self) -> &[u32] {
        &self.true_label
    }
    pub fn target_labels(&self) -> &[u32] {
        &self.target_label
    }
    pub fn source_indices(&self) -> &[usize] {
        &self.source_index
    }

    /// The u8 pixels of row `i` (C x H x W), borrowed from its shard's mapping.
    pub fn image(&self, i: usize) -> Result<&[u8]> {
        if i >= self.len() {
            return Err(Error::InvalidArg(format!(
                "adversarial image {i} is out of range: {} holds {}",
                self.dir.display(),
                self.len()
            )));
        }
        let s = self.starts.partition_point(|&st| st <= i) - 1;
        let (_, bytes) = self.shards[s].u8("images")?;
        let len = self.manifest.shape.iter().product::<usize>();
        let r = i - self.starts[s];
        Ok(&bytes[r * len..(r + 1) * len])
    }

    /// Rows `indices` as one batch.
    pub fn batch(&self, indices: &[usize]) -> Result<AdvBatch> {
        let (c, h, w) = self.shape();
        let len = c * h * w;
        let mut px = vec![0f32; indices.len() * len];
        for (dst, &i) in px.chunks_exact_mut(len.max(1)).zip(indices) {
            for (d, &s) in dst.iter_mut().zip(self.image(i)?) {
                *d = s as f32;
            }
        }
        Ok(AdvBatch {
            images: Tensor::from_vec(&[indices.len(), c, h, w], px)?,
            true_label: indices.iter().map(|&i| self.true_label[i]).collect(),
            target_label: indices.iter().map(|&i| self.target_label[i]).collect(),
            source_index: indices.iter().map(|&i| self.source_index[i]).collect(),
            indices: indices.to_vec(),
        })
    }

    /// Consecutive batches of `size` rows (the last one may be shorter), in set order.
    pub fn batches(&self, size: usize) -> impl Iterator<Item = Result<AdvBatch>> + '_ {
        let size = size.max(1);
        (0..self.len())
            .step_by(size)
            .map(move |s| self.batch(&(s..(s + size).min(self.len())).collect::<Vec<_>>()))
    }

    /// Recompute every shard's checksum and compare it with the manifest.
    pub fn verify(&self) -> Result<()> {
        for e in &self.manifest.shards {
            let p = self.dir.join(&e.file);
            let got = checksum_file(&p)?;
            if got != e.checksum {
                return Err(Error::format(
                    &p,
                    format!(
                        "checksum {got} does not match the manifest's {} (corrupt or replaced)",
                        e.checksum
                    ),
                ));
            }
        }
        Ok(())
    }
}
