//! Streaming writer of dataset splits: images are appended one at a time, so an import never
//! holds the whole split in memory (ImageNet's 50k validation images are 7.5 GB at 224x224).
//!
//! The safetensors header must come first but depends on the final image count, which an
//! import with `--skip-bad` only knows at the end. So the writer reserves room for the header of
//! the largest possible split (`capacity` images), streams the pixels, appends the labels, then
//! seeks back and writes the real header padded with spaces (JSON allows trailing whitespace;
//! safetensors itself pads the same way). The header of n <= capacity images is never longer:
//! every number in it grows with n.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What a split file says about itself besides its pixels and labels.
#[derive(Clone, Debug)]
pub struct SplitSpec {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Class names or wnids in label order.
    pub classes: Vec<String>,
    /// Where the images came from (a path, a dataset name).
    pub source: String,
    /// More metadata entries (e.g. the resize and crop used).
    pub extra: Vec<(String, String)>,
}

impl SplitSpec {
    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn header(&self, n: usize) -> Result<Vec<u8>> {
        let img_bytes = n * self.image_len();
        let mut meta: HashMap<String, String> = self.extra.iter().cloned().collect();
        meta.insert(
            "classes".into(),
            serde_json::to_string(&self.classes).unwrap_or_else(|_| "[]".into()),
        );
        meta.insert("source".into(), self.source.clone());
        meta.insert("layout".into(), "NCHW".into());
        let header = serde_json::json!({
            "__metadata__": meta,
            "images": {
                "dtype": "U8",
                "shape": [n, self.channels, self.height, self.width],
                "data_offsets": [0, img_bytes],
            },
            "labels": {
                "dtype": "I64",
                "shape": [n],
                "data_offsets": [img_bytes, img_bytes + 8 * n],
            },
        });
        serde_json::to_vec(&header)
            .map_err(|e| Error::InvalidArg(format!("cannot serialise split header: {e}")))
    }
}

/// Where producers push images; see [`write_split_streaming`].
pub struct SplitSink<'a> {
    path: &'a Path,
    w: &'a mut BufWriter<File>,
    image_len: usize,
    capacity: usize,
    labels: Vec<i64>,
}

impl SplitSink<'_> {
    /// Append one image (C x H x W bytes) with its label.
    pub fn push(&mut self, image: &[u8], label: usize) -> Result<()> {
        if image.len() != self.image_len {
            return Err(Error::shape(
                "write_split",
                format!(
                    "image has {} bytes, the split's images have {}",
                    image.len(),
                    self.image_len
                ),
            ));
        }
        if self.labels.len() >= self.capacity {
            return Err(Error::InvalidArg(format!(
                "{}: more than the announced {} images pushed",
                self.path.display(),
                self.capacity
            )));
        }
        self.w
            .write_all(image)
            .map_err(|e| Error::io(self.path, e))?;
        self.labels.push(label as i64);
        Ok(())
    }

    /// Images pushed so far.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Write a split file at `path` atomically with at most `capacity` images, which `produce`
/// pushes one by one. Returns the number written. If `produce` fails, its error is returned and
/// no file (not even a temporary one) is left behind.
pub fn write_split_streaming(
    path: &Path,
    spec: &SplitSpec,
    capacity: usize,
    produce: impl FnOnce(&mut SplitSink<'_>) -> Result<()>,
) -> Result<usize> {
    if spec.classes.is_empty() || spec.image_len() == 0 {
        return Err(Error::InvalidArg(format!(
            "{}: a split needs at least one class and non-empty images",
            path.display()
        )));
    }
    let max_header = spec.header(capacity)?;
    // 8 bytes of length + header, rounded up so the pixel data starts 8-byte aligned.
    let reserve = (8 + max_header.len()).div_ceil(8) * 8;
    let mut failure: Option<Error> = None;
    let mut written = 0usize;
    let out: PathBuf = path.to_path_buf();
    let r = crate::io::write_atomic(path, |w| {
        w.write_all(&vec![0u8; reserve])?;
        let mut sink = SplitSink {
            path: &out,
            w,
            image_len: spec.image_len(),
            capacity,
            labels: Vec::with_capacity(capacity.min(1 << 20)),
        };
        if let Err(e) = produce(&mut sink) {
            failure = Some(e);
            return Err(std::io::Error::other("split import aborted"));
        }
        let labels = std::mem::take(&mut sink.labels);
        let n = labels.len();
        let mut header = match spec.header(n) {
            Ok(h) => h,
            Err(e) => {
                failure = Some(e);
                return Err(std::io::Error::other("split header"));
            }
        };
        debug_assert!(header.len() <= reserve - 8);
        header.resize(reserve - 8, b' ');
        w.write_all(bytemuck::cast_slice(&labels))?;
        w.seek(SeekFrom::Start(0))?;
        w.write_all(&((reserve - 8) as u64).to_le_bytes())?;
        w.write_all(&header)?;
        written = n;
        Ok(())
    });
    if let Some(e) = failure {
        return Err(e);
    }
    r?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::rng::Rng;

    #[test]
    fn streamed_split_reads_back_with_fewer_images_than_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        let spec = SplitSpec {
            channels: 3,
            height: 5,
            width: 3,
            classes: vec!["x".into(), "y".into(), "z".into()],
            source: "test".into(),
            extra: vec![("note".into(), "hi".into())],
        };
        let mut rng = Rng::new(5);
        let imgs: Vec<Vec<u8>> = (0..7)
            .map(|_| (0..45).map(|_| rng.below(256) as u8).collect())
            .collect();
        // capacity 1000 > 7 pushed: the padded header must still parse.
        let n = write_split_streaming(&p, &spec, 1000, |s| {
            for (i, im) in imgs.iter().enumerate() {
                s.push(im, i % 3)?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 7);
        let d = Dataset::open(&p).unwrap();
        assert_eq!(d.len(), 7);
        assert_eq!(d.shape(), (3, 5, 3));
        assert_eq!(d.metadata()["note"], "hi");
        for (i, im) in imgs.iter().enumerate() {
            assert_eq!(d.image(i).unwrap(), &im[..]);
            assert_eq!(d.label(i).unwrap(), (i % 3) as u32);
        }

        // A failing producer leaves nothing behind.
        let q = dir.path().join("fail.safetensors");
        let e = write_split_streaming(&q, &spec, 3, |s| {
            s.push(&imgs[0], 0)?;
            Err(Error::format("somewhere.png", "boom"))
        })
        .unwrap_err();
        assert!(e.to_string().contains("somewhere.png"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("s.safetensors")]);
    }
}
