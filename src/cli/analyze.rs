//! `advlens neurons | ratios | detect | explain`: the analysis experiments E3, E4, E5, E8 on one
//! model, a real set and an adversarial set. Parsing and printing only; the work is in
//! `crate::experiments`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{emit, Ctx};
use crate::analysis::wordnet::{parse_class_list, Hierarchy, WordNet};
use crate::attack::advset::AdvSet;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::experiments::detect::{detect, DetectConfig};
use crate::experiments::explain::{explain, ExplainConfig, ExplainImage, NeuronsFile};
use crate::experiments::neurons::{neurons, NeuronsConfig};
use crate::experiments::ratios::{ratios, RatiosConfig};
use crate::viz::OcclusionConfig;

/// Where the class correlation C comes from: a hierarchy JSON, or a class list built on the fly.
#[derive(clap::Args, Debug, Clone)]
pub struct HierarchyArgs {
    /// Class hierarchy JSON from `advlens wordnet build` (e.g.
    /// data/wordnet/fashion_mnist_hierarchy.json).
    #[arg(long, conflicts_with = "classes")]
    pub hierarchy: Option<PathBuf>,
    /// Or: a class list (one wnid per line) to build the hierarchy from WordNet now.
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// WordNet 3.0 directory for --classes.
    #[arg(long, default_value = "/usr/share/wordnet")]
    pub wordnet: PathBuf,
    /// sigma of C = exp(-d^2 / (2 sigma^2)) for --classes.
    #[arg(long, default_value_t = 1.0)]
    pub sigma: f64,
}

impl HierarchyArgs {
    /// The files this reads, for the output-over-input check.
    fn inputs(&self) -> Vec<(&'static str, &Path)> {
        let mut v = Vec::new();
        if let Some(h) = &self.hierarchy {
            v.push(("--hierarchy", h.as_path()));
        }
        if let Some(c) = &self.classes {
            v.push(("--classes", c.as_path()));
            v.push(("--wordnet", self.wordnet.as_path()));
        }
        v
    }

    fn load(&self) -> Result<Option<Hierarchy>> {
        match (&self.hierarchy, &self.classes) {
            (Some(h), _) => Ok(Some(Hierarchy::load(h)?)),
            (None, Some(c)) => {
                let text = std::fs::read_to_string(c).map_err(|e| Error::io(c, e))?;
                let list = parse_class_list(&text, c)?;
                let wn = WordNet::load(&self.wordnet)?;
                Ok(Some(Hierarchy::build(&wn, &list, self.sigma, c)?))
            }
            (None, None) => Ok(None),
        }
    }
}

fn parse_occlusion(s: &Option<String>) -> Result<Option<OcclusionConfig>> {
    let Some(s) = s else { return Ok(None) };
    let bad = || {
        Error::InvalidArg(format!(
            "--occlusion wants PATCH or PATCH:STRIDE in pixels (e.g. 7:3), got '{s}'"
        ))
    };
    let (p, st) = match s.split_once(':') {
        Some((p, st)) => (p, Some(st)),
        None => (s.as_str(), None),
    };
    let patch: usize = p.trim().parse().map_err(|_| bad())?;
    let stride: usize = match st {
        Some(st) => st.trim().parse().map_err(|_| bad())?,
        None => (patch / 2).max(1),
    };
    if patch == 0 || stride == 0 {
        return Err(bad());
    }
    Ok(Some(OcclusionConfig { patch, stride }))
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  advlens neurons --ckpt runs/vgg/last.safetensors --data data/fmnist/test.safetensors \
    --adv runs/adv --hierarchy data/wordnet/fashion_mnist_hierarchy.json --out results/vgg/neurons\n\n\
    Writes neurons.json (per layer, per neuron: LC, CS1, CS2, top image ids and activations; the \
    Fig. 4 curve), fig4_lc_cs.svg and fig2_<layer>_n<channel>.png grids."
)]
pub struct NeuronsArgs {
    /// Model checkpoint (from `advlens train` or `advlens advtrain`).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Real image set (e.g. the test split the adversarial set was built from).
    #[arg(long)]
    pub data: PathBuf,
    /// Adversarial set directory (from `advlens attack ensemble`).
    #[arg(long)]
    pub adv: PathBuf,
    #[command(flatten)]
    pub hier: HierarchyArgs,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Use the first N real images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use the first N adversarial images only.
    #[arg(long)]
    pub adv_limit: Option<usize>,
    /// Comma-separated conv layers (default: all; see the error of a wrong name for the list).
    #[arg(long, value_delimiter = ',')]
    pub layers: Option<Vec<String>>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Top fraction of each set kept per neuron.
    #[arg(long, default_value_t = 0.01)]
    pub fraction: f64,
    /// Bins of the Fig. 4 curve over LC in [0, 1].
    #[arg(long, default_value_t = 10)]
    pub lc_bins: usize,
    /// Fig. 2 grids drawn (highest-LC neurons of the last mined layer).
    #[arg(long, default_value_t = 4)]
    pub grids: usize,
    /// Images per grid row.
    #[arg(long, default_value_t = 8)]
    pub grid_images: usize,
    /// Occlusion patch for discrepancy maps: PATCH or PATCH:STRIDE (default H/4 : H/8).
    #[arg(long)]
    pub occlusion: Option<String>,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  advlens ratios --ckpt runs/vgg/last.safetensors --data data/fmnist/test.safetensors \
    --adv runs/adv --out results/vgg/ratios\n\nWrites ratios.json (r1/r2 per adversarial image, \
    means, histograms) and fig5_ratios.svg."
)]
pub struct RatiosArgs {
    /// Model checkpoint (from `advlens train` or `advlens advtrain`).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Real image set: phi of its images grouped by true class.
    #[arg(long)]
    pub data: PathBuf,
    /// Adversarial set directory (from `advlens attack ensemble`).
    #[arg(long)]
    pub adv: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Use the first N real images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use the first N adversarial images only.
    #[arg(long)]
    pub adv_limit: Option<usize>,
    /// Keep at most N real images per class (seeded uniform subsample; bounds memory).
    #[arg(long)]
    pub max_per_class: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Upper edge of the histograms (bins of 0.05 from 0).
    #[arg(long, default_value_t = 3.0)]
    pub hist_max: f64,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  advlens detect --ckpt runs/vgg/last.safetensors --train data/fmnist/train.safetensors \
    --data data/fmnist/test.safetensors --adv runs/adv --out results/vgg/detect\n\nWrites detect.json \
    (AUC, ROC points with real = positive and score = log-density under the predicted class) and \
    fig6_roc.svg."
)]
pub struct DetectArgs {
    /// Model checkpoint (from `advlens train` or `advlens advtrain`).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Training split the class-conditional Gaussians are fitted on.
    #[arg(long)]
    pub train: PathBuf,
    /// Real validation images (the positives).
    #[arg(long)]
    pub data: PathBuf,
    /// Adversarial set directory (from `advlens attack ensemble`).
    #[arg(long)]
    pub adv: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Fit on the first N training images only.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use the first N real images only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use the first N adversarial images only.
    #[arg(long)]
    pub adv_limit: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Fixed covariance shrinkage weight in [0, 1] instead of Ledoit-Wolf.
    #[arg(long)]
    pub shrinkage: Option<f64>,
}

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  advlens explain --ckpt runs/vgg/last.safetensors --data data/fmnist/test.safetensors \
    --index 3 --adv runs/adv --adv-index 27 --hierarchy data/wordnet/fashion_mnist_hierarchy.json \
    --neurons results/vgg/neurons/neurons.json --out results/vgg/explain\n\nPrints the neurons of \
    phi with the largest prediction difference PD (Eq. 12) and, with --neurons and --out, draws \
    each with its top real images."
)]
pub struct ExplainArgs {
    /// Model checkpoint (from `advlens train` or `advlens advtrain`).
    #[arg(long)]
    pub ckpt: PathBuf,
    /// Real image set (class names; the real image to explain).
    #[arg(long)]
    pub data: PathBuf,
    /// Real image to explain (row of --data).
    #[arg(long)]
    pub index: Option<usize>,
    /// Adversarial set holding the adversarial image to explain.
    #[arg(long, requires = "adv_index")]
    pub adv: Option<PathBuf>,
    /// Adversarial image to explain (row of --adv).
    #[arg(long, requires = "adv")]
    pub adv_index: Option<usize>,
    /// Neurons reported.
    #[arg(long, default_value_t = 2)]
    pub top: usize,
    #[command(flatten)]
    pub hier: HierarchyArgs,
    /// neurons.json of `advlens neurons` for this model: draw each top neuron's top real images.
    #[arg(long)]
    pub neurons: Option<PathBuf>,
    /// Real set those neurons were mined on (default: the one named in neurons.json).
    #[arg(long)]
    pub neurons_data: Option<PathBuf>,
    /// Output directory for the PNGs and explain.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Modified phi copies per head call.
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
    /// Top real images drawn per neuron.
    #[arg(long, default_value_t = 8)]
    pub grid_images: usize,
    /// Occlusion patch: PATCH or PATCH:STRIDE.
    #[arg(long)]
    pub occlusion: Option<String>,
}

pub fn run_neurons(ctx: &Ctx, a: &NeuronsArgs) -> Result<()> {
    let mut inputs = vec![
        ("--ckpt", a.ckpt.as_path()),
        ("--data", a.data.as_path()),
        ("--adv", a.adv.as_path()),
    ];
    inputs.extend(a.hier.inputs());
    let _lock = super::claim_out_dir(&a.out, &inputs)?;
    let hier = a.hier.load()?.ok_or_else(|| {
        Error::InvalidArg(
            "neurons needs the class correlation: give --hierarchy or --classes".into(),
        )
    })?;
    let real = Arc::new(Dataset::open(&a.data)?);
    let adv = AdvSet::open(&a.adv)?;
    let cfg = NeuronsConfig {
        batch: a.batch,
        fraction: a.fraction,
        limit: a.limit,
        adv_limit: a.adv_limit,
        layers: a.layers.clone(),
        lc_bins: a.lc_bins,
        grid_neurons: a.grids,
        grid_images: a.grid_images,
        occlusion: parse_occlusion(&a.occlusion)?,
    };
    let be = ctx.backend()?;
    let r = neurons(be.as_ref(), &a.ckpt, &real, &adv, &hier, &cfg, &a.out)?;
    #[derive(serde::Serialize)]
    struct Brief<'a> {
        out: &'a Path,
        neurons: &'a crate::experiments::neurons::NeuronsSummary,
        k_real: usize,
        k_adv: usize,
        curve: &'a [crate::analysis::semantics::LcBin],
        figures: &'a [String],
        seconds: f64,
    }
    let brief = Brief {
        out: &a.out,
        neurons: &r.summary,
        k_real: r.k_real,
        k_adv: r.k_adv,
        curve: &r.curve,
        figures: &r.figures,
        seconds: r.seconds,
    };
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    emit(ctx, &brief, || {
        let mut s = format!(
            "{} neurons in {} layers ({} real, {} adversarial images; top {} / {}): mean LC {:.3}, \
             CS1 {}, CS2 {}; corr(LC, CS1) {}, corr(LC, CS2) {}\n  LC bin       n   CS1    CS2\n",
            r.summary.neurons,
            r.layers.len(),
            r.real_images,
            r.adv_images,
            r.k_real,
            r.k_adv,
            r.summary.mean_lc,
            opt(r.summary.mean_cs1),
            opt(r.summary.mean_cs2),
            opt(r.summary.corr_lc_cs1),
            opt(r.summary.corr_lc_cs2),
        );
        for b in &r.curve {
            s.push_str(&format!(
                "  [{:.2},{:.2}) {:5} {:>6} {:>6}\n",
                b.lo,
                b.hi,
                b.count,
                opt(b.cs1_mean),
                opt(b.cs2_mean)
            ));
        }
        s.push_str(&format!(
            "wrote {} ({})",
            a.out.join("neurons.json").display(),
            r.figures.join(", ")
        ));
        s
    });
    Ok(())
}

pub fn run_ratios(ctx: &Ctx, a: &RatiosArgs) -> Result<()> {
    if !(a.hist_max.is_finite() && a.hist_max > 0.0) {
        return Err(Error::InvalidArg(format!(
            "--hist-max must be positive, got {}",
            a.hist_max
        )));
    }
    let _lock = super::claim_out_dir(
        &a.out,
        &[("--ckpt", &a.ckpt), ("--data", &a.data), ("--adv", &a.adv)],
    )?;
    let real = Arc::new(Dataset::open(&a.data)?);
    let adv = AdvSet::open(&a.adv)?;
    let bins = ((a.hist_max / 0.05).round() as usize).max(1);
    let cfg = RatiosConfig {
        batch: a.batch,
        limit: a.limit,
        adv_limit: a.adv_limit,
        max_per_class: a.max_per_class,
        seed: ctx.seed,
        edges: crate::analysis::semantics::uniform_edges(0.0, a.hist_max, bins),
        ..RatiosConfig::default()
    };
    let be = ctx.backend()?;
    let r = ratios(be.as_ref(), &a.ckpt, &real, &adv, &cfg, &a.out)?;
    #[derive(serde::Serialize)]
    struct Brief<'a> {
        out: &'a Path,
        r1: &'a crate::experiments::ratios::RatioStats,
        r2: &'a crate::experiments::ratios::RatioStats,
        figures: &'a [String],
        seconds: f64,
    }
    let brief = Brief {
        out: &a.out,
        r1: &r.r1,
        r2: &r.r2,
        figures: &r.figures,
        seconds: r.seconds,
    };
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    emit(ctx, &brief, || {
        format!(
            "{} adversarial images, {} real: mean r1 {} (median {}, {} above 1), mean r2 {} \
             (median {}, {} below 1); {} / {} undefined\nwrote {}",
            r.adv_images,
            r.real_images,
            opt(r.r1.mean),
            opt(r.r1.median),
            pct(r.r1.frac_above_1),
            opt(r.r2.mean),
            opt(r.r2.median),
            pct(r.r2.frac_below_1),
            r.r1.missing,
            r.r2.missing,
            a.out.join("ratios.json").display()
        )
    });
    Ok(())
}

pub fn run_detect(ctx: &Ctx, a: &DetectArgs) -> Result<()> {
    let _lock = super::claim_out_dir(
        &a.out,
        &[
            ("--ckpt", &a.ckpt),
            ("--train", &a.train),
            ("--data", &a.data),
            ("--adv", &a.adv),
        ],
    )?;
    let train = Arc::new(Dataset::open(&a.train)?);
    let real = Arc::new(Dataset::open(&a.data)?);
    let adv = AdvSet::open(&a.adv)?;
    let mut cfg = DetectConfig {
        batch: a.batch,
        train_limit: a.train_limit,
        limit: a.limit,
        adv_limit: a.adv_limit,
        ..DetectConfig::default()
    };
    if let Some(l) = a.shrinkage {
        cfg.gaussian.shrinkage = crate::analysis::detect::Shrinkage::Fixed(l);
    }
    let be = ctx.backend()?;
    let r = detect(be.as_ref(), &a.ckpt, &train, &real, &adv, &cfg, &a.out)?;
    #[derive(serde::Serialize)]
    struct Brief<'a> {
        out: &'a Path,
        auc: Option<f64>,
        real_images: usize,
        adv_images: usize,
        real_accuracy: f64,
        adv_pred_target: f64,
        mean_log_density_real: f64,
        mean_log_density_adv: f64,
        figures: &'a [String],
        seconds: f64,
    }
    let brief = Brief {
        out: &a.out,
        auc: r.auc,
        real_images: r.real_images,
        adv_images: r.adv_images,
        real_accuracy: r.real_accuracy,
        adv_pred_target: r.adv_pred_target,
        mean_log_density_real: r.mean_log_density_real,
        mean_log_density_adv: r.mean_log_density_adv,
        figures: &r.figures,
        seconds: r.seconds,
    };
    emit(ctx, &brief, || {
        format!(
            "AUC {} ({} real, {} adversarial; fitted on {} training images, {} features); mean \
             log-density real {:.2}, adversarial {:.2}; real accuracy {:.3}, adversarial \
             predicted as target {:.3}\nwrote {}",
            r.auc.map_or("-".into(), |x| format!("{x:.4}")),
            r.real_images,
            r.adv_images,
            r.train_images,
            r.dim,
            r.mean_log_density_real,
            r.mean_log_density_adv,
            r.real_accuracy,
            r.adv_pred_target,
            a.out.join("detect.json").display()
        )
    });
    Ok(())
}

pub fn run_explain(ctx: &Ctx, a: &ExplainArgs) -> Result<()> {
    if a.index.is_none() && a.adv_index.is_none() {
        return Err(Error::InvalidArg(
            "explain: give --index (a real image) and/or --adv with --adv-index".into(),
        ));
    }
    let _lock = match &a.out {
        Some(out) => {
            let mut inputs = vec![("--ckpt", a.ckpt.as_path()), ("--data", a.data.as_path())];
            for (flag, p) in [
                ("--adv", &a.adv),
                ("--neurons", &a.neurons),
                ("--neurons-data", &a.neurons_data),
            ] {
                if let Some(p) = p {
                    inputs.push((flag, p.as_path()));
                }
            }
            inputs.extend(a.hier.inputs());
            Some(super::claim_out_dir(out, &inputs)?)
        }
        None => None,
    };
    let data = Arc::new(Dataset::open(&a.data)?);
    let hier = a.hier.load()?;
    if let Some(h) = &hier {
        crate::experiments::neurons::check_hierarchy(h, data.classes())?;
    }
    let c = hier.as_ref().map(Hierarchy::c_matrix);
    let mut images = Vec::new();
    if let Some(i) = a.index {
        let (x, labels) = data
            .batch_f32(&[i])
            .map_err(|e| Error::InvalidArg(format!("--index {i}: {e}")))?;
        images.push(ExplainImage {
            source: "real".into(),
            set: a.data.display().to_string(),
            index: i,
            true_label: labels[0],
            target_label: None,
            pixels: x.to_vec()?,
        });
    }
    if let (Some(dir), Some(j)) = (&a.adv, a.adv_index) {
        let adv = AdvSet::open(dir)?;
        if adv.classes() != data.classes() {
            return Err(Error::InvalidArg(format!(
                "the adversarial set {} was built for another class list than {}",
                dir.display(),
                a.data.display()
            )));
        }
        let b = adv.batch(&[j])?;
        images.push(ExplainImage {
            source: "adversarial".into(),
            set: dir.display().to_string(),
            index: j,
            true_label: b.true_label[0],
            target_label: Some(b.target_label[0]),
            pixels: b.images.to_vec()?,
        });
    }
    let nf = match &a.neurons {
        Some(p) => Some(NeuronsFile::load(p)?),
        None => None,
    };
    let ndata = match (&nf, &a.neurons_data) {
        (_, Some(p)) => Some(Arc::new(Dataset::open(p)?)),
        (Some(f), None) => Some(Arc::new(Dataset::open(Path::new(&f.real_data))?)),
        _ => None,
    };
    let cfg = ExplainConfig {
        top: a.top,
        chunk: a.chunk,
        grid_images: a.grid_images,
        occlusion: parse_occlusion(&a.occlusion)?,
        ..ExplainConfig::default()
    };
    let be = ctx.backend()?;
    let neurons = match (&nf, &ndata) {
        (Some(f), Some(d)) => Some((f, d)),
        _ => None,
    };
    let mut results = Vec::new();
    for img in &images {
        results.push(explain(
            be.as_ref(),
            &a.ckpt,
            img,
            data.classes(),
            c.as_deref(),
            neurons,
            &cfg,
            a.out.as_deref(),
        )?);
    }
    if let Some(out) = &a.out {
        crate::io::write_json(&out.join("explain.json"), &results)?;
    }
    emit(ctx, &results, || {
        results
            .iter()
            .map(|r| r.lines())
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}
