//! Checkpoints: one safetensors file holding the model's parameters and BatchNorm buffers under
//! their torchvision names (`num_batches_tracked` as i64, like torch), the optimiser state under
//! `optim.<param>.<slot>`, and metadata: the model spec, seed, epoch, training-step count, the
//! optimiser's name and hyper-parameters, plus whatever the caller adds (the training config and
//! history). Written atomically by `crate::io::save_safetensors`.
//!
//! Loading checks every name and shape against the architecture the metadata describes and
//! rejects NaN/Inf weights, with one error naming the file and the tensor.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{save_safetensors, Dtype, OwnedTensor, SafeFile};
use crate::tensor::Tensor;

use super::model::{Model, ModelSpec};
use super::optim::{OptimConfig, Optimizer};

pub const FORMAT: &str = "advlens.checkpoint.v1";

/// A checkpoint read back: the model, the optimiser when one was saved, and the metadata.
pub struct Checkpoint {
    pub model: Model,
    pub optimizer: Option<Optimizer>,
    /// Completed epochs when saved.
    pub epoch: usize,
    pub metadata: HashMap<String, String>,
}

/// The first parameter or BatchNorm buffer of `model` holding a NaN or an infinity, with the value.
pub fn first_non_finite(model: &Model) -> Result<Option<(String, f32)>> {
    let mut tensors: Vec<(&str, &Tensor)> = Vec::new();
    for p in model.params() {
        tensors.push((&p.name, &p.value));
    }
    for bn in model.batchnorms() {
        tensors.push((&bn.running_mean.name, &bn.running_mean.value));
        tensors.push((&bn.running_var.name, &bn.running_var.value));
    }
    for (name, t) in tensors {
        let bad = match t.as_cpu() {
            Some(v) => v.iter().copied().find(|x| !x.is_finite()),
            None => t.to_vec()?.into_iter().find(|x| !x.is_finite()),
        };
        if let Some(x) = bad {
            return Ok(Some((name.to_string(), x)));
        }
    }
    Ok(None)
}

/// Save `model` (and `optim` when given) to `path`. `extra` metadata keys must not collide with
/// the ones written here.
pub fn save(
    path: &Path,
    model: &Model,
    epoch: usize,
    optim: Option<&Optimizer>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some((name, v)) = first_non_finite(model)? {
        return Err(Error::Numeric(format!(
            "refusing to write {}: '{name}' holds {v} (a diverged model is never saved)",
            path.display()
        )));
    }
    let mut tensors: Vec<(String, OwnedTensor)> = Vec::new();
    for p in model.params() {
        tensors.push((p.name.clone(), OwnedTensor::from_tensor(&p.value)?));
    }
    for bn in model.batchnorms() {
        tensors.push((
            bn.running_mean.name.clone(),
            OwnedTensor::from_tensor(&bn.running_mean.value)?,
        ));
        tensors.push((
            bn.running_var.name.clone(),
            OwnedTensor::from_tensor(&bn.running_var.value)?,
        ));
        tensors.push((
            bn.num_batches_name.clone(),
            OwnedTensor::i64(&[], &[bn.num_batches_tracked]),
        ));
    }
    let spec = model.spec();
    let (c, h, w) = spec.in_shape;
    let mut meta: HashMap<String, String> = HashMap::new();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("model".into(), spec.name.clone());
    meta.insert("num_classes".into(), spec.num_classes.to_string());
    meta.insert("in_shape".into(), format!("{c}x{h}x{w}"));
    meta.insert("width".into(), spec.width.to_string());
    meta.insert("seed".into(), model.seed().to_string());
    meta.insert("epoch".into(), epoch.to_string());
    meta.insert("train_steps".into(), model.train_steps.to_string());
    if let Some(o) = optim {
        for (name, t) in o.state_tensors() {
            tensors.push((name, OwnedTensor::from_tensor(t)?));
        }
        let cfg = serde_json::to_string(o.config())
            .map_err(|e| Error::format(path, format!("cannot serialise optimiser config: {e}")))?;
        meta.insert("optim".into(), cfg);
        meta.insert("optim_step".into(), o.steps().to_string());
        meta.insert("lr".into(), o.lr().to_string());
    }
    for (k, v) in extra {
        if meta.contains_key(k) {
            return Err(Error::InvalidArg(format!(
                "checkpoint metadata key '{k}' is reserved"
            )));
        }
        meta.insert(k.clone(), v.clone());
    }
    save_safetensors(path, &tensors, Some(meta))
}

fn meta_get<'a>(path: &Path, meta: &'a HashMap<String, String>, key: &str) -> Result<&'a str> {
    meta.get(key).map(String::as_str).ok_or_else(|| {
        Error::format(
            path,
            format!(
                "checkpoint metadata lacks '{key}' (not an advlens checkpoint? a bare weights file \
                 loads with Model::build + load_weights)"
            ),
        )
    })
}

fn meta_num<T: std::str::FromStr>(
    path: &Path,
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<T> {
    let s = meta_get(path, meta, key)?;
    s.parse()
        .map_err(|_| Error::format(path, format!("metadata '{key}' = '{s}' is not a number")))
}

/// The model spec stored in a checkpoint's metadata.
pub fn read_spec(path: &Path, meta: &HashMap<String, String>) -> Result<ModelSpec> {
    let name = meta_get(path, meta, "model")?.to_string();
    let num_classes = meta_num(path, meta, "num_classes")?;
    let width = meta_num(path, meta, "width")?;
    let s = meta_get(path, meta, "in_shape")?;
    let dims: Vec<usize> = s.split('x').filter_map(|d| d.parse().ok()).collect();
    let [c, h, w] = dims[..] else {
        return Err(Error::format(
            path,
            format!("metadata 'in_shape' = '{s}' is not CxHxW"),
        ));
    };
    Ok(ModelSpec {
        name,
        num_classes,
        in_shape: (c, h, w),
        width,
    })
}

/// Before anything is allocated from the metadata: the first conv's and the classifier's weights
/// in the file must have the shapes the metadata's width, channels and classes imply, and those
/// must be within the architecture limits. (Those tensors are inside the file, so a small file
/// cannot make the model large.)
fn check_spec_against_tensors(f: &SafeFile, spec: &ModelSpec) -> Result<()> {
    let path = f.path();
    let (c, h, w) = spec.in_shape;
    if spec.width > super::arch::MAX_WIDTH
        || !(2..=super::arch::MAX_CLASSES).contains(&spec.num_classes)
        || c > 4
        || h > super::arch::MAX_SIDE
        || w > super::arch::MAX_SIDE
    {
        return Err(Error::format(
            path,
            format!(
                "metadata describes {} width {} with {} classes and input {c}x{h}x{w}, above the \
                 limits (width <= {}, classes <= {}, <= 4 channels, sides <= {})",
                spec.name,
                spec.width,
                spec.num_classes,
                super::arch::MAX_WIDTH,
                super::arch::MAX_CLASSES,
                super::arch::MAX_SIDE
            ),
        ));
    }
    let (first, last, width) = match spec.name.as_str() {
        "resnet18" | "small-resnet18" => ("conv1.weight", "fc.weight", spec.width),
        "small-alexnet" | "small-vgg16" => ("features.0.weight", "classifier.6.weight", spec.width),
        "alexnet" | "vgg16" => ("features.0.weight", "classifier.6.weight", 64),
        // Model::from_spec names the known models in its error.
        _ => return Ok(()),
    };
    let shape_of = |name: &str| -> Result<Vec<usize>> {
        let (_, shape, _) = f.bytes(name)?;
        Ok(shape.to_vec())
    };
    let s = shape_of(first)?;
    if s.len() != 4 || s[0] != width || s[1] != c {
        return Err(Error::format(
            path,
            format!(
                "tensor '{first}' has shape {s:?} but the metadata describes {} width {width} on                  {c}-channel input ([{width}, {c}, k, k])",
                spec.name
            ),
        ));
    }
    let s = shape_of(last)?;
    if s.len() != 2 || s[0] != spec.num_classes {
        return Err(Error::format(
            path,
            format!(
                "tensor '{last}' has shape {s:?} but the metadata says {} classes",
                spec.num_classes
            ),
        ));
    }
    Ok(())
}

/// Read a checkpoint written by [`save`]: rebuild the model from the metadata, load and check
/// every tensor, restore the optimiser state when present.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let f = SafeFile::open(path)?;
    let meta = f.metadata();
    let spec = read_spec(path, &meta)?;
    check_spec_against_tensors(&f, &spec)?;
    let seed: u64 = meta_num(path, &meta, "seed")?;
    let mut model = Model::from_spec(&spec, seed)
        .map_err(|e| Error::format(path, format!("cannot rebuild the model it describes: {e}")))?;
    load_into(&f, &mut model)?;
    model.train_steps = meta_num(path, &meta, "train_steps").unwrap_or(0);
    let epoch = meta_num(path, &meta, "epoch").unwrap_or(0);
    let optimizer = match meta.get("optim") {
        None => None,
        Some(js) => {
            let cfg: OptimConfig = serde_json::from_str(js).map_err(|e| {
                Error::format(
                    path,
                    format!("metadata 'optim' is not an optimiser config: {e}"),
                )
            })?;
            let mut o = Optimizer::new(cfg)?;
            let step: u64 = meta_num(path, &meta, "optim_step")?;
            let mut state = Vec::new();
            for n in f.names().into_iter().filter(|n| n.starts_with("optim.")) {
                let t = f.f32(&n)?;
                state.push((n, t));
            }
            o.load_state(&model, step, state)
                .map_err(|e| Error::format(path, e.to_string()))?;
            if let Some(lr) = meta.get("lr").and_then(|s| s.parse().ok()) {
                o.set_lr(lr);
            }
            Some(o)
        }
    };
    Ok(Checkpoint {
        model,
        optimizer,
        epoch,
        metadata: meta,
    })
}

fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    let v = t.cpu("checkpoint")?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::format(
            path,
            format!(
                "tensor '{name}' holds a non-finite value ({}) at flat index {i}: the weights are \
                 corrupt or training diverged",
                v[i]
            ),
        ));
    }
    Ok(())
}

/// Copy every parameter and buffer of `model` from `f`, checking names, dtypes, shapes, values.
/// Tensors under `optim.` are ignored here; any other tensor the model does not have is an error.
fn load_into(f: &SafeFile, model: &mut Model) -> Result<()> {
    let path = f.path().to_path_buf();
    let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for p in model.params() {
        expected.insert(p.name.clone(), p.value.shape().to_vec());
    }
    for bn in model.batchnorms() {
        expected.insert(
            bn.running_mean.name.clone(),
            bn.running_mean.value.shape().to_vec(),
        );
        expected.insert(
            bn.running_var.name.clone(),
            bn.running_var.value.shape().to_vec(),
        );
        expected.insert(bn.num_batches_name.clone(), vec![]);
    }
    let names = f.names();
    for n in &names {
        if !n.starts_with("optim.") && !expected.contains_key(n) {
            return Err(Error::format(
                &path,
                format!(
                    "unknown tensor '{n}': {} (width {}) has no parameter or buffer of that name",
                    model.name(),
                    model.spec().width
                ),
            ));
        }
    }
    // Like torch's load_state_dict, a state_dict without the BatchNorm `num_batches_tracked`
    // counters loads (they count as 0; eval-mode batch norm never reads them).
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !names.contains(k) && !k.ends_with(".num_batches_tracked"))
        .collect();
    if let Some(first) = missing.first() {
        return Err(Error::format(
            &path,
            format!(
                "missing tensor '{first}' ({} of the {} tensors {} needs are absent)",
                missing.len(),
                expected.len(),
                model.name()
            ),
        ));
    }
    let read = |name: &str| -> Result<Tensor> {
        let (dt, shape, _) = f.bytes(name)?;
        let want = &expected[name];
        if shape != want.as_slice() {
            return Err(Error::format(
                &path,
                format!(
                    "tensor '{name}' has shape {shape:?}, {} expects {want:?}",
                    model.name()
                ),
            ));
        }
        if dt != Dtype::F32 {
            return Err(Error::format(
                &path,
                format!("tensor '{name}' has dtype {dt:?}, expected F32"),
            ));
        }
        let t = f.f32(name)?;
        check_finite(&path, name, &t)?;
        Ok(t)
    };
    let mut values: HashMap<String, Tensor> = HashMap::new();
    for name in expected.keys() {
        if name.ends_with(".num_batches_tracked") {
            continue;
        }
        values.insert(name.clone(), read(name)?);
    }
    let mut nbt: HashMap<String, i64> = HashMap::new();
    for bn in model.batchnorms() {
        if !names.contains(&bn.num_batches_name) {
            nbt.insert(bn.num_batches_name.clone(), 0);
            continue;
        }
        let (shape, v) = f.ints(&bn.num_batches_name)?;
        if !shape.is_empty() && shape != [1] {
            return Err(Error::format(
                &path,
                format!(
                    "tensor '{}' has shape {shape:?}, expected a scalar",
                    bn.num_batches_name
                ),
            ));
        }
        nbt.insert(bn.num_batches_name.clone(), v.first().copied().unwrap_or(0));
    }
    // Parameters and buffers are replaced as host tensors; `to_backend` moves them on first use.
    for p in model.params_mut() {
        if let Some(t) = values.remove(&p.name) {
            p.value = t;
            p.grad = None;
        }
    }
    for bn in model.batchnorms_mut() {
        if let Some(t) = values.remove(&bn.running_mean.name) {
            bn.running_mean.value = t;
        }
        if let Some(t) = values.remove(&bn.running_var.name) {
            bn.running_var.value = t;
        }
        bn.num_batches_tracked = nbt.get(&bn.num_batches_name).copied().unwrap_or(0);
    }
    model.mark_host();
    Ok(())
}

impl Model {
    /// Load a model from an advlens checkpoint (the optimiser state, if any, is ignored).
    pub fn load(path: &Path) -> Result<Model> {
        Ok(load(path)?.model)
    }

    /// Save the weights and buffers with the spec metadata (no optimiser state).
    pub fn save(&self, path: &Path, epoch: usize) -> Result<()> {
        save(path, self, epoch, None, &BTreeMap::new())
    }

    /// Replace this model's weights and buffers by those of a safetensors file with the same
    /// names and shapes: an advlens checkpoint or a torchvision state_dict exported to
    /// safetensors (e.g. `safetensors.torch.save_file(model.state_dict(), path)`).
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let f = SafeFile::open(path)?;
        load_into(&f, self)
    }
}
