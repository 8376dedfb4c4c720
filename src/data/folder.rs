//! ImageNet-style image folders (`SRC/<wnid>/*.JPEG`) to a split file, with the standard
//! evaluation preprocessing: resize the shorter side to `resize` (bilinear with antialiasing,
//! the `image` crate's Triangle filter, like torchvision's `Resize` on PIL images), then center
//! crop `size` x `size` (torchvision's `CenterCrop` offsets, Python's round-half-to-even
//! included). Pixels are stored as RGB u8; grey images are expanded and alpha dropped (like
//! PIL's `convert("RGB")`); EXIF orientation is not applied (neither is it by torchvision's
//! `ImageFolder`).
//! On the test photographs (tests/fixtures/photos) the result was compared once with Pillow
//! 13.0 (`convert("RGB")`, `resize(BILINEAR)`, the same crop): at most 1 level apart, mean
//! 0.12 to 0.18 levels per image (rounding and JPEG decoder differences).
//!
//! Classes are the subfolders sorted by name (torchvision `ImageFolder` order, so label i is
//! the i-th wnid in sorted order); files are found recursively and taken in sorted path order.
//! Decoding runs on the rayon pool, a few files at a time; each worker holds one decoded
//! full-size image at a time, and only the cropped bytes reach the streaming writer.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

use super::writer::{write_split_streaming, SplitSpec};
use crate::error::{Error, Result};

/// Largest image side accepted, in pixels, both as decoded and after the resize: a file claiming
/// more is refused (or skipped with `--skip-bad`) before its pixels are allocated.
pub const MAX_IMAGE_SIDE: u32 = 1 << 15;
/// Most bytes the decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 1 << 30;
/// Largest image file read.
pub const MAX_FILE_BYTES: u64 = 1 << 28;

/// File extensions imported (case-insensitive); other files are counted and ignored.
pub const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

#[derive(Clone, Debug)]
pub struct FolderOptions {
    /// Side of the square center crop.
    pub size: u32,
    /// The shorter side is resized to this before cropping (>= size).
    pub resize: u32,
    /// Skip files that fail to decode (with a warning) instead of failing the import.
    pub skip_bad: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        FolderOptions {
            size: 224,
            resize: 256,
            skip_bad: false,
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FolderSummary {
    pub out: PathBuf,
    pub classes: Vec<String>,
    pub per_class: Vec<usize>,
    pub images: usize,
    /// Files that failed to decode and were skipped (`--skip-bad`), with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Files with an extension that is not imported.
    pub ignored_files: usize,
    pub size: u32,
    pub resize: u32,
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn wanted(p: &Path) -> bool {
    p.extension().is_some_and(|e| {
        let e = e.to_string_lossy().to_ascii_lowercase();
        EXTENSIONS.contains(&e.as_str())
    })
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if !hidden(&p) {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// Image files under `dir`, recursively, sorted by path; `ignored` counts the other files.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, ignored: &mut usize) -> Result<()> {
    for p in sorted_entries(dir)? {
        // metadata() follows symlinks, like torchvision's os.walk(followlinks=True).
        let md = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        if md.is_dir() {
            collect_files(&p, out, ignored)?;
        } else if wanted(&p) {
            out.push(p);
        } else {
            *ignored += 1;
        }
    }
    Ok(())
}

/// What [`scan`] finds in a source folder.
#[derive(Clone, Debug)]
pub struct FolderScan {
    /// Sorted subfolder names; label i is `classes[i]`.
    pub classes: Vec<String>,
    /// Every image file with its label, in import order.
    pub files: Vec<(PathBuf, usize)>,
    /// Files inside class folders that are not jpg/jpeg/png.
    pub ignored: usize,
}

/// The classes (sorted subfolder names) and every image file with its label.
pub fn scan(src: &Path) -> Result<FolderScan> {
    let mut classes = Vec::new();
    let mut files = Vec::new();
    let mut ignored = 0usize;
    for p in sorted_entries(src)? {
        let md = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        if !md.is_dir() {
            continue;
        }
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::format(&p, "class folder name is not valid UTF-8"))?
            .to_string();
        let label = classes.len();
        let mut found = Vec::new();
        collect_files(&p, &mut found, &mut ignored)?;
        if found.is_empty() {
            return Err(Error::format(
                &p,
                format!(
                    "class folder has no image files ({})",
                    EXTENSIONS.join(", ")
                ),
            ));
        }
        files.extend(found.into_iter().map(|f| (f, label)));
        classes.push(name);
    }
    if classes.is_empty() {
        return Err(Error::format(
            src,
            "no class subfolders (expected SRC/<class or wnid>/<images>)",
        ));
    }
    Ok(FolderScan {
        classes,
        files,
        ignored,
    })
}

/// torchvision's `Resize(int)` output size: the shorter side becomes `target`, the longer one
/// `int(target * long / short)` (truncated). Saturates at `u32::MAX` (see [`checked_resize`]).
pub fn resized_dims(w: u32, h: u32, target: u32) -> (u32, u32) {
    let long = |l: u32, s: u32| -> u32 {
        u32::try_from(target as u64 * l as u64 / (s as u64).max(1)).unwrap_or(u32::MAX)
    };
    if w <= h {
        (target, long(h, w))
    } else {
        (long(w, h), target)
    }
}

/// [`resized_dims`], or an error when a side of the result exceeds [`MAX_IMAGE_SIDE`] (a very
/// elongated image would otherwise ask for gigabytes).
pub fn checked_resize(path: &Path, w: u32, h: u32, target: u32) -> Result<(u32, u32)> {
    let (nw, nh) = resized_dims(w, h, target);
    if nw > MAX_IMAGE_SIDE || nh > MAX_IMAGE_SIDE {
        return Err(Error::format(
            path,
            format!(
                "a {w}x{h} image resized to a shorter side of {target} would be {nw}x{nh}, above \
                 the limit of {MAX_IMAGE_SIDE} pixels a side"
            ),
        ));
    }
    Ok((nw, nh))
}

/// torchvision's `CenterCrop` offset: `int(round((len - crop) / 2))`, Python rounding half to even.
pub fn crop_offset(len: u32, crop: u32) -> u32 {
    ((len - crop) as f64 / 2.0).round_ties_even() as u32
}

/// Decode one file and return its `3 x size x size` crop, channel-major.
pub fn load_crop(path: &Path, resize: u32, size: u32) -> Result<Vec<u8>> {
    let file_len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if file_len > MAX_FILE_BYTES {
        return Err(Error::format(
            path,
            format!(
                "the file is {file_len} bytes, above the limit of {MAX_FILE_BYTES} for one image"
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        // A JPEG cut short decodes without complaint (the missing rows come out grey): require
        // the end-of-image marker, allowing trailing zero padding.
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if end < 4 || bytes[end - 2..end] != [0xFF, 0xD9] {
            return Err(Error::format(
                path,
                "cannot decode image: truncated JPEG (no end-of-image marker FF D9)",
            ));
        }
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let reader = || -> Result<image::ImageReader<std::io::Cursor<&[u8]>>> {
        let mut r = image::ImageReader::new(std::io::Cursor::new(bytes.as_slice()))
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?;
        r.limits(limits.clone());
        Ok(r)
    };
    let (dw, dh) = reader()?.into_dimensions().map_err(|e| {
        Error::format(
            path,
            format!("cannot decode image: {e} (limits: {MAX_IMAGE_SIDE} pixels a side)"),
        )
    })?;
    // The dimensions are checked before the pixels are decoded, so a lying header never sizes an
    // allocation.
    if dw == 0 || dh == 0 {
        return Err(Error::format(path, "image has zero width or height"));
    }
    if dw > MAX_IMAGE_SIDE || dh > MAX_IMAGE_SIDE {
        return Err(Error::format(
            path,
            format!("the image is {dw}x{dh}, above the limit of {MAX_IMAGE_SIDE} pixels a side"),
        ));
    }
    checked_resize(path, dw, dh, resize)?;
    let img = reader()?.decode().map_err(|e| {
        Error::format(
            path,
            format!("cannot decode image: {e} (limits: {MAX_IMAGE_SIDE} pixels a side)"),
        )
    })?;
    let rgb = img.to_rgb8();
    drop(img);
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::format(path, "image has zero width or height"));
    }
    let (nw, nh) = checked_resize(path, w, h, resize)?;
    let resized = if (nw, nh) == (w, h) {
        rgb
    } else {
        image::imageops::resize(&rgb, nw, nh, FilterType::Triangle)
    };
    let (top, left) = (crop_offset(nh, size), crop_offset(nw, size));
    let s = size as usize;
    let mut out = vec![0u8; 3 * s * s];
    for y in 0..s {
        for x in 0..s {
            let px = resized.get_pixel(left + x as u32, top + y as u32);
            for c in 0..3 {
                out[c * s * s + y * s + x] = px.0[c];
            }
        }
    }
    Ok(out)
}

/// `advlens data import-folder`: every image of `src` to the split file `out`.
pub fn import_folder(src: &Path, out: &Path, opts: &FolderOptions) -> Result<FolderSummary> {
    if opts.size == 0 || opts.resize < opts.size {
        return Err(Error::InvalidArg(format!(
            "--size {} and --resize {}: need 0 < size <= resize",
            opts.size, opts.resize
        )));
    }
    let FolderScan {
        classes,
        files,
        ignored,
    } = scan(src)?;
    let s = opts.size as usize;
    let spec = SplitSpec {
        channels: 3,
        height: s,
        width: s,
        classes: classes.clone(),
        source: format!("image folder {}", src.display()),
        extra: vec![
            (
                "preprocess".into(),
                format!(
                    "RGB; resize shorter side to {} (bilinear, antialiased); center crop {}",
                    opts.resize, opts.size
                ),
            ),
            ("resize".into(), opts.resize.to_string()),
            ("size".into(), opts.size.to_string()),
        ],
    };
    let pb = crate::progress::bar(files.len() as u64, "import-folder", "img");
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    let mut per_class = vec![0usize; classes.len()];
    // A few images per worker per round: enough to keep the pool busy, while the decoded
    // full-size images in flight stay at one per worker.
    let chunk = 4 * rayon::current_num_threads().max(1);
    let written = write_split_streaming(out, &spec, files.len(), |sink| {
        for group in files.chunks(chunk) {
            let crops: Vec<Result<Vec<u8>>> = group
                .par_iter()
                .map(|(p, _)| load_crop(p, opts.resize, opts.size))
                .collect();
            for ((path, label), crop) in group.iter().zip(crops) {
                match crop {
                    Ok(bytes) => {
                        sink.push(&bytes, *label)?;
                        per_class[*label] += 1;
                    }
                    Err(e @ Error::Format { .. }) if opts.skip_bad => {
                        pb.suspend(|| eprintln!("advlens: warning: skipping {e}"));
                        skipped.push((path.clone(), e.to_string()));
                    }
                    Err(e) => return Err(e),
                }
                pb.inc(1);
            }
        }
        if sink.is_empty() {
            return Err(Error::format(
                src,
                format!("none of the {} image files could be decoded", files.len()),
            ));
        }
        Ok(())
    })?;
    pb.finish_and_clear();
    if !skipped.is_empty() {
        eprintln!(
            "advlens: warning: skipped {} of {} files that could not be decoded",
            skipped.len(),
            files.len()
        );
    }
    Ok(FolderSummary {
        out: out.to_path_buf(),
        classes,
        per_class,
        images: written,
        skipped,
        ignored_files: ignored,
        size: opts.size,
        resize: opts.resize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_sizes_and_offsets() {
        assert_eq!(resized_dims(500, 375, 256), (341, 256));
        assert_eq!(resized_dims(300, 451, 256), (256, 384));
        assert_eq!(resized_dims(7, 7, 5), (5, 5));
        // (257 - 224) / 2 = 16.5 rounds to 16, (259 - 224) / 2 = 17.5 to 18 (half to even).
        assert_eq!(crop_offset(257, 224), 16);
        assert_eq!(crop_offset(259, 224), 18);
        assert_eq!(crop_offset(224, 224), 0);
        assert_eq!(crop_offset(341, 224), 58);
    }
}
