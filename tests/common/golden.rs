//! The golden-file harness shared by tests/golden_ops.rs (CPU, library and binary) and
//! tests/golden_cuda.rs (CUDA backend): the cases scripts/make_golden.py wrote to
//! tests/fixtures/golden/ (float64 JAX references), their tolerance, and the comparison.

use std::collections::HashMap;
use std::path::PathBuf;

use advlens::backend::op_runner::{run_op, OpAttrs};
use advlens::backend::Backend;
use advlens::io::{Dtype, OwnedTensor, SafeFile};

/// Relative tolerance of DESIGN section 5 for f32 against a float64 reference.
pub const RTOL: f64 = 1e-4;
/// Absolute floor, as a fraction of the largest |reference| value in the same tensor. Outputs
/// that come out of cancellation (a conv sum of a few hundred O(1) products landing near 0) carry
/// f32 accumulation error of order n * 2^-24 times the size of the terms, i.e. the tensor's scale,
/// not their own tiny value: 1e-5 of the scale covers n up to ~100 with margin, and a wrong
/// index, pad or transpose moves values by O(scale), 1e5 times more.
pub const ATOL_FRACTION: f64 = 1e-5;

pub struct Case {
    pub name: String,
    pub input: PathBuf,
    pub expected: PathBuf,
    pub op: String,
    pub attrs: OpAttrs,
    /// The attributes as `advlens op` flags.
    pub flags: Vec<String>,
}

pub fn golden_dir() -> PathBuf {
    super::repo_root().join("tests/fixtures/golden")
}

/// Every case of the golden folder, sorted by name.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let entries = std::fs::read_dir(golden_dir()).expect("tests/fixtures/golden exists");
    for e in entries {
        let path = e.expect("dir entry").path();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let Some(name) = file.strip_suffix(".in.safetensors") else {
            continue;
        };
        let meta = SafeFile::open(&path)
            .expect("golden input opens")
            .metadata();
        let op = meta.get("op").expect("metadata 'op'").clone();
        let attrs: HashMap<String, f64> =
            serde_json::from_str(meta.get("attrs").map_or("{}", |s| s.as_str()))
                .expect("attrs JSON");
        let get = |k: &str| attrs.get(k).copied();
        let mut flags = Vec::new();
        for (k, v) in &attrs {
            // `--eps=-1`: the = form keeps a negative value from reading as a flag.
            flags.push(format!("--{k}={v}"));
        }
        v.push(Case {
            name: name.to_string(),
            expected: golden_dir().join(format!("{name}.out.safetensors")),
            input: path,
            op,
            attrs: OpAttrs {
                stride: get("stride").map(|x| x as usize),
                pad: get("pad").map(|x| x as usize),
                kernel: get("kernel").map(|x| x as usize),
                eps: get("eps").map(|x| x as f32),
                lo: get("lo").map(|x| x as f32),
                hi: get("hi").map(|x| x as f32),
            },
            flags,
        });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn read_f64(f: &SafeFile, name: &str) -> (Vec<usize>, Vec<f64>) {
    let (dt, shape, bytes) = f.bytes(name).expect("expected tensor");
    assert_eq!(dt, Dtype::F64, "{}: {name} must be f64", f.path().display());
    let v = bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape.to_vec(), v)
}

pub fn owned_f32(t: &OwnedTensor) -> Vec<f32> {
    assert_eq!(t.dtype, Dtype::F32);
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Compare every expected tensor of `case` with `got` (name -> (shape, values)).
pub fn check(case: &Case, via: &str, got: &HashMap<String, (Vec<usize>, Vec<f32>)>) {
    let exp = SafeFile::open(&case.expected).expect("golden output opens");
    for name in exp.names() {
        let (shape, want) = read_f64(&exp, &name);
        let what = format!("{} ({via}) output '{name}'", case.name);
        let (gshape, g) = got
            .get(&name)
            .unwrap_or_else(|| panic!("{what}: missing; got {:?}", got.keys()));
        assert_eq!(gshape, &shape, "{what}: shape");
        let scale = want.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        super::assert_close(g, &want, ATOL_FRACTION * scale + 1e-30, RTOL, &what);
    }
}

/// Every case through `run_op` on `be`, checked against its reference.
pub fn run_all(be: &dyn Backend, via: &str) {
    let cases = cases();
    assert!(cases.len() >= 40, "only {} golden cases", cases.len());
    for case in &cases {
        let input = SafeFile::open(&case.input).expect("golden input opens");
        let out = run_op(be, &case.op, &input, &case.attrs)
            .unwrap_or_else(|e| panic!("{} ({via}): run_op failed: {e}", case.name));
        let got = out
            .iter()
            .map(|(n, t)| (n.clone(), (t.shape.clone(), owned_f32(t))))
            .collect();
        check(case, via, &got);
    }
}
