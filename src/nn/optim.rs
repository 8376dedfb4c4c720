//! Optimisers with torch.optim semantics, stepping through the backend's `sgd_step`/`adam_step`.
//!
//! State is keyed by parameter name so it survives a rebuild of the model, and is saved in
//! checkpoints under `optim.<param>.momentum_buffer` (SGD) or `optim.<param>.exp_avg` /
//! `optim.<param>.exp_avg_sq` (Adam, the torch names), with the step count in the metadata.

use std::collections::BTreeMap;

use crate::backend::{AdamParams, Backend, SgdParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

use super::model::Model;

/// Which optimiser and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum OptimConfig {
    Sgd {
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    },
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
}

impl OptimConfig {
    pub fn name(&self) -> &'static str {
        match self {
            OptimConfig::Sgd { .. } => "sgd",
            OptimConfig::Adam { .. } => "adam",
        }
    }
    pub fn lr(&self) -> f32 {
        match self {
            OptimConfig::Sgd { lr, .. } | OptimConfig::Adam { lr, .. } => *lr,
        }
    }
    /// Adam with torch's defaults (betas 0.9/0.999, eps 1e-8).
    pub fn adam(lr: f32, weight_decay: f32) -> OptimConfig {
        OptimConfig::Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
    pub fn sgd(lr: f32, momentum: f32, weight_decay: f32) -> OptimConfig {
        OptimConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        }
    }
    fn validate(&self) -> Result<()> {
        let ok = match *self {
            OptimConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => lr > 0.0 && (0.0..1.0).contains(&momentum) && weight_decay >= 0.0,
            OptimConfig::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                lr > 0.0
                    && (0.0..1.0).contains(&beta1)
                    && (0.0..1.0).contains(&beta2)
                    && eps > 0.0
                    && weight_decay >= 0.0
            }
        };
        if ok && self.lr().is_finite() {
            Ok(())
        } else {
            Err(Error::InvalidArg(format!(
                "optimiser hyper-parameters out of range: {self:?} (lr > 0, momentum and betas in \
                 [0, 1), weight decay >= 0)"
            )))
        }
    }
}

/// Per-parameter state tensors, by the torch state name.
type Slots = BTreeMap<&'static str, Tensor>;

pub struct Optimizer {
    config: OptimConfig,
    /// Current learning rate (a schedule may change it; `config.lr()` is the base).
    lr: f32,
    /// Steps taken (Adam's bias correction uses step + 1 at the next step).
    step: u64,
    state: BTreeMap<String, Slots>,
}

impl Optimizer {
    pub fn new(config: OptimConfig) -> Result<Optimizer> {
        config.validate()?;
        Ok(Optimizer {
            config,
            lr: config.lr(),
            step: 0,
            state: BTreeMap::new(),
        })
    }

    pub fn config(&self) -> &OptimConfig {
        &self.config
    }
    pub fn lr(&self) -> f32 {
        self.lr
    }
    pub fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }
    pub fn steps(&self) -> u64 {
        self.step
    }

    fn slot_names(&self) -> &'static [&'static str] {
        match self.config {
            OptimConfig::Sgd { .. } => &["momentum_buffer"],
            OptimConfig::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }

    /// One update of every parameter that has a gradient (parameters without one are skipped,
    /// like torch). Gradients are left in place; call `model.zero_grad()` before the next batch.
    pub fn step(&mut self, be: &dyn Backend, model: &mut Model) -> Result<()> {
        model.to_backend(be)?;
        self.step += 1;
        let names = self.slot_names();
        for p in model.params_mut() {
            let Some(grad) = &p.grad else { continue };
            let slots = match self.state.get_mut(&p.name) {
                Some(s) => s,
                None => {
                    let mut s = Slots::new();
                    for n in names {
                        s.insert(n, be.zeros(p.value.shape())?);
                    }
                    self.state.entry(p.name.clone()).or_insert(s)
                }
            };
            for n in names {
                let t = slots.get_mut(n).ok_or_else(|| {
                    Error::InvalidArg(format!("optimiser state of {} lacks {n}", p.name))
                })?;
                if t.is_cpu() != p.value.is_cpu() {
                    *t = be.upload(t)?;
                }
            }
            match self.config {
                OptimConfig::Sgd {
                    momentum,
                    weight_decay,
                    ..
                } => {
                    let buf = slots.get_mut("momentum_buffer").ok_or_else(|| {
                        Error::InvalidArg(format!("no momentum buffer for {}", p.name))
                    })?;
                    be.sgd_step(
                        &mut p.value,
                        grad,
                        buf,
                        SgdParams {
                            lr: self.lr,
                            momentum,
                            weight_decay,
                        },
                    )?;
                }
                OptimConfig::Adam {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let mut m = slots.remove("exp_avg");
                    let mut v = slots.remove("exp_avg_sq");
                    let (Some(mm), Some(vv)) = (&mut m, &mut v) else {
                        return Err(Error::InvalidArg(format!(
                            "optimiser state of {} lacks exp_avg/exp_avg_sq",
                            p.name
                        )));
                    };
                    be.adam_step(
                        &mut p.value,
                        grad,
                        mm,
                        vv,
                        AdamParams {
                            lr: self.lr,
                            beta1,
                            beta2,
                            eps,
                            weight_decay,
                            step: self.step,
                        },
                    )?;
                    if let (Some(m), Some(v)) = (m, v) {
                        slots.insert("exp_avg", m);
                        slots.insert("exp_avg_sq", v);
                    }
                }
            }
        }
        Ok(())
    }

    /// State tensors named `optim.<param>.<slot>` (host copies are made by the caller).
    pub fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = Vec::new();
        for (p, slots) in &self.state {
            for (s, t) in slots {
                v.push((format!("optim.{p}.{s}"), t));
            }
        }
        v
    }

    /// Restore state from `optim.*` tensors (as produced by `state_tensors`) and the step count.
    /// Every tensor must belong to a parameter of `model` with its shape.
    pub fn load_state(
        &mut self,
        model: &Model,
        step: u64,
        tensors: Vec<(String, Tensor)>,
    ) -> Result<()> {
        let shapes: BTreeMap<&str, &[usize]> = model
            .params()
            .into_iter()
            .map(|p| (p.name.as_str(), p.value.shape()))
            .collect();
        let names = self.slot_names();
        let mut state: BTreeMap<String, Slots> = BTreeMap::new();
        for (full, t) in tensors {
            let rest = full.strip_prefix("optim.").unwrap_or(&full);
            let (pname, slot) = rest.rsplit_once('.').ok_or_else(|| {
                Error::InvalidArg(format!(
                    "optimiser tensor '{full}' is not optim.<param>.<slot>"
                ))
            })?;
            let slot: &'static str = names.iter().find(|n| **n == slot).ok_or_else(|| {
                Error::InvalidArg(format!(
                    "optimiser tensor '{full}': slot '{slot}' is not one of {} ({})",
                    names.join(", "),
                    self.config.name()
                ))
            })?;
            let want = shapes.get(pname).ok_or_else(|| {
                Error::InvalidArg(format!(
                    "optimiser tensor '{full}' names no parameter of {}",
                    model.name()
                ))
            })?;
            if t.shape() != *want {
                return Err(Error::InvalidArg(format!(
                    "optimiser tensor '{full}' has shape {:?}, the parameter has {want:?}",
                    t.shape()
                )));
            }
            let v = t.to_vec()?;
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::InvalidArg(format!(
                    "optimiser tensor '{full}' holds {} at flat index {i}: the optimiser state is \
                     corrupt or the run diverged; it cannot resume",
                    v[i]
                )));
            }
            if slot == "exp_avg_sq" {
                if let Some(i) = v.iter().position(|&x| x < 0.0) {
                    return Err(Error::InvalidArg(format!(
                        "optimiser tensor '{full}' holds {} at flat index {i}: Adam's second \
                         moment is a running mean of squares and cannot be negative (corrupt \
                         state); it cannot resume",
                        v[i]
                    )));
                }
            }
            state.entry(pname.to_string()).or_default().insert(slot, t);
        }
        for (p, slots) in &state {
            if slots.len() != names.len() {
                return Err(Error::InvalidArg(format!(
                    "optimiser state of {p} is incomplete (needs {})",
                    names.join(", ")
                )));
            }
        }
        self.state = state;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(c: OptimConfig) -> bool {
        Optimizer::new(c).is_ok()
    }

    #[test]
    fn names_are_the_torch_ones() {
        assert_eq!(OptimConfig::sgd(0.1, 0.9, 0.0).name(), "sgd");
        assert_eq!(OptimConfig::adam(1e-3, 0.0).name(), "adam");
    }

    /// Each hyper-parameter alone at or past its bound is refused, and just inside it accepted,
    /// so a bound that slips (> to >=) or a check that one valid value excuses (&& to ||) fails.
    #[test]
    fn every_bound_is_checked_on_its_own() {
        let sgd = |lr, momentum, weight_decay| OptimConfig::Sgd {
            lr,
            momentum,
            weight_decay,
        };
        assert!(accepted(sgd(1e-6, 0.0, 0.0)));
        assert!(accepted(sgd(0.1, 0.999, 1e-4)));
        assert!(!accepted(sgd(0.0, 0.9, 0.0)), "lr 0");
        assert!(!accepted(sgd(0.1, 1.0, 0.0)), "momentum 1");
        assert!(!accepted(sgd(0.1, -0.1, 0.0)), "momentum < 0");
        assert!(!accepted(sgd(0.1, 0.9, -1e-6)), "weight decay < 0");
        assert!(!accepted(sgd(f32::INFINITY, 0.9, 0.0)), "lr inf");
        let adam = |lr, beta1, beta2, eps, weight_decay| OptimConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        };
        assert!(accepted(adam(1e-6, 0.0, 0.0, 1e-12, 0.0)));
        assert!(accepted(adam(1e-3, 0.9, 0.999, 1e-8, 5e-5)));
        assert!(!accepted(adam(0.0, 0.9, 0.999, 1e-8, 0.0)), "lr 0");
        assert!(!accepted(adam(1e-3, 1.0, 0.999, 1e-8, 0.0)), "beta1 1");
        assert!(!accepted(adam(1e-3, 0.9, 1.0, 1e-8, 0.0)), "beta2 1");
        assert!(!accepted(adam(1e-3, 0.9, 0.999, 0.0, 0.0)), "eps 0");
        assert!(
            !accepted(adam(1e-3, 0.9, 0.999, 1e-8, -1e-6)),
            "weight decay < 0"
        );
        assert!(!accepted(adam(f32::NAN, 0.9, 0.999, 1e-8, 0.0)), "lr NaN");
    }

    #[test]
    fn the_current_lr_starts_at_the_base_and_follows_set_lr() {
        let mut o = Optimizer::new(OptimConfig::adam(3e-3, 0.0)).unwrap();
        assert_eq!(o.lr(), 3e-3);
        o.set_lr(2.5e-4);
        assert_eq!(o.lr(), 2.5e-4);
        assert_eq!(o.config().lr(), 3e-3, "the base rate is kept");
    }
}
