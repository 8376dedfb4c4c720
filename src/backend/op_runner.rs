//! One primitive op on named tensors: the engine side of the golden-file interface
//! (`advlens op`, DESIGN section 5). Tensor names and attributes are fixed by that table so any
//! outside reference (JAX, PyTorch, numpy) can write the inputs and read the outputs.

use std::path::Path;

use super::{Backend, Conv2dParams, Pool2dParams};
use crate::error::{Error, Result};
use crate::io::{OwnedTensor, SafeFile};
use crate::tensor::Tensor;

/// Every op `run_op` knows, in the order of DESIGN section 5.
pub const KNOWN_OPS: &[&str] = &[
    "conv2d",
    "conv2d_backward",
    "maxpool2d",
    "maxpool2d_backward",
    "linear",
    "linear_backward",
    "softmax_xent",
    "fgs_step",
    "quadform",
    "roc_auc",
];

/// Op attributes from the command line. Unset ones take the op's default: conv stride 1 pad 0;
/// pool stride = kernel (as torch), pad 0, kernel required; fgs eps required, lo/hi unbounded.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpAttrs {
    pub stride: Option<usize>,
    pub pad: Option<usize>,
    pub kernel: Option<usize>,
    pub eps: Option<f32>,
    pub lo: Option<f32>,
    pub hi: Option<f32>,
}

impl OpAttrs {
    fn conv(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride.unwrap_or(1),
            pad: self.pad.unwrap_or(0),
        }
    }
    fn pool(&self, op: &str) -> Result<Pool2dParams> {
        let kernel = self
            .kernel
            .ok_or_else(|| Error::InvalidArg(format!("op {op} needs --kernel")))?;
        Ok(Pool2dParams {
            kernel,
            stride: self.stride.unwrap_or(kernel),
            pad: self.pad.unwrap_or(0),
        })
    }
}

/// Reads the op's input tensors and puts them on the backend.
struct Inputs<'a> {
    file: &'a SafeFile,
    backend: &'a dyn Backend,
}

impl Inputs<'_> {
    /// Tensor `name` of rank `rank` (`layout` names the axes for the message), on the backend.
    fn f32(&self, name: &str, rank: usize, layout: &str) -> Result<Tensor> {
        let t = self.file.f32(name)?;
        if t.rank() != rank {
            return Err(Error::format(
                self.path(),
                format!(
                    "tensor '{name}' has shape {:?}, expected rank {rank} {layout}",
                    t.shape()
                ),
            ));
        }
        self.backend.upload(&t)
    }
    /// Tensor `name` of any shape (elementwise ops), on the backend.
    fn any_rank(&self, name: &str) -> Result<Tensor> {
        self.backend.upload(&self.file.f32(name)?)
    }
    fn ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        self.file.ints(name)
    }
    fn path(&self) -> &Path {
        self.file.path()
    }
}

const NCHW: &str = "[N,C,H,W]";
const KCRS: &str = "[K,C,R,R]";

fn out(name: &str, t: &Tensor) -> Result<(String, OwnedTensor)> {
    Ok((name.to_string(), OwnedTensor::from_tensor(t)?))
}

/// Run op `name` on the tensors of `inputs`; returns the named outputs as host tensors.
pub fn run_op(
    backend: &dyn Backend,
    name: &str,
    inputs: &SafeFile,
    attrs: &OpAttrs,
) -> Result<Vec<(String, OwnedTensor)>> {
    let inp = Inputs {
        file: inputs,
        backend,
    };
    match name {
        "conv2d" => {
            let y = backend.conv2d(
                &inp.f32("x", 4, NCHW)?,
                &inp.f32("w", 4, KCRS)?,
                Some(&inp.f32("b", 1, "[K]")?),
                attrs.conv(),
            )?;
            Ok(vec![out("y", &y)?])
        }
        "conv2d_backward" => {
            let g = backend.conv2d_backward(
                &inp.f32("x", 4, NCHW)?,
                &inp.f32("w", 4, KCRS)?,
                &inp.f32("dy", 4, "[N,K,P,Q]")?,
                attrs.conv(),
                true,
            )?;
            let dx =
                g.dx.ok_or_else(|| Error::shape("conv2d_backward", "backend returned no dx"))?;
            Ok(vec![out("dx", &dx)?, out("dw", &g.dw)?, out("db", &g.db)?])
        }
        "maxpool2d" => {
            let y = backend.maxpool2d(&inp.f32("x", 4, NCHW)?, attrs.pool(name)?)?;
            Ok(vec![out("y", &y)?])
        }
        "maxpool2d_backward" => {
            let dx = backend.maxpool2d_backward(
                &inp.f32("x", 4, NCHW)?,
                &inp.f32("dy", 4, "[N,C,P,Q]")?,
                attrs.pool(name)?,
            )?;
            Ok(vec![out("dx", &dx)?])
        }
        "linear" => {
            let y = backend.linear(
                &inp.f32("x", 2, "[N,I]")?,
                &inp.f32("w", 2, "[O,I]")?,
                &inp.f32("b", 1, "[O]")?,
            )?;
            Ok(vec![out("y", &y)?])
        }
        "linear_backward" => {
            let g = backend.linear_backward(
                &inp.f32("x", 2, "[N,I]")?,
                &inp.f32("w", 2, "[O,I]")?,
                &inp.f32("dy", 2, "[N,O]")?,
            )?;
            Ok(vec![
                out("dx", &g.dx)?,
                out("dw", &g.dw)?,
                out("db", &g.db)?,
            ])
        }
        "softmax_xent" => {
            let logits = inp.f32("logits", 2, "[N,K]")?;
            let k = logits.dims2("softmax_xent")?.1;
            let labels = class_labels(inp.path(), inp.ints("labels")?, k)?;
            let (loss, d) = backend.softmax_xent(&logits, &labels)?;
            Ok(vec![out("loss", &loss)?, out("dlogits", &d)?])
        }
        "fgs_step" => {
            let eps = attrs
                .eps
                .ok_or_else(|| Error::InvalidArg("op fgs_step needs --eps".into()))?;
            let y = backend.fgs_step(
                &inp.any_rank("x")?,
                &inp.any_rank("grad")?,
                eps,
                attrs.lo.unwrap_or(f32::NEG_INFINITY),
                attrs.hi.unwrap_or(f32::INFINITY),
            )?;
            Ok(vec![out("x_next", &y)?])
        }
        "quadform" => {
            let r = backend.quadform(
                &inp.f32("p", 2, "[N,K]")?,
                &inp.f32("c", 2, "[K,K]")?,
                &inp.f32("q", 2, "[N,K]")?,
            )?;
            Ok(vec![
                out("pcq", &r.pcq)?,
                out("pcp", &r.pcp)?,
                out("qcq", &r.qcq)?,
                out("cos", &r.cos)?,
            ])
        }
        "roc_auc" => {
            // A host computation (a sort), so the scores are read without a device round trip.
            let scores = inputs.f32("scores")?.to_vec()?;
            let (shape, labels) = inp.ints("labels")?;
            if labels.len() != scores.len() {
                return Err(Error::format(
                    inp.path(),
                    format!(
                        "roc_auc: scores has {} values but labels {:?} has {}",
                        scores.len(),
                        shape,
                        labels.len()
                    ),
                ));
            }
            let labels = binary_labels(inp.path(), &labels)?;
            let auc = crate::analysis::roc::roc_auc(&scores, &labels).ok_or_else(|| {
                Error::format(
                    inp.path(),
                    "roc_auc: labels hold only one class, the AUC is undefined",
                )
            })?;
            Ok(vec![("auc".into(), OwnedTensor::f32(&[1], &[auc as f32]))])
        }
        other => Err(Error::unknown("op", other, KNOWN_OPS)),
    }
}

/// Class indices in [0, k) as u32, or a Format error naming the file and the first bad label.
fn class_labels(path: &Path, (shape, v): (Vec<usize>, Vec<i64>), k: usize) -> Result<Vec<u32>> {
    if shape.len() != 1 {
        return Err(Error::format(
            path,
            format!("tensor 'labels' must have rank 1, got shape {shape:?}"),
        ));
    }
    v.iter()
        .enumerate()
        .map(|(i, &l)| {
            if l < 0 || l as u64 >= k as u64 {
                Err(Error::format(
                    path,
                    format!("labels[{i}] = {l} is out of range for {k} classes"),
                ))
            } else {
                Ok(l as u32)
            }
        })
        .collect()
}

fn binary_labels(path: &Path, v: &[i64]) -> Result<Vec<u8>> {
    v.iter()
        .enumerate()
        .map(|(i, &l)| match l {
            0 | 1 => Ok(l as u8),
            _ => Err(Error::format(
                path,
                format!("labels[{i}] = {l}: roc_auc labels must be 0 or 1"),
            )),
        })
        .collect()
}
