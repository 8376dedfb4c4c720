//! File I/O shared by every module: memory-mapped safetensors reading with clear errors, and
//! atomic writes (temporary name in the same directory, fsync, rename) so that no partial output
//! ever poses as complete.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
pub use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Write `path` atomically: `fill` writes into a temporary file next to it, which is synced and
/// renamed over `path` only when `fill` succeeded. On error the temporary file is removed.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::InvalidArg(format!("{} is not a file path", path.display())))?;
    let stem = temp_stem(&name.to_string_lossy());
    remove_stale_temps(&dir, &stem);
    let tmp = dir.join(format!("{stem}{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let f = File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok(())
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(path, e))
        }
    }
}

/// Where `p` lives with every symlink resolved, also when it does not exist yet: the longest
/// existing ancestor is canonicalised and the missing components appended (a `..` among them is
/// applied lexically, which is exact because nothing below a missing directory can be a link).
pub fn resolve_path(p: &Path) -> std::io::Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    let mut existing = abs.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(mut out) => {
                for r in rest.iter().rev() {
                    if r == ".." {
                        out.pop();
                    } else if r != "." {
                        out.push(r);
                    }
                }
                return Ok(out);
            }
            Err(e) => {
                let name = match existing.components().next_back() {
                    Some(std::path::Component::Normal(n)) => n.to_os_string(),
                    Some(std::path::Component::ParentDir) => "..".into(),
                    Some(std::path::Component::CurDir) => ".".into(),
                    _ => return Err(e),
                };
                if !existing.pop() {
                    return Err(e);
                }
                rest.push(name);
            }
        }
    }
}

/// True when both paths exist and are the same file (a hard link, a bind mount).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Refuse, before any work, an output that would overwrite an input: `out` (named by its flag,
/// e.g. `("--out", path)`) must not be an input, contain one (an output directory holding the
/// dataset) or lie inside one (an output inside the adversarial set it reads). Paths are compared
/// after resolving symlinks, `..` and hard links; an output that does not exist yet is resolved
/// through its nearest existing parent.
pub fn refuse_overwrite(out: (&str, &Path), inputs: &[(&str, &Path)]) -> Result<()> {
    let (oflag, opath) = out;
    let ro = resolve_path(opath).map_err(|e| Error::io(opath, e))?;
    for &(iflag, ipath) in inputs {
        let ri = match resolve_path(ipath) {
            Ok(r) => r,
            // An input that cannot be resolved cannot be opened either; its reader says why.
            Err(_) => continue,
        };
        let how = if ro == ri || same_file(opath, ipath) {
            "is"
        } else if ri.starts_with(&ro) {
            "contains"
        } else if ro.starts_with(&ri) {
            "lies inside"
        } else {
            continue;
        };
        return Err(Error::InvalidArg(format!(
            "{oflag} {} {how} the input {iflag} {}: an output never overwrites an input; choose \
             another {oflag} (nothing was done)",
            opath.display(),
            ipath.display()
        )));
    }
    Ok(())
}

/// An exclusive advisory lock (flock) on an output directory itself, held until dropped: a
/// second run into the same directory is refused with the holder's PID (read from
/// /proc/locks). No lock file is left behind, and the lock goes with the process, so a killed run
/// leaves no stale lock.
#[derive(Debug)]
pub struct RunLock {
    _dir: File,
    path: PathBuf,
}

/// The PID holding a flock on the file with inode `ino`, from /proc/locks (Linux).
fn flock_holder(ino: u64) -> Option<u32> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            continue;
        }
        let id = f[5].rsplit(':').next()?;
        if id.parse::<u64>().ok() == Some(ino) {
            return f[4].parse().ok();
        }
    }
    None
}

impl RunLock {
    /// Create `dir` if needed and lock it, or say which process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        use std::os::unix::fs::MetadataExt;
        if dir.exists() && !dir.is_dir() {
            return Err(Error::InvalidArg(format!(
                "--out {} is a file, not a directory",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let md = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
        if md.permissions().readonly() {
            return Err(Error::InvalidArg(format!(
                "the output directory {} is read-only",
                dir.display()
            )));
        }
        let f = File::open(dir).map_err(|e| Error::io(dir, e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = flock_holder(md.ino()).map_or("unknown".to_string(), |p| p.to_string());
                return Err(Error::InvalidArg(format!(
                    "the output directory {} is in use by another advlens run (PID {pid}); wait \
                     for it to finish or choose another --out",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(dir, e)),
        }
        // Temporaries of runs that died here are litter now that this run owns the directory.
        remove_stale_dead_temps(dir);
        Ok(RunLock {
            _dir: f,
            path: dir.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Remove every `.NAME.tmp-PID` and `.advlens-import-idx-PID` of `dir` whose process is dead.
fn remove_stale_dead_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut prefixes = std::collections::BTreeSet::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        for marker in [".tmp-", ".advlens-import-idx-"] {
            if let Some(i) = name.rfind(marker) {
                prefixes.insert(name[..i + marker.len()].to_string());
            }
        }
    }
    for p in prefixes {
        remove_stale_temps(dir, &p);
    }
}

/// Longest file name most file systems accept (ext4, xfs, btrfs, tmpfs: 255 bytes).
pub const MAX_NAME_BYTES: usize = 255;

/// The temporary name of `name` without its PID: `.NAME.tmp-`. A name too long to carry the
/// prefix, suffix and a PID within [`MAX_NAME_BYTES`] is cut (at a character boundary) and a hash
/// of the whole name appended, so two long names never share a temporary.
pub fn temp_stem(name: &str) -> String {
    // "." + name + ".tmp-" + up to 10 PID digits.
    const OVERHEAD: usize = 1 + 5 + 10;
    if name.len() + OVERHEAD <= MAX_NAME_BYTES {
        return format!(".{name}.tmp-");
    }
    let h = crate::attack::advset::checksum64(name.as_bytes());
    let keep = MAX_NAME_BYTES - OVERHEAD - 1 - h.len();
    let mut cut = keep.min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}~{h}.tmp-", &name[..cut])
}

/// Whether process `pid` is alive (Linux: it has a /proc entry; without /proc every PID counts
/// as alive, so nothing of a live run is ever removed).
fn pid_alive(pid: u32) -> bool {
    if pid == std::process::id() || !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove the entries `PREFIXpid` of `dir` (temporary files or staging directories) whose process
/// is dead: the litter of a killed run is cleaned by the next run that writes there. Errors are
/// ignored (the litter stays, which is harmless).
pub fn remove_stale_temps(dir: &Path, prefix: &str) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
}

/// The names of the entries of `dir`, sorted; empty when `dir` does not exist.
pub fn sorted_entry_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Serialize JSON to `path` atomically (pretty-printed).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    write_atomic(path, |w| w.write_all(&bytes))
}

/// Read and parse a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        source: e,
    })
}

/// A named tensor to be written: raw little-endian bytes with a dtype and a shape.
pub struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedTensor {
    pub fn f32(shape: &[usize], v: &[f32]) -> OwnedTensor {
        OwnedTensor {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: bytemuck::cast_slice(v).to_vec(),
        }
    }
    pub fn u8(shape: &[usize], v: Vec<u8>) -> OwnedTensor {
        OwnedTensor {
            dtype: Dtype::U8,
            shape: shape.to_vec(),
            data: v,
        }
    }
    pub fn i64(shape: &[usize], v: &[i64]) -> OwnedTensor {
        OwnedTensor {
            dtype: Dtype::I64,
            shape: shape.to_vec(),
            data: bytemuck::cast_slice(v).to_vec(),
        }
    }
    /// A host copy of any tensor as f32.
    pub fn from_tensor(t: &Tensor) -> Result<OwnedTensor> {
        Ok(OwnedTensor::f32(t.shape(), &t.to_vec()?))
    }
}

impl safetensors::View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Write a safetensors file atomically. `metadata` goes to the `__metadata__` header.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, OwnedTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), &metadata)
        .map_err(|e| Error::format(path, format!("cannot serialise safetensors: {e}")))?;
    let bytes = canonical_header(&bytes)
        .map_err(|e| Error::format(path, format!("cannot serialise safetensors: {e}")))?;
    write_atomic(path, |w| w.write_all(&bytes))
}

/// Rewrite a serialised safetensors buffer with its JSON header keys in sorted order.
///
/// `safetensors::serialize` writes `__metadata__` in `HashMap` iteration order, which differs
/// between runs, so two saves of the same checkpoint would differ byte for byte. serde_json's
/// `Map` is a `BTreeMap` (the `preserve_order` feature is off), so a parse and re-serialise sorts
/// every key. Data offsets are relative to the end of the header and do not change.
fn canonical_header(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let n_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("buffer shorter than the 8-byte header length")?;
    let n = usize::try_from(u64::from_le_bytes(n_bytes)).map_err(|e| e.to_string())?;
    let header = bytes.get(8..8 + n).ok_or("header length past the end")?;
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut json = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    // The format pads the header with spaces so that the data starts 8-byte aligned.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// A memory-mapped safetensors file. The header is parsed and validated once (offsets inside the
/// file, sizes matching dtype x shape), so a truncated or corrupt file is rejected at `open`.
pub struct SafeFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    meta: Metadata,
}

impl std::fmt::Debug for SafeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafeFile({})", self.path.display())
    }
}

impl SafeFile {
    pub fn open(path: &Path) -> Result<SafeFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only; advlens never writes a file it has open. A file
        // changed by another process under us is outside what any reader can guard against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (n, meta) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e:?})")))?;
        Ok(SafeFile {
            path: path.to_path_buf(),
            mmap,
            data_start: n + 8,
            meta,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `__metadata__` string map (empty when absent).
    pub fn metadata(&self) -> HashMap<String, String> {
        self.meta.metadata().clone().unwrap_or_default()
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.meta.tensors().into_keys().collect();
        v.sort();
        v
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.meta.info(name).ok_or_else(|| {
            Error::format(
                &self.path,
                format!(
                    "no tensor named '{name}' (has: {})",
                    self.names().join(", ")
                ),
            )
        })
    }

    /// Raw bytes of one tensor, borrowed from the mapping.
    pub fn bytes(&self, name: &str) -> Result<(Dtype, &[usize], &[u8])> {
        let info = self.info(name)?;
        let (s, e) = info.data_offsets;
        Ok((
            info.dtype,
            &info.shape,
            &self.mmap[self.data_start + s..self.data_start + e],
        ))
    }

    fn expect(&self, name: &str, want: Dtype) -> Result<(&[usize], &[u8])> {
        let (dt, shape, b) = self.bytes(name)?;
        if dt != want {
            return Err(Error::format(
                &self.path,
                format!("tensor '{name}' has dtype {dt:?}, expected {want:?}"),
            ));
        }
        Ok((shape, b))
    }

    /// A u8 tensor borrowed from the mapping (no copy).
    pub fn u8(&self, name: &str) -> Result<(&[usize], &[u8])> {
        self.expect(name, Dtype::U8)
    }

    /// An f32 tensor copied to the host (the mapping may not be 4-byte aligned).
    pub fn f32(&self, name: &str) -> Result<Tensor> {
        let (shape, b) = self.expect(name, Dtype::F32)?;
        let v: Vec<f32> = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Tensor::from_vec(shape, v)
    }

    /// An integer tensor (i64, i32, u16, u8 or u32) as i64 values.
    pub fn ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (dt, shape, b) = self.bytes(name)?;
        let v: Vec<i64> = match dt {
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            Dtype::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            Dtype::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            Dtype::U8 => b.iter().map(|&x| x as i64).collect(),
            other => {
                return Err(Error::format(
                    &self.path,
                    format!("tensor '{name}' has dtype {other:?}, expected an integer type"),
                ))
            }
        };
        Ok((shape.to_vec(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        let t = vec![
            (
                "x".to_string(),
                OwnedTensor::f32(&[2, 3], &[1., 2., 3., 4., 5., 6.]),
            ),
            ("l".to_string(), OwnedTensor::i64(&[2], &[7, 9])),
        ];
        save_safetensors(&p, &t, None).unwrap();
        let f = SafeFile::open(&p).unwrap();
        assert_eq!(
            f.f32("x").unwrap().to_vec().unwrap(),
            vec![1., 2., 3., 4., 5., 6.]
        );
        assert_eq!(f.ints("l").unwrap().1, vec![7, 9]);
        assert!(f.u8("x").is_err());
        let msg = f.f32("nope").unwrap_err().to_string();
        assert!(msg.contains("no tensor named 'nope'"), "{msg}");

        let bytes = std::fs::read(&p).unwrap();
        let q = dir.path().join("b.safetensors");
        std::fs::write(&q, &bytes[..bytes.len() - 5]).unwrap();
        let msg = SafeFile::open(&q).unwrap_err().to_string();
        assert!(msg.contains("b.safetensors"), "{msg}");
    }

    #[test]
    fn metadata_order_does_not_change_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let t = vec![("w".to_string(), OwnedTensor::f32(&[3], &[0.5, -1.25, 3.0]))];
        // Many keys: two HashMaps built in different insertion orders iterate differently, which
        // is what made checkpoints differ byte for byte before the header was canonicalised.
        let keys: Vec<String> = (0..40).map(|i| format!("key{i:02}")).collect();
        let forward: HashMap<String, String> =
            keys.iter().map(|k| (k.clone(), format!("v-{k}"))).collect();
        let backward: HashMap<String, String> = keys
            .iter()
            .rev()
            .map(|k| (k.clone(), format!("v-{k}")))
            .collect();
        let (a, b) = (dir.path().join("a.st"), dir.path().join("b.st"));
        save_safetensors(&a, &t, Some(forward.clone())).unwrap();
        save_safetensors(&b, &t, Some(backward)).unwrap();
        let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        assert_eq!(ba, bb);
        let n = u64::from_le_bytes(ba[..8].try_into().unwrap()) as usize;
        assert_eq!(n % 8, 0, "data must start 8-byte aligned");
        let f = SafeFile::open(&a).unwrap();
        assert_eq!(f.metadata(), forward);
        assert_eq!(f.f32("w").unwrap().to_vec().unwrap(), vec![0.5, -1.25, 3.0]);
    }
}
