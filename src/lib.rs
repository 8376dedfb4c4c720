//! advlens: adversarial examples as a lens on the interpretability of deep networks.
//!
//! Layout (see DESIGN.md): `tensor` + `backend` (the one compute seam: CPU oracle, CUDA kernels),
//! `nn` (layers, models, optimisers), `data` (memory-mapped safetensors datasets, importers),
//! `attack`, `analysis`, `experiments` (one module per paper experiment), `cli` (argument parsing
//! and printing only).

pub mod alloc;
pub mod analysis;
pub mod attack;
pub mod backend;
pub mod bench;
pub mod cli;
pub mod data;
pub mod error;
pub mod experiments;
pub mod io;
pub mod nn;
pub mod progress;
pub mod rng;
pub mod spin;
pub mod tensor;
pub mod viz;

pub use error::{Error, Result};
pub use tensor::Tensor;
