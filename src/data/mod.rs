//! Datasets: one memory-mapped safetensors file per split, importers that write such files
//! (gzipped IDX for Fashion-MNIST, ImageNet-style image folders), and a streaming, shuffled,
//! prefetching batch iterator.
//!
//! # The split format (DESIGN section 3)
//! - `images`: u8, rank 4, `N x C x H x W` (metadata `layout` = `NCHW`, what every importer
//!   writes) or `N x H x W x C` (`layout` = `NHWC`). A file without `layout` is read as NCHW.
//! - `labels`: rank 1 integer tensor of length N (i64 is written; u16 and the other integer
//!   dtypes are accepted), each in `[0, num_classes)`.
//! - metadata `classes`: a JSON array of class names (Fashion-MNIST) or wnids (ImageNet); its
//!   order defines the label values. Metadata `source` says where the images came from.
//!
//! # Pixel scale
//! Batches come out as f32 on the **0..255 pixel scale**, not normalised: the paper's attacks
//! (eps = 1 or 5 pixel levels, clipping to [0, 255]) work on that scale, so models normalise
//! (mean/std) inside their forward pass.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{Dtype, SafeFile};
use crate::tensor::Tensor;

mod batches;
pub mod folder;
pub mod idx;
mod writer;

pub use batches::{Batch, Batches};
pub use writer::{write_split_streaming, SplitSink, SplitSpec};

/// Where the channel axis of `images` lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Layout {
    /// `N x C x H x W` (what advlens writes, and what every model consumes).
    Nchw,
    /// `N x H x W x C` (accepted on read; batches are transposed to NCHW).
    Nhwc,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

/// One dataset split, memory-mapped: pixels stay in the mapping and are read per batch; only
/// the labels (8 bytes per image at most) are copied out at open.
#[derive(Debug)]
pub struct Dataset {
    file: SafeFile,
    layout: Layout,
    /// True when the file had no `layout` metadata and NCHW was assumed.
    layout_assumed: bool,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    labels: Vec<u32>,
    labels_dtype: Dtype,
    classes: Vec<String>,
    source: Option<String>,
    metadata: HashMap<String, String>,
}

impl Dataset {
    /// Open and validate a split file. Every violation of the format is one `Error::Format`
    /// naming the file: missing tensor, wrong dtype or rank, label count or range, classes.
    pub fn open(path: &Path) -> Result<Dataset> {
        let file = SafeFile::open(path)?;
        let metadata = file.metadata();
        let bad = |msg: String| Error::format(path, msg);

        let layout_assumed = !metadata.contains_key("layout");
        let layout = match metadata.get("layout").map(|s| s.to_ascii_uppercase()) {
            None => Layout::Nchw,
            Some(s) if s == "NCHW" => Layout::Nchw,
            Some(s) if s == "NHWC" => Layout::Nhwc,
            Some(s) => {
                return Err(bad(format!(
                    "metadata 'layout' is '{s}', expected NCHW or NHWC"
                )))
            }
        };

        let (dt, shape, bytes) = file.bytes("images")?;
        if dt != Dtype::U8 {
            return Err(bad(format!(
                "tensor 'images' has dtype {dt:?}, expected U8 (pixels 0..255)"
            )));
        }
        if shape.len() != 4 {
            return Err(bad(format!(
                "tensor 'images' has shape {shape:?} (rank {}), expected rank 4 ({})",
                shape.len(),
                if layout == Layout::Nchw {
                    "N x C x H x W"
                } else {
                    "N x H x W x C"
                }
            )));
        }
        let n = shape[0];
        let (c, h, w) = match layout {
            Layout::Nchw => (shape[1], shape[2], shape[3]),
            Layout::Nhwc => (shape[3], shape[1], shape[2]),
        };
        if c == 0 || h == 0 || w == 0 {
            return Err(bad(format!(
                "tensor 'images' has shape {shape:?}: an image dimension is zero"
            )));
        }
        debug_assert_eq!(bytes.len(), n * c * h * w);

        let labels_dtype = file.info("labels")?.dtype;
        let (lshape, lvals) = file.ints("labels")?;
        if lshape.len() != 1 || lshape[0] != n {
            return Err(bad(format!(
                "tensor 'labels' has shape {lshape:?}, expected [{n}] (one label per image)"
            )));
        }

        let classes_json = metadata.get("classes").ok_or_else(|| {
            bad("no 'classes' metadata (a JSON array of class names or wnids)".into())
        })?;
        let classes: Vec<String> = serde_json::from_str(classes_json).map_err(|e| {
            bad(format!(
                "metadata 'classes' is not a JSON array of strings ({e})"
            ))
        })?;
        if classes.is_empty() {
            return Err(bad("metadata 'classes' is an empty list".into()));
        }
        let k = classes.len();
        let mut labels = Vec::with_capacity(n);
        for (i, &l) in lvals.iter().enumerate() {
            if l < 0 || l as u64 >= k as u64 {
                return Err(bad(format!(
                    "label {l} of image {i} is outside [0, {k}) ({k} classes in metadata)"
                )));
            }
            labels.push(l as u32);
        }
        let source = metadata.get("source").cloned();
        Ok(Dataset {
            file,
            layout,
            layout_assumed,
            n,
            c,
            h,
            w,
            labels,
            labels_dtype,
            classes,
            source,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
    pub fn len(&self) -> usize {
        self.n
    }
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// (channels, height, width) of one image, whatever the stored layout.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.c, self.h, self.w)
    }
    /// Bytes (= pixels x channels) of one image.
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// True when the file carries no `layout` metadata and NCHW was assumed.
    pub fn layout_assumed(&self) -> bool {
        self.layout_assumed
    }
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }
    /// Class names (or wnids) in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
    /// The whole `__metadata__` map.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }
    /// The dtype `labels` is stored with (values are exposed as u32).
    pub fn labels_dtype(&self) -> Dtype {
        self.labels_dtype
    }
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    fn check_index(&self, i: usize) -> Result<()> {
        if i >= self.n {
            return Err(Error::InvalidArg(format!(
                "image index {i} is out of range: {} has {} images",
                self.path().display(),
                self.n
            )));
        }
        Ok(())
    }

    pub fn label(&self, i: usize) -> Result<u32> {
        self.check_index(i)?;
        Ok(self.labels[i])
    }

    /// All pixels, borrowed from the mapping.
    fn all_images(&self) -> &[u8] {
        // Validated at open (present, U8, rank 4), so this cannot fail afterwards; the empty
        // fallback only keeps the signature infallible.
        match self.file.u8("images") {
            Ok((_, b)) => b,
            Err(_) => &[],
        }
    }

    /// The bytes of image `i` in the stored layout (C x H x W for NCHW), borrowed from the mapping.
    pub fn image(&self, i: usize) -> Result<&[u8]> {
        self.check_index(i)?;
        let len = self.image_len();
        Ok(&self.all_images()[i * len..(i + 1) * len])
    }

    /// Images `indices` as an f32 tensor `[B, C, H, W]` on the 0..255 pixel scale (not
    /// normalised; see the module docs), with their labels. Single-threaded on purpose: it runs
    /// on the prefetch thread while the compute pool is busy with the previous batch.
    pub fn batch_f32(&self, indices: &[usize]) -> Result<(Tensor, Vec<u32>)> {
        let len = self.image_len();
        let all = self.all_images();
        let mut out = vec![0f32; indices.len() * len];
        let mut labels = Vec::with_capacity(indices.len());
        for (dst, &i) in out.chunks_exact_mut(len.max(1)).zip(indices) {
            self.check_index(i)?;
            let src = &all[i * len..(i + 1) * len];
            match self.layout {
                Layout::Nchw => {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = s as f32;
                    }
                }
                Layout::Nhwc => {
                    let hw = self.h * self.w;
                    for (p, px) in src.chunks_exact(self.c).enumerate() {
                        for (ch, &s) in px.iter().enumerate() {
                            dst[ch * hw + p] = s as f32;
                        }
                    }
                }
            }
            labels.push(self.labels[i]);
        }
        let t = Tensor::from_vec(&[indices.len(), self.c, self.h, self.w], out)?;
        Ok((t, labels))
    }

    /// Number of images of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0usize; self.classes.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{save_safetensors, OwnedTensor};
    use crate::rng::Rng;

    #[test]
    fn nhwc_batches_match_nchw() {
        let dir = tempfile::tempdir().unwrap();
        let (n, c, h, w) = (3usize, 3usize, 5usize, 7usize);
        let mut rng = Rng::new(11);
        let nchw: Vec<u8> = (0..n * c * h * w).map(|_| rng.below(256) as u8).collect();
        let mut nhwc = vec![0u8; nchw.len()];
        for i in 0..n {
            for ch in 0..c {
                for p in 0..h * w {
                    nhwc[i * c * h * w + p * c + ch] = nchw[i * c * h * w + ch * h * w + p];
                }
            }
        }
        let write = |name: &str, layout: &str, shape: &[usize], px: Vec<u8>| {
            let p = dir.path().join(name);
            let meta: HashMap<String, String> = [
                ("classes".to_string(), r#"["a","b"]"#.to_string()),
                ("layout".to_string(), layout.to_string()),
            ]
            .into();
            save_safetensors(
                &p,
                &[
                    ("images".into(), OwnedTensor::u8(shape, px)),
                    ("labels".into(), OwnedTensor::i64(&[n], &[1, 0, 1])),
                ],
                Some(meta),
            )
            .unwrap();
            Dataset::open(&p).unwrap()
        };
        let a = write("a.safetensors", "NCHW", &[n, c, h, w], nchw);
        let b = write("b.safetensors", "NHWC", &[n, h, w, c], nhwc);
        assert_eq!(b.shape(), (c, h, w));
        assert_eq!(b.layout(), Layout::Nhwc);
        let idx = [2, 0, 2];
        let (ta, la) = a.batch_f32(&idx).unwrap();
        let (tb, lb) = b.batch_f32(&idx).unwrap();
        assert_eq!(ta.shape(), &[3, c, h, w]);
        assert_eq!(ta.to_vec().unwrap(), tb.to_vec().unwrap());
        assert_eq!(la, vec![1, 1, 1]);
        assert_eq!(la, lb);
        assert_eq!(a.class_counts(), vec![1, 2]);
        assert!(a.batch_f32(&[3]).is_err());
    }
}
