//! E8 (paper section 4, Eq. 12, Fig. 10): tracing a prediction back to influential neurons.
//!
//! For an image x with phi = phi(x) (last conv representation, [C', H', W']) and the head g
//! (`Model::head`, eval mode) followed by a softmax:
//! `PD_i = (g(phi) - g(phi without i))^T C (g(phi) - g(phi without i))`, where "phi without i" is
//! phi with channel i set to 0 (DESIGN section 4) and C the class correlation matrix of the
//! hierarchy (the identity when none is given: plain squared L2 of the probability change).
//!
//! All C' modified copies of an image's phi are built as one [M, C', H', W'] batch per chunk of
//! `chunk` channels and run through the head once per chunk; g(phi) itself comes from a head call
//! on the unmodified phi, so the same code path produces both sides of the difference.
//!
//! Channel i of phi is the channel i of the model's last conv layer (`conv_layer_names().last()`;
//! phi is that layer's output after the last max-pool for AlexNet/VGG, the same tensor for
//! ResNet), so a neuron of phi is rendered with the top real images E3 mined for that layer.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::analysis::pd::{prediction_difference, top_n};
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::nn::Model;
use crate::tensor::Tensor;
use crate::viz::{self, GridStyle, OcclusionConfig};

use super::neurons::{file_safe, neuron_tile};
use super::ratios::logits_and_phi;

/// PD of every phi channel of one image.
#[derive(Clone, Debug, Serialize)]
pub struct PdImage {
    pub predicted: u32,
    /// g(phi): softmax of the head's logits on the unmodified phi.
    pub probs: Vec<f32>,
    /// PD_i for i = 0 .. C'.
    pub pd: Vec<f64>,
}

/// Copies of one image's phi (`phi`, C' x H' x W' values) with channel `channels[m]` zeroed in row
/// m: a [M, C', H', W'] host tensor.
pub fn zeroed_channel_batch(
    phi: &[f32],
    shape: (usize, usize, usize),
    channels: &[usize],
) -> Result<Tensor> {
    let (c, h, w) = shape;
    let len = c * h * w;
    if phi.len() != len {
        return Err(Error::shape(
            "zeroed_channel_batch",
            format!("phi has {} values, expected {c}x{h}x{w}", phi.len()),
        ));
    }
    let mut v = Vec::with_capacity(channels.len() * len);
    for &ch in channels {
        if ch >= c {
            return Err(Error::InvalidArg(format!(
                "zeroed_channel_batch: channel {ch} of {c}"
            )));
        }
        let start = v.len();
        v.extend_from_slice(phi);
        v[start + ch * h * w..start + (ch + 1) * h * w].fill(0.0);
    }
    Tensor::from_vec(&[channels.len(), c, h, w], v)
}

/// Softmax probabilities of the head on `phi` ([M, C', H', W'], host or backend): [M, K] host.
pub fn head_probs(be: &dyn Backend, model: &Model, phi: &Tensor) -> Result<Vec<f32>> {
    let logits = model.head(be, phi)?;
    be.softmax(&logits)?.to_vec()
}

/// PD of every phi channel for each image of `x` ([B, C, H, W]), `chunk` modified copies per head
/// call. `c` is the K x K class correlation (None: identity).
pub fn prediction_differences(
    be: &dyn Backend,
    model: &mut Model,
    x: &Tensor,
    c: Option<&[f64]>,
    chunk: usize,
) -> Result<Vec<PdImage>> {
    let k = model.num_classes();
    let identity: Vec<f64>;
    let c = match c {
        Some(c) => {
            if c.len() != k * k {
                return Err(Error::shape(
                    "prediction difference",
                    format!("C has {} values, the model has {k} classes", c.len()),
                ));
            }
            c
        }
        None => {
            identity = (0..k * k)
                .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
                .collect();
            &identity
        }
    };
    let shape = model.phi_shape()?;
    let (pc, ph, pw) = shape;
    let len = pc * ph * pw;
    let (_, phi) = logits_and_phi(be, model, x)?;
    let phi = phi.to_vec()?;
    let channels: Vec<usize> = (0..pc).collect();
    let mut out = Vec::new();
    for one in phi.chunks_exact(len) {
        let g = head_probs(
            be,
            model,
            &Tensor::from_vec(&[1, pc, ph, pw], one.to_vec())?,
        )?;
        let mut g_removed = Vec::with_capacity(pc * k);
        for chs in channels.chunks(chunk.max(1)) {
            let batch = zeroed_channel_batch(one, shape, chs)?;
            g_removed.extend(head_probs(be, model, &batch)?);
        }
        let pd = prediction_difference(&g, &g_removed, c)?;
        let predicted = super::ratios::argmax_rows(&g, k)[0];
        out.push(PdImage {
            predicted,
            probs: g,
            pd,
        });
    }
    Ok(out)
}

/// The fields of `neurons.json` that `explain` reads.
#[derive(Clone, Debug, Deserialize)]
pub struct NeuronsFile {
    pub model: String,
    pub real_data: String,
    pub layers: Vec<NeuronsFileLayer>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NeuronsFileLayer {
    pub layer: String,
    pub neurons: Vec<NeuronsFileNeuron>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct NeuronsFileNeuron {
    pub channel: usize,
    pub lc: f64,
    pub top_class: usize,
    pub top_real: Vec<u32>,
}

impl NeuronsFile {
    pub fn load(path: &Path) -> Result<NeuronsFile> {
        crate::io::read_json(path)
    }
}

/// The image to explain.
#[derive(Clone, Debug)]
pub struct ExplainImage {
    /// "real" or "adversarial".
    pub source: String,
    /// Dataset file or adversarial directory.
    pub set: String,
    pub index: usize,
    pub true_label: u32,
    pub target_label: Option<u32>,
    /// C x H x W on the 0..255 scale.
    pub pixels: Vec<f32>,
}

/// Options of [`explain`].
#[derive(Clone, Debug)]
pub struct ExplainConfig {
    /// Neurons reported (largest PD first).
    pub top: usize,
    /// Modified phi copies per head call.
    pub chunk: usize,
    /// Top real images drawn per neuron.
    pub grid_images: usize,
    /// Occluded copies per forward pass (discrepancy maps).
    pub batch: usize,
    pub occlusion: Option<OcclusionConfig>,
}

impl Default for ExplainConfig {
    fn default() -> Self {
        ExplainConfig {
            top: 2,
            chunk: 256,
            grid_images: 8,
            batch: 64,
            occlusion: None,
        }
    }
}

/// One influential neuron.
#[derive(Clone, Debug, Serialize)]
pub struct TopNeuron {
    pub rank: usize,
    pub channel: usize,
    pub pd: f64,
    /// From neurons.json when given: the neuron's LC, majority class and top real image ids.
    pub lc: Option<f64>,
    pub top_class: Option<usize>,
    pub top_class_name: Option<String>,
    pub top_real: Vec<u32>,
    /// The PNG drawn for it (explained image first, blue border; then its top real images).
    pub grid: Option<String>,
}

/// What `explain` found for one image.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainResult {
    pub format: String,
    pub model: String,
    pub ckpt: String,
    pub source: String,
    pub set: String,
    pub index: usize,
    pub true_label: u32,
    pub true_name: String,
    pub target_label: Option<u32>,
    pub predicted: u32,
    pub predicted_name: String,
    pub predicted_prob: f32,
    pub probs: Vec<f32>,
    /// "hierarchy" or "identity".
    pub c_matrix: String,
    /// The conv layer whose channels are phi's.
    pub phi_layer: String,
    pub top: Vec<TopNeuron>,
    pub pd: Vec<f64>,
}

impl ExplainResult {
    /// Text lines for the CLI.
    pub fn lines(&self) -> String {
        let mut s = format!(
            "{} image {} of {}: true {} ({}){}, predicted {} ({}) p={:.4}\n",
            self.source,
            self.index,
            self.set,
            self.true_label,
            self.true_name,
            self.target_label
                .map(|t| format!(", target {t}"))
                .unwrap_or_default(),
            self.predicted,
            self.predicted_name,
            self.predicted_prob
        );
        for t in &self.top {
            s.push_str(&format!(
                "  #{} {} channel {}: PD {:.6}{}{}\n",
                t.rank,
                self.phi_layer,
                t.channel,
                t.pd,
                match (&t.top_class_name, t.lc) {
                    (Some(n), Some(lc)) => format!(" (top real class {n}, LC {lc:.3})"),
                    _ => String::new(),
                },
                t.grid
                    .as_ref()
                    .map(|g| format!(" -> {g}"))
                    .unwrap_or_default()
            ));
        }
        s.trim_end().to_string()
    }
}

/// E8 for one image: PD of every phi channel, the `top` neurons, and (with `neurons` from E3 and
/// the real set they were mined on) one PNG per top neuron in `out`.
#[allow(clippy::too_many_arguments)]
pub fn explain(
    be: &dyn Backend,
    ckpt: &Path,
    image: &ExplainImage,
    class_names: &[String],
    c: Option<&[f64]>,
    neurons: Option<(&NeuronsFile, &Arc<Dataset>)>,
    cfg: &ExplainConfig,
    out: Option<&Path>,
) -> Result<ExplainResult> {
    let mut model = Model::load(ckpt)?;
    model.to_backend(be)?;
    let (ic, ih, iw) = model.in_shape();
    if image.pixels.len() != ic * ih * iw {
        return Err(Error::shape(
            "explain",
            format!(
                "the image has {} values, model {} takes {ic}x{ih}x{iw}",
                image.pixels.len(),
                ckpt.display()
            ),
        ));
    }
    if class_names.len() != model.num_classes() {
        return Err(Error::InvalidArg(format!(
            "{} class names for a model of {} classes",
            class_names.len(),
            model.num_classes()
        )));
    }
    let phi_layer =
        model.conv_layer_names().last().cloned().ok_or_else(|| {
            Error::InvalidArg(format!("model {} has no conv layer", model.name()))
        })?;
    let x = Tensor::from_vec(&[1, ic, ih, iw], image.pixels.clone())?;
    let pdi = prediction_differences(be, &mut model, &x, c, cfg.chunk)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::shape("explain", "no result for the image"))?;

    let layer_info = match neurons {
        Some((nf, data)) => {
            let l = nf
                .layers
                .iter()
                .find(|l| l.layer == phi_layer)
                .ok_or_else(|| {
                    Error::InvalidArg(format!(
                        "the neurons file (model {}) has no layer {phi_layer}, the last conv layer \
                         of {}: run advlens neurons with that layer",
                        nf.model,
                        model.name()
                    ))
                })?;
            if l.neurons.len() != pdi.pd.len() {
                return Err(Error::InvalidArg(format!(
                    "the neurons file has {} neurons in {phi_layer}, model {} has {}",
                    l.neurons.len(),
                    ckpt.display(),
                    pdi.pd.len()
                )));
            }
            if data.shape() != model.in_shape() {
                return Err(Error::InvalidArg(format!(
                    "{} holds {:?} images, the model takes {:?}",
                    data.path().display(),
                    data.shape(),
                    model.in_shape()
                )));
            }
            Some((l, data))
        }
        None => None,
    };

    let occ = cfg
        .occlusion
        .unwrap_or_else(|| OcclusionConfig::for_size(ih, iw));
    let style = GridStyle::for_side(ih.max(iw));
    let mut top = Vec::new();
    for (rank, (ch, pd)) in top_n(&pdi.pd, cfg.top).into_iter().enumerate() {
        let mut t = TopNeuron {
            rank: rank + 1,
            channel: ch,
            pd,
            lc: None,
            top_class: None,
            top_class_name: None,
            top_real: Vec::new(),
            grid: None,
        };
        if let Some((l, data)) = &layer_info {
            let n = l.neurons.iter().find(|n| n.channel == ch).ok_or_else(|| {
                Error::InvalidArg(format!(
                    "the neurons file has no channel {ch} in {phi_layer}"
                ))
            })?;
            t.lc = Some(n.lc);
            t.top_class = Some(n.top_class);
            t.top_class_name = class_names.get(n.top_class).cloned();
            t.top_real = n.top_real.iter().take(cfg.grid_images).copied().collect();
            if let Some(out) = out {
                let mut row = vec![neuron_tile(
                    be,
                    &mut model,
                    &image.pixels,
                    &phi_layer,
                    ch,
                    &occ,
                    cfg.batch,
                    Some([0, 90, 220]),
                )?];
                for &id in &t.top_real {
                    let (px, _) = data.batch_f32(&[id as usize])?;
                    row.push(neuron_tile(
                        be,
                        &mut model,
                        &px.to_vec()?,
                        &phi_layer,
                        ch,
                        &occ,
                        cfg.batch,
                        None,
                    )?);
                }
                let file = format!(
                    "explain_{}{}_{}_n{ch}.png",
                    if image.source.starts_with("adv") {
                        "adv"
                    } else {
                        "real"
                    },
                    image.index,
                    file_safe(&phi_layer)
                );
                viz::write_png(&out.join(&file), &viz::grid_image(&[row], &style)?)?;
                t.grid = Some(file);
            }
        }
        top.push(t);
    }
    let name = |l: u32| class_names.get(l as usize).cloned().unwrap_or_default();
    Ok(ExplainResult {
        format: "advlens-explain-v1".into(),
        model: model.name().to_string(),
        ckpt: ckpt.display().to_string(),
        source: image.source.clone(),
        set: image.set.clone(),
        index: image.index,
        true_label: image.true_label,
        true_name: name(image.true_label),
        target_label: image.target_label,
        predicted: pdi.predicted,
        predicted_name: name(pdi.predicted),
        predicted_prob: pdi
            .probs
            .get(pdi.predicted as usize)
            .copied()
            .unwrap_or(0.0),
        probs: pdi.probs,
        c_matrix: if c.is_some() { "hierarchy" } else { "identity" }.into(),
        phi_layer,
        top,
        pd: pdi.pd,
    })
}
