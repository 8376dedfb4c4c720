//! Tensors: a shape plus storage that lives on the host or on a device.
//!
//! All compute tensors are f32, row-major, images NCHW. A tensor does not know how to compute;
//! a [`crate::backend::Backend`] does. Host tensors are plain `Vec<f32>` so the CPU backend (the
//! oracle) stays readable.

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(crate::backend::cuda::DeviceBuf),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    /// A host tensor; fails if `data.len()` does not match the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        if numel(shape) != data.len() {
            return Err(Error::shape(
                "tensor",
                format!(
                    "shape {shape:?} needs {} values, got {}",
                    numel(shape),
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(data),
        })
    }

    /// A host tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            storage: Storage::Cpu(vec![0.0; numel(shape)]),
        }
    }

    /// Wrap existing storage; the caller guarantees the length matches.
    pub fn from_storage(shape: &[usize], storage: Storage) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            storage,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    pub fn storage_mut(&mut self) -> &mut Storage {
        &mut self.storage
    }
    pub fn into_storage(self) -> Storage {
        self.storage
    }

    pub fn is_cpu(&self) -> bool {
        matches!(self.storage, Storage::Cpu(_))
    }

    /// Host slice, or None when the tensor lives on a device.
    pub fn as_cpu(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Some(v),
            #[cfg(feature = "cuda")]
            _ => None,
        }
    }
    pub fn as_cpu_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.storage {
            Storage::Cpu(v) => Some(v),
            #[cfg(feature = "cuda")]
            _ => None,
        }
    }

    /// Host slice or a Shape error naming `op` (for CPU-only code paths).
    pub fn cpu(&self, op: &'static str) -> Result<&[f32]> {
        self.as_cpu()
            .ok_or_else(|| Error::shape(op, "expected a host tensor, got a device tensor"))
    }
    pub fn cpu_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        self.as_cpu_mut()
            .ok_or_else(|| Error::shape(op, "expected a host tensor, got a device tensor"))
    }

    /// Copy the values to the host, wherever they live.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => b.to_host(),
        }
    }

    /// Same storage, new shape with the same number of elements.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// (N, C, H, W) of a rank-4 tensor, or a Shape error naming `op`.
    pub fn dims4(&self, op: &'static str) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => Err(Error::shape(
                op,
                format!("expected a rank-4 NCHW tensor, got shape {:?}", self.shape),
            )),
        }
    }

    /// (rows, cols) of a rank-2 tensor, or a Shape error naming `op`.
    pub fn dims2(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => Err(Error::shape(
                op,
                format!("expected a rank-2 tensor, got shape {:?}", self.shape),
            )),
        }
    }
}
