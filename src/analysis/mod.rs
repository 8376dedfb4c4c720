//! Analyses of the paper: WordNet C matrix, neuron mining, LC/CS1/CS2, r1/r2, detection + ROC,
//! prediction difference. See DESIGN.md section 4.
//!
//! Everything here is model-independent math on host slices (f32 inputs, f64 accumulation); the
//! experiments feed it activations computed by a backend.
pub mod detect;
pub mod pd;
pub mod ratios;
pub mod roc;
pub mod semantics;
pub mod stats;
pub mod topk;
pub mod wordnet;
