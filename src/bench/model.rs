//! `advlens bench model`: whole-model workloads timed in-process, the units that
//! `benches/peer_cpu.py` times in PyTorch on the same small models (issue 12):
//!
//! - `train`: one training step (forward in train mode, softmax cross-entropy, backward, Adam
//!   lr 1e-3) on a batch; rate = images / s;
//! - `ifgs`: targeted iterative FGS, T steps of eps 1 (eval mode), on a batch; rate =
//!   adversarial images / s;
//! - `ensemble`: one Adam step of the ensemble attack (Eq. 1) with the three small models at the
//!   same width (alexnet, vgg16, resnet18) on `sources x targets` rows; rate = rows / s per step.
//!
//! Inputs are random 0..255 images and random labels from the seed (speed does not depend on the
//! values). Each workload runs `warmup` times unmeasured, then `iters` times; the median is
//! reported with every sample.

use std::time::Instant;

use serde::Serialize;

use crate::attack::methods::{ensemble_attack, ifgs, EnsembleAttack};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::nn::optim::{OptimConfig, Optimizer};
use crate::nn::{Model, ModelSpec};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The workloads `bench model` knows.
pub const WORKLOADS: &[&str] = &["train", "ifgs", "ensemble"];
/// The models of the ensemble workload, in the order of `reproduce`'s ensemble.
pub const ENSEMBLE_MODELS: &[&str] = &["small-alexnet", "small-vgg16", "small-resnet18"];
/// Fashion-MNIST geometry: 10 classes of 1x28x28 images.
const CLASSES: usize = 10;
const SHAPE: (usize, usize, usize) = (1, 28, 28);
/// Largest batch (rows) a bench builds: 4096 rows of 28x28 images are 12 MiB of input.
const MAX_ROWS: usize = 4096;

#[derive(Clone, Debug)]
pub struct ModelBenchConfig {
    pub model: String,
    pub width: usize,
    pub batch: usize,
    pub warmup: usize,
    pub iters: usize,
    pub workloads: Vec<String>,
    pub ifgs_steps: usize,
    pub sources: usize,
    pub targets: usize,
    pub seed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadTiming {
    pub workload: String,
    /// What one run does, in words.
    pub what: String,
    /// Rows (images) one run processes.
    pub rows: usize,
    pub median_s: f64,
    pub samples_s: Vec<f64>,
    /// rows / median_s.
    pub rows_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelBenchReport {
    pub model: String,
    pub width: usize,
    pub batch: usize,
    pub device: String,
    pub cpu: String,
    pub isa: String,
    pub commit: String,
    pub workloads: Vec<WorkloadTiming>,
}

impl ModelBenchConfig {
    pub fn validate(&self) -> Result<()> {
        if !crate::nn::arch::KNOWN_MODELS.contains(&self.model.as_str()) {
            return Err(Error::unknown(
                "model",
                self.model.clone(),
                crate::nn::arch::KNOWN_MODELS,
            ));
        }
        for w in &self.workloads {
            if !WORKLOADS.contains(&w.as_str()) {
                return Err(Error::unknown("workload", w.clone(), WORKLOADS));
            }
        }
        if self.iters == 0 {
            return Err(Error::InvalidArg("--iters must be at least 1".into()));
        }
        let rows = self.sources.checked_mul(self.targets);
        if self.batch == 0 || self.batch > MAX_ROWS || !rows.is_some_and(|r| r > 0 && r <= MAX_ROWS)
        {
            return Err(Error::InvalidArg(format!(
                "--batch and --sources x --targets must be in 1..={MAX_ROWS} rows"
            )));
        }
        if self.targets >= CLASSES {
            return Err(Error::InvalidArg(format!(
                "--targets must be below the class count ({CLASSES})"
            )));
        }
        Ok(())
    }
}

fn build(name: &str, width: usize, seed: u64) -> Result<Model> {
    let spec = ModelSpec {
        width,
        ..ModelSpec::new(name, CLASSES, SHAPE)
    };
    Model::from_spec(&spec, seed)
}

/// `rows` random 0..255 images (whole pixel values, as the data sets hold) and labels.
fn inputs(rows: usize, seed: u64) -> Result<(Tensor, Vec<u32>)> {
    let mut rng = Rng::derive(seed, 0xbe4c);
    let (c, h, w) = SHAPE;
    let x: Vec<f32> = (0..rows * c * h * w)
        .map(|_| rng.below(256) as f32)
        .collect();
    let labels = (0..rows).map(|_| rng.below(CLASSES) as u32).collect();
    Ok((Tensor::from_vec(&[rows, c, h, w], x)?, labels))
}

fn time(
    cfg: &ModelBenchConfig,
    be: &dyn Backend,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<(f64, Vec<f64>)> {
    for _ in 0..cfg.warmup {
        f()?;
    }
    be.synchronize()?;
    let mut samples = Vec::with_capacity(cfg.iters);
    for _ in 0..cfg.iters {
        let t = Instant::now();
        f()?;
        be.synchronize()?;
        samples.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = samples.clone();
    Ok((super::median(&mut sorted), samples))
}

fn timing(workload: &str, what: String, rows: usize, t: (f64, Vec<f64>)) -> WorkloadTiming {
    WorkloadTiming {
        workload: workload.into(),
        what,
        rows,
        median_s: t.0,
        rows_per_s: rows as f64 / t.0,
        samples_s: t.1,
    }
}

fn bench_train(cfg: &ModelBenchConfig, be: &dyn Backend) -> Result<WorkloadTiming> {
    let mut model = build(&cfg.model, cfg.width, cfg.seed)?;
    let mut opt = Optimizer::new(OptimConfig::adam(1e-3, 0.0))?;
    let (x, labels) = inputs(cfg.batch, cfg.seed)?;
    let t = time(cfg, be, &mut || {
        crate::nn::train::train_step(be, &mut model, &mut opt, &x, &labels).map(|_| ())
    })?;
    let what = format!("forward + backward + Adam, batch {}", cfg.batch);
    Ok(timing("train", what, cfg.batch, t))
}

fn bench_ifgs(cfg: &ModelBenchConfig, be: &dyn Backend) -> Result<WorkloadTiming> {
    let mut model = build(&cfg.model, cfg.width, cfg.seed)?;
    let (x, labels) = inputs(cfg.batch, cfg.seed)?;
    let targets: Vec<u32> = labels.iter().map(|&l| (l + 1) % CLASSES as u32).collect();
    let steps = cfg.ifgs_steps;
    let t = time(cfg, be, &mut || {
        ifgs(be, &mut model, &x, &targets, 1.0, steps).map(|_| ())
    })?;
    let what = format!("targeted I-FGS, T={steps}, eps 1, batch {}", cfg.batch);
    Ok(timing("ifgs", what, cfg.batch, t))
}

fn bench_ensemble(cfg: &ModelBenchConfig, be: &dyn Backend) -> Result<WorkloadTiming> {
    let mut models = ENSEMBLE_MODELS
        .iter()
        .map(|m| build(m, cfg.width, cfg.seed))
        .collect::<Result<Vec<_>>>()?;
    let rows = cfg.sources * cfg.targets;
    let (src, labels) = inputs(cfg.sources, cfg.seed)?;
    let per = src.numel() / cfg.sources;
    let sv = src.to_vec()?;
    let mut xv = Vec::with_capacity(rows * per);
    let mut targets = Vec::with_capacity(rows);
    for (i, &l) in labels.iter().enumerate() {
        for t in 1..=cfg.targets {
            xv.extend_from_slice(&sv[i * per..(i + 1) * per]);
            targets.push((l + t as u32) % CLASSES as u32);
        }
    }
    let (c, h, w) = SHAPE;
    let x = Tensor::from_vec(&[rows, c, h, w], xv)?;
    let h1 = EnsembleAttack {
        steps: 1,
        ..EnsembleAttack::default()
    };
    let t = time(cfg, be, &mut || {
        ensemble_attack(be, &mut models, &x, &targets, &h1).map(|_| ())
    })?;
    let what = format!(
        "one Adam step of the ensemble attack (small alexnet+vgg16+resnet18, width {}), {} \
         sources x {} targets",
        cfg.width, cfg.sources, cfg.targets
    );
    Ok(timing("ensemble", what, rows, t))
}

pub fn run(cfg: &ModelBenchConfig, be: &dyn Backend) -> Result<ModelBenchReport> {
    cfg.validate()?;
    let mut out = Vec::new();
    for w in &cfg.workloads {
        out.push(match w.as_str() {
            "train" => bench_train(cfg, be)?,
            "ifgs" => bench_ifgs(cfg, be)?,
            _ => bench_ensemble(cfg, be)?,
        });
    }
    Ok(ModelBenchReport {
        model: cfg.model.clone(),
        width: cfg.width,
        batch: cfg.batch,
        device: be.name(),
        cpu: super::cpu_name(),
        isa: crate::backend::cpu::isa_name(),
        commit: super::commit(),
        workloads: out,
    })
}

pub fn render(r: &ModelBenchReport) -> String {
    let mut s = format!(
        "bench model {} width {} on {} ({}, ISA {}, commit {})\n",
        r.model, r.width, r.device, r.cpu, r.isa, r.commit
    );
    for w in &r.workloads {
        s += &format!(
            "  {:<9} {:>9.1} rows/s  median {:.4} s  ({})\n",
            w.workload, w.rows_per_s, w.median_s, w.what
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(model: &str, batch: usize, iters: usize) -> ModelBenchConfig {
        ModelBenchConfig {
            model: model.into(),
            width: 4,
            batch,
            warmup: 0,
            iters,
            workloads: WORKLOADS.iter().map(|s| s.to_string()).collect(),
            ifgs_steps: 2,
            sources: 2,
            targets: 3,
            seed: 1,
        }
    }

    #[test]
    fn every_workload_reports_its_rows_and_samples() {
        let be = crate::backend::cpu::CpuBackend::new();
        let r = run(&cfg("small-resnet18", 3, 2), &be).unwrap();
        let got: Vec<_> = r.workloads.iter().map(|w| w.workload.as_str()).collect();
        assert_eq!(got, WORKLOADS);
        for w in &r.workloads {
            assert_eq!(w.samples_s.len(), 2);
            assert!(w.median_s > 0.0 && w.rows_per_s > 0.0);
        }
        assert_eq!(r.workloads[2].rows, 6);
        let mut bad = cfg("small-vgg16", 3, 1);
        bad.targets = 10;
        assert!(run(&bad, &be).is_err());
        bad.targets = 3;
        bad.workloads = vec!["nope".into()];
        assert!(run(&bad, &be).is_err());
    }

    /// Not a test: a profiling entry (`perf record <test binary> --ignored profile_workloads`);
    /// ADVLENS_PROFILE_MODEL / _WIDTH pick the model.
    #[test]
    #[ignore]
    fn profile_workloads() {
        let be = crate::backend::cpu::CpuBackend::new();
        let model = std::env::var("ADVLENS_PROFILE_MODEL").unwrap_or("small-vgg16".into());
        let mut c = cfg(&model, 128, 5);
        c.width = std::env::var("ADVLENS_PROFILE_WIDTH")
            .ok()
            .and_then(|w| w.parse().ok())
            .unwrap_or(8);
        c.ifgs_steps = 10;
        c.sources = 32;
        c.targets = 9;
        c.warmup = 1;
        eprintln!("{}", render(&run(&c, &be).unwrap()));
    }
}
