//! advlens fuzz targets: see `targets.rs`.
pub mod targets;
