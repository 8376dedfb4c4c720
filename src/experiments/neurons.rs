//! E3 (paper section 2.2, Eq. 2-5, Fig. 2 and 4): what each neuron responds to on real and on
//! adversarial images.
//!
//! Decisions, written down (also in `neurons.json`):
//! - A neuron is a channel of a conv layer (every layer of `Model::conv_layer_names`, or the ones
//!   asked for); its activation on an image is the spatial max of the channel's post-ReLU map
//!   (`Backend::channel_max`).
//! - Each neuron keeps its top `fraction` (1%) images of each set: k = ceil(fraction x set size),
//!   at least 1 (`analysis::topk::top_fraction_k`); equal activations keep the smaller image id.
//!   The real set and the adversarial set are each streamed once, in batches; the only state is
//!   one bounded top-k per neuron (`Backend::topk_stream`: host heaps, or the device state of
//!   kernels/topk.cu on CUDA), never a per-image activation dump.
//! - p = class distribution of the true labels of the top real images, q = of the true (original)
//!   labels of the top adversarial images, q~ = of their target labels; LC = p^T C p,
//!   CS1 = cos_C(p, q), CS2 = cos_C(p, q~) (`analysis::semantics`), C from the class hierarchy.
//! - Fig. 4: CS1 and CS2 averaged over all neurons of all requested layers in `lc_bins` equal LC
//!   bins over [0, 1] (LC of a distribution lies in (0, 1] since C's entries do).
//! - Fig. 2 grids: for the `grid_neurons` neurons of the last requested layer with the highest LC,
//!   a PNG with the top real images (first row) and top adversarial images (second row), each
//!   tinted by its occlusion discrepancy map (`viz::occlusion`); adversarial images whose target
//!   is the neuron's majority real class get a red border (the paper's red boxes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::analysis::semantics::{lc_curve, neuron_semantics_from_labels, uniform_edges, LcBin};
use crate::analysis::topk::{top_fraction_k, Hit};
use crate::analysis::wordnet::Hierarchy;
use crate::attack::advset::AdvSet;
use crate::backend::{Backend, TopKStream};
use crate::data::{Batches, Dataset};
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::viz::{self, GridStyle, OcclusionConfig, Tile};

/// What "activation of a neuron on an image" means here.
pub const ACTIVATION: &str =
    "spatial max of the channel's post-ReLU feature map (Backend::channel_max)";

/// Options of [`neurons`].
#[derive(Clone, Debug)]
pub struct NeuronsConfig {
    /// Images per forward pass.
    pub batch: usize,
    /// Top fraction of each set kept per neuron (paper: 1%).
    pub fraction: f64,
    /// Use the first `limit` real images only.
    pub limit: Option<usize>,
    /// Use the first `adv_limit` adversarial images only.
    pub adv_limit: Option<usize>,
    /// Conv layers to mine (None: all of `Model::conv_layer_names`).
    pub layers: Option<Vec<String>>,
    /// Bins of the Fig. 4 curve over LC in [0, 1].
    pub lc_bins: usize,
    /// Neurons of the last mined layer rendered as Fig. 2 grids (highest LC first).
    pub grid_neurons: usize,
    /// Images per row of a grid.
    pub grid_images: usize,
    /// Occlusion geometry (None: `OcclusionConfig::for_size` of the input).
    pub occlusion: Option<OcclusionConfig>,
}

impl Default for NeuronsConfig {
    fn default() -> Self {
        NeuronsConfig {
            batch: 64,
            fraction: 0.01,
            limit: None,
            adv_limit: None,
            layers: None,
            lc_bins: 10,
            grid_neurons: 4,
            grid_images: 8,
            occlusion: None,
        }
    }
}

/// One neuron's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct NeuronRecord {
    pub channel: usize,
    /// p^T C p (Eq. 3).
    pub lc: f64,
    /// cos_C(p, q) (Eq. 4); None when undefined (a zero C-norm).
    pub cs1: Option<f64>,
    /// cos_C(p, q~) (Eq. 5).
    pub cs2: Option<f64>,
    /// The majority class of the top real images and its fraction (max of p).
    pub top_class: usize,
    pub top_class_fraction: f64,
    /// Ids (row in the real set) and activations of the top real images, best first.
    pub top_real: Vec<u32>,
    pub top_real_act: Vec<f32>,
    /// Ids (row in the adversarial set) and activations of the top adversarial images.
    pub top_adv: Vec<u32>,
    pub top_adv_act: Vec<f32>,
}

/// The neurons of one conv layer.
#[derive(Clone, Debug, Serialize)]
pub struct LayerNeurons {
    pub layer: String,
    pub channels: usize,
    pub mean_lc: f64,
    pub mean_cs1: Option<f64>,
    pub mean_cs2: Option<f64>,
    pub neurons: Vec<NeuronRecord>,
}

/// One rendered Fig. 2 grid.
#[derive(Clone, Debug, Serialize)]
pub struct GridRecord {
    pub layer: String,
    pub channel: usize,
    pub lc: f64,
    pub file: String,
    /// Real ids of the first row, adversarial ids of the second.
    pub real_ids: Vec<u32>,
    pub adv_ids: Vec<u32>,
    /// Per adversarial tile: its target is the neuron's majority real class (red border).
    pub adv_target_is_class: Vec<bool>,
    pub occlusion: OcclusionConfig,
}

/// Summary over all neurons.
#[derive(Clone, Debug, Serialize)]
pub struct NeuronsSummary {
    pub neurons: usize,
    pub mean_lc: f64,
    pub mean_cs1: Option<f64>,
    pub mean_cs2: Option<f64>,
    /// Pearson correlation of LC with CS1 / CS2 over neurons (paper: negative / positive).
    pub corr_lc_cs1: Option<f64>,
    pub corr_lc_cs2: Option<f64>,
}

/// Everything E3 measured (`neurons.json`).
#[derive(Clone, Debug, Serialize)]
pub struct NeuronsResult {
    pub format: String,
    pub model: String,
    pub ckpt: String,
    pub real_data: String,
    pub adv_dir: String,
    pub activation: String,
    pub fraction: f64,
    pub real_images: usize,
    pub adv_images: usize,
    /// Top images kept per neuron in each set.
    pub k_real: usize,
    pub k_adv: usize,
    pub num_classes: usize,
    pub sigma: f64,
    pub summary: NeuronsSummary,
    /// Fig. 4: edges and per-bin means.
    pub lc_edges: Vec<f64>,
    pub curve: Vec<LcBin>,
    pub grids: Vec<GridRecord>,
    /// Files written (relative to the output directory).
    pub figures: Vec<String>,
    pub seconds: f64,
    pub layers: Vec<LayerNeurons>,
}

/// The adversarial set must be built for the real set's class list, and both must fit the model.
pub fn check_inputs(
    model: &Model,
    ckpt: &Path,
    real: &Dataset,
    adv: Option<&AdvSet>,
) -> Result<()> {
    if real.num_classes() != model.num_classes() {
        return Err(Error::InvalidArg(format!(
            "{} has {} classes but model {} has {}",
            real.path().display(),
            real.num_classes(),
            ckpt.display(),
            model.num_classes()
        )));
    }
    if real.shape() != model.in_shape() {
        return Err(Error::InvalidArg(format!(
            "{} holds {:?} images but model {} takes {:?}",
            real.path().display(),
            real.shape(),
            ckpt.display(),
            model.in_shape()
        )));
    }
    if let Some(adv) = adv {
        if adv.classes() != real.classes() {
            let first = adv
                .classes()
                .iter()
                .zip(real.classes())
                .position(|(a, b)| a != b)
                .map(|i| {
                    format!(
                        "class {i} is '{}' there and '{}' in the real set",
                        adv.classes()[i],
                        real.classes()[i]
                    )
                })
                .unwrap_or_else(|| {
                    format!(
                        "{} classes there, {} in the real set",
                        adv.num_classes(),
                        real.num_classes()
                    )
                });
            return Err(Error::InvalidArg(format!(
                "the adversarial set {} was built for another class list than {}: {first}",
                adv.dir().display(),
                real.path().display()
            )));
        }
        if adv.shape() != model.in_shape() {
            return Err(Error::InvalidArg(format!(
                "the adversarial set {} holds {:?} images but model {} takes {:?}",
                adv.dir().display(),
                adv.shape(),
                ckpt.display(),
                model.in_shape()
            )));
        }
        if adv.is_empty() {
            return Err(Error::InvalidArg(format!(
                "the adversarial set {} holds no images",
                adv.dir().display()
            )));
        }
    }
    Ok(())
}

/// The hierarchy's classes must be the data's, in the same order (matched by wnid or name).
pub fn check_hierarchy(h: &Hierarchy, classes: &[String]) -> Result<()> {
    if h.num_classes() != classes.len() {
        return Err(Error::InvalidArg(format!(
            "the class hierarchy has {} classes, the data {}",
            h.num_classes(),
            classes.len()
        )));
    }
    for (i, (hc, dc)) in h.classes.iter().zip(classes).enumerate() {
        if hc.wnid != *dc && hc.name != *dc {
            return Err(Error::InvalidArg(format!(
                "class {i} of the data is '{dc}' but the hierarchy's is {} ('{}'): build the \
                 hierarchy from the data's class list (advlens wordnet build)",
                hc.wnid, hc.name
            )));
        }
    }
    Ok(())
}

/// The layers to mine: all conv layers, or the requested ones (each must exist).
pub fn resolve_layers(model: &Model, wanted: Option<&[String]>) -> Result<Vec<String>> {
    let known = model.conv_layer_names();
    match wanted {
        None => Ok(known),
        Some([]) => Err(Error::InvalidArg("--layers: no layer given".into())),
        Some(w) => {
            let k: Vec<&str> = known.iter().map(String::as_str).collect();
            for n in w {
                if !known.contains(n) {
                    return Err(Error::unknown("conv layer", n.as_str(), &k));
                }
            }
            Ok(w.to_vec())
        }
    }
}

fn id32(i: usize) -> Result<u32> {
    u32::try_from(i).map_err(|_| {
        Error::InvalidArg(format!("image index {i} does not fit the u32 ids of top-k"))
    })
}

/// Stream images through the model and offer every channel max of every layer to `states`.
fn mine_batch(
    be: &dyn Backend,
    model: &mut Model,
    images: &crate::tensor::Tensor,
    ids: &[u32],
    names: &[&str],
    states: &mut [Box<dyn TopKStream + '_>],
) -> Result<()> {
    let (_, acts) = model.forward_with_activations(be, images, names)?;
    for ((a, st), name) in acts.iter().zip(states.iter_mut()).zip(names) {
        // The channel maxima stay on the backend (on CUDA the merge runs on the device).
        let m = be.channel_max(a)?;
        st.push(&m, ids).map_err(|e| match e {
            Error::Numeric(m) => Error::Numeric(format!("layer {name}: {m}")),
            e => Error::InvalidArg(format!("layer {name}: {e}")),
        })?;
    }
    Ok(())
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v
        .filter(|x| x.is_finite())
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Pearson correlation of the finite pairs; None with fewer than 2 or a constant side.
pub fn pearson(pairs: &[(f64, f64)]) -> Option<f64> {
    let p: Vec<(f64, f64)> = pairs
        .iter()
        .copied()
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    if p.len() < 2 {
        return None;
    }
    let n = p.len() as f64;
    let (ma, mb) = p
        .iter()
        .fold((0.0, 0.0), |(x, y), (a, b)| (x + a / n, y + b / n));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (a, b) in &p {
        sab += (a - ma) * (b - mb);
        saa += (a - ma) * (a - ma);
        sbb += (b - mb) * (b - mb);
    }
    let den = (saa * sbb).sqrt();
    (den > 0.0).then(|| sab / den)
}

fn majority(labels: &[u32], k: usize) -> (usize, f64) {
    let mut counts = vec![0usize; k];
    for &l in labels {
        if let Some(c) = counts.get_mut(l as usize) {
            *c += 1;
        }
    }
    let (best, n) = counts
        .iter()
        .enumerate()
        .fold((0, 0), |acc, (i, &c)| if c > acc.1 { (i, c) } else { acc });
    (best, n as f64 / labels.len().max(1) as f64)
}

/// A file-name-safe form of a layer name.
pub fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A grid tile of image `pixels` with the discrepancy map of (layer, channel).
#[allow(clippy::too_many_arguments)]
pub fn neuron_tile(
    be: &dyn Backend,
    model: &mut Model,
    pixels: &[f32],
    layer: &str,
    channel: usize,
    occ: &OcclusionConfig,
    batch: usize,
    border: Option<[u8; 3]>,
) -> Result<Tile> {
    let heat = viz::discrepancy_map(be, model, pixels, layer, channel, occ, batch)?;
    let mut t = Tile::from_f32(pixels, model.in_shape());
    t.heat = Some(heat);
    t.border = border;
    Ok(t)
}

/// E3 on one model: mine every neuron of the requested conv layers on `real` and `adv`, compute
/// LC/CS1/CS2 with the hierarchy's C, and write `neurons.json`, `fig4_lc_cs.svg` and the Fig. 2
/// grids into `out`.
pub fn neurons(
    be: &dyn Backend,
    ckpt: &Path,
    real: &Arc<Dataset>,
    adv: &AdvSet,
    hierarchy: &Hierarchy,
    cfg: &NeuronsConfig,
    out: &Path,
) -> Result<NeuronsResult> {
    let t0 = Instant::now();
    if cfg.batch == 0 {
        return Err(Error::InvalidArg("--batch must be at least 1".into()));
    }
    if !(cfg.fraction > 0.0 && cfg.fraction <= 1.0) {
        return Err(Error::InvalidArg(format!(
            "the top fraction must be in (0, 1], got {}",
            cfg.fraction
        )));
    }
    if cfg.lc_bins == 0 {
        return Err(Error::InvalidArg("--lc-bins must be at least 1".into()));
    }
    if cfg.grid_neurons > 0 && cfg.grid_images == 0 {
        return Err(Error::InvalidArg(format!(
            "--grids {} with --grid-images 0 would draw empty grids: give --grid-images >= 1 or \
             --grids 0",
            cfg.grid_neurons
        )));
    }
    let mut model = Model::load(ckpt)?;
    check_inputs(&model, ckpt, real, Some(adv))?;
    check_hierarchy(hierarchy, real.classes())?;
    // The grid and occlusion options are checked before mining, not after it.
    if let (Some(occ), true) = (cfg.occlusion, cfg.grid_neurons > 0) {
        let (_, h, w) = model.in_shape();
        if occ.patch == 0 || occ.stride == 0 || occ.patch > h.min(w) {
            return Err(Error::InvalidArg(format!(
                "--occlusion {}:{} does not fit the model's {h}x{w} images (patch at most {})",
                occ.patch,
                occ.stride,
                h.min(w)
            )));
        }
    }
    let layers = resolve_layers(&model, cfg.layers.as_deref())?;
    let names: Vec<&str> = layers.iter().map(String::as_str).collect();
    model.to_backend(be)?;
    let k_classes = real.num_classes();
    let c = hierarchy.c_matrix();

    let n_real = cfg.limit.map_or(real.len(), |l| l.min(real.len()));
    let n_adv = cfg.adv_limit.map_or(adv.len(), |l| l.min(adv.len()));
    if n_real == 0 || n_adv == 0 {
        return Err(Error::InvalidArg(format!(
            "nothing to mine: {n_real} real and {n_adv} adversarial images"
        )));
    }
    id32(n_real.max(n_adv))?;
    let k_real = top_fraction_k(n_real, cfg.fraction);
    let k_adv = top_fraction_k(n_adv, cfg.fraction);

    // Channel counts from one forward of a single image.
    let probe = real.batch_f32(&[0])?.0;
    let (_, acts) = model.forward_with_activations(be, &probe, &names)?;
    let channels: Vec<usize> = acts
        .iter()
        .map(|a| a.dims4("neurons").map(|d| d.1))
        .collect::<Result<_>>()?;
    drop(acts);

    let mut real_top: Vec<Box<dyn TopKStream>> = channels
        .iter()
        .map(|&ch| be.topk_stream(ch, k_real))
        .collect::<Result<_>>()?;
    let mut adv_top: Vec<Box<dyn TopKStream>> = channels
        .iter()
        .map(|&ch| be.topk_stream(ch, k_adv))
        .collect::<Result<_>>()?;

    let pb = crate::progress::bar(n_real as u64, "neurons: real", "img");
    for b in Batches::new(real, cfg.batch, None, 0)?.limit(n_real) {
        let b = b?;
        let ids: Vec<u32> = b.indices.iter().map(|&i| id32(i)).collect::<Result<_>>()?;
        mine_batch(be, &mut model, &b.images, &ids, &names, &mut real_top)?;
        pb.inc(ids.len() as u64);
    }
    pb.finish_and_clear();
    let pb = crate::progress::bar(n_adv as u64, "neurons: adversarial", "img");
    for start in (0..n_adv).step_by(cfg.batch) {
        let idx: Vec<usize> = (start..(start + cfg.batch).min(n_adv)).collect();
        let b = adv.batch(&idx)?;
        let ids: Vec<u32> = idx.iter().map(|&i| id32(i)).collect::<Result<_>>()?;
        mine_batch(be, &mut model, &b.images, &ids, &names, &mut adv_top)?;
        pb.inc(ids.len() as u64);
    }
    pb.finish_and_clear();

    let real_labels = real.labels();
    let adv_true = adv.true_labels();
    let adv_target = adv.target_labels();
    let mut out_layers = Vec::with_capacity(layers.len());
    for ((name, rt), at) in layers.iter().zip(real_top).zip(adv_top) {
        let rt: Vec<Vec<Hit>> = rt.finish()?;
        let at: Vec<Vec<Hit>> = at.finish()?;
        let lab = |hits: &[Hit], labels: &[u32]| -> Vec<u32> {
            hits.iter().map(|h| labels[h.id as usize]).collect()
        };
        let p: Vec<Vec<u32>> = rt.iter().map(|h| lab(h, real_labels)).collect();
        let q: Vec<Vec<u32>> = at.iter().map(|h| lab(h, adv_true)).collect();
        let qt: Vec<Vec<u32>> = at.iter().map(|h| lab(h, adv_target)).collect();
        let sem = neuron_semantics_from_labels(&p, &q, &qt, &c, k_classes)
            .map_err(|e| Error::InvalidArg(format!("layer {name}: {e}")))?;
        let fin = |v: f64| v.is_finite().then_some(v);
        let recs: Vec<NeuronRecord> = sem
            .iter()
            .enumerate()
            .map(|(ch, s)| {
                let (top_class, frac) = majority(&p[ch], k_classes);
                NeuronRecord {
                    channel: ch,
                    lc: s.lc,
                    cs1: fin(s.cs1),
                    cs2: fin(s.cs2),
                    top_class,
                    top_class_fraction: frac,
                    top_real: rt[ch].iter().map(|h| h.id).collect(),
                    top_real_act: rt[ch].iter().map(|h| h.value).collect(),
                    top_adv: at[ch].iter().map(|h| h.id).collect(),
                    top_adv_act: at[ch].iter().map(|h| h.value).collect(),
                }
            })
            .collect();
        out_layers.push(LayerNeurons {
            layer: name.clone(),
            channels: recs.len(),
            mean_lc: mean(recs.iter().map(|r| r.lc)).unwrap_or(f64::NAN),
            mean_cs1: mean(recs.iter().filter_map(|r| r.cs1)),
            mean_cs2: mean(recs.iter().filter_map(|r| r.cs2)),
            neurons: recs,
        });
    }

    // Fig. 4 over every neuron of every mined layer.
    let all: Vec<crate::analysis::semantics::NeuronSemantics> = out_layers
        .iter()
        .flat_map(|l| l.neurons.iter())
        .map(|r| crate::analysis::semantics::NeuronSemantics {
            lc: r.lc,
            cs1: r.cs1.unwrap_or(f64::NAN),
            cs2: r.cs2.unwrap_or(f64::NAN),
        })
        .collect();
    let lc_edges = uniform_edges(0.0, 1.0, cfg.lc_bins);
    let curve = lc_curve(&all, &lc_edges)?;
    let lc_cs1: Vec<(f64, f64)> = all.iter().map(|s| (s.lc, s.cs1)).collect();
    let lc_cs2: Vec<(f64, f64)> = all.iter().map(|s| (s.lc, s.cs2)).collect();
    let summary = NeuronsSummary {
        neurons: all.len(),
        mean_lc: mean(all.iter().map(|s| s.lc)).unwrap_or(f64::NAN),
        mean_cs1: mean(all.iter().map(|s| s.cs1)),
        mean_cs2: mean(all.iter().map(|s| s.cs2)),
        corr_lc_cs1: pearson(&lc_cs1),
        corr_lc_cs2: pearson(&lc_cs2),
    };

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut figures = Vec::new();
    let fig4 = "fig4_lc_cs.svg";
    viz::plots::lc_curve_svg(
        &out.join(fig4),
        &format!("{}: CS vs LC ({} neurons)", model.name(), all.len()),
        &[viz::plots::LcSeries {
            label: model.name(),
            bins: &curve,
        }],
    )?;
    figures.push(fig4.to_string());

    // Fig. 2 grids for the highest-LC neurons of the last mined layer.
    let mut grids = Vec::new();
    if let Some(last) = out_layers.last() {
        let (_, h, w) = model.in_shape();
        let occ = cfg
            .occlusion
            .unwrap_or_else(|| OcclusionConfig::for_size(h, w));
        let style = GridStyle::for_side(h.max(w));
        let mut order: Vec<&NeuronRecord> = last.neurons.iter().collect();
        order.sort_by(|a, b| b.lc.total_cmp(&a.lc).then(a.channel.cmp(&b.channel)));
        let chosen: Vec<NeuronRecord> = order.into_iter().take(cfg.grid_neurons).cloned().collect();
        let layer = last.layer.clone();
        let pb = crate::progress::bar(chosen.len() as u64, "neurons: grids", "neuron");
        for r in chosen {
            let mut row_real = Vec::new();
            let real_ids: Vec<u32> = r.top_real.iter().take(cfg.grid_images).copied().collect();
            for &id in &real_ids {
                let (x, _) = real.batch_f32(&[id as usize])?;
                row_real.push(neuron_tile(
                    be,
                    &mut model,
                    &x.to_vec()?,
                    &layer,
                    r.channel,
                    &occ,
                    cfg.batch,
                    None,
                )?);
            }
            let mut row_adv = Vec::new();
            let adv_ids: Vec<u32> = r.top_adv.iter().take(cfg.grid_images).copied().collect();
            let mut boxed = Vec::new();
            for &id in &adv_ids {
                let b = adv.batch(&[id as usize])?;
                let hit = b.target_label[0] as usize == r.top_class;
                boxed.push(hit);
                row_adv.push(neuron_tile(
                    be,
                    &mut model,
                    &b.images.to_vec()?,
                    &layer,
                    r.channel,
                    &occ,
                    cfg.batch,
                    hit.then_some([220, 0, 0]),
                )?);
            }
            let file = format!("fig2_{}_n{}.png", file_safe(&layer), r.channel);
            let img = viz::grid_image(&[row_real, row_adv], &style)?;
            viz::write_png(&out.join(&file), &img)?;
            figures.push(file.clone());
            grids.push(GridRecord {
                layer: layer.clone(),
                channel: r.channel,
                lc: r.lc,
                file,
                real_ids,
                adv_ids,
                adv_target_is_class: boxed,
                occlusion: occ,
            });
            pb.inc(1);
        }
        pb.finish_and_clear();
    }

    let result = NeuronsResult {
        format: "advlens-neurons-v1".into(),
        model: model.name().to_string(),
        ckpt: ckpt.display().to_string(),
        real_data: real.path().display().to_string(),
        adv_dir: adv.dir().display().to_string(),
        activation: ACTIVATION.into(),
        fraction: cfg.fraction,
        real_images: n_real,
        adv_images: n_adv,
        k_real,
        k_adv,
        num_classes: k_classes,
        sigma: hierarchy.sigma,
        summary,
        lc_edges,
        curve,
        grids,
        figures,
        seconds: t0.elapsed().as_secs_f64(),
        layers: out_layers,
    };
    write_json_compact(&json_path(out), &result)?;
    Ok(result)
}

/// Compact JSON, atomically: neurons.json holds k ids and activations per neuron per set, which
/// pretty-printing would put one per line.
pub fn write_json_compact<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    crate::io::write_atomic(path, |w| {
        serde_json::to_writer(&mut *w, value).map_err(std::io::Error::other)?;
        std::io::Write::write_all(w, b"\n")
    })
}

/// Where `neurons` writes its JSON.
pub fn json_path(out: &Path) -> PathBuf {
    out.join("neurons.json")
}
