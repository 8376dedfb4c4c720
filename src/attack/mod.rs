//! Attacks (DESIGN section 4, experiments E2 and E7; paper sections 2.1, 3 and Appendix A) and
//! the adversarial set they produce.
//!
//! - [`methods`]: per-batch primitives on any [`crate::backend::Backend`]: input gradients,
//!   FGS (Eq. 13, untargeted, x + eps*sign(grad)), iterative targeted FGS (Eq. 9-11,
//!   x - eps*sign(grad CE(y*)), T steps, clip to [0, 255] — the G(x, y*) of adversarial
//!   training), target selection, and the ensemble-optimisation attack (Eq. 1).
//! - [`ensemble`]: the dataset-level ensemble attack with sharded, resumable output,
//!   `--shard K/N` parts and their merge, and its report.
//! - [`advset`]: the shard format, manifest, checksums and [`AdvSet`], the reader later stages
//!   use.
//! - [`eval`]: FGS accuracy tables (Table 2) and the iterative-FGS evaluation.
//!
//! # Decisions the paper leaves open
//! - Pixel scale: every eps, step size and distance is on the 0..255 scale; images are clipped
//!   to [0, 255] after every step.
//! - Eq. 1's distance d is the unsquared L2 norm ||x* - x||_2 per image (the paper says "L2
//!   distance"), with gradient lambda*(x* - x)/||x* - x|| (0 at x* = x, where Adam starts).
//!   Default lambda = [`methods::DEFAULT_LAMBDA`]; Adam with torch defaults (beta 0.9/0.999,
//!   eps 1e-8), step size 5, 20 iterations (the paper's 10-20), x* initialised at x.
//! - Targets: the K classes with the lowest mean softmax probability over the ensemble on the
//!   clean image, the true label excluded (so a misclassified image never gets its own label
//!   as a target), least likely first, ties to the lower class index. K is at most classes-1
//!   (Fashion-MNIST: 9); asking for more is an error.
//! - The stored set is rounded (half away from zero) and clipped u8; every success rate and
//!   accuracy of the report is measured on those stored images, not on the float optimum.
//! - All models run in eval mode; the ensemble's input gradients are summed (each model's
//!   per-sample cross-entropy, not averaged over the batch).

pub mod advset;
pub mod ensemble;
pub mod eval;
pub mod methods;

pub use advset::{AdvBatch, AdvSet, Manifest};
pub use ensemble::{merge, run_ensemble, EnsembleReport, EnsembleRun};
pub use eval::{fgs_table, ifgs_eval, FgsReport, IfgsReport, TargetRule};
pub use methods::{
    ensemble_attack, fgs, ifgs, input_grad, least_likely_targets, EnsembleAttack, DEFAULT_LAMBDA,
};
