//! One module per paper experiment (DESIGN.md section 4) and the orchestration of `reproduce`.
pub mod advtrain;
pub mod detect;
pub mod explain;
pub mod findings;
pub mod neurons;
pub mod ratios;
pub mod report;
pub mod reproduce;
pub mod scale;
pub mod seeds;
pub mod slurm;
pub mod stages;
pub mod variants;
