//! The divergence guard of the training loops (`train`, `advtrain`): a diverged step must never
//! reach a checkpoint, and the run must stop soon after it with a clear error (non-zero exit),
//! leaving the last good checkpoint as it was.
//!
//! Checks, from cheap to exact:
//! - the loss after every step (a number the step computes anyway);
//! - every [`PARAM_CHECK_EVERY`] steps, one sum of squares per parameter and BatchNorm buffer on
//!   the device (`Backend::sum_squares`, f64 accumulation): non-finite exactly when the tensor
//!   holds a NaN or an infinity (or values so large that their squares overflow f64, which no
//!   f32 can produce). A learning rate that sends the weights to NaN while the loss stays finite
//!   (it can: a NaN weight behind a ReLU that outputs 0) is caught within that many steps,
//!   not at the end of the epoch;
//! - before every checkpoint, the exact element scan of `checkpoint::first_non_finite` (and
//!   `checkpoint::save` refuses a non-finite model in any case).

use std::path::PathBuf;

use crate::backend::Backend;
use crate::error::{Error, Result};

use super::checkpoint;
use super::model::Model;

/// Optimiser steps between two parameter checks. One check costs one reduction per tensor, about
/// what one optimiser step costs in memory traffic, so every 8th step adds about 1/8 of an
/// optimiser step (the forward and backward passes cost far more).
pub const PARAM_CHECK_EVERY: usize = 8;

/// The per-run state of the guard: what the error says, and the last good checkpoint.
pub struct DivergenceGuard {
    /// "training" or "adversarial training".
    what: &'static str,
    /// The last checkpoint written (or resumed from); `None` before the first.
    last_good: Option<PathBuf>,
    /// What to lower, for the message ("--lr").
    hint: &'static str,
}

impl DivergenceGuard {
    pub fn new(what: &'static str, resumed_from: Option<PathBuf>) -> DivergenceGuard {
        DivergenceGuard {
            what,
            last_good: resumed_from,
            hint: "lower --lr or check the data",
        }
    }

    /// Record a checkpoint just written: it is the last good one from now on.
    pub fn saved(&mut self, path: PathBuf) {
        self.last_good = Some(path);
    }

    fn kept(&self) -> String {
        match &self.last_good {
            None => "no checkpoint of this run was written".into(),
            Some(p) => format!("{} is the last good checkpoint, unchanged", p.display()),
        }
    }

    fn fail(&self, epoch: usize, step: Option<usize>, what: String) -> Error {
        let at = match step {
            Some(s) => format!("epoch {} step {}", epoch + 1, s + 1),
            None => format!("the end of epoch {}", epoch + 1),
        };
        Error::Numeric(format!(
            "{} diverged at {at}: {what}; {}. The diverged model was not saved; {}",
            self.what,
            self.hint,
            self.kept()
        ))
    }

    /// After every step: the step's loss (`epoch`, `step` from 0).
    pub fn loss(&self, loss: f64, epoch: usize, step: usize, lr: f32) -> Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        Err(self.fail(epoch, Some(step), format!("the loss is {loss} (lr {lr})")))
    }

    /// After every step: every `PARAM_CHECK_EVERY`-th step (and always for `force`), the
    /// parameters and BatchNorm buffers.
    pub fn params(
        &self,
        be: &dyn Backend,
        model: &Model,
        epoch: usize,
        step: usize,
        force: bool,
    ) -> Result<()> {
        if !force && !(step + 1).is_multiple_of(PARAM_CHECK_EVERY) {
            return Ok(());
        }
        match first_non_finite_sum(be, model)? {
            None => Ok(()),
            Some((name, s)) => Err(self.fail(
                epoch,
                Some(step),
                format!("parameter '{name}' has a sum of squares of {s} (it holds a NaN or an infinity)"),
            )),
        }
    }

    /// Before a checkpoint is written: the exact scan of every element.
    pub fn before_save(&self, model: &Model, epoch: usize) -> Result<()> {
        match checkpoint::first_non_finite(model)? {
            None => Ok(()),
            Some((name, v)) => Err(self.fail(epoch, None, format!("parameter '{name}' holds {v}"))),
        }
    }
}

/// The first parameter or BatchNorm buffer whose sum of squares is not finite, with that sum.
pub fn first_non_finite_sum(be: &dyn Backend, model: &Model) -> Result<Option<(String, f64)>> {
    for p in model.params() {
        let s = be.sum_squares(&p.value)?;
        if !s.is_finite() {
            return Ok(Some((p.name.clone(), s)));
        }
    }
    for bn in model.batchnorms() {
        for b in [&bn.running_mean, &bn.running_var] {
            let s = be.sum_squares(&b.value)?;
            if !s.is_finite() {
                return Ok(Some((b.name.clone(), s)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::nn::ModelSpec;
    use crate::tensor::Tensor;

    fn model() -> Model {
        let mut spec = ModelSpec::new("small-resnet18", 3, (1, 12, 12));
        spec.width = 1;
        Model::from_spec(&spec, 3).unwrap()
    }

    #[test]
    fn the_parameter_check_runs_every_nth_step_and_names_the_tensor() {
        let be = CpuBackend::new();
        let mut m = model();
        let g = DivergenceGuard::new("training", Some(PathBuf::from("run/last.safetensors")));
        g.params(&be, &m, 0, 0, false).unwrap();
        let p = m.params_mut().into_iter().nth(2).unwrap();
        let name = p.name.clone();
        let mut v = p.value.to_vec().unwrap();
        let mid = v.len() / 2;
        v[mid] = f32::NAN;
        p.value = Tensor::from_vec(p.value.shape(), v).unwrap();
        // Off-cadence steps skip the check; the N-th step and a forced check catch it.
        g.params(&be, &m, 0, 0, false).unwrap();
        for (step, force) in [(PARAM_CHECK_EVERY - 1, false), (0, true)] {
            let e = g.params(&be, &m, 1, step, force).unwrap_err().to_string();
            assert!(e.contains(&name), "{e}");
            assert!(e.contains(&format!("epoch 2 step {}", step + 1)), "{e}");
            assert!(
                e.contains("run/last.safetensors is the last good checkpoint"),
                "{e}"
            );
        }
        let e = g.before_save(&m, 1).unwrap_err().to_string();
        assert!(e.contains("end of epoch 2") && e.contains(&name), "{e}");
        let e = g.loss(f64::INFINITY, 0, 4, 0.1).unwrap_err().to_string();
        assert!(
            e.contains("epoch 1 step 5") && e.contains("loss is inf"),
            "{e}"
        );
    }

    #[test]
    fn an_infinite_buffer_is_caught() {
        let be = CpuBackend::new();
        let mut m = model();
        let bn = m.batchnorms_mut().into_iter().next().unwrap();
        let n = bn.running_var.value.numel();
        bn.running_var.value = Tensor::from_vec(&[n], vec![f32::INFINITY; n]).unwrap();
        let name = bn.running_var.name.clone();
        assert_eq!(first_non_finite_sum(&be, &m).unwrap().unwrap().0, name);
    }
}
