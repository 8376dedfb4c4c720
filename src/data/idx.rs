//! IDX files (the MNIST / Fashion-MNIST format), gzipped or plain, streamed into split files.
//!
//! An IDX file is a 4-byte magic `00 00 TT DD` (TT = element type, 0x08 = unsigned byte; DD =
//! number of dimensions), DD big-endian u32 sizes, then the elements. Images are `0x00000803`
//! (count x rows x cols), labels `0x00000801` (count). The whole file is always read to its end,
//! even with a limit, so that a truncated or corrupt file (gzip CRC included) is never imported
//! as if it were whole.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::writer::{write_split_streaming, SplitSpec};
use crate::error::{Error, Result};

/// Fashion-MNIST's class names in label order (Xiao et al., 2017).
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
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
];

/// Where Debian's `dataset-fashion-mnist` installs the files.
pub const DEFAULT_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

const MAGIC_IMAGES: u32 = 0x0000_0803;
const MAGIC_LABELS: u32 = 0x0000_0801;

/// The header of an IDX file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IdxHeader {
    pub magic: u32,
    pub dims: Vec<usize>,
}

/// A sequential reader over the items (first-axis slices) of an IDX file.
pub struct IdxStream {
    path: PathBuf,
    reader: Box<dyn Read + Send>,
    pub header: IdxHeader,
    item_len: usize,
    items_read: usize,
}

fn read_err(path: &Path, e: std::io::Error, what: &str) -> Error {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::format(
            path,
            format!("truncated: the file ends inside {what} (corrupt or cut-off download?)"),
        ),
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => Error::format(
            path,
            format!("corrupt data while reading {what}: {e} (not a valid gzip stream?)"),
        ),
        _ => Error::io(path, e),
    }
}

/// Read until `buf` is full or the stream ends; returns the bytes read (short = end of data).
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl IdxStream {
    /// Open `path` (gzip if it ends in `.gz`) and check its magic against `magic`.
    pub fn open(path: &Path, magic: u32) -> Result<IdxStream> {
        Self::open_any(path, &[magic])
    }

    fn open_any(path: &Path, allowed: &[u32]) -> Result<IdxStream> {
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        let mut reader: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(GzDecoder::new(BufReader::with_capacity(1 << 16, f)))
        } else {
            Box::new(BufReader::with_capacity(1 << 16, f))
        };
        let mut m = [0u8; 4];
        let got = fill(&mut *reader, &mut m).map_err(|e| read_err(path, e, "the IDX magic"))?;
        if got < 4 {
            return Err(Error::format(
                path,
                format!("truncated: {got} bytes, too short for an IDX header"),
            ));
        }
        let magic = u32::from_be_bytes(m);
        if !allowed.contains(&magic) {
            let want: Vec<String> = allowed
                .iter()
                .map(|&a| format!("0x{a:08x} ({})", describe_magic(a)))
                .collect();
            return Err(Error::format(
                path,
                format!(
                    "wrong IDX magic number 0x{magic:08x}, expected {}",
                    want.join(" or ")
                ),
            ));
        }
        let ndims = m[3] as usize;
        let mut dims = Vec::with_capacity(ndims);
        for d in 0..ndims {
            let mut b = [0u8; 4];
            let got =
                fill(&mut *reader, &mut b).map_err(|e| read_err(path, e, "the IDX header"))?;
            if got < 4 {
                return Err(Error::format(
                    path,
                    format!("truncated: the IDX header ends before dimension {d} of {ndims}"),
                ));
            }
            dims.push(u32::from_be_bytes(b) as usize);
        }
        if dims.iter().skip(1).any(|&d| d == 0) {
            return Err(Error::format(
                path,
                format!("IDX dimensions {dims:?} contain a zero item dimension"),
            ));
        }
        // A corrupt header must not turn into a huge allocation or an overflow.
        let item_len = dims
            .iter()
            .skip(1)
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&l| l <= 1 << 28)
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!("IDX item dimensions {dims:?} are implausibly large"),
                )
            })?;
        Ok(IdxStream {
            path: path.to_path_buf(),
            reader,
            header: IdxHeader { magic, dims },
            item_len,
            items_read: 0,
        })
    }

    pub fn count(&self) -> usize {
        self.header.dims.first().copied().unwrap_or(0)
    }
    pub fn item_len(&self) -> usize {
        self.item_len
    }

    /// Read the next item into `buf` (`item_len` bytes); errors if the data ends early.
    pub fn next_item(&mut self, buf: &mut [u8]) -> Result<()> {
        debug_assert_eq!(buf.len(), self.item_len);
        let count = self.count();
        let idx = self.items_read;
        if idx >= count {
            return Err(Error::InvalidArg(format!(
                "{}: read past the {count} items of the header",
                self.path.display()
            )));
        }
        let got = fill(&mut *self.reader, buf)
            .map_err(|e| read_err(&self.path, e, &format!("item {idx} of {count}")))?;
        if got < buf.len() {
            return Err(Error::format(
                &self.path,
                format!(
                    "truncated: the header announces {count} items of {} bytes but the data \
                     ends inside item {idx}",
                    self.item_len
                ),
            ));
        }
        self.items_read += 1;
        Ok(())
    }

    /// Read (and discard) the remaining items, then check the file ends there: a truncated
    /// file, trailing bytes or a bad gzip checksum is an error.
    pub fn finish(mut self) -> Result<()> {
        let count = self.count();
        let per_chunk = ((1usize << 20) / self.item_len).max(1);
        let mut buf = vec![0u8; self.item_len * per_chunk];
        while self.items_read < count {
            let k = (count - self.items_read).min(per_chunk);
            let chunk = &mut buf[..k * self.item_len];
            let got = fill(&mut *self.reader, chunk).map_err(|e| {
                read_err(
                    &self.path,
                    e,
                    &format!("item {} of {count}", self.items_read),
                )
            })?;
            if got < chunk.len() {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "truncated: the header announces {count} items of {} bytes but the \
                         data ends inside item {}",
                        self.item_len,
                        self.items_read + got / self.item_len
                    ),
                ));
            }
            self.items_read += k;
        }
        let mut extra = [0u8; 1];
        // Reading past the end also makes the gzip decoder verify the CRC and length trailer.
        let got = fill(&mut *self.reader, &mut extra)
            .map_err(|e| read_err(&self.path, e, "the end of the file"))?;
        if got != 0 {
            return Err(Error::format(
                &self.path,
                format!("unexpected bytes after the {count} items the header announces"),
            ));
        }
        Ok(())
    }
}

fn describe_magic(magic: u32) -> &'static str {
    match magic {
        MAGIC_IMAGES => "unsigned-byte IDX with 3 dimensions: images",
        MAGIC_LABELS => "unsigned-byte IDX with 1 dimension: labels",
        _ => "IDX",
    }
}

/// Read just the header of an IDX file (images or labels, by its magic).
pub fn read_header(path: &Path) -> Result<IdxHeader> {
    Ok(IdxStream::open_any(path, &[MAGIC_IMAGES, MAGIC_LABELS])?.header)
}

/// Find `stem` (e.g. `train-images-idx3-ubyte`) in `dir`, gzipped or not.
pub fn locate(dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    let plain = dir.join(stem);
    if plain.exists() {
        return Ok(plain);
    }
    Err(Error::io(
        &gz,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("not found (nor {stem}); install Debian's dataset-fashion-mnist or pass --src"),
        ),
    ))
}

/// What one imported split holds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IdxSplitSummary {
    pub split: String,
    pub out: PathBuf,
    pub images_file: PathBuf,
    pub labels_file: PathBuf,
    /// Images in the IDX file (its header count).
    pub total_in_file: usize,
    /// Images written (the first `limit` of the file, or all).
    pub written: usize,
    pub rows: usize,
    pub cols: usize,
}

/// Convert one images + labels pair into a split file at `out` (the first `limit` images).
pub fn import_split(
    images: &Path,
    labels: &Path,
    out: &Path,
    split: &str,
    limit: Option<usize>,
) -> Result<IdxSplitSummary> {
    let mut lab = IdxStream::open(labels, MAGIC_LABELS)?;
    let mut img = IdxStream::open(images, MAGIC_IMAGES)?;
    let n = img.count();
    if n != lab.count() {
        return Err(Error::format(
            images,
            format!(
                "has {n} images but {} has {} labels",
                labels.display(),
                lab.count()
            ),
        ));
    }
    let (rows, cols) = (img.header.dims[1], img.header.dims[2]);
    // Grown as read (not sized from the header), so a corrupt count cannot allocate gigabytes.
    let mut all_labels = Vec::new();
    let mut l = 0u8;
    for i in 0..n {
        lab.next_item(std::slice::from_mut(&mut l))?;
        all_labels.push(l);
        if l as usize >= FASHION_MNIST_CLASSES.len() {
            return Err(Error::format(
                labels,
                format!(
                    "label {l} of item {i} is outside [0, {})",
                    FASHION_MNIST_CLASSES.len()
                ),
            ));
        }
    }
    lab.finish()?;

    let keep = limit.map_or(n, |l| l.min(n));
    let spec = SplitSpec {
        channels: 1,
        height: rows,
        width: cols,
        classes: FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        source: format!("IDX {} + {}", images.display(), labels.display()),
        extra: vec![
            ("split".into(), split.into()),
            ("idx_count".into(), n.to_string()),
        ],
    };
    let pb = crate::progress::bar(n as u64, &format!("import {split}"), "img");
    let written = write_split_streaming(out, &spec, keep, |sink| {
        let mut buf = vec![0u8; img.item_len()];
        for &label in &all_labels[..keep] {
            img.next_item(&mut buf)?;
            sink.push(&buf, label as usize)?;
            pb.inc(1);
        }
        // The rest is read too, so a truncated file fails here rather than importing quietly.
        img.finish()?;
        pb.set_position(n as u64);
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok(IdxSplitSummary {
        split: split.into(),
        out: out.to_path_buf(),
        images_file: images.to_path_buf(),
        labels_file: labels.to_path_buf(),
        total_in_file: n,
        written,
        rows,
        cols,
    })
}

/// `advlens data import-idx`: `src/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` to
/// `out_dir/train.safetensors` and `out_dir/test.safetensors`. Both are written under a staging
/// directory and moved into place only when both succeeded, so a failed import leaves no output.
pub fn import_fashion_mnist(
    src: &Path,
    out_dir: &Path,
    limit_train: Option<usize>,
    limit_test: Option<usize>,
) -> Result<Vec<IdxSplitSummary>> {
    let pairs = [
        ("train", "train", limit_train),
        ("test", "t10k", limit_test),
    ];
    let mut files = Vec::new();
    for (split, prefix, limit) in pairs {
        let images = locate(src, &format!("{prefix}-images-idx3-ubyte"))?;
        let labels = locate(src, &format!("{prefix}-labels-idx1-ubyte"))?;
        files.push((split, images, labels, limit));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    crate::io::remove_stale_temps(out_dir, ".advlens-import-idx-");
    let staging = out_dir.join(format!(".advlens-import-idx-{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let result = (|| -> Result<Vec<IdxSplitSummary>> {
        let mut summaries = Vec::new();
        for (split, images, labels, limit) in &files {
            let tmp = staging.join(format!("{split}.safetensors"));
            summaries.push(import_split(images, labels, &tmp, split, *limit)?);
        }
        for s in &mut summaries {
            let dst = out_dir.join(format!("{}.safetensors", s.split));
            std::fs::rename(&s.out, &dst).map_err(|e| Error::io(&dst, e))?;
            s.out = dst;
        }
        Ok(summaries)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

#[cfg(test)]
mod tests {
    use super::fill;
    use std::io::{Error, ErrorKind, Read};

    /// Hands out one byte a call, after an `Interrupted` error before every other byte (a
    /// signal landing mid-read), then a hard error once `fail_at` bytes are out.
    struct Flaky {
        data: Vec<u8>,
        pos: usize,
        calls: usize,
        fail_at: usize,
    }

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 1 {
                return Err(Error::new(ErrorKind::Interrupted, "signal"));
            }
            if self.pos == self.fail_at {
                return Err(Error::other("disk gone"));
            }
            if self.pos == self.data.len() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.data[self.pos];
            self.pos += 1;
            Ok(1)
        }
    }

    #[test]
    fn fill_retries_interruptions_and_stops_at_the_end_or_an_error() {
        let flaky = |fail_at| Flaky {
            data: vec![1, 2, 3, 4, 5],
            pos: 0,
            calls: 0,
            fail_at,
        };
        let mut buf = [0u8; 4];
        assert_eq!(fill(&mut flaky(99), &mut buf).unwrap(), 4);
        assert_eq!(buf, [1, 2, 3, 4]);
        let mut long = [0u8; 8];
        assert_eq!(
            fill(&mut flaky(99), &mut long).unwrap(),
            5,
            "short at the end"
        );
        let e = fill(&mut flaky(2), &mut long).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Other);
    }
}
