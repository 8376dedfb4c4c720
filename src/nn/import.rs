//! `advlens weights import`: a torchvision state_dict exported to safetensors (e.g.
//! `safetensors.torch.save_file(model.state_dict(), "resnet18.safetensors")`) becomes an advlens
//! checkpoint that every command reads: the same tensors (every name and shape checked against
//! the architecture, NaN/Inf refused) plus the metadata a checkpoint carries (model, classes,
//! input shape, width). A state_dict without the BatchNorm `num_batches_tracked` counters is
//! accepted, as torch's `load_state_dict` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::checkpoint;
use super::model::{Model, ModelSpec};
use crate::error::{Error, Result};

/// The largest class list read (ImageNet-21k's is about 0.5 MB).
const MAX_CLASSES_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug)]
pub struct ImportConfig {
    pub model: String,
    pub from: PathBuf,
    /// One class per line (wnid or name), in the order of the final layer's outputs.
    pub classes: PathBuf,
    pub out: PathBuf,
    pub in_shape: (usize, usize, usize),
    /// Width knob (None: the model's default, which is torchvision's for the full models).
    pub width: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub out: PathBuf,
    pub model: String,
    pub classes: usize,
    pub in_shape: [usize; 3],
    pub params: usize,
    pub tensors: usize,
}

impl ImportReport {
    pub fn line(&self) -> String {
        let [c, h, w] = self.in_shape;
        format!(
            "{}: {} ({} classes, input {c}x{h}x{w}, {} parameters in {} tensors)",
            self.out.display(),
            self.model,
            self.classes,
            self.params,
            self.tensors
        )
    }
}

/// Read a class list: one class per line, blank lines skipped, no duplicates.
pub fn read_classes(path: &Path) -> Result<Vec<String>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > MAX_CLASSES_BYTES {
        return Err(Error::format(
            path,
            format!("{len} bytes: larger than the {MAX_CLASSES_BYTES}-byte bound of a class list"),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let classes: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if classes.is_empty() {
        return Err(Error::format(path, "no classes (expected one per line)"));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = classes.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(Error::format(path, format!("class '{d}' is listed twice")));
    }
    Ok(classes)
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Import `cfg.from` as a checkpoint at `cfg.out` (written atomically).
pub fn import_weights(cfg: &ImportConfig) -> Result<ImportReport> {
    if same_file(&cfg.from, &cfg.out) {
        return Err(Error::InvalidArg(format!(
            "--out {} is the input file: an output never overwrites an input",
            cfg.out.display()
        )));
    }
    let classes = read_classes(&cfg.classes)?;
    let mut spec = ModelSpec::new(&cfg.model, classes.len(), cfg.in_shape);
    if let Some(w) = cfg.width {
        spec.width = w;
    }
    let mut model = Model::from_spec(&spec, 0)?;
    model.load_weights(&cfg.from).map_err(|e| {
        Error::InvalidArg(format!(
            "{e} (importing as {} with {} classes from {})",
            cfg.model,
            classes.len(),
            cfg.classes.display()
        ))
    })?;
    let classes_json = serde_json::to_string(&classes)
        .map_err(|e| Error::InvalidArg(format!("cannot serialise the classes: {e}")))?;
    let mut extra = BTreeMap::new();
    extra.insert("classes".to_string(), classes_json);
    extra.insert("imported_from".to_string(), cfg.from.display().to_string());
    checkpoint::save(&cfg.out, &model, 0, None, &extra)?;
    let (c, h, w) = cfg.in_shape;
    Ok(ImportReport {
        out: cfg.out.clone(),
        model: cfg.model.clone(),
        classes: classes.len(),
        in_shape: [c, h, w],
        params: model.num_params(),
        tensors: model.params().len() + 3 * model.batchnorms().len(),
    })
}
