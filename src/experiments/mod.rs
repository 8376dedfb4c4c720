//! One module per paper experiment (DESIGN.md section 4) and the orchestration of `reproduce`.
pub mod advtrain;
