//! Pictures of the experiments: PNG grids of a neuron's top real and adversarial images with their
//! discrepancy maps (paper Fig. 2, 7, 10), the occlusion discrepancy map itself, and SVG plots of
//! Fig. 4 (CS1/CS2 against LC), Fig. 5 (r1/r2 histograms) and Fig. 6 (ROC).
//!
//! PNGs go through the `image` crate, SVGs through `plotters` (SVG backend only: text is written
//! as SVG `<text>` elements, so no font files or fontconfig are needed). Every file is written
//! atomically (`crate::io::write_atomic`).

pub mod grid;
pub mod occlusion;
pub mod plots;

pub use grid::{grid_image, write_png, GridStyle, Tile};
pub use occlusion::{discrepancy_map, OcclusionConfig};
